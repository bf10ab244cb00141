"""D-NeRF (Pumarola et al. 2021), fast variant: a deformation field into a canonical field.

A point ``x`` seen at time ``t`` is moved to the canonical frame (the scene at ``t = 0``):
``x_c = x + dx(x, t)``, ``dx(x, 0) = 0`` exactly (as in the paper), and the canonical field is
evaluated at ``x_c``. Here both are hash-grid networks (the paper's are MLPs, which need hours):

* deformation: ``dx = MLP([hash_grid(x_n), PE(t)])``, ``x_n`` the box-normalised position, a
  small 3D hash grid and a positional encoding of ``t`` (frequencies ``2^0 .. 2^(L-1)``); the
  last layer starts at zero, so training starts from the static scene;
* canonical: the Instant-NGP field (:class:`radfield.fields.ngp.NGPField`), whose density MLP
  also reads a time-sliced hash grid at the canonical point (``time_slices``, 8 by default;
  :class:`radfield.fields.hashgrid.TimeSlicedHashGrid`), a time-aware feature in the manner of
  TiNeuVox's: a deformation learns motions by following local gradients, so a large motion (an
  object moving by more than its size between frames seen from different cameras) is never
  found, and a canonical field blind to time can only blur it. Measured on
  ``../shared/data/dynamic`` (300 s at 100 x 100, see ``bench/RESULTS.md``): test PSNR 16.58 dB
  without it (no better than Instant-NGP ignoring time, 16.53 dB), 18.91 dB with it.
  ``time_slices = 0`` gives the paper's static canonical field.

``backbone = "mlp"`` builds the paper's networks instead: the deformation an 8 x 256 MLP (skip
at 4) on ``[PE(x_n), PE(t)]`` (10 frequencies each), the canonical field vanilla NeRF's
(:class:`radfield.fields.nerf.NeRFField`).

Inputs ``raw(x (n, 3), d (n, 3), t (n,))``; outputs as every field's (``raw`` ``(n, 4)``,
``activate``). The occupancy grid of the moving scene takes each point's density at a time
drawn at random from the scene's time range (:meth:`DNeRFField.random_times`, as nerfacc's
D-NeRF example does), so that over its updates the grid covers the scene at every time; fixed
times would leave an object that moves fast between them out of the grid, and its rays
unsampled. ``density(x, times)``: the maximum density over a few times (mesh export).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from radfield.errors import check_choice
from radfield.fields.encodings import EncodingConfig, PositionalEncoding
from radfield.fields.hashgrid import HashGrid, HashGridConfig, TimeSlicedHashGrid
from radfield.fields.nerf import BoxNormalisation, NeRFField, SkipMLP
from radfield.fields.ngp import NGPField, mlp

DNERF_BACKBONES = ("hash", "mlp")


@dataclass
class DeformationConfig:
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_levels=8, log2_table_size=15, base_resolution=8, max_resolution=256))
    time_freqs: int = 6
    hidden: int = 64
    layers: int = 2
    occupancy_times: int = 4
    """Times, evenly spread over the time range, whose maximum density is ``density(x)``."""
    time_slices: int = 8
    """Hash backbone: slices of a time-sliced hash grid (:class:`TimeSlicedHashGrid`) whose
    features of the canonical point at ``t`` join the static grid's at the canonical field's
    density MLP, so that what the deformation does not explain (large motions, appearing and
    disappearing parts) can still change with time; 0: off (the paper's static canonical)."""
    time_grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_levels=8, log2_table_size=16, base_resolution=16, max_resolution=512))
    """The time-sliced grid, per slice (each table row holds every slice's features)."""


@dataclass
class DNeRFMLPConfig:
    """The paper's networks (``backbone = "mlp"``)."""

    pos_freqs: int = 10
    time_freqs: int = 10
    direction_freqs: int = 4
    depth: int = 8
    width: int = 256
    skip: int = 4


