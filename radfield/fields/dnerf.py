"""D-NeRF (Pumarola et al. 2021), fast variant: a deformation field into a canonical field.

A point ``x`` seen at time ``t`` is moved to the canonical frame (the scene at ``t = 0``):
``x_c = x + dx(x, t)``, ``dx(x, 0) = 0`` exactly (as in the paper), and the canonical field is
evaluated at ``x_c``. Here both are hash-grid networks (the paper's are MLPs, which need hours):

* deformation: ``dx = MLP([hash_grid(x_n), PE(t)])``, ``x_n`` the box-normalised position, a
  small 3D hash grid and a positional encoding of ``t`` (frequencies ``2^0 .. 2^(L-1)``); the
  last layer starts at zero, so training starts from the static scene;
* canonical: the Instant-NGP field (:class:`radfield.fields.ngp.NGPField`).

Inputs ``raw(x (n, 3), d (n, 3), t (n,))``; outputs as every field's (``raw`` ``(n, 4)``,
``activate``). ``density(x)`` serves the occupancy grid of the moving scene: the maximum of the
density over ``occupancy_times`` times spread over the scene's time range, so the grid covers
the scene at every time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from radfield.fields.encodings import PositionalEncoding
from radfield.fields.hashgrid import HashGrid, HashGridConfig
from radfield.fields.ngp import NGPField, NGPFieldConfig, mlp


@dataclass
class DeformationConfig:
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_levels=8, log2_table_size=15, base_resolution=8, max_resolution=256))
    time_freqs: int = 6
    hidden: int = 64
    layers: int = 2
    occupancy_times: int = 4
    """Times at which the occupancy grid's density is taken (their maximum)."""


class DNeRFField(nn.Module):
    """``dx(x, t)`` into a canonical Instant-NGP field (implements ``RadianceField`` with the
    extra input ``t``)."""

    def __init__(self, aabb: Tensor, canonical: NGPFieldConfig, deformation: DeformationConfig,
                 time_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.register_buffer("aabb", aabb.float().clone())
        self.canonical = NGPField(aabb, canonical)
        self.deform_grid = HashGrid(deformation.grid)
        self.time_encoding = PositionalEncoding(1, deformation.time_freqs)
        self.deform_mlp = mlp(deformation.grid.output_dim + self.time_encoding.n_out, deformation.hidden,
                              deformation.layers, 3)
        nn.init.zeros_(self.deform_mlp[-1].weight)  # dx = 0 at the start: the static scene
        self.register_buffer("occupancy_times", torch.linspace(*time_range, deformation.occupancy_times),
                             persistent=False)

    def deformation(self, x: Tensor, t: Tensor) -> Tensor:
        """``(n, 3)`` offsets ``dx`` of points ``x (n, 3)`` at times ``t (n,)``; 0 where ``t = 0``."""
        u = (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])
        dx = self.deform_mlp(torch.cat([self.deform_grid(u), self.time_encoding(t[:, None].to(x.dtype))], dim=-1))
        return torch.where((t == 0)[:, None], torch.zeros_like(dx), dx)

    def raw(self, x: Tensor, d: Tensor, t: Tensor) -> Tensor:
        return self.canonical.raw(x + self.deformation(x, t), d)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return self.canonical.activate(raw)

    def density_at(self, x: Tensor, t: Tensor) -> Tensor:
        """``(n,)`` density at points ``x`` at times ``t``."""
        return self.canonical.density(x + self.deformation(x, t))

    def density(self, x: Tensor) -> Tensor:
        """``(n,)`` the maximum density at ``x`` over ``occupancy_times``."""
        return torch.stack([self.density_at(x, t.expand(x.shape[0])) for t in self.occupancy_times]).amax(0)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """The canonical field's groups, the deformation grid (no weight decay) and its MLP."""
        return self.canonical.param_groups(lr, weight_decay) + [
            {"params": list(self.deform_grid.parameters()), "lr": lr, "weight_decay": 0.0},
            {"params": list(self.deform_mlp.parameters()), "lr": lr, "weight_decay": weight_decay},
        ]
