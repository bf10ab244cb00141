"""D-NeRF, fast variant: the deformation + canonical hash-grid field
(:mod:`radfield.fields.dnerf`) sampled through an occupancy grid over all times (each update
takes each point's density at a random time).

The rays' per-ray ``times`` (from the dataset's frames) reach the field through
``field_inputs``; early ray termination uses the density at each ray's own time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import RunConfig
from radfield.errors import RadfieldError
from radfield.fields.dnerf import DNeRFField
from radfield.fields.window import WindowedBands
from radfield.models.base import SceneInfo
from radfield.models.ngp import NGPModel
from radfield.samplers.samples import Samples


def ray_times(rays: Rays) -> Tensor:
    """``(n_rays,)`` the rays' times (0, the canonical frame, for rays without one)."""
    times = rays.get("times")
    return torch.zeros(len(rays), device=rays.origins.device) if times is None else times.float()


class DNeRFModel(NGPModel):
    section = "dnerf"

    @classmethod
    def configure(cls, config: RunConfig, scene: SceneInfo) -> None:
        if scene.time_range is None:
            raise RadfieldError(f"{config.data.path}: --model dnerf needs frames with a 'time' "
                                "(the D-NeRF format)")
        super().configure(config, scene)

    def make_field(self, config) -> DNeRFField:
        return DNeRFField(self.aabb, config, self.scene.time_range or (0.0, 1.0))

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(positions, directions, times)`` per sample."""
        return samples.positions(rays), samples.directions(rays), ray_times(rays)[samples.ray_indices]

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        """The occupancy grid's update with each point's density at a random time
        (:meth:`DNeRFField.random_times`)."""
        if step % self.grid.config.update_every == 0:
            self.grid.update(lambda x: self.field.density_at(x, self.field.random_times(len(x), generator)),
                             generator=generator)

    def position_encodings(self) -> list[WindowedBands]:
        """The canonical field's and the deformation's position encodings (hash grids, or
        positional encodings with the MLP backbone)."""
        f = self.field
        if f.backbone == "hash":
            return [f.canonical.grid, f.deform_grid]
        return [f.canonical.position_encoding, f.position_encoding]

    def occlusion_density(self, rays: Rays):
        times = ray_times(rays)
        return lambda x, ray_indices: self.field.density_at(x, times[ray_indices])