class DNeRFField(nn.Module):
    """``dx(x, t)`` into a canonical field (implements ``RadianceField`` with the extra input
    ``t``). ``config``: the model's section (an Instant-NGP field config plus ``deformation``,
    ``backbone`` and ``mlp``)."""

    def __init__(self, aabb: Tensor, config, time_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        check_choice("dnerf.backbone", config.backbone, DNERF_BACKBONES, "backbone")
        self.backbone = config.backbone
        self.register_buffer("aabb", aabb.float().clone())
        deformation = config.deformation
        if self.backbone == "hash":
            self.time_grid = (TimeSlicedHashGrid(deformation.time_grid, deformation.time_slices, time_range)
                              if deformation.time_slices else None)
            self.canonical = NGPField(aabb, config, 0 if self.time_grid is None else self.time_grid.output_dim)
            self.deform_grid = HashGrid(deformation.grid)
            self.time_encoding = PositionalEncoding(1, deformation.time_freqs)
            self.deform_mlp = mlp(deformation.grid.output_dim + self.time_encoding.n_out, deformation.hidden,
                                  deformation.layers, 3)
            last = self.deform_mlp[-1]
        else:
            self.time_grid = None
            m = config.mlp
            self.canonical = NeRFField(aabb, EncodingConfig(name="positional", n_freqs=m.pos_freqs), m.depth,
                                       m.width, m.skip, m.direction_freqs)
            self.normalise = BoxNormalisation(aabb)
            self.position_encoding = PositionalEncoding(3, m.pos_freqs)
            self.time_encoding = PositionalEncoding(1, m.time_freqs)
            self.deform_trunk = SkipMLP(self.position_encoding.n_out + self.time_encoding.n_out, m.depth, m.width,
                                        m.skip)
            self.deform_head = nn.Linear(m.width, 3)
            nn.init.zeros_(self.deform_head.bias)
            last = self.deform_head
        nn.init.zeros_(last.weight)  # dx = 0 at the start: the static scene
        self.register_buffer("occupancy_times", torch.linspace(*time_range, deformation.occupancy_times),
                             persistent=False)
        self.time_range = (float(time_range[0]), float(time_range[1]))

    def deformation(self, x: Tensor, t: Tensor) -> Tensor:
        """``(n, 3)`` offsets ``dx`` of points ``x (n, 3)`` at times ``t (n,)``; 0 where ``t = 0``."""
        te = self.time_encoding(t[:, None].to(x.dtype))
        if self.backbone == "hash":
            u = (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])
            dx = self.deform_mlp(torch.cat([self.deform_grid(u), te], dim=-1))
        else:
            h = torch.cat([self.position_encoding(self.normalise(x)), te], dim=-1)
            dx = self.deform_head(self.deform_trunk(h))
        return torch.where((t == 0)[:, None], torch.zeros_like(dx), dx)

    def canonical_raw(self, xc: Tensor, d: Tensor, t: Tensor) -> Tensor:
        """``raw`` of the canonical field at canonical points ``xc`` and times ``t`` (which only
        the time-sliced grid reads)."""
        if self.time_grid is None:
            return self.canonical.raw(xc, d)
        return self.canonical.shade(self._features(xc, t), d)

    def canonical_density(self, xc: Tensor, t: Tensor) -> Tensor:
        """``(n,)`` the canonical field's density at canonical points ``xc`` and times ``t``."""
        if self.time_grid is None:
            return self.canonical.density(xc)
        return self.canonical.density_of(self._features(xc, t))

    def _features(self, xc: Tensor, t: Tensor) -> Tensor:
        """The static grid's features of ``xc`` and the time-sliced grid's at ``t`` after them."""
        u = self.canonical.normalise(xc)
        return torch.cat([self.canonical.grid(u), self.time_grid(u, t)], dim=-1)

    def raw(self, x: Tensor, d: Tensor, t: Tensor) -> Tensor:
        return self.canonical_raw(x + self.deformation(x, t), d, t)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return self.canonical.activate(raw)

    def density_at(self, x: Tensor, t: Tensor) -> Tensor:
        """``(n,)`` density at points ``x`` at times ``t``."""
        return self.canonical_density(x + self.deformation(x, t), t)

    def density(self, x: Tensor, times: Tensor | None = None) -> Tensor:
        """``(n,)`` the maximum density at ``x`` over ``times`` (default: ``occupancy_times``,
        evenly spread over the time range, ends included)."""
        times = self.occupancy_times if times is None else times
        return torch.stack([self.density_at(x, t.expand(x.shape[0])) for t in times]).amax(0)

    def random_times(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``(n,)`` times drawn uniformly from the scene's time range."""
        lo, hi = self.time_range
        return lo + (hi - lo) * torch.rand(n, device=self.occupancy_times.device, generator=generator)

    def param_groups(self, lr: float, weight_decay: float) -> list[dict]:
        """Hash backbone: the canonical field's groups, the deformation grid (no weight decay)
        and its MLP; MLP backbone: one group."""
        if self.backbone == "mlp":
            return [{"params": list(self.parameters()), "lr": lr, "weight_decay": weight_decay}]
        grids = list(self.deform_grid.parameters())
        if self.time_grid is not None:
            grids += list(self.time_grid.parameters())
        return self.canonical.param_groups(lr, weight_decay) + [
            {"params": grids, "lr": lr, "weight_decay": 0.0, "tables": True},
            {"params": list(self.deform_mlp.parameters()), "lr": lr, "weight_decay": weight_decay},
        ]
