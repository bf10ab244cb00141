"""The one render path: a model, rays and their samples -> pixels.

``field -> activations -> volume rendering -> shading -> background``, in :func:`render_samples`
(shading is the model's, per ray: the identity but for deferred shading, MeRF's). Training
(the baseline and the HSM step), the earlier levels of hierarchical models, image rendering,
evaluation and pose-fitting protocols all call it, so a change to any stage reaches every one of
them. Backgrounds are resolved by :func:`radfield.rendering.backgrounds.ray_background`.

No-grad renders of whole images take :func:`render_samples_in_rounds`, the same stages with
early ray termination folded in (Instant-NGP's compacted marching): each ray's samples are
evaluated a few at a time and a ray stops once its transmittance falls to ``eps``, so samples
behind a surface are never evaluated, and no sample is evaluated twice.
"""

from __future__ import annotations

import ctypes
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.native import NativeLibrary
from radfield.rendering.volume import RenderOutput, composite, ray_offsets, render, render_weights
from radfield.samplers.samples import Samples


def field_raw(model, rays: Rays, samples: Samples, field=None) -> Tensor:
    """``(n_samples, C)`` pre-activation outputs of ``field`` (default ``model.field``)."""
    field = model.field if field is None else field
    return field.raw(*model.field_inputs(rays, samples))


COLOUR_EPS = 1e-5
"""Renders in rounds do not colour a sample whose weight is at most this (fields with
``density_then_colour``): its weight counts in the opacity and depth, its colour in no pixel, so
a pixel's colour is off by at most this times its samples (``bench/RESULTS.md``)."""


def field_staged(model, rays: Rays, samples: Samples):
    """``model.field.density_then_colour(*model.field_inputs(...))`` (``(sigma, colour(index))``,
    :meth:`radfield.fields.ngp.NGPField.density_then_colour`), or None for fields without it."""
    staged = getattr(model.field, "density_then_colour", None)
    return None if staged is None else staged(*model.field_inputs(rays, samples))


def render_samples(model, rays: Rays, samples: Samples, background: Tensor | None, *,
                   raw: Tensor | None = None, field=None) -> RenderOutput:
    """Render ``samples`` of ``rays`` through ``model``.

    Args:
        model: a :class:`radfield.models.Model` (its ``field_inputs`` and ``opaque_last``).
        background: ``(3,)`` or ``(n_rays, 3)`` colour behind the last sample (from
            :func:`~radfield.rendering.backgrounds.ray_background`), or None for none.
        raw: the field's pre-activation outputs when the caller has them already (the HSM step
            passes the leaf it differentiates); otherwise the field is evaluated here.
        field: the network to evaluate and activate (default ``model.field``; hierarchical
            models pass their coarse network for the coarse level).
    """
    field = model.field if field is None else field
    if raw is None:
        raw = field_raw(model, rays, samples, field)
    sigma, values = field.activate(raw.float())
    out = render(sigma, values, samples.t_starts, samples.t_ends, samples.ray_indices, samples.n_rays,
                 None, model.opaque_last)
    rgb = model.shade(rays, out.rgb, out.opacity)
    return RenderOutput(composite(rgb, out.opacity, background), out.opacity, out.depth, out.weights)


@torch.no_grad()
def prune_occluded(rays: Rays, samples: Samples,
                   sigma_fn: Callable[[Tensor, Tensor], Tensor | tuple[Tensor, Tensor]],
                   eps: float = 1e-4, first_round: int = 0) -> Samples:
    """Early ray termination: the samples in front of the point where the transmittance
    ``T_i = exp(-sum_{k<i} sigma_k delta_k)`` falls to ``eps`` or below, from a no-grad density
    pass ``sigma_fn(positions (n_samples, 3), ray_indices (n_samples,)) -> (n_samples,)``. A
    ``sigma_fn`` that returns ``(sigmas, features)`` hands the kept samples their ``features``
    (:attr:`Samples.features`: what the training pass may reuse). The result's ``n_marched``
    is ``len(samples)``.

    ``first_round`` 0: one pass over every sample. ``first_round = K > 0``: the pass runs in
    rounds, as renders do (:func:`render_samples_in_rounds`): round 0 evaluates each ray's first
    ``K`` samples, round ``r`` the next ``K 2^(r-1)`` of the rays still unterminated, so the
    samples behind a terminated ray's surface are never evaluated. Same samples kept either way
    (the optical depths are summed in float64 both ways; only their summation order differs).

    Example: one ray of samples with ``sigma delta = 5`` each and ``eps = 1e-4``: ``T`` is 1,
    ``e^-5 = 6.7e-3``, ``e^-10 = 4.5e-5``: the first two samples are kept. With ``first_round``
    8 and 40 such samples, one round of 8 evaluations decides it (the one-pass way evaluates 40).
    """
    if len(samples) == 0:
        return samples
    if first_round > 0:
        return _prune_in_rounds(rays, samples, sigma_fn, eps, first_round)
    sigmas = sigma_fn(samples.positions(rays).detach(), samples.ray_indices)
    if isinstance(sigmas, tuple):
        sigmas, features = sigmas
        samples = replace(samples, features=features)
    _, trans, _ = render_weights(sigmas.float(), samples.t_starts, samples.t_ends, samples.ray_indices,
                                 samples.n_rays)
    return replace(samples.select(trans > eps), n_marched=len(samples))


