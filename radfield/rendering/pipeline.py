"""The one render path: a model, rays and their samples -> pixels.

``field -> activations -> volume rendering -> shading -> background``, in :func:`render_samples`
(shading is the model's, per ray: the identity but for deferred shading, MeRF's). Training
(the baseline and the HSM step), the earlier levels of hierarchical models, image rendering,
evaluation and pose-fitting protocols all call it, so a change to any stage reaches every one of
them. Backgrounds are resolved by :func:`radfield.rendering.backgrounds.ray_background`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.rendering.volume import RenderOutput, composite, render, render_weights
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
