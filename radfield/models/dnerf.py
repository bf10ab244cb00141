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
from radfield.fields.window import WindowedBands, check_window, window_alpha
from radfield.models.base import SceneInfo
from radfield.models.ngp import NGPModel
from radfield.samplers.samples import Samples


def ray_times(rays: Rays) -> Tensor:
    """``(n_rays,)`` the rays' times (0, the canonical frame, for rays without one)."""
    times = rays.get("times")
    return torch.zeros(len(rays), device=rays.origins.device) if times is None else times.float()


class DNeRFModel(NGPModel):
    section = "dnerf"
    near_gradient_on_captures = 0.0  # Floaters No More is not measured on this model

    @classmethod
    def configure(cls, config: RunConfig, scene: SceneInfo) -> None:
        if scene.time_range is None:
            raise RadfieldError(f"{config.data.path}: --model dnerf needs frames with a 'time' "
                                "(the D-NeRF format)")
        check_window("dnerf.coarse_to_fine", config.dnerf.coarse_to_fine)
        slices = config.dnerf.deformation.time_slices
        if slices == 1 or slices < 0:
            raise RadfieldError(f"dnerf.deformation.time_slices: 0 (no time-sliced grid) or at least 2, got {slices}")
        super().configure(config, scene)

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        self.coarse_to_fine = config.dnerf.coarse_to_fine
        self.coarse_to_fine_canonical = config.dnerf.coarse_to_fine_canonical

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

    def canonical_encodings(self) -> list[WindowedBands]:
        """The canonical field's position encodings: its hash grid and the time-sliced grid (or
        the positional encoding with the MLP backbone)."""
        f = self.field
        if f.backbone == "mlp":
            return [f.canonical.position_encoding]
        return [f.canonical.grid] + ([] if f.time_grid is None else [f.time_grid])

    def position_encodings(self) -> list[WindowedBands]:
        """The canonical field's and the deformation's position encodings (hash grids, or
        positional encodings with the MLP backbone)."""
        f = self.field
        return self.canonical_encodings() + [f.deform_grid if f.backbone == "hash" else f.position_encoding]

    def deformation_encodings(self) -> list[WindowedBands]:
        """The encodings that ``dnerf.coarse_to_fine`` windows: the deformation's position
        encoding, and the canonical field's with ``coarse_to_fine_canonical``."""
        encodings = self.position_encodings()
        return encodings if self.coarse_to_fine_canonical else encodings[-1:]

    def schedule(self, progress: float) -> None:
        """Nerfies' coarse-to-fine deformation (``dnerf.coarse_to_fine``); a pose-refinement
        window on the same encodings applies too, the narrower of the two winning."""
        alpha = window_alpha(progress, self.coarse_to_fine)
        if alpha is not None:
            for encoding in self.deformation_encodings():
                encoding.set_window(alpha, "deformation")

    def occlusion_density(self, rays: Rays):
        times = ray_times(rays)
        return lambda x, ray_indices: self.field.density_at(x, times[ray_indices])
