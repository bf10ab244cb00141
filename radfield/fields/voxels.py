"""Dense voxel grids (DVGO, Sun et al. 2022): a density grid and a feature grid, trilinearly
interpolated, a small colour MLP on the features and the view direction; the grids grow coarse
to fine and are smoothed by a total-variation term.

Vocabulary:

* ``values``: a grid's parameter ``(T, C, X, Y, Z)``: ``T`` time slices (1 for a static scene),
  ``C`` channels, ``X, Y, Z`` **vertices** per axis. Vertex ``(i, j, k)`` sits at
  ``lo + (hi - lo) * (i / (X - 1), j / (Y - 1), k / (Z - 1))`` of the scene box ``[lo, hi]``.
* ``u``: ``(n, 3)`` points in box units, ``u = (x - lo) / (hi - lo)``, clamped to ``[0, 1]^3``.
* ``tau``: ``(n,)`` times in ``[0, 1]`` (the scene's time range); slice ``k`` holds
  ``tau = k / (T - 1)``.
* trilinear interpolation: ``p = u (shape - 1)``, ``i0 = min(floor(p), shape - 2)``,
  ``f = p - i0``, ``value(u) = sum over the corners b in {0, 1}^3 of
  prod_a (f_a if b_a else 1 - f_a) * values[i0 + b]``; in time, linear between the slices
  ``floor(tau (T - 1))`` and the next: the dynamic grid is a 4D grid over ``(x, t)``, each
  slice a whole 3D grid (the simplest dynamic grid: memory grows with ``T``, every time is
  interpolated exactly like space, and ``density(x)``'s maximum over time is the maximum over
  the slices, since the interpolation is linear in ``t``).

Worked example (one channel, ``2 x 2 x 2`` vertices, ``values[i, j, k] = i + 2 j + 4 k``):
``u = (0.25, 0.5, 1)`` -> ``0.25 + 2 * 0.5 + 4 * 1 = 5.25`` (trilinear interpolation reproduces
any function linear in x, y, z).

Field (``VoxelField``): column 0 of ``raw`` is the interpolated density grid ``s``; the density
is ``sigma = softplus(s + shift) / voxel`` with ``voxel`` the side of a voxel of the *final*
grid (DVGO's density per voxel, in world units) and ``shift = ln(1 / (1 - alpha_init) - 1)``,
so that an untrained grid (``s = 0``) has opacity ``alpha_init`` over one voxel; columns 1:4 are
the colour MLP's logits on ``[features, SH(d)]``.

Coarse to fine (DVGO's progressive scaling): the grids start with ``2^(-n/3)`` of the final
vertices per axis (``n`` = ``len(upsample_steps)``) and double their voxel count at each step of
``upsample_steps`` (:func:`stage_vertices`); :meth:`VoxelGrid.resize` resamples the grid's
values trilinearly at the new vertices (a vertex-aligned resampling, so the field is unchanged
at every new vertex, and everywhere for fields linear within the old cells).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radfield.errors import RadfieldError
from radfield.fields.cells import corner_offsets
from radfield.fields.ngp import mlp
from radfield.fields.sh import SH_DIM, sh_encode

__all__ = ["VoxelFieldConfig", "VoxelField", "VoxelGrid", "trilinear", "lookup", "resample",
           "total_variation", "grid_shape", "stage_vertices", "stage_at"]


# --------------------------------------------------------------------------- pure functions

def trilinear(values: Tensor, u: Tensor) -> Tensor:
    """Trilinear interpolation of a vertex grid (module docstring).

    Args:
        values: ``(C, X, Y, Z)``, each side at least 2.
        u: ``(n, 3)`` points in ``[0, 1]^3`` (clamped).
    Returns:
        ``(n, C)``, differentiable in ``values`` and ``u``.
    """
    n, c = u.shape[0], values.shape[0]
    if n == 0:
        return values.new_zeros(0, c) + 0.0 * values.sum()  # keeps the graph of an empty batch
    # grid_sample reads grid[..., 0] along the last axis (Z): flip (x, y, z) -> (z, y, x); with
    # align_corners=True, -1 and 1 are the first and last vertices.
    grid = (u.to(values.dtype).clamp(0.0, 1.0) * 2.0 - 1.0).flip(-1).reshape(1, 1, 1, n, 3)
    out = F.grid_sample(values[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.reshape(c, n).t()


def lookup(values: Tensor, u: Tensor, tau: Tensor | None = None) -> Tensor:
    """``(n, C)`` values of a (possibly time-sliced) grid ``values (T, C, X, Y, Z)`` at ``u (n, 3)``
    and times ``tau (n,)`` in ``[0, 1]``: trilinear in space, linear in time between slices
    ``k0 = min(floor(tau (T - 1)), T - 2)`` and ``k0 + 1``. ``T = 1``: ``tau`` is ignored.

    One ``grid_sample`` over the slices in use (slices as its batch, each point looked up in
    its two slices), so the backward writes one gradient of the grid, not one per slice.

    Example: ``T = 3`` slices, ``tau = 0.75``: ``0.5 * slice 1 + 0.5 * slice 2``."""
    t_slices = values.shape[0]
    if t_slices == 1 or tau is None:
        return trilinear(values[0], u)
    n, c = u.shape[0], values.shape[1]
    if n == 0:
        return values.new_zeros(0, c) + 0.0 * values.sum()
    s = tau.to(u.dtype).clamp(0.0, 1.0) * (t_slices - 1)
    k0 = s.floor().clamp(max=t_slices - 2).long()
    f = s - k0
    first, last = int(k0.min()), int(k0.max()) + 1  # the slices in use (a view of them: no copy)
    used = values if (first, last) == (0, t_slices - 1) else values[first:last + 1]
    slot = torch.cat([k0, k0 + 1]) - first                               # (2n,) each point's two slices
    weight = torch.cat([1.0 - f, f])
    order = torch.argsort(slot, stable=True)
    counts = torch.bincount(slot, minlength=used.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(2 * n, device=u.device) - starts[slot[order]]   # place within its slice
    point = order % n
    g = (u.to(values.dtype).clamp(0.0, 1.0) * 2.0 - 1.0).flip(-1)       # grid_sample's (z, y, x)
    grid = g.new_zeros(used.shape[0], int(counts.max()), 3).index_put((slot[order], rank), g[point])
    out = F.grid_sample(used, grid[:, None, None], mode="bilinear", padding_mode="border",
                        align_corners=True)                              # (T', C, 1, 1, M)
    picked = out[:, :, 0, 0].transpose(1, 2)[slot[order], rank]          # (2n, C)
    return values.new_zeros(n, c).index_add(0, point, weight[order, None].to(values.dtype) * picked)


def resample(values: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """``values (T, C, X, Y, Z)`` resampled to ``shape`` vertices per axis: each new vertex gets
    the trilinear interpolation of the old grid at its position (the corner vertices coincide)."""
    return F.interpolate(values, size=tuple(shape), mode="trilinear", align_corners=True)


def total_variation(values: Tensor, cells: Tensor | None = None) -> Tensor:
    """Total variation ``sum over axes a of mean over edges along a of (v_end - v_start)^2``,
    averaged over the channels too; the axes are x, y, z and, with ``T > 1`` slices, time.

    Args:
        values: ``(T, C, X, Y, Z)``.
        cells: None for every edge of the grid, or ``(n, 4)`` long lower corners ``(t, i, j, k)``
            of blocks ``[t, t + 1] x [i, i + 1] x [j, j + 1] x [k, k + 1]`` (one slice when
            ``T = 1``): the edges of those blocks (``2^(D - 1)`` per axis and block, ``D`` the
            number of axes), blocks counted as often as they are listed.

    Example: one channel, one slice, ``2 x 2 x 2`` vertices ``i + 2 j + 4 k``: every x edge
    differs by 1, every y edge by 2, every z edge by 4: ``TV = 1 + 4 + 16 = 21``.
    """
    t_slices = values.shape[0]
    axes = ([0] if t_slices > 1 else []) + [2, 3, 4]
    if cells is None:
        return sum(values.diff(dim=a).square().mean() for a in axes)
    if cells.numel() == 0:
        return values.sum() * 0.0
    shape = values.shape
    lo = torch.stack([cells[:, 0].clamp(0, max(t_slices - 2, 0)), cells[:, 1].clamp(0, shape[2] - 2),
                      cells[:, 2].clamp(0, shape[3] - 2), cells[:, 3].clamp(0, shape[4] - 2)], -1)
    offsets = corner_offsets(len(axes), cells.device)                   # (2^D, D): (t,) i, j, k
    if t_slices == 1:
        offsets = F.pad(offsets, (1, 0))                                  # every corner in slice 0
    corner = lo[:, None, :] + offsets                                   # (n, 2^D, 4): t, i, j, k
    spatial = (corner[..., 1] * shape[3] + corner[..., 2]) * shape[4] + corner[..., 3]
    # one gather for every corner of every block: its backward writes one gradient of the grid
    values_at = values.flatten(2)[corner[..., 0], :, spatial]           # (n, 2^D, C)
    blocks = values_at.view(len(cells), *([2] * len(axes)), shape[1])   # a block's corners, axis by axis
    return sum(blocks.diff(dim=1 + axis).square().mean() for axis in range(blocks.dim() - 2))


def grid_shape(aabb: Tensor, vertices: float) -> tuple[int, int, int]:
    """Vertices per axis of a grid of cubic voxels over the box with ``vertices`` along its
    longest side: ``round((vertices - 1) side_a / longest) + 1``, at least 2.

    Example: box ``2 x 1 x 1``, ``vertices = 9``: ``(9, 5, 5)``."""
    sides = (aabb[3:] - aabb[:3]).double()
    cells = (vertices - 1) * sides / sides.max()
    return tuple(max(2, int(round(float(c))) + 1) for c in cells)


def stage_vertices(resolution: int, n_stages: int, stage: int) -> float:
    """Vertices along the longest side at growth ``stage`` (0 .. n_stages): the voxel count
    doubles at each stage, ``resolution 2^(-(n_stages - stage) / 3)``. Example: 160 with 4
    stages: 63.5, 80, 100.8, 127, 160."""
    return resolution * 2.0 ** (-(n_stages - stage) / 3.0)


def stage_at(step: int, upsample_steps: tuple[int, ...]) -> int:
    """The growth stage of the grids during ``step``: the number of ``upsample_steps`` at or
    before it. Example: steps (100, 200): step 99 -> 0, 100 -> 1, 250 -> 2."""
    return sum(step >= s for s in upsample_steps)


# --------------------------------------------------------------------------- modules

class VoxelGrid(nn.Module):
    """A learned grid ``values (T, C, X, Y, Z)`` (module docstring); ``forward(u, tau)``."""

    def __init__(self, channels: int, shape: tuple[int, int, int], time_slices: int = 1):
        super().__init__()
        self.values = nn.Parameter(torch.zeros(time_slices, channels, *shape))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.values.shape[2:])

    def forward(self, u: Tensor, tau: Tensor | None = None) -> Tensor:
        return lookup(self.values, u, tau)

    def resize(self, shape: tuple[int, int, int]) -> None:
        """Resample to ``shape`` vertices (:func:`resample`): a **new** parameter, so whoever
        optimises the old one must be told (``Model.grow``)."""
        with torch.no_grad():
            self.values = nn.Parameter(resample(self.values, shape))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint of a grown grid: take its vertex counts (channels and slices must match).
        incoming = state_dict.get(prefix + "values")
        if incoming is not None and incoming.shape[:2] == self.values.shape[:2] \
                and incoming.shape != self.values.shape:
            self.values = nn.Parameter(torch.empty(incoming.shape, dtype=self.values.dtype,
                                                   device=self.values.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@dataclass
class VoxelFieldConfig:
    resolution: int = 160
    """Vertices along the box's longest side once grown (the other sides in proportion: cubic
    voxels); DVGO's 160^3."""
    upsample_steps: tuple[int, ...] = (1000, 2000, 3000, 4000)
    """Steps at which the grids double their voxel count (DVGO's ``pg_scale``); they start
    with ``2^(-n/3)`` of ``resolution`` per axis, ``n`` the number of steps here."""
    features: int = 12
    """Channels of the feature grid."""
    hidden: int = 128
    color_layers: int = 2
    """Hidden layers of the colour MLP on ``[features, SH(d)]`` (DVGO: 128 wide)."""
    alpha_init: float = 1e-2
    """Opacity of one voxel of the untrained density grid (DVGO's fine stage: 1e-2)."""
    time_slices: int = 0
    """Slices of the 4D grids over time (dynamic scenes); 0 = auto: 8 when the frames have a
    ``time`` (the D-NeRF format), else 1 (static)."""


