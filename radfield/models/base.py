"""What every model offers training, evaluation and export (one surface for all of them).

A model is a field plus the sampler that feeds it:

* ``field``: a :class:`radfield.fields.base.RadianceField` (the network the HSM step mines);
* ``sample(rays, training, generator, early_stop) -> Samples``: packed samples of the final
  level; hierarchical samplers put their earlier levels (with graphs, when training) in
  ``samples.levels`` for the training loss;
* ``field_inputs(rays, samples) -> tuple``: the field's per-sample inputs, ``field.raw(*inputs)``;
* ``update(step, generator)``: the sampler's periodic bookkeeping (e.g. an occupancy grid);
* ``param_groups(train_config)``: optimiser parameter groups;
* ``background``: a learned background module or None; ``opaque_last``: the "last sample"
  background (the last interval of each ray is opaque);
* buffer ``aabb`` ``(6,)``: the scene box the model was built for.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.config import RunConfig, TrainConfig
from radfield.rendering.backgrounds import LearnedBackground, check_background
from radfield.samplers.samples import Samples


class Model(nn.Module):
    def __init__(self, config: RunConfig, aabb: Tensor):
        super().__init__()
        check_background(config.train.background)
        self.register_buffer("aabb", aabb.float().clone())
        self.background = LearnedBackground() if config.train.background == "learned" else None
        self.opaque_last = config.train.background == "last_sample"

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        raise NotImplementedError

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(positions (n_samples, 3), unit directions (n_samples, 3))``."""
        return samples.positions(rays), samples.directions(rays)

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        pass

    def mlp_param_groups(self, modules: list[nn.Module], train: TrainConfig) -> list[dict]:
        params = [p for m in modules for p in m.parameters()]
        if self.background is not None:
            params += list(self.background.parameters())
        return [{"params": params, "lr": train.lr, "weight_decay": train.weight_decay}]

    def param_groups(self, train: TrainConfig) -> list[dict]:
        raise NotImplementedError
