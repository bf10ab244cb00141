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

from typing import Callable

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.rendering.volume import (RenderOutput, composite, exclusive_sum_per_ray, ray_offsets, render,
                                      render_weights)
from radfield.samplers.samples import Samples


def field_raw(model, rays: Rays, samples: Samples, field=None) -> Tensor:
    """``(n_samples, C)`` pre-activation outputs of ``field`` (default ``model.field``)."""
    field = model.field if field is None else field
    return field.raw(*model.field_inputs(rays, samples))


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
def prune_occluded(rays: Rays, samples: Samples, sigma_fn: Callable[[Tensor, Tensor], Tensor],
                   eps: float = 1e-4) -> Samples:
    """Early ray termination: the samples in front of the point where the transmittance
    ``T_i = exp(-sum_{k<i} sigma_k delta_k)`` falls to ``eps`` or below, from a no-grad density
    pass ``sigma_fn(positions (n_samples, 3), ray_indices (n_samples,)) -> (n_samples,)``.

    Example: one ray of samples with ``sigma delta = 5`` each and ``eps = 1e-4``: ``T`` is 1,
    ``e^-5 = 6.7e-3``, ``e^-10 = 4.5e-5``: the first two samples are kept.
    """
    if len(samples) == 0:
        return samples
    sigmas = sigma_fn(samples.positions(rays).detach(), samples.ray_indices)
    _, trans, _ = render_weights(sigmas.float(), samples.t_starts, samples.t_ends, samples.ray_indices,
                                 samples.n_rays)
    return samples.select(trans > eps)


class PackedUnits:
    """Packed samples as the units of :func:`render_samples_in_rounds`, one sample each:
    ``counts`` / ``offsets`` per ray, ``take(index)`` the samples ``index``."""

    def __init__(self, samples: Samples, round_size: int = 16):
        self.samples, self.n_rays, self.round_size = samples, samples.n_rays, round_size
        self.counts, self.offsets = ray_offsets(samples.ray_indices, samples.n_rays)

    def take(self, index: Tensor) -> Samples:
        return self.samples.select(index)


@torch.no_grad()
def render_samples_in_rounds(model, rays: Rays, samples, background: Tensor | None, *,
                             eps: float = 1e-4, round_size: int | None = None,
                             normals: bool = False) -> tuple[RenderOutput, Tensor | None]:
    """What ``render_samples(model, rays, prune_occluded(rays, samples, density, eps), ...)``
    gives, without evaluating the samples behind the termination point, and each sample once.

    ``samples`` are all of each ray's samples, unpruned: packed :class:`Samples`
    (``model.sample(..., early_stop=False)``), or units that hand them out a few at a time
    (``counts``, ``offsets`` per ray, ``take(index) -> Samples``, ``round_size``: an occupancy
    grid's :class:`~radfield.samplers.occupancy.March`, whose units are segments of steps, so
    steps behind the termination point are not even marched). Round ``k`` takes units
    ``k K .. (k + 1) K - 1`` (``K = round_size``, default the units' own: 16 samples) of every
    ray still active, through the field and its activation; a sample counts when the
    transmittance in front of it exceeds ``eps`` (as in :func:`prune_occluded`); a ray leaves
    once its transmittance is at or below ``eps`` or its units are spent.

    Returns the output, whose ``weights`` are empty (the samples' weights are not kept), and with
    ``normals=True`` the rays' weighted normals ``sum_i w_i n_i`` ``(n_rays, 3)`` of
    ``model.normals`` (None for models without normals, and without ``normals``). Differences
    from the two-pass render: the opaque last interval (``model.opaque_last``, packed samples
    only) is each ray's last sample, not its last sample before termination (at most ``eps`` of
    a ray's colour); and summation order.

    Example: one ray of 40 samples with ``sigma delta = 5`` each, ``K = 16``: round 0 evaluates
    16 samples, two of them count (``T = 1, e^-5``; the third has ``T = e^-10 < 1e-4``), and the
    ray leaves: 16 evaluations instead of the two-pass render's 40 + 2.
    """
    units = PackedUnits(samples) if isinstance(samples, Samples) else samples
    if model.opaque_last and not isinstance(units, PackedUnits):
        raise ValueError("opaque_last needs each ray's last sample: render packed samples")
    n_rays, device = units.n_rays, units.counts.device
    field = model.field
    k = round_size or units.round_size
    trans = torch.ones(n_rays, device=device)
    opacity = torch.zeros(n_rays, device=device)
    depth = torch.zeros(n_rays, device=device)
    values, normal_sum = None, None
    last = units.offsets + units.counts - 1
    active = (units.counts > 0).nonzero()[:, 0]
    steps = torch.arange(k, device=device)
    first = 0
    while len(active):
        j = first + steps
        valid = j < units.counts[active][:, None]                          # (A, K)
        index = (units.offsets[active][:, None] + j)[valid]
        part = units.take(index)
        ri = part.ray_indices
        if len(part):
            sigma, v = field.activate(field_raw(model, rays, part, field).float())
            if values is None:
                values = torch.zeros(n_rays, v.shape[-1], device=device)
            tau = (sigma * (part.t_ends - part.t_starts)).clamp(max=1e3)
            if model.opaque_last:
                tau = torch.where(index == last[ri], 1e3, tau)  # alpha = 1
            alpha = 1.0 - torch.exp(-tau)
            t_in = trans[ri] * torch.exp(-exclusive_sum_per_ray(tau, ri, n_rays))
            w = torch.where(t_in > eps, t_in * alpha, 0.0)
            values.index_add_(0, ri, w[:, None] * v)
            depth.index_add_(0, ri, w * (part.t_starts + part.t_ends) / 2)
            opacity.index_add_(0, ri, w)
            if normals:
                n = model.normals(rays, part)
                if n is None:
                    normals = False
                else:
                    normal_sum = torch.zeros(n_rays, 3, device=device) if normal_sum is None else normal_sum
                    normal_sum.index_add_(0, ri, w[:, None] * n)
            trans *= torch.exp(-torch.zeros(n_rays, device=device).index_add_(0, ri, tau))
        first += k
        active = active[(trans[active] > eps) & (units.counts[active] > first)]
    if values is None:  # not one sample: the background, through the plain path
        empty = Samples(torch.zeros(0, device=device), torch.zeros(0, device=device),
                        torch.zeros(0, dtype=torch.long, device=device), n_rays)
        out = render_samples(model, rays, empty, background)
        has_normals = normals and model.normals(rays, empty) is not None
        return out, (out.rgb.new_zeros(n_rays, 3) if has_normals else None)
    rgb = model.shade(rays, values, opacity)
    return RenderOutput(composite(rgb, opacity, background), opacity, depth, opacity.new_zeros(0)), normal_sum
