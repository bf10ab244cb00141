"""Volume rendering on packed samples, as pure functions on tensors.

Sample layout (used by every sampler, field and loss in radfield): **packed samples**.

* ``t_starts, t_ends``: ``(n_samples,)`` interval ends along the ray, in ray distance units.
* ``ray_indices``: ``(n_samples,)`` long, the ray each sample belongs to, **sorted**: the samples
  of one ray are contiguous and in increasing ``t``. Rays may have zero samples, and a batch may
  have zero samples in total.
* ``n_rays``: the number of rays in the batch.

Vocabulary (the quadrature of Max 1995 / NeRF):

* ``sigma_i`` density, ``delta_i = t_end_i - t_start_i``, optical thickness ``tau_i = sigma_i delta_i``.
* ``alpha_i = 1 - exp(-tau_i)``: the probability the ray terminates inside sample ``i``.
* ``T_i = exp(-sum_{k<i} tau_k)``: transmittance in front of sample ``i`` (same ray).
* ``w_i = T_i alpha_i``: the weight of sample ``i``; per ray ``sum_i w_i = 1 - T_final <= 1``.

The transmittance uses a float64 running sum over the whole batch minus each ray's start offset:
a float32 global cumsum loses up to 6e-3 in the weights at ~260k samples (measured; see
``shared/specs/models.md``), float64 is exact to 1e-7.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from radfield.native import NativeLibrary, TritonModule

_TRITON = TritonModule("radfield.rendering.volume_triton", "volume rendering")
_P, _I32, _I64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
_COMPILED = NativeLibrary(Path(__file__).with_name("_volume_cpu.c"), {
    "vr_forward": [_P] * 6 + [_I64, _I32, _I32] + [_P] * 4 + [_I32],
    "vr_backward": [_P] * 6 + [_I64, _I32, _I32] + [_P] * 7 + [_I32],
}, "volume rendering CPU kernel", "the PyTorch volume rendering")
MAX_COMPILED_CHANNELS = 16
"""The compiled kernel's most channels per sample (``MAX_C`` in ``_volume_cpu.c``)."""