def check_config(config: VoxelFieldConfig, section: str = "voxels") -> None:
    """One-line RadfieldErrors for values no grid can have."""
    if config.resolution < 2:
        raise RadfieldError(f"{section}.resolution: needs at least 2 vertices per axis, got {config.resolution}")
    steps = list(config.upsample_steps)
    if any(s < 1 for s in steps) or any(b <= a for a, b in zip(steps, steps[1:])):
        raise RadfieldError(f"{section}.upsample_steps: must be increasing positive steps, got {tuple(steps)}")
    if config.features < 1 or config.hidden < 1 or config.color_layers < 0:
        raise RadfieldError(f"{section}: features and hidden must be >= 1 and color_layers >= 0 "
                            f"(got {config.features}, {config.hidden}, {config.color_layers})")
    if not 0.0 < config.alpha_init < 1.0:
        raise RadfieldError(f"{section}.alpha_init: must lie in (0, 1), got {config.alpha_init}")
    if config.time_slices < 0:
        raise RadfieldError(f"{section}.time_slices: must be >= 0, got {config.time_slices}")


class VoxelField(nn.Module):
    """DVGO's field over the box ``aabb`` (implements ``RadianceField``, with the extra input
    ``t (n,)`` when the grids have time slices). ``config.time_slices`` must be resolved
    (>= 1); ``time_range`` maps frame times onto ``tau``."""

    def __init__(self, aabb: Tensor, config: VoxelFieldConfig,
                 time_range: tuple[float, float] | None = None):
        super().__init__()
        check_config(config)
        self.config = config
        self.register_buffer("aabb", aabb.float().clone())
        t0, t1 = time_range or (0.0, 1.0)
        self.register_buffer("time_range", torch.tensor([t0, max(t1, t0 + 1e-12)]), persistent=False)
        slices = max(config.time_slices, 1)
        sides = aabb[3:] - aabb[:3]
        self.voxel = float(sides.max()) / (config.resolution - 1)
        self.shift = math.log(1.0 / (1.0 - config.alpha_init) - 1.0)
        shape = self.shape_at(0)
        self.density_grid = VoxelGrid(1, shape, slices)
        self.feature_grid = VoxelGrid(config.features, shape, slices)
        self.color_mlp = mlp(config.features + SH_DIM, config.hidden, config.color_layers, 3)

    @property
    def time_slices(self) -> int:
        return self.density_grid.values.shape[0]

    def shape_at(self, step: int) -> tuple[int, int, int]:
        """Vertices per axis of the grids during ``step``."""
        steps = self.config.upsample_steps
        return grid_shape(self.aabb, stage_vertices(self.config.resolution, len(steps), stage_at(step, steps)))

    def grow(self, step: int) -> bool:
        """Resample both grids to their shape for ``step``; True when they changed."""
        shape = self.shape_at(step)
        if shape == self.density_grid.shape:
            return False
        self.density_grid.resize(shape)
        self.feature_grid.resize(shape)
        return True

    def normalise(self, x: Tensor) -> Tensor:
        return (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])

    def tau(self, t: Tensor | None) -> Tensor | None:
        if t is None or self.time_slices == 1:
            return None
        return (t - self.time_range[0]) / (self.time_range[1] - self.time_range[0])

    def raw(self, x: Tensor, d: Tensor, t: Tensor | None = None) -> Tensor:
        """``x, d (n, 3)``, ``t (n,)`` times or None -> ``(n, 4)``: density grid value, colour
        logits."""
        u, tau = self.normalise(x), self.tau(t)
        s = self.density_grid(u, tau)
        c = self.color_mlp(torch.cat([self.feature_grid(u, tau), sh_encode(d)], dim=-1))
        return torch.cat([s, c], dim=-1)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return F.softplus(raw[:, 0] + self.shift) / self.voxel, torch.sigmoid(raw[:, 1:4])

    def density_at(self, x: Tensor, t: Tensor | None) -> Tensor:
        """``(n,)`` density at points ``x`` at times ``t`` (None: a static grid's)."""
        return F.softplus(self.density_grid(self.normalise(x), self.tau(t))[:, 0] + self.shift) / self.voxel

    def density(self, x: Tensor) -> Tensor:
        """``(n,)`` density; of a dynamic grid the maximum over time (over its slices)."""
        u = self.normalise(x)
        values = self.density_grid.values
        s = torch.stack([trilinear(values[k], u)[:, 0] for k in range(values.shape[0])]).amax(0)
        return F.softplus(s + self.shift) / self.voxel

    def total_variation(self, x: Tensor | None, t: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(TV of the density grid, TV of the feature grid)`` over the cells holding the points
        ``x (n, 3)`` (at times ``t``), or over the whole grids when ``x`` is None."""
        if x is None:
            return total_variation(self.density_grid.values), total_variation(self.feature_grid.values)
        shape = torch.tensor(self.density_grid.shape, device=x.device)
        ijk = (self.normalise(x).clamp(0, 1) * (shape - 1)).floor().long()
        tau = self.tau(t)
        k = torch.zeros_like(ijk[:, :1]) if tau is None else (tau * (self.time_slices - 1)).floor().long()[:, None]
        cells = torch.cat([k, ijk], dim=-1)
        return (total_variation(self.density_grid.values, cells),
                total_variation(self.feature_grid.values, cells))

    def param_groups(self, grid_lr: float, lr: float, weight_decay: float) -> list[dict]:
        """Adam groups: the grids at ``grid_lr`` without weight decay (DVGO: 0.1), the MLP at
        ``lr`` (DVGO: 1e-3)."""
        return [{"params": [self.density_grid.values, self.feature_grid.values], "lr": grid_lr,
                 "weight_decay": 0.0},
                {"params": list(self.color_mlp.parameters()), "lr": lr, "weight_decay": weight_decay}]
