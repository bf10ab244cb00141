"""MeRF (:mod:`radfield.fields.merf`) trained under nerfacto's proposal pipeline, and the
renderer of its baked form.

* :class:`MerfModel`: the proposal sampler of :class:`radfield.models.nerfacto.NerfactoModel`
  (scene contraction, spacing function, interlevel and distortion losses; inside the box on
  RGBA data) around the MeRF field; its own space is the unit cube of the contracted scene, or
  of the box itself when the scene is bounded (so no grid cell is spent outside the box).
  ``shade`` is MeRF's deferred shading, once per ray.
* :class:`BakedMerfModel`: the same field read from baked bytes (``radfield export baked``,
  :mod:`radfield.export.baked`), with a sampler of its own (no proposal networks are baked):
  ``n_coarse`` bins uniform in the spacing coordinate ``s``, their weights under the baked
  density, ``n_fine`` more resampled from them (inverse CDF), the field evaluated on the union.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.config import OptimConfig
from radfield.fields.merf import BakedMerfField, MerfField, table_parameters
from radfield.models.base import Model, SceneInfo
from radfield.models.nerfacto import NerfactoModel, SceneFrame, ray_bounds
from radfield.rendering.volume import render_weights
from radfield.samplers.proposal import s_to_t, sample_pdf, uniform_bins
from radfield.samplers.samples import Samples, packed_from_bins


class MerfModel(NerfactoModel):
    section = "merf"
    near_gradient_on_captures = 0.0  # Floaters No More is not measured on MeRF

    def scene_frame(self, scene: SceneInfo) -> SceneFrame:
        """The box frame, as the bake's sampler (``BakedMerfModel``) measures the scene."""
        return self.box_frame()

    def make_field(self, cfg, scene: SceneInfo) -> MerfField:
        return MerfField(self.aabb, cfg.field, cfg.bounded, cfg.contraction)

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        return samples.positions(rays), samples.directions(rays)

    def shade(self, rays: Rays, values: Tensor, opacity: Tensor) -> Tensor:
        return self.field.shader(values, opacity, rays.directions)

    def appearance_codes(self) -> Tensor | None:
        return None

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        """The grid's and planes' tables at ``grid_lr``, the proposals' hash grids at ``optim.lr``
        (no weight decay), the shader and the proposals' MLPs with weight decay."""
        proposal_grids = [p for prop in self.proposals for p in prop.grid.parameters()]
        mlps = [self.field.shader] + [prop.mlp for prop in self.proposals]
        return [{"params": table_parameters(self.field), "lr": self.config.grid_lr, "weight_decay": 0.0},
                {"params": proposal_grids, "lr": optim.lr, "weight_decay": 0.0}] + self.mlp_param_groups(mlps, optim)


class BakedMerfModel(Model):
    """A baked MeRF behind the model surface, for rendering and evaluation only.

    Args:
        field: the baked field.
        shader: the deferred shader (the baked MLP weights).
        sampler: ``{"bounded", "spacing", "near", "far", "unit", "coarse_samples", "fine_samples"}``
            (``near`` and ``far`` in ``unit`` lengths).
        opaque_last: the run's ``last_sample`` background.
    """

    def __init__(self, field: BakedMerfField, shader: nn.Module, sampler: dict, opaque_last: bool = False):
        nn.Module.__init__(self)  # no RunConfig: everything comes from the baked description
        aabb = field.to_unit.aabb
        self.scene = SceneInfo(aabb.detach().cpu().clone())
        self.register_buffer("aabb", aabb.clone())
        self.field, self.shader, self.sampler = field, shader, dict(sampler)
        self.background, self.opaque_last = None, bool(opaque_last)

    @property
    def spacing(self) -> str:
        return "linear" if self.sampler["bounded"] else self.sampler["spacing"]

    @torch.no_grad()
    def sample(self, rays: Rays, training: bool = False, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        cfg, n_rays = self.sampler, len(rays)
        near, far = ray_bounds(rays, self.aabb, cfg["bounded"], cfg["near"], cfg["far"], cfg["unit"])
        t, s = uniform_bins(near, far, cfg["coarse_samples"], self.spacing)
        coarse = packed_from_bins(t)
        sigma = self.field.density(coarse.positions(rays))
        w = render_weights(sigma, coarse.t_starts, coarse.t_ends, coarse.ray_indices, n_rays)[0]
        s_fine = sample_pdf(s, w.view(n_rays, -1), cfg["fine_samples"])
        s = torch.sort(torch.cat([s, s_fine[:, 1:-1]], dim=-1), dim=-1).values
        return packed_from_bins(s_to_t(s, near, far, self.spacing), s)

    def shade(self, rays: Rays, values: Tensor, opacity: Tensor) -> Tensor:
        return self.shader(values, opacity, rays.directions)

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        return []
