"""Instant-NGP: the hash-grid field sampled through an occupancy grid."""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import OptimConfig, RunConfig
from radfield.fields.hashgrid import HashGridConfig
from radfield.fields.ngp import NGPField
from radfield.fields.window import WindowedBands
from radfield.models.base import Model, SceneInfo
from radfield.rendering.pipeline import prune_occluded
from radfield.samplers.occupancy import OccupancyGrid, footprint_steps, resolve_config
from radfield.samplers.samples import Samples


ROI_MAX_RESOLUTION = 512
"""The auto finest hash-grid level across the region of interest (``ngp.grid.max_resolution = 0``).
Instant-NGP's 2048 suits 800 px images; at 200 px, 5 minutes on two CPU cores reached 29.46 dB on
tabletop with 512 against 28.17 with 2048 (``bench/RESULTS.md``)."""


class NGPModel(Model):
    section = "ngp"
    """The config section this model reads (subclasses with their own section change it)."""

    @classmethod
    def configure(cls, config: RunConfig, scene: SceneInfo) -> None:
        """The occupancy grid's ``cascades`` and ``cone_angle`` for the scene's ``aabb_scale``, an
        automatic ``steps_per_diagonal`` for the training cameras' resolution, and an automatic
        ``grid.max_resolution`` (0): :data:`ROI_MAX_RESOLUTION` times ``aabb_scale``."""
        cfg = getattr(config, cls.section)
        cfg.occupancy = resolve_config(cfg.occupancy, scene.aabb_scale)
        if isinstance(getattr(cfg, "grid", None), HashGridConfig) and cfg.grid.max_resolution == 0:
            cfg.grid.max_resolution = int(round(ROI_MAX_RESOLUTION * scene.aabb_scale))
        if cfg.occupancy.steps_per_diagonal == 0 and scene.cameras is not None:
            cfg.occupancy.steps_per_diagonal = footprint_steps(scene.cameras, scene.aabb, scene.aabb_scale,
                                                               cfg.occupancy.cascades)

    @classmethod
    def is_capture(cls, config: RunConfig, scene: SceneInfo) -> bool:
        """A box larger than the region of interest (``aabb_scale`` > 1)."""
        return scene.aabb_scale > 1

    near_gradient_on_captures = 1.0
    """Floaters No More on captures: garden through a wide lens as an Instant-NGP capture
    (``aabb_scale`` 4), 10 minutes: 23.31 dB without it (a haze of the grass's colour in front of
    the cameras), 29.64 with 1 radius, 28.15 with 0.5 (``bench/RESULTS.md``, 2026-12-06; the voxel
    grid and D-NeRF: 0, not measured)."""

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg = getattr(config, self.section)
        self.field = self.make_field(cfg)
        self.grid = OccupancyGrid(self.aabb, cfg.occupancy, scene.aabb_scale)
        if scene.cameras is not None and cfg.occupancy.skip_unseen:
            self.grid.mark_seen(scene.cameras)

    def make_field(self, config) -> NGPField:
        return NGPField(self.aabb, config)

    def occlusion_density(self, rays: Rays):
        """``(positions, ray_indices) -> (densities, hash encodings)`` of the early-termination
        pass: the kept samples carry their encodings (:attr:`Samples.features`), which
        :meth:`field_inputs` hands the training pass, so the grid is read once per sample. A
        field without ``density_and_encoding`` gives its densities alone."""
        density = getattr(self.field, "density_and_encoding", self.field.density)
        return lambda x, _ray_indices: density(x)

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(positions, directions)``, and the samples' hash encodings when the
        early-termination pass left them (:meth:`NGPField.raw`)."""
        inputs = super().field_inputs(rays, samples)
        return inputs if samples.features is None else inputs + (samples.features,)

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        samples = self.grid.sample(rays, jitter=training, jitter_generator=generator)
        if early_stop:
            samples = prune_occluded(rays, samples, self.occlusion_density(rays),
                                     self.grid.config.early_stop_eps, self.grid.config.early_stop_round)
        return samples

    def widened_sampling(self, distance: float):
        """The occupancy grid grown by ``distance`` (:meth:`OccupancyGrid.widened`)."""
        return self.grid.widened(distance)

    def position_encodings(self) -> list[WindowedBands]:
        """The hash grid (its levels)."""
        return [self.field.grid]

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        if step % self.grid.config.update_every == 0:
            self.grid.update(self.field.density, generator=generator)

    def log_scalars(self) -> dict[str, float]:
        return {"occupancy": self.grid.occupancy_fraction()}

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        groups = self.field.param_groups(optim.lr, optim.weight_decay)
        if self.background is not None:
            groups.append({"params": list(self.background.parameters()), "lr": optim.lr,
                           "weight_decay": optim.weight_decay})
        return groups