def ray_offsets(ray_indices: Tensor, n_rays: int) -> tuple[Tensor, Tensor]:
    """Per-ray sample ``counts`` and start ``offsets`` (both ``(n_rays,)`` long) of sorted
    ``ray_indices``: the samples of ray ``r`` are ``offsets[r] : offsets[r] + counts[r]``."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    offsets = torch.cumsum(counts, 0) - counts
    return counts, offsets


def exclusive_sum_per_ray(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """``out_i = sum of values_k over earlier samples k of the same ray`` (0 for a ray's first).

    Example: values ``[1, 2, 3, 4]``, ray_indices ``[0, 0, 1, 1]`` -> ``[0, 1, 0, 3]``.
    Computed in float64 and returned in ``values.dtype``.
    """
    if values.numel() == 0:
        return values.clone()
    v64 = values.double()
    inclusive = torch.cumsum(v64, 0)
    exclusive = inclusive - v64
    _, offsets = ray_offsets(ray_indices, n_rays)
    start = exclusive[offsets[ray_indices]]
    return (exclusive - start).to(values.dtype)


def last_sample_mask(ray_indices: Tensor) -> Tensor:
    """``(n_samples,)`` bool, True at the last sample of each ray. Example: ``[0, 0, 1, 3, 3]``
    -> ``[F, T, T, F, T]``."""
    last = torch.ones_like(ray_indices, dtype=torch.bool)
    last[:-1] = ray_indices[1:] != ray_indices[:-1]
    return last


def render_weights(sigmas: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                   n_rays: int, opaque_last: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Weights ``w_i = T_i alpha_i`` of packed samples.

    Returns ``(weights, transmittance, alphas)``, each ``(n_samples,)``. With ``opaque_last`` the
    last interval of every ray extends to infinity (``alpha = 1`` there, the "last sample"
    background of the original NeRF code): each ray's weights sum to 1 unless its transmittance
    is already 0.

    Example (one ray, two samples of length 1 with sigma = ln 2 each):
    alpha = [0.5, 0.5], T = [1, 0.5], w = [0.5, 0.25]; the ray's opacity is 0.75.
    """
    tau = sigmas * (t_ends - t_starts)
    alphas = 1.0 - torch.exp(-tau)
    if opaque_last and alphas.numel():
        alphas = torch.where(last_sample_mask(ray_indices), torch.ones_like(alphas), alphas)
    # tau is capped before the running sum: one infinite or huge tau would otherwise turn every
    # later sample of the batch into NaN or swamp its small taus (exp(-1e3) is 0 anyway).
    transmittance = torch.exp(-exclusive_sum_per_ray(tau.clamp(max=1e3), ray_indices, n_rays))
    return transmittance * alphas, transmittance, alphas


def accumulate_along_rays(weights: Tensor, ray_indices: Tensor, n_rays: int,
                          values: Tensor | None = None) -> Tensor:
    """``out_r = sum_{i in ray r} w_i v_i``: ``(n_rays, C)`` for ``values (n_samples, C)``, or
    ``(n_rays,)`` opacity ``sum_i w_i`` when ``values`` is None."""
    if values is None:
        return torch.zeros(n_rays, dtype=weights.dtype, device=weights.device).index_add_(
            0, ray_indices, weights)
    src = weights[:, None] * values
    out = torch.zeros(n_rays, values.shape[-1], dtype=src.dtype, device=weights.device)
    return out.index_add_(0, ray_indices, src)


@dataclass
class RenderOutput:
    """Per-ray results of volume rendering.

    Attributes:
        rgb: ``(n_rays, 3)`` colour composited over the background.
        opacity: ``(n_rays,)`` ``sum_i w_i``.
        depth: ``(n_rays,)`` expected ray distance ``sum_i w_i t_mid_i`` (not normalised by the
            opacity; divide by it for the depth of the visible surface).
        weights: ``(n_samples,)`` the sample weights (for auxiliary losses).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Tensor


def render(sigmas: Tensor, rgbs: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
           n_rays: int, background: Tensor | None = None, opaque_last: bool = False) -> RenderOutput:
    """Composite packed samples: ``C = sum_i w_i c_i + (1 - sum_i w_i) * background``.

    Args:
        sigmas: ``(n_samples,)`` densities (activated, >= 0).
        rgbs: ``(n_samples, 3)`` colours in [0, 1] (any ``(n_samples, C)`` values when
            ``background`` is None: their weighted sums per ray).
        background: ``(3,)`` or ``(n_rays, 3)``; black when None.
        opaque_last: the last interval of each ray is opaque (see :func:`render_weights`).

    Where they apply (float32, interval ends without a gradient) kernels render, forward and
    backward fused per ray (:class:`FusedRender`): on CUDA the Triton kernels of
    :mod:`radfield.rendering.volume_triton`, on the CPU ``_volume_cpu.c``.
    """
    if (backend := _fused_backend(sigmas, rgbs, t_starts, t_ends)) is not None:
        weights, rgb, opacity, depth = FusedRender.apply(backend, sigmas, rgbs, t_starts, t_ends, ray_indices,
                                                         n_rays, bool(opaque_last))
    else:
        weights, rgb, opacity, depth = render_reference(sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays,
                                                        opaque_last)
    return RenderOutput(rgb=composite(rgb, opacity, background), opacity=opacity, depth=depth, weights=weights)


def render_reference(sigmas: Tensor, rgbs: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                     n_rays: int, opaque_last: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`render`'s PyTorch path before the background: ``(weights, rgb, opacity, depth)``
    (what :class:`FusedRender`'s kernels compute)."""
    weights, _, _ = render_weights(sigmas, t_starts, t_ends, ray_indices, n_rays, opaque_last)
    rgb = accumulate_along_rays(weights, ray_indices, n_rays, rgbs)
    opacity = accumulate_along_rays(weights, ray_indices, n_rays)
    depth = accumulate_along_rays(weights, ray_indices, n_rays, ((t_starts + t_ends) / 2)[:, None])[:, 0]
    return weights, rgb, opacity, depth


class FusedRender(torch.autograd.Function):
    """``(weights (n,), rgb (n_rays, C), opacity (n_rays,), depth (n_rays,))`` of packed samples by
    a kernel ``backend`` (the Triton module, or :class:`_Compiled`), differentiable in ``sigmas``
    and ``rgbs``: :func:`render` before the background. A backend has ``forward(sigmas, rgbs,
    t_starts, t_ends, starts, counts, opaque_last, weights, rgb, opacity, depth)`` and
    ``backward(..., opaque_last, weights, g_weights, g_rgb, g_opacity, g_depth, grad_sigma,
    grad_rgb)``, which fill the tensors after ``opaque_last``."""

    @staticmethod
    def forward(ctx, backend, sigmas: Tensor, rgbs: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                n_rays: int, opaque_last: bool):
        sigmas, rgbs, t_starts, t_ends = (t.contiguous() for t in (sigmas, rgbs, t_starts, t_ends))
        counts, starts = ray_offsets(ray_indices, n_rays)
        new = lambda *shape: torch.empty(shape, dtype=torch.float32, device=sigmas.device)  # noqa: E731
        weights, rgb, opacity, depth = new(len(sigmas)), new(n_rays, rgbs.shape[1]), new(n_rays), new(n_rays)
        if n_rays:
            backend.forward(sigmas, rgbs, t_starts, t_ends, starts, counts, opaque_last, weights, rgb, opacity, depth)
        ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, starts, counts, weights)
        ctx.backend, ctx.opaque_last = backend, opaque_last
        return weights, rgb, opacity, depth

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_weights, g_rgb, g_opacity, g_depth):
        sigmas, rgbs, t_starts, t_ends, starts, counts, weights = ctx.saved_tensors
        zeros = lambda *shape: torch.zeros(shape, dtype=torch.float32, device=sigmas.device)  # noqa: E731
        as_given = lambda g, *shape: zeros(*shape) if g is None else g.float().contiguous()  # noqa: E731
        n_rays = len(counts)
        grads = (as_given(g_weights, len(sigmas)), as_given(g_rgb, n_rays, rgbs.shape[1]), as_given(g_opacity, n_rays),
                 as_given(g_depth, n_rays))
        grad_sigma, grad_rgb = torch.empty_like(sigmas), torch.empty_like(rgbs)
        if n_rays:
            ctx.backend.backward(sigmas, rgbs, t_starts, t_ends, starts, counts, ctx.opaque_last, weights, *grads,
                                 grad_sigma, grad_rgb)
        return None, grad_sigma, grad_rgb, None, None, None, None, None


