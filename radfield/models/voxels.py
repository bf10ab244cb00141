"""DVGO's voxel grids (:mod:`radfield.fields.voxels`) sampled through Instant-NGP's occupancy grid
(free-space skipping and early ray termination, as ``ngp``), growing coarse to fine, with a
total-variation term.

* Growth: :meth:`VoxelsModel.grow` resamples the grids at each of ``voxels.upsample_steps``
  (absolute steps, so a resumed or time-limited run grows at the same steps); the trainer then
  rebuilds its optimiser (the grids' Adam state starts afresh, the MLP's is kept). A checkpoint
  holds the grids at their current shape, and loading it takes that shape.
* Total variation: ``tv_density * TV(density grid) + tv_features * TV(feature grid)`` over the
  cells holding ``tv_points`` of the batch's samples (every ``B / tv_points``-th), or over the
  whole grids (``tv_points = 0``): an extra loss on the field with its own graph, which both
  training steps (``--hsm`` included) back-propagate in full.
* Dynamic scenes (frames with a ``time``, the D-NeRF format): the grids are 4D over ``(x, t)``
  (``time_slices``, auto 8), rays bring their times to the field and to early termination, and
  the occupancy grid holds the density's maximum over time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import OptimConfig, RunConfig
from radfield.errors import RadfieldError
from radfield.fields.voxels import VoxelField
from radfield.models.base import SceneInfo
from radfield.models.dnerf import ray_times
from radfield.models.ngp import NGPModel
from radfield.samplers.samples import Samples

DYNAMIC_TIME_SLICES = 8
"""``voxels.time_slices = 0`` (auto) on data with frame times."""


class VoxelsModel(NGPModel):
    section = "voxels"
    near_gradient_on_captures = 0.0  # Floaters No More is not measured on this model

    @classmethod
    def configure(cls, config: RunConfig, scene: SceneInfo) -> None:
        """The occupancy grid (as ``ngp``) and ``time_slices``: 0 -> 8 on data with frame
        times, 1 otherwise; more than one slice without frame times is an error."""
        super().configure(config, scene)
        cfg = config.voxels
        if cfg.time_slices == 0:
            cfg.time_slices = DYNAMIC_TIME_SLICES if scene.time_range is not None else 1
        elif cfg.time_slices > 1 and scene.time_range is None:
            raise RadfieldError(f"voxels.time_slices={cfg.time_slices}: {config.data.path or 'the data'} has "
                                "no frame times (the D-NeRF format); use 0 or 1 for a static scene")

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        self.config = config.voxels

    def make_field(self, config) -> VoxelField:
        return VoxelField(self.aabb, config, self.scene.time_range)

    @property
    def dynamic(self) -> bool:
        return self.field.time_slices > 1

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(positions, directions)``, and the rays' ``times`` per sample for a dynamic grid."""
        inputs = samples.positions(rays), samples.directions(rays)
        return inputs + (ray_times(rays)[samples.ray_indices],) if self.dynamic else inputs

    def occlusion_density(self, rays: Rays):
        if not self.dynamic:
            return super().occlusion_density(rays)
        times = ray_times(rays)
        return lambda x, ray_indices: self.field.density_at(x, times[ray_indices])

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        """The occupancy grid's updates (as ``ngp``), from step ``occupancy_from`` on."""
        if step >= self.config.occupancy_from:
            super().update(step, generator)

    def grow(self, step: int) -> bool:
        return self.field.grow(step)

    def extra_losses(self, rays: Rays, samples: Samples, raw: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        if cfg.tv_density == 0 and cfg.tv_features == 0:
            return {}
        if cfg.tv_points == 0:
            tv_density, tv_features = self.field.total_variation(None)
        else:
            if len(samples) == 0:
                return {}
            stride = max(len(samples) // cfg.tv_points, 1)
            pick = torch.arange(0, len(samples), stride, device=samples.t_starts.device)[:cfg.tv_points]
            x = samples.positions(rays)[pick].detach()
            t = ray_times(rays)[samples.ray_indices[pick]] if self.dynamic else None
            tv_density, tv_features = self.field.total_variation(x, t)
        return {"tv": cfg.tv_density * tv_density + cfg.tv_features * tv_features}

    def log_scalars(self) -> dict[str, float]:
        return {**super().log_scalars(), "grid_vertices": float(self.field.density_grid.values[0, 0].numel())}

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        groups = self.field.param_groups(self.config.grid_lr, optim.lr, optim.weight_decay)
        if self.background is not None:
            groups.append({"params": list(self.background.parameters()), "lr": optim.lr,
                           "weight_decay": optim.weight_decay})
        return groups