def _round_block(counts: Tensor, offsets: Tensor, active: Tensor, first: int, size: int) -> tuple[Tensor, Tensor]:
    """One round's block of samples: ``valid`` ``(A, size)``, which of samples ``first ..
    first + size - 1`` of each ``active`` ray exist, and ``index``, the packed indices of those
    that do (ray by ray, in order)."""
    j = first + torch.arange(size, device=counts.device)
    valid = j < counts[active][:, None]
    return valid, (offsets[active][:, None] + j)[valid]


def _prune_in_rounds(rays: Rays, samples: Samples, sigma_fn, eps: float, first_round: int) -> Samples:
    """:func:`prune_occluded` in rounds of ``first_round``, then doubling, samples per ray. On the
    CPU each round's bookkeeping runs compiled (``_composite_cpu.c``'s ``prune_round``, a loop
    over the round's samples; PyTorch's version, on whole ``(rays, K)`` blocks, elsewhere)."""
    n_rays, device = samples.n_rays, samples.t_starts.device
    counts, offsets = ray_offsets(samples.ray_indices, n_rays)
    optical = torch.zeros(n_rays, dtype=torch.float64, device=device)  # each ray's optical depth so far
    keep = torch.zeros(len(samples), dtype=torch.bool, device=device)
    features = None  # (n_samples, C), written at the rows evaluated
    positions = samples.positions(rays).detach()  # every marched sample's, in one pass
    lengths = (samples.t_ends - samples.t_starts).float().contiguous()
    lib = _COMPOSITOR.load() if device.type == "cpu" else None
    active = (counts > 0).nonzero()[:, 0].contiguous()
    first, size = 0, first_round
    valid, index = _round_block(counts, offsets, active, first, size)
    state = (counts, offsets, lengths, optical, keep, eps)
    while len(index):
        sigmas = sigma_fn(positions.index_select(0, index), samples.ray_indices.index_select(0, index))
        if isinstance(sigmas, tuple):
            sigmas, feats = sigmas
            if features is None:
                features = feats.new_empty(len(samples), feats.shape[1])
            features.index_copy_(0, index, feats)
        if lib is not None:
            active, index = _prune_round_compiled(lib, sigmas, active, first, size, *state)
        else:
            active, valid, index = _prune_round_blocks(sigmas, active, first, size, valid, index, *state)
        first += size
        size *= 2
    kept = samples if features is None else replace(samples, features=features)
    return replace(kept.select(keep), n_marched=len(samples))


def _prune_round_compiled(lib, sigmas: Tensor, active: Tensor, first: int, size: int, counts: Tensor,
                          offsets: Tensor, lengths: Tensor, optical: Tensor, keep: Tensor, eps: float
                          ) -> tuple[Tensor, Tensor]:
    """One round of :func:`_prune_in_rounds` by ``_composite_cpu.c``: ``keep`` and ``optical``
    updated in place; returns the rays still active and the next round's block of samples."""
    sigma = sigmas.float().contiguous()
    next_index = torch.empty(min(len(active) * 2 * size, len(keep)), dtype=torch.int64)
    sizes = torch.zeros(2, dtype=torch.int64)
    lib.prune_round(sigma.data_ptr(), lengths.data_ptr(), offsets.data_ptr(), counts.data_ptr(), active.data_ptr(),
                    len(active), first, size, optical.data_ptr(), keep.view(torch.uint8).data_ptr(), eps,
                    next_index.data_ptr(), sizes.data_ptr())
    n_active, n_next = sizes.tolist()
    return active[:n_active], next_index[:n_next]


