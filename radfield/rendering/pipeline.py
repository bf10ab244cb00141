"""The one render path: a model, rays and their samples -> pixels.

``field -> activations -> volume rendering -> background``, in :func:`render_samples`. Training
(the baseline and the HSM step), the earlier levels of hierarchical models, image rendering,
evaluation and pose-fitting protocols all call it, so a change to any stage reaches every one of
them. Backgrounds are resolved by :func:`radfield.rendering.backgrounds.ray_background`.
"""

from __future__ import annotations

from torch import Tensor

from radfield.cameras import Rays
from radfield.rendering.volume import RenderOutput, render
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
    sigma, rgb = field.activate(raw.float())
    return render(sigma, rgb, samples.t_starts, samples.t_ends, samples.ray_indices, samples.n_rays,
                  background, model.opaque_last)
