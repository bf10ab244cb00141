"""Renders differentiable in the cameras: gradients of pixels with respect to poses and
intrinsics, for every model.

How the gradient gets there: sampling (occupancy grid, proposal networks, coarse passes, early
termination) runs **without a graph** on the rays' detached origins and directions; the field
then sees the samples at ``x = o + t d`` recomputed **with** the graph, ``t`` held at what the
no-grad pass chose, and the directions ``d`` themselves, so gradients reach the rays and, through
:func:`radfield.cameras.generate_rays`, ``c2w`` and ``fx, fy, cx, cy``. The derivative is that
of the render with the samples' ``t`` fixed (what pose refinement and iNeRF optimise); where
sampling is a smooth function of the pose it differs from the total derivative only by the
quadrature's own error. The encodings pass gradients to their inputs (the hash grid's CPU kernel
included, once differentiable).

Two entry points, one render path (:func:`render_rays_grad`, then
:func:`radfield.rendering.pipeline.render_samples`):

* :func:`render_rays_grad`: one batch of rays with its whole graph (training-sized batches:
  pose refinement, pose fitting);
* :func:`render_images_grad`: every pixel of every camera of a :class:`Cameras`, in chunks. An
  autograd function: its forward is the no-grad render (:func:`render_images`, the fast path);
  its backward renders each chunk again **with** a graph and back-propagates the upstream
  per-pixel gradient (a vector-Jacobian product) into ``c2w, fx, fy, cx, cy``, freeing the
  chunk's graph before the next, so memory is bounded by ``chunk`` at any resolution and any
  number of cameras. The model is frozen: its parameters get no gradient.

Pixels: flat index ``f = camera * H * W + row * W + col`` (row-major images, one camera after
another); chunk ``k`` is ``f`` in ``[k chunk, (k + 1) chunk)``.

Replay of sampling noise (:class:`Sampling`): without ``jitter`` sampling is deterministic;
with it, chunk ``k`` draws from a generator seeded with ``seed * 2^20 + k`` in the forward and
again in the backward, so both passes see the same samples (tested: the same seed renders the
same images, another seed others, and the jittered render's gradient matches central
differences of renders with its seed).

Example: the gradient of a loss on the rendered images with respect to a pose correction ``xi``::

    xi = torch.zeros(len(cams), 6, requires_grad=True)
    posed = dataclasses.replace(cams, c2w=perturb(cams.c2w, xi))     # radfield.poses.se3
    out = render_images_grad(model, posed, background)
    ((out.rgb - target) ** 2).mean().backward()                       # xi.grad: (n_cams, 6)
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor

from radfield.cameras import Cameras, Rays, pixel_rays
from radfield.rendering.backgrounds import ray_background
from radfield.rendering.images import planar_depth
from radfield.rendering.pipeline import render_samples
from radfield.rendering.volume import RenderOutput

__all__ = ["Sampling", "ImageBatch", "render_rays_grad", "render_images", "render_images_grad",
           "frozen"]


@dataclass(frozen=True)
class Sampling:
    """How the samples of a render are drawn.

    Attributes:
        jitter: the sampler's training-time noise (stratified offsets, jittered marching);
            off: its deterministic evaluation samples.
        seed: the noise of chunk ``k`` comes from a generator seeded ``seed * 2^20 + k``.
        early_stop: samplers that can drop samples behind transmittance 1e-4 do.
        widen: samplers that skip empty space also keep samples within this world distance of
            what they keep (``Model.widened_sampling``): for poses that move so far that rays
            now missing the scene would reach it (0: as they sample).
    """

    jitter: bool = False
    seed: int = 0
    early_stop: bool = True
    widen: float = 0.0

    def generator(self, chunk_index: int, device: torch.device) -> torch.Generator | None:
        if not self.jitter:
            return None
        return torch.Generator(device).manual_seed(self.seed * (1 << 20) + chunk_index)


@dataclass
class ImageBatch:
    """Images of ``n_cams`` cameras of one size ``H x W``, on the cameras' device.

    Attributes:
        rgb: ``(n_cams, H, W, 3)`` colour over the background (not clamped: gradients pass).
        depth: ``(n_cams, H, W)`` planar camera z of the expected termination point
            (:func:`radfield.rendering.images.planar_depth`; 0 where the opacity is below 1e-3).
        opacity: ``(n_cams, H, W)`` alpha, ``sum_i w_i``.
    """

    rgb: Tensor
    depth: Tensor
    opacity: Tensor


@contextmanager
def frozen(model):
    """The model's parameters with ``requires_grad`` off inside the block (restored after): a
    render then builds the graph to its inputs only."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in params:
            p.requires_grad_(True)


def render_rays_grad(model, rays: Rays, background: Tensor | None, sampling: Sampling = Sampling(),
                     generator: torch.Generator | None = None) -> RenderOutput:
    """Render ``rays`` differentiably in their origins and directions (module docstring):
    samples from a no-grad pass on the detached rays (noise from ``generator`` when
    ``sampling.jitter``), then :func:`render_samples` on the rays with their graph.
    ``background`` ``(3,)`` or ``(n_rays, 3)`` unless the model has its own."""
    widened = model.widened_sampling(sampling.widen) if sampling.widen > 0 else nullcontext()
    with torch.no_grad(), widened:
        samples = model.sample(rays.detach(), training=sampling.jitter, generator=generator,
                               early_stop=sampling.early_stop)
    return render_samples(model, rays, samples, ray_background(model, rays, background))