def _prune_round_blocks(sigmas: Tensor, active: Tensor, first: int, size: int, valid: Tensor, index: Tensor,
                        counts: Tensor, offsets: Tensor, lengths: Tensor, optical: Tensor, keep: Tensor,
                        eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_prune_round_compiled` in PyTorch, on the round's ``(A, K)`` block of the
    ``active`` rays (``valid``: which of its entries are the samples ``index``); returns the next
    round's ``(active, valid, index)``."""
    tau = torch.zeros(valid.shape, dtype=torch.float64, device=optical.device)
    tau[valid] = (sigmas.float() * lengths.index_select(0, index)).clamp(max=1e3).double()
    ahead = optical[active][:, None] + torch.cumsum(tau, 1) - tau          # exclusive, per ray
    keep[index] = torch.exp(-ahead.float())[valid] > eps
    optical[active] += tau.sum(1)
    active = active[(torch.exp(-optical[active].float()) > eps) & (counts[active] > first + size)]
    return (active, *_round_block(counts, offsets, active, first + size, 2 * size))


_COMPOSITOR = NativeLibrary(Path(__file__).with_name("_composite_cpu.c"), {
    "composite_round": [ctypes.c_void_p] * 5 + [ctypes.c_int64, ctypes.c_float] + [ctypes.c_void_p] * 4,
    "prune_round": [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + [ctypes.c_float]
    + [ctypes.c_void_p] * 2,
}, "compositing CPU kernel", "the PyTorch compositing")


def _composite_compiled(lib, sigma: Tensor, part: Samples, is_last: Tensor | None, eps: float,
                        trans: Tensor, opacity: Tensor, depth: Tensor) -> Tensor:
    """One round of :func:`render_samples_in_rounds`'s compositing by ``_composite_cpu.c``: the
    ``(n,)`` weights of ``part``'s samples; ``trans``, ``opacity`` and ``depth`` updated in place."""
    args = [t.float().contiguous() for t in (sigma, part.t_starts, part.t_ends)]
    rays = part.ray_indices.contiguous()
    last = None if is_last is None else is_last.contiguous().view(torch.uint8)
    w = torch.empty(len(rays))
    lib.composite_round(*(a.data_ptr() for a in args), rays.data_ptr(), None if last is None else last.data_ptr(),
                        len(rays), eps, trans.data_ptr(), opacity.data_ptr(), depth.data_ptr(), w.data_ptr())
    return w


def _composite_blocks(sigma: Tensor, part: Samples, is_last: Tensor | None, eps: float, valid: Tensor,
                      active: Tensor, trans: Tensor, opacity: Tensor, depth: Tensor) -> Tensor:
    """:func:`_composite_compiled` in PyTorch, on the round's ``(A, K)`` block of the ``active``
    rays (``valid``: which of its entries are ``part``'s samples)."""
    tau = torch.zeros(valid.shape, device=sigma.device)
    tau[valid] = (sigma * (part.t_ends - part.t_starts)).clamp(max=1e3)
    alpha = 1.0 - torch.exp(-tau)
    if is_last is not None:
        alpha[valid] = torch.where(is_last, 1.0, alpha[valid])
    t_in = trans[active][:, None] * torch.exp(-(torch.cumsum(tau, 1) - tau))
    w = torch.where(valid & (t_in > eps), t_in * alpha, 0.0)
    w_part = w[valid]
    depth.index_add_(0, part.ray_indices, w_part * (part.t_starts + part.t_ends) / 2)
    opacity[active] += w.sum(1)
    trans[active] = t_in[:, -1] * (1.0 - alpha[:, -1])
    return w_part


@torch.no_grad()
def render_samples_in_rounds(model, rays: Rays, samples: Samples, background: Tensor | None, *,
                             eps: float = 1e-4, round_size: int = 8, normals: bool = False,
                             colour_eps: float = COLOUR_EPS) -> tuple[RenderOutput, Tensor | None]:
    """What ``render_samples(model, rays, prune_occluded(rays, samples, density, eps), ...)``
    gives, without evaluating the samples behind the termination point, and each sample once.

    Round ``k`` evaluates samples ``k K .. (k + 1) K - 1`` (``K = round_size``) of every ray
    still active, through the field and its activation; a sample counts when the transmittance
    in front of it exceeds ``eps`` (as in :func:`prune_occluded`); a ray leaves once its
    transmittance is at or below ``eps`` or its samples are spent. ``samples`` are all of each
    ray's samples, unpruned (``model.sample(..., early_stop=False)``). Returns the output, whose
    ``weights`` are empty (the samples' weights are not kept), and with ``normals=True`` the
    rays' weighted normals ``sum_i w_i n_i`` ``(n_rays, 3)`` of ``model.normals`` (None for
    models without normals, and without ``normals``). Differences from the two-pass render: the
    opaque last interval (``model.opaque_last``) is each ray's last sample, not its last sample
    before termination (at most ``eps`` of a ray's colour); fields with ``density_then_colour``
    (:func:`field_staged`) colour only the samples of weight above ``colour_eps`` (the others'
    colours are off by at most ``colour_eps`` a sample; 0 colours every one that counts); and
    summation order. On the CPU each round's compositing runs compiled (``_composite_cpu.c``, a
    loop over the round's samples; PyTorch's version, on whole ``(rays, K)`` blocks, elsewhere).

    Example: one ray of 40 samples with ``sigma delta = 5`` each, ``K = 8``: round 0 evaluates
    8 samples, two of them count (``T = 1, e^-5``; the third has ``T = e^-10 < 1e-4``), and the
    ray leaves: 8 evaluations instead of the two-pass render's 40 + 2. (K = 8 rendered a trained
    tabletop 1.15x faster than 16 and 1.2x faster than 4, ``bench/RESULTS.md``.)
    """
    if len(samples) == 0:
        out = render_samples(model, rays, samples, background)
        return out, (out.rgb.new_zeros(samples.n_rays, 3) if normals and model.normals(rays, samples) is not None
                     else None)
    field = model.field
    n_rays, device = samples.n_rays, samples.t_starts.device
    counts, offsets = ray_offsets(samples.ray_indices, n_rays)
    trans = torch.ones(n_rays, device=device)
    opacity = torch.zeros(n_rays, device=device)
    depth = torch.zeros(n_rays, device=device)
    values, normal_sum = None, None
    last = offsets + counts - 1  # each ray's last sample (the opaque one with opaque_last)
    active = (counts > 0).nonzero()[:, 0]
    first = 0
    while len(active):
        valid, index = _round_block(counts, offsets, active, first, round_size)  # (A, K), (n,)
        part = samples.select(index)
        staged = field_staged(model, rays, part)
        if staged is None:
            sigma, v = field.activate(field_raw(model, rays, part, field).float())
        else:
            sigma, colour = staged
        is_last = index == last[part.ray_indices] if model.opaque_last else None
        lib = _COMPOSITOR.load() if sigma.device.type == "cpu" and trans.dtype == torch.float32 else None
        if lib is not None:  # the compiled round: weights, and the rays' state updated in place
            w_part = _composite_compiled(lib, sigma, part, is_last, eps, trans, opacity, depth)
        else:
            w_part = _composite_blocks(sigma, part, is_last, eps, valid, active, trans, opacity, depth)
        ray_of, w_of = part.ray_indices, w_part
        if staged is not None:  # colour only the samples that count
            keep = (w_part > colour_eps).nonzero()[:, 0]
            v, ray_of, w_of = colour(keep), ray_of[keep], w_part[keep]
        if values is None:
            values = torch.zeros(n_rays, v.shape[-1], device=device)
        values.index_add_(0, ray_of, w_of[:, None] * v)
        if normals:
            n = model.normals(rays, part)
            if n is None:
                normals = False
            else:
                normal_sum = torch.zeros(n_rays, 3, device=device) if normal_sum is None else normal_sum
                normal_sum.index_add_(0, part.ray_indices, w_part[:, None] * n)
        first += round_size
        active = active[(trans[active] > eps) & (counts[active] > first)]
    rgb = model.shade(rays, values, opacity)
    return RenderOutput(composite(rgb, opacity, background), opacity, depth, opacity.new_zeros(0)), normal_sum
