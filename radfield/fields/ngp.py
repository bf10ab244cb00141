"""The Instant-NGP field: hash grid -> density MLP -> (SH(d), features) -> colour MLP.

Shapes follow ``shared/specs/models.md``: 16 levels x 2 features -> density MLP (one hidden
layer of 64) -> 16 outputs (output 0 is the raw density, activated with ``trunc_exp``); the
colour MLP (two hidden layers of 64) takes the degree-4 SH encoding of the view direction (16)
and the 15 other density outputs and ends in a sigmoid. MLPs have no biases, as in
tiny-cuda-nn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from radfield.fields.base import trunc_exp
from radfield.fields.hashgrid import HashGrid, HashGridConfig
from radfield.fields.mlp import mlp
from radfield.fields.sh import sh_encode


@dataclass
class NGPFieldConfig:
    grid: HashGridConfig = field(default_factory=HashGridConfig)
    hidden: int = 64
    geo_features: int = 15
    color_layers: int = 2


class NGPField(nn.Module):
    """Instant-NGP radiance field over the box ``aabb`` (implements :class:`RadianceField`)."""

    def __init__(self, aabb: Tensor, config: NGPFieldConfig = NGPFieldConfig(), extra_features: int = 0):
        """``extra_features``: more inputs of the density MLP after the grid's (a subclass or an
        owner that calls :meth:`shade` with them, e.g. D-NeRF's time-sliced grid)."""
        super().__init__()
        self.config = config
        self.register_buffer("aabb", aabb.float().clone())
        self.grid = HashGrid(config.grid)
        n_enc = config.grid.n_levels * config.grid.features_per_level
        self.density_mlp = mlp(n_enc + extra_features, config.hidden, 1, 1 + config.geo_features)
        self.color_mlp = mlp(16 + config.geo_features, config.hidden, config.color_layers, 3)

    def normalise(self, positions: Tensor) -> Tensor:
        """Positions in the box ``aabb`` -> the grid's unit cube."""
        return (positions - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])

    def raw(self, positions: Tensor, directions: Tensor, encoding: Tensor | None = None) -> Tensor:
        """``encoding``: the positions' hash encoding from :meth:`density_and_encoding` over the
        same tables, reused (:meth:`HashGrid.forward`), or None."""
        return self.shade(self.grid(self.normalise(positions), encoding), directions)

    def shade(self, encoding: Tensor, directions: Tensor) -> Tensor:
        """``raw`` from the grid's features ``encoding`` ``(n, density_mlp's inputs)``."""
        h = self.density_mlp(encoding)
        return torch.cat([h[:, :1], self.colour_raw(h, directions)], dim=-1)

    def colour_raw(self, h: Tensor, directions: Tensor) -> Tensor:
        """``raw[:, 1:]`` from the density MLP's outputs ``h`` and the view directions."""
        return self.color_mlp(torch.cat([sh_encode(directions), h[:, 1:]], dim=-1))

    def density_then_colour(self, positions: Tensor, directions: Tensor, encoding: Tensor | None = None
                            ) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``activate(raw(...))`` in two stages, for renders that colour only the samples that
        count: ``(sigma (n,), colour)``, where ``colour(index)`` is the activated colour of the
        rows ``index`` ``(k,)``, equal to ``activate(raw(...))[1][index]``; the colour MLP runs
        on those rows only."""
        h = self.density_mlp(self.grid(self.normalise(positions), encoding))
        sigma = trunc_exp(h[:, 0].float())
        return sigma, lambda index: torch.sigmoid(self.colour_raw(h[index], directions[index]).float())

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return trunc_exp(raw[:, 0]), torch.sigmoid(raw[:, 1:])

    def density(self, positions: Tensor) -> Tensor:
        return self.density_of(self.grid(self.normalise(positions)))

    def density_and_encoding(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``(density (n,), encoding)``: the density and the hash grid's encoding of the
        positions before its window (:meth:`HashGrid.encode`), for :meth:`raw` to reuse."""
        encoding = self.grid.encode(self.normalise(positions))
        return self.density_of(self.grid.windowed(encoding)), encoding

    def density_of(self, encoding: Tensor) -> Tensor:
        """``density`` from the grid's features ``encoding``."""
        return trunc_exp(self.density_mlp(encoding)[:, 0])

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Adam groups: hash tables without weight decay (marked ``"tables"``: ``optim.sparse_tables``
        applies to them), MLPs with it (Instant-NGP)."""
        return [
            {"params": list(self.grid.parameters()), "lr": lr, "weight_decay": 0.0, "tables": True},
            {"params": list(self.density_mlp.parameters()) + list(self.color_mlp.parameters()),
             "lr": lr, "weight_decay": weight_decay},
        ]
