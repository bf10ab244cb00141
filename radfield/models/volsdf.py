"""VolSDF: the signed-distance field of :mod:`radfield.fields.volsdf` behind coarse-to-fine
sampling, with the eikonal loss.

Sampling: VolSDF's error-bounded sampler is replaced by the NeRF family's coarse-to-fine
sampler (:class:`radfield.models.nerf.HierarchicalModel`: uniform samples in the scene box, then
inverse-CDF resampling of the coarse weights, both levels rendered by the same SDF field).
Because the density is an analytic function of the distance, the coarse weights already
concentrate at the zero level set once ``beta`` is small; the error bound's iterative search for
``beta`` costs several extra network passes per ray, which the CPU budget here cannot spend.

Background: with ``volsdf.background_field`` the space outside the scene box's bounding sphere is
a NeRF++ field (:class:`radfield.rendering.backgrounds.OutsideSphereBackground`), so captures
with a background (DTU, real scenes) do not push surface into the box to explain it.

Eikonal term: ``eikonal_weight * mean (|grad d| - 1)^2`` at ``eikonal_points`` of the batch's
final-level sample positions, an extra loss with its own graph (so hard sample mining keeps it
in full). The gradient is by autograd for the MLP backbone and by central differences (step: the
finest hash cell) for the hash backbone, whose kernel is differentiable once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import RunConfig
from radfield.errors import check_choice
from radfield.fields.volsdf import SDFField, eikonal_loss, sdf_gradient
from radfield.fields.window import WindowedBands
from radfield.models.base import SceneInfo
from radfield.models.nerf import HierarchicalModel
from radfield.rendering.backgrounds import OutsideSphereBackground
from radfield.samplers.samples import Samples

EIKONAL_GRADIENTS = ("auto", "autograd", "numerical")


class VolSDFModel(HierarchicalModel):
    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg = self.config = config.volsdf
        check_choice("volsdf.eikonal_gradient", cfg.eikonal_gradient, EIKONAL_GRADIENTS, "gradient")
        self.sampler = cfg.sampler
        self.field = SDFField(self.aabb, cfg.field)
        self.coarse_field = self.field
        if cfg.background_field:
            lo, hi = self.aabb[:3], self.aabb[3:]
            self.background = OutsideSphereBackground((lo + hi) / 2, float((hi - lo).norm() / 2),
                                                      cfg.background_samples)

    @property
    def eikonal_step(self) -> float | None:
        """None: autograd; else the central-difference step (world units)."""
        cfg = self.config
        numerical = cfg.eikonal_gradient == "numerical" or (
            cfg.eikonal_gradient == "auto" and cfg.field.backbone == "hash")
        if not numerical:
            return None
        return float(2 * self.field.half_size / cfg.field.grid.max_resolution)

    def extra_losses(self, rays: Rays, samples: Samples, raw: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.eikonal_weight == 0 or len(samples) == 0:
            return {}
        stride = max(len(samples) // cfg.eikonal_points, 1)
        x = samples.positions(rays)[::stride][:cfg.eikonal_points].detach()
        grad = sdf_gradient(self.field.sdf, x, self.eikonal_step)
        return {"eikonal": cfg.eikonal_weight * eikonal_loss(grad)}

    def normals(self, rays: Rays, samples: Samples) -> Tensor:
        """Outward unit normals ``grad d / |grad d|`` by central differences (no graph)."""
        x = samples.positions(rays).detach()
        step = self.eikonal_step or float(self.field.half_size) * 1e-3
        return torch.nn.functional.normalize(sdf_gradient(self.field.sdf, x, step), dim=-1)

    def level_set(self, level: float):
        """The surface is the SDF's zero level (``-d >= 0`` inside), whatever ``level``."""
        return (lambda x: -self.field.sdf(x)), 0.0

    def position_encodings(self) -> list[WindowedBands]:
        """The SDF's hash grid, or its positional encoding with the MLP backbone."""
        return [self.field.grid if self.config.field.backbone == "hash" else self.field.encoding]

    def log_scalars(self) -> dict[str, float]:
        return {"beta": self.field.beta.item()}