class _Compiled:
    """:class:`FusedRender`'s backend on the CPU: ``_volume_cpu.c`` (OpenMP over rays)."""

    def __init__(self, lib):
        self.lib = lib

    def forward(self, sigmas, rgbs, t_starts, t_ends, starts, counts, opaque_last, *out) -> None:
        self.lib.vr_forward(*(t.data_ptr() for t in (sigmas, rgbs, t_starts, t_ends, starts, counts)), len(counts),
                            rgbs.shape[1], int(opaque_last), *(t.data_ptr() for t in out), torch.get_num_threads())

    def backward(self, sigmas, rgbs, t_starts, t_ends, starts, counts, opaque_last, *rest) -> None:
        self.lib.vr_backward(*(t.data_ptr() for t in (sigmas, rgbs, t_starts, t_ends, starts, counts)), len(counts),
                             rgbs.shape[1], int(opaque_last), *(t.data_ptr() for t in rest), torch.get_num_threads())


def _fused_backend(sigmas: Tensor, rgbs: Tensor, t_starts: Tensor, t_ends: Tensor):
    """The kernels that render these tensors (:class:`FusedRender`'s backend), or None for the
    PyTorch path: float32, ``(n,)`` and ``(n, C)``, interval ends without a gradient; Triton on a
    GPU, ``_volume_cpu.c`` on the CPU for at most :data:`MAX_COMPILED_CHANNELS` channels."""
    tensors = (sigmas, rgbs, t_starts, t_ends)
    if not (all(t.dtype == torch.float32 for t in tensors) and sigmas.dim() == 1 and rgbs.dim() == 2
            and not (t_starts.requires_grad or t_ends.requires_grad) and len({t.device for t in tensors}) == 1):
        return None
    if (kernels := _triton_for(sigmas)) is not None:
        return kernels
    if sigmas.device.type == "cpu" and rgbs.shape[1] <= MAX_COMPILED_CHANNELS and (lib := _COMPILED.load()):
        return _Compiled(lib)
    return None


def _triton_for(sigmas: Tensor):
    """:mod:`radfield.rendering.volume_triton` for samples on a GPU, else None (tests run it on the
    CPU under Triton's interpreter by replacing this function)."""
    return _TRITON.load() if sigmas.is_cuda else None


def composite(rgb: Tensor, opacity: Tensor, background: Tensor | None) -> Tensor:
    """``rgb + (1 - opacity) background`` (``rgb`` unchanged when ``background`` is None).
    Example: ``rgb = (0.5, 0, 0)``, opacity 0.5, white -> ``(1, 0.5, 0.5)``."""
    if background is None:
        return rgb
    return rgb + (1.0 - opacity)[:, None] * background
