"""Instant-NGP: the hash-grid field sampled through an occupancy grid."""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import RunConfig, TrainConfig
from radfield.fields.ngp import NGPField
from radfield.models.base import Model
from radfield.samplers.occupancy import OccupancyGrid
from radfield.samplers.samples import Samples


class NGPModel(Model):
    def __init__(self, config: RunConfig, aabb: Tensor, n_images: int = 0):
        super().__init__(config, aabb)
        self.field = NGPField(aabb, config.ngp)
        self.grid = OccupancyGrid(aabb, config.grid)

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        sigma_fn = (lambda x, _ri: self.field.density(x)) if early_stop else None
        return self.grid.sample(rays, jitter=training, jitter_generator=generator, sigma_fn=sigma_fn)

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        if step % self.grid.config.update_every == 0:
            self.grid.update(self.field.density, generator=generator)

    def param_groups(self, train: TrainConfig) -> list[dict]:
        groups = self.field.param_groups(train.lr, train.weight_decay)
        if self.background is not None:
            groups.append({"params": list(self.background.parameters()), "lr": train.lr,
                           "weight_decay": train.weight_decay})
        return groups
