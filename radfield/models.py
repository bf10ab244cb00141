"""Models: a field plus the sampler that feeds it, built from a :class:`RunConfig`.

Every model offers the same small surface to training, evaluation and export:

* ``field``: a :class:`radfield.fields.base.RadianceField`;
* ``sample(rays, training, generator) -> Samples``: packed samples for a batch of rays;
* ``update(step, generator)``: the sampler's own periodic bookkeeping (e.g. the occupancy grid);
* ``param_groups(train_config)``: optimiser parameter groups.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.config import MODELS, RunConfig, TrainConfig
from radfield.errors import RadfieldError
from radfield.fields.ngp import NGPField
from radfield.samplers.occupancy import OccupancyGrid, Samples


class NGPModel(nn.Module):
    """Instant-NGP: hash-grid field sampled through an occupancy grid."""

    def __init__(self, config: RunConfig, aabb: Tensor):
        super().__init__()
        self.field = NGPField(aabb, config.field)
        self.grid = OccupancyGrid(aabb, config.grid)

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        sigma_fn = (lambda x, _ri: self.field.density(x)) if early_stop else None
        return self.grid.sample(rays, jitter=training, jitter_generator=generator, sigma_fn=sigma_fn)

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        if step % self.grid.config.update_every == 0:
            self.grid.update(self.field.density, generator=generator)

    def param_groups(self, train: TrainConfig) -> list[dict]:
        return self.field.param_groups(train.lr, train.weight_decay)


def build_model(config: RunConfig, aabb: Tensor) -> nn.Module:
    if config.model not in MODELS:
        raise RadfieldError(f"unknown model {config.model!r} (choose from: {', '.join(MODELS)})")
    return {"ngp": NGPModel}[config.model](config, aabb)
