"""MeRF (Reiser et al. 2023): a low-resolution 3D grid plus three high-resolution 2D planes,
features summed, decoded by deferred shading, trained with 8-bit quantisation so that it bakes.

Vocabulary:

* ``u``: ``(n, 3)`` points in the unit cube: the scene box normalised (bounded scenes) or the
  contracted scene (:class:`radfield.fields.nerfacto.Contraction`, unbounded scenes).
* a **grid** of resolution ``R`` in ``D`` dimensions (``D = 3``: the volume; ``D = 2``: the
  planes ``xy``, ``xz``, ``yz``, which see the coordinates ``(u_a, u_b)`` of their axes): ``R``
  cells and ``(R + 1)^D`` **vertices** per grid; vertex ``v`` (integers) sits at ``u = v / R``.
  A point's cell is ``i0 = min(floor(u R), R - 1)``, its fraction ``f = u R - i0``, its
  **corners** the vertices ``i0 + b``, ``b in {0, 1}^D`` (ordered with the last axis fastest).
* channels ``C = 8``, pre-activation: ``[density, diffuse (3), specular features (4)]``.
* **vertex values**, what baking stores: during training the vertex value of a grid is the sum
  of ``L`` nested **levels**, tables at resolutions ``R / 2^(L-1), ..., R / 2, R``, each read by
  D-linear interpolation at the vertex (a level whose ``(r + 1)^D`` vertices do not fit its
  table is hashed: :func:`radfield.fields.hashgrid.vertex_rows`). The levels nest (every cell
  of a coarse level is a union of finest cells), so within a finest cell each level is a
  D-linear function, which D-linear interpolation of its values at the cell's corners
  reproduces exactly: the grid of summed vertex values *is* the trained grid, with no
  approximation at baking (MeRF's networks need its evaluate-at-the-corners trick for that).
* **quantisation** (8 bits, ``m = quant_range``): ``squash(v) = m tanh(v / m)`` in ``(-m, m)``,
  ``byte = round((squash + m) / (2 m) * 255)``, ``q = byte / 255 * 2 m - m``; training uses ``q``
  forward and the identity backward (straight-through, :func:`fake_quantise`), applied to each
  corner's vertex value before interpolation, so training sees the baked bytes.
* a point's features ``f(u) = interp(q(volume corners)) + sum over the planes of
  interp(q(plane corners))``; ``sigma = exp(f_0)`` (truncated exp), diffuse ``sigmoid(f_1:4)``,
  specular features ``sigmoid(f_4:8)``: ``raw`` is ``f``, ``activate`` gives ``(sigma, values
  (n, 7))``.
* **deferred shading** (per ray, after volume rendering, :class:`DeferredShader`):
  ``D = sum_i w_i diffuse_i``, ``F = sum_i w_i features_i``, opacity ``O``;
  colour ``D + O h([D, F, SH(d)])`` before the background, ``h`` a small MLP (MeRF's
  view-dependent residual, evaluated once per ray); ``h`` starts at zero (diffuse only).

Worked examples. Quantisation, ``m = 4``: ``v = 0`` -> ``squash = 0`` -> ``byte = round(127.5)
= 128`` -> ``q = 128 / 255 * 8 - 4 = 0.015686``. Lookup: a plane of ``R = 2`` whose vertex values
are ``v0 + 10 v1`` at ``u = (0.25, 0.75)``: cell ``(0, 1)``, ``f = (0.5, 0.5)``, corners 10, 20,
11, 21, value ``15.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from radfield.errors import RadfieldError
from radfield.fields.base import trunc_exp
from radfield.fields.cells import cell_of, corner_offsets, interpolate
from radfield.fields.hashgrid import vertex_rows
from radfield.fields.nerfacto import Contraction
from radfield.fields.sh import SH_DIM, sh_encode

__all__ = ["CHANNELS", "PLANES", "MerfFieldConfig", "MerfField", "BakedMerfField", "DeferredShader",
           "NestedGrid", "UnitCube", "quantise", "dequantise",
           "fake_quantise", "squash", "table_parameters"]

CHANNELS = ("density", "diffuse_r", "diffuse_g", "diffuse_b", "feature_0", "feature_1", "feature_2",
            "feature_3")
PLANES = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}
"""Plane name -> the axes of ``u`` it sees."""
BITS = 8


# --------------------------------------------------------------------------- quantisation

def squash(v: Tensor, m: float) -> Tensor:
    """``m tanh(v / m)``: into ``(-m, m)``, the identity near 0."""
    return m * torch.tanh(v / m)


def quantise(s: Tensor, m: float) -> Tensor:
    """Bytes (int64 in ``0 .. 255``) of values ``s`` in ``[-m, m]``: ``round((s + m) / (2 m) 255)``
    (clamped). Example, ``m = 1``: ``-1 -> 0``, ``0 -> 128`` (127.5 rounds to even), ``1 -> 255``."""
    levels = 2 ** BITS - 1
    return torch.round((s.clamp(-m, m) + m) / (2 * m) * levels).long()


def dequantise(byte: Tensor, m: float, dtype: torch.dtype = torch.float32) -> Tensor:
    """``byte / 255 * 2 m - m``."""
    return byte.to(dtype) / (2 ** BITS - 1) * (2 * m) - m


def fake_quantise(v: Tensor, m: float) -> Tensor:
    """``squash`` then 8 bits forward, straight-through backward: ``q = s + stopgrad(deq(quant(s))
    - s)`` with ``s = squash(v, m)``, so ``dq / dv = dsquash / dv``."""
    s = squash(v, m)
    return s + (dequantise(quantise(s, m), m, s.dtype) - s).detach()


# --------------------------------------------------------------------------- grid lookups

def corner_rows(c: Tensor, resolution: int, table_rows: int) -> Tensor:
    """``(n, 2^D)`` table rows of the corners ``c + b`` of cells ``c (n, D)``
    (:func:`radfield.fields.hashgrid.vertex_rows`; a dense table's rows as one base index plus
    constant offsets)."""
    dims = c.shape[-1]
    offsets = corner_offsets(dims, c.device)
    if (resolution + 1) ** dims > table_rows:
        return vertex_rows(c[:, None, :] + offsets, resolution, table_rows)
    strides = (resolution + 1) ** torch.arange(dims, device=c.device)
    return (c * strides).sum(-1, keepdim=True) + (offsets * strides).sum(-1)


def level_corner_values(table: Tensor, level_resolution: int, factor: int, i0: Tensor) -> Tensor:
    """``(n, 2^D, C)``: one level's interpolated values at the corners ``i0 + b`` of finest cells
    ``i0 (n, D)``, the level being ``factor`` times coarser. All ``2^D`` corners lie in one level
    cell ``c = min(i0 // factor, r - 1)`` (``i0 + 1 <= (c + 1) factor``), so the level's ``2^D``
    rows are read once and weighted per corner: along axis ``a``, corner bit ``k`` and level
    vertex bit ``e`` weigh ``t if e else 1 - t``, ``t = (i0_a + k - c_a factor) / factor``; the
    ``2^D x 2^D`` weights are the axes' ``2 x 2`` ones multiplied out."""
    n, dims = i0.shape
    c = torch.div(i0, factor, rounding_mode="floor").clamp(max=level_resolution - 1)
    rows = corner_rows(c, level_resolution, table.shape[0])
    # index_select, not table[rows]: on a CPU its forward is about 4x and its backward (a
    # scatter-add of the rows) about 1.7x faster than advanced indexing's (bench/RESULTS.md)
    values = table.index_select(0, rows.reshape(-1)).view(*rows.shape, table.shape[1])
    if factor == 1:
        return values
    t0 = (i0 - c * factor).to(table.dtype) / factor  # (n, D): t of corner bit 0
    weights = None
    for a in range(dims):
        t = torch.stack([t0[:, a], t0[:, a] + 1.0 / factor], dim=-1)[:, :, None]  # (n, 2 corners, 1)
        pair = torch.cat([1 - t, t], dim=-1)  # (n, 2 corners, 2 level vertices)
        weights = pair if weights is None else \
            (weights[:, :, None, :, None] * pair[:, None, :, None, :]).reshape(n, 2 ** (a + 1), 2 ** (a + 1))
    return torch.bmm(weights, values)


class NestedGrid(nn.Module):
    """A ``D``-dimensional grid of ``resolution`` cells whose vertex values are the sum of
    ``levels`` nested tables (module docstring). ``corners(u)`` and ``vertex_values(v)``."""

    def __init__(self, dims: int, resolution: int, levels: int, channels: int = len(CHANNELS),
                 log2_table_size: int = 19, init_scale: float = 1e-4):
        super().__init__()
        self.dims, self.resolution = dims, resolution
        self.resolutions = [resolution >> (levels - 1 - k) for k in range(levels)]
        self.tables = nn.ParameterList(
            nn.Parameter(torch.empty(min(2 ** log2_table_size, (r + 1) ** dims), channels).uniform_(
                -init_scale, init_scale)) for r in self.resolutions)

    def corners(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``(values at the corners (n, 2^D, C), fractions (n, D))`` of points ``u (n, D)``."""
        i0, f = cell_of(u, self.resolution)
        out = None
        for table, r in zip(self.tables, self.resolutions):
            level = level_corner_values(table, r, self.resolution // r, i0)
            out = level if out is None else out + level
        return out, f

    def vertex_values(self, v: Tensor) -> Tensor:
        """``(m, C)`` vertex values at integer vertices ``v (m, D)``: corner ``v - i0`` of the cell
        ``i0 = min(v, R - 1)`` (the same numbers training interpolates)."""
        i0 = v.clamp(max=self.resolution - 1)
        out = sum(level_corner_values(table, r, self.resolution // r, i0)
                  for table, r in zip(self.tables, self.resolutions))
        corner = ((v - i0) * (2 ** torch.arange(self.dims - 1, -1, -1, device=v.device))).sum(-1)
        return out[torch.arange(v.shape[0], device=v.device), corner]


@dataclass
class MerfFieldConfig:
    grid_resolution: int = 128
    """Cells per axis of the 3D grid (a power of two; baked with ``(R + 1)^3`` vertices)."""
    grid_levels: int = 4
    """Nested training levels of the 3D grid (resolutions R / 2^(L - 1) .. R)."""
    plane_resolution: int = 2048
    """Cells per axis of each plane (a power of two; MeRF's 2048)."""
    plane_levels: int = 6
    log2_table_size: int = 19
    """Rows per level table; a level with more vertices is hashed."""
    quant_range: float = 6.0
    """``m``: vertex values are squashed into ``(-m, m)`` and stored in 8 bits."""
    quantise: bool = True
    """Quantisation-aware training (the straight-through 8-bit vertex values)."""
    deferred_hidden: int = 16
    deferred_layers: int = 2
    init_scale: float = 1e-4


def check_config(config: MerfFieldConfig, section: str = "merf.field") -> None:
    """One-line RadfieldErrors for grids that cannot be built."""
    for name in ("grid", "plane"):
        res, levels = getattr(config, f"{name}_resolution"), getattr(config, f"{name}_levels")
        if res < 1 or res & (res - 1):
            raise RadfieldError(f"{section}.{name}_resolution: must be a power of two, got {res}")
        if not 1 <= levels or res >> (levels - 1) < 1:
            raise RadfieldError(f"{section}.{name}_levels: {levels} nested levels need a resolution of at "
                                f"least 2^{max(levels - 1, 0)}, got {res} (and at least one level)")
    if config.quant_range <= 0:
        raise RadfieldError(f"{section}.quant_range: must be positive, got {config.quant_range}")
    if not 1 <= config.log2_table_size <= 30:
        raise RadfieldError(f"{section}.log2_table_size: must lie in 1..30, got {config.log2_table_size}")


class UnitCube(nn.Module):
    """World points -> the unit cube: the box normalised (``bounded``) or contracted (``norm``)."""

    def __init__(self, aabb: Tensor, bounded: bool, norm: str = "inf"):
        super().__init__()
        self.bounded, self.norm = bool(bounded), norm
        self.register_buffer("aabb", aabb.float().clone())
        self.contraction = None if bounded else Contraction(aabb, norm)

    def forward(self, x: Tensor) -> Tensor:
        if self.contraction is not None:
            return self.contraction(x)
        return (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])

    def describe(self) -> dict:
        return {"kind": "box" if self.bounded else "contraction", "aabb": self.aabb.tolist(),
                "norm": self.norm}


class DeferredShader(nn.Module):
    """``colour = D + O h([D, F, SH(d)])`` per ray (module docstring); ``h``: ``layers`` ReLU
    layers of ``hidden`` (with biases), the last layer zero at the start."""

    def __init__(self, hidden: int = 16, layers: int = 2):
        super().__init__()
        modules, width = [], len(CHANNELS) - 1 + SH_DIM
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        modules.append(nn.Linear(width, 3))
        nn.init.zeros_(modules[-1].weight)
        nn.init.zeros_(modules[-1].bias)
        self.mlp = nn.Sequential(*modules)

    def forward(self, accumulated: Tensor, opacity: Tensor, directions: Tensor) -> Tensor:
        """``accumulated (n_rays, 7)`` = ``[D, F]``, ``opacity (n_rays,)``, unit ``directions
        (n_rays, 3)`` -> ``(n_rays, 3)``."""
        h = self.mlp(torch.cat([accumulated, sh_encode(directions).to(accumulated.dtype)], dim=-1))
        return accumulated[:, :3] + opacity[:, None] * h

    def describe(self) -> list[dict]:
        """The layers' weights and biases as nested lists (baking)."""
        return [{"weight": layer.weight.detach().cpu().tolist(), "bias": layer.bias.detach().cpu().tolist()}
                for layer in self.mlp if isinstance(layer, nn.Linear)]


def _activate(raw: Tensor) -> tuple[Tensor, Tensor]:
    return trunc_exp(raw[:, 0]), torch.sigmoid(raw[:, 1:])


class MerfField(nn.Module):
    """The trained MeRF field (implements ``RadianceField``; ``activate`` returns the 7 values
    that :class:`DeferredShader` turns into colour)."""

    def __init__(self, aabb: Tensor, config: MerfFieldConfig, bounded: bool, norm: str = "inf"):
        super().__init__()
        check_config(config)
        self.config = config
        self.to_unit = UnitCube(aabb, bounded, norm)
        self.grid = NestedGrid(3, config.grid_resolution, config.grid_levels, len(CHANNELS),
                               config.log2_table_size, config.init_scale)
        self.planes = nn.ModuleDict({name: NestedGrid(2, config.plane_resolution, config.plane_levels,
                                                      len(CHANNELS), config.log2_table_size, config.init_scale)
                                     for name in PLANES})
        self.shader = DeferredShader(config.deferred_hidden, config.deferred_layers)

    def _quantised(self, corners: Tensor) -> Tensor:
        return fake_quantise(corners, self.config.quant_range) if self.config.quantise \
            else squash(corners, self.config.quant_range)

    def raw(self, x: Tensor, d: Tensor | None = None) -> Tensor:
        """``(n, 8)`` pre-activation features ``f`` at world points ``x (n, 3)`` (``d`` unused:
        the view direction acts per ray, in the shader). Always in float32, also under CUDA's
        float16 autocast: the 8-bit rounding must see the numbers baking sees."""
        with torch.autocast(x.device.type, enabled=False):
            u = self.to_unit(x.float())
            corners, f = self.grid.corners(u)
            out = interpolate(self._quantised(corners), f)
            for name, axes in PLANES.items():
                corners, f = self.planes[name].corners(u[:, list(axes)])
                out = out + interpolate(self._quantised(corners), f)
        return out

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return _activate(raw)

    def density(self, x: Tensor) -> Tensor:
        return trunc_exp(self.raw(x)[:, 0])

    def grids(self) -> dict[str, NestedGrid]:
        """``{"grid": the volume, "xy": ..., "xz": ..., "yz": ...}``."""
        return {"grid": self.grid, **self.planes}

    @torch.no_grad()
    def baked_bytes(self, name: str, chunk: int = 1 << 16) -> Tensor:
        """``((R + 1)^D, 8)`` uint8 bytes of grid ``name``'s squashed vertex values, row
        ``v_0 + v_1 (R + 1) + v_2 (R + 1)^2`` (the first axis fastest)."""
        grid = self.grids()[name]
        n = grid.resolution + 1
        out = torch.empty(n ** grid.dims, len(CHANNELS), dtype=torch.uint8)
        device = grid.tables[0].device
        for start in range(0, out.shape[0], chunk):
            flat = torch.arange(start, min(start + chunk, out.shape[0]), device=device)
            v = torch.stack([flat // n ** a % n for a in range(grid.dims)], dim=-1)
            s = squash(grid.vertex_values(v), self.config.quant_range)
            out[start:start + len(flat)] = quantise(s, self.config.quant_range).to(torch.uint8).cpu()
        return out


class BakedMerfField(nn.Module):
    """MeRF from baked bytes: the same lookups on the dequantised vertex values, no tables
    (implements ``RadianceField`` like :class:`MerfField`). The bytes are dequantised once, as a
    GPU's texture unit would on every read: the same numbers.

    Args:
        grids: ``{"grid": ((R + 1)^3, 8), "xy" | "xz" | "yz": ((R_p + 1)^2, 8)}`` uint8 bytes,
            rows as :meth:`MerfField.baked_bytes` writes them.
        resolutions: cells per axis of each.
        quant_range: ``m`` of the quantisation.
        to_unit: the world -> unit cube map.
    """

    def __init__(self, grids: dict[str, Tensor], resolutions: dict[str, int], quant_range: float,
                 to_unit: UnitCube):
        super().__init__()
        self.resolutions, self.quant_range, self.to_unit = dict(resolutions), float(quant_range), to_unit
        for name, data in grids.items():
            values = dequantise(data, self.quant_range)
            self.register_buffer(f"values_{name}", values)
            self.register_buffer(f"density_{name}", values[:, :1].contiguous(), persistent=False)

    def _lookup(self, name: str, u: Tensor, density_only: bool) -> Tensor:
        res = self.resolutions[name]
        data = getattr(self, f"density_{name}" if density_only else f"values_{name}")
        i0, f = cell_of(u, res)
        return interpolate(data[corner_rows(i0, res, data.shape[0])], f)

    def raw(self, x: Tensor, d: Tensor | None = None, density_only: bool = False) -> Tensor:
        """``(n, 8)`` pre-activation features (``(n, 1)``, the density's, with ``density_only``)."""
        u = self.to_unit(x)
        out = self._lookup("grid", u, density_only)
        for name, axes in PLANES.items():
            out = out + self._lookup(name, u[:, list(axes)], density_only)
        return out

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return _activate(raw)

    def density(self, x: Tensor) -> Tensor:
        """``(n,)``, reading the density channel alone."""
        return trunc_exp(self.raw(x, density_only=True)[:, 0])


def table_parameters(field: MerfField) -> list[Tensor]:
    """The level tables of the volume and the planes (one Adam group)."""
    return [t for grid in field.grids().values() for t in grid.tables]