def _chunk_rays(cameras: Cameras, start: int, stop: int) -> Rays:
    """The rays of flat pixels ``start .. stop - 1`` (module docstring)."""
    hw, w = cameras.height * cameras.width, cameras.width
    f = torch.arange(start, stop, device=cameras.device)
    cam, p = f // hw, f % hw
    return pixel_rays(cameras, cam, p % w, p // w)


def _render_chunk(model, cameras: Cameras, k: int, chunk: int, background: Tensor | None,
                  sampling: Sampling) -> tuple[Tensor, Tensor, Tensor]:
    """``(rgb (m, 3), planar depth (m,), opacity (m,))`` of chunk ``k``."""
    n = len(cameras) * cameras.height * cameras.width
    rays = _chunk_rays(cameras, k * chunk, min((k + 1) * chunk, n))
    out = render_rays_grad(model, rays, background, sampling, sampling.generator(k, cameras.device))
    return out.rgb, planar_depth(out.depth, out.opacity, rays.z_per_t), out.opacity


def _n_chunks(cameras: Cameras, chunk: int) -> int:
    return -(-len(cameras) * cameras.height * cameras.width // chunk)


def _as_images(cameras: Cameras, rgb: Tensor, depth: Tensor, opacity: Tensor) -> ImageBatch:
    shape = (len(cameras), cameras.height, cameras.width)
    return ImageBatch(rgb.reshape(*shape, 3), depth.reshape(shape), opacity.reshape(shape))


def render_images(model, cameras: Cameras, background: Tensor | None, chunk: int = 1 << 13,
                  sampling: Sampling = Sampling()) -> ImageBatch:
    """No-grad render of every camera of ``cameras`` (the fast path; the forward pass of
    :func:`render_images_grad`, pixel for pixel)."""
    with torch.no_grad():
        parts = [_render_chunk(model, cameras, k, chunk, background, sampling)
                 for k in range(_n_chunks(cameras, chunk))]
    return _as_images(cameras, *(torch.cat(p) for p in zip(*parts)))


_DIFFERENTIABLE = ("c2w", "fx", "fy", "cx", "cy")


class _RenderImages(torch.autograd.Function):
    """Inputs: model, cameras (for everything but the differentiable tensors), background, chunk,
    sampling, then ``c2w, fx, fy, cx, cy``. Outputs: flat ``rgb (N, 3), depth (N,), opacity (N,)``."""

    @staticmethod
    def forward(ctx, model, cameras, background, chunk, sampling, *tensors):
        posed = Cameras(*tensors, cameras.width, cameras.height, cameras.attrs, cameras.lens)
        parts = [_render_chunk(model, posed, k, chunk, background, sampling)
                 for k in range(_n_chunks(posed, chunk))]
        ctx.save_for_backward(*tensors)
        ctx.model, ctx.cameras, ctx.background, ctx.chunk, ctx.sampling = (
            model, cameras, background, chunk, sampling)
        ctx.set_materialize_grads(False)
        return tuple(torch.cat(p) for p in zip(*parts))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *upstream):
        needs = ctx.needs_input_grad[5:]
        leaves = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, needs)]
        wanted = [leaf for leaf in leaves if leaf.requires_grad]
        grads = [torch.zeros_like(leaf) for leaf in wanted]
        cams = ctx.cameras
        posed = Cameras(*leaves, cams.width, cams.height, cams.attrs, cams.lens)
        chunk = ctx.chunk
        with frozen(ctx.model), torch.enable_grad():
            for k in range(_n_chunks(posed, chunk)):
                sl = slice(k * chunk, (k + 1) * chunk)
                pairs = [(out, g[sl]) for out, g in zip(
                    _render_chunk(ctx.model, posed, k, chunk, ctx.background, ctx.sampling), upstream)
                    if g is not None and out.requires_grad]
                if not pairs:
                    continue
                outs, gs = zip(*pairs)
                for total, g in zip(grads, torch.autograd.grad(outs, wanted, gs, allow_unused=True)):
                    if g is not None:
                        total += g
        it = iter(grads)
        return (None,) * 5 + tuple(next(it) if need else None for need in needs)


def render_images_grad(model, cameras: Cameras, background: Tensor | None, chunk: int = 1 << 13,
                       sampling: Sampling = Sampling()) -> ImageBatch:
    """Every camera of ``cameras`` rendered with gradients to ``cameras.c2w``, ``fx``, ``fy``,
    ``cx``, ``cy`` (whatever of them requires grad, and on to whatever they were computed from:
    pose corrections, a pose distribution's parameters), in chunks of ``chunk`` rays with memory
    bounded by the chunk (module docstring). Lens coefficients and per-camera attributes are
    constants. Without any tensor requiring grad this is :func:`render_images`."""
    tensors = [getattr(cameras, name) for name in _DIFFERENTIABLE]
    if not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors):
        return render_images(model, cameras, background, chunk, sampling)
    rgb, depth, opacity = _RenderImages.apply(model, cameras, background, chunk, sampling, *tensors)
    return _as_images(cameras, rgb, depth, opacity)
