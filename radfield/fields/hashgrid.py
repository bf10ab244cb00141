"""Multiresolution hash encoding (Instant-NGP), with a plain PyTorch reference and a fast CPU kernel.

Vocabulary:
    x        points in the unit cube, shape (n, 3); coordinates outside [0, 1] are clamped.
    L, F     number of levels, features per level; the encoding has shape (n, L * F).
    T        the configured table size 2 ** log2_table_size (rows per level at most).
    res_l    grid resolution of level l: the level's grid has res_l + 1 vertices per axis.
    T_l      rows of level l's table: min(T, (res_l + 1) ** 3).
    dense    a level whose (res_l + 1) ** 3 vertices fit in its table (T_l == (res_l + 1) ** 3):
             vertex (cx, cy, cz) has row cx + cy * (res_l + 1) + cz * (res_l + 1) ** 2.
    hashed   any other level: row ((cx * 1) xor (cy * 2654435761) xor (cz * 805459861)) mod 2^32
             mod T_l (uint32 arithmetic, as in the reference implementation).

Per level (the equations both paths implement, operation for operation):
    p   = clamp(x, 0, 1) * res_l
    i0  = min(floor(p), res_l - 1)          so that x = 1 falls in the last cell with t = 1
    t   = p - i0                            in [0, 1]^3
    corner c = 0..7 has offset (c & 1, c >> 1 & 1, c >> 2 & 1) in (x, y, z) and weight
    w_c = (w_x * w_y) * w_z with w_d = t_d if the offset bit is set, else 1 - t_d
    enc_l(x) = sum over c = 0..7 of w_c * table_l[row(i0 + offset_c)]

Worked example: res = 2, x = (0.25, 0.5, 1.0) -> p = (0.5, 1, 2), i0 = (0, 1, 1), t = (0.5, 0, 1):
only corners with z offset 1 and y offset 0 have weight, 0.5 each, at vertices (0, 1, 2) and
(1, 1, 2), i.e. dense rows 0 + 3 + 18 = 21 and 22.

Resolutions: res_l = floor(N_min * b ** l + 1e-6) with b = exp((ln N_max - ln N_min) / (L - 1)),
so res_0 = N_min and res_{L-1} = N_max (the 1e-6 guards against b ** l rounding just below an
integer). With the defaults (16 levels, 16 -> 2048) the resolutions are 16, 22, 30, ..., 2048.

Paths:
    `hash_grid_reference` -- plain PyTorch (any device, any float dtype, autograd to tables and x).
    The CPU kernel `radfield/fields/_hashgrid_cpu.c` -- float32, OpenMP, compiled with gcc at first
    use into $RADFIELD_CACHE (default ~/.cache/radfield) and called through ctypes inside a
    `torch.autograd.Function`. The cached library's name hashes the source, the flags, the gcc
    version and the host CPU (the flags include -march=native, so a cache shared between
    machines must not hand one CPU another's build). Forward and input gradient run in parallel
    over points; the table gradient runs in parallel over levels (each level its own table: no
    write races). It also gives the input gradient (for pose refinement), so it needs no
    fallback when x requires grad.
    Time-sliced tables (:class:`TimeSlicedHashGrid`) have their own entry points, which gather
    only the two slices each point blends.
    It is used when x and every table are float32 on the CPU, the compiler works, the config has
    `use_kernel=True` and the environment has no RADFIELD_NO_KERNEL=1; otherwise the Triton
    kernels or the reference run (no gcc on PATH, a failed build or one over 180 s: with one warning). It is not twice
    differentiable (use the reference for double backward). Under `torch.compile` the kernel
    call is a graph break (it is opaque to dynamo).
    Triton kernels `radfield/fields/hashgrid_triton.py` -- the GPU path: on CUDA tensors (float32,
    a power-of-two feature count, `use_kernel=True`, no RADFIELD_NO_KERNEL=1) when the `triton`
    package imports (CUDA builds of torch ship it). Forward, table gradient and input gradient,
    one launch per level; tested against the reference on the CPU under Triton's interpreter.
    Not yet run on a GPU by this project (no GPU was lent to the sessions that wrote it).
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from radfield.fields.window import WindowedBands
from radfield.native import NativeLibrary, TritonModule, addresses

__all__ = [
    "HashGridConfig",
    "HashGrid",
    "TimeSlicedHashGrid",
    "hash_grid_reference",
    "level_resolutions",
    "vertex_rows",
    "kernel_available",
]

PRIMES = (1, 2654435761, 805459861)
_MASK32 = 0xFFFFFFFF


@dataclass
class HashGridConfig:
    """Multiresolution hash grid. Defaults are Instant-NGP's for a scene bound of 1."""

    n_levels: int = 16
    features_per_level: int = 2
    log2_table_size: int = 19
    base_resolution: int = 16
    max_resolution: int = 2048
    init_scale: float = 1e-4  # tables start uniform(-init_scale, init_scale)
    use_kernel: bool = True  # the compiled CPU kernel where possible (see module docstring)

    @property
    def table_size(self) -> int:
        return 2**self.log2_table_size

    @property
    def output_dim(self) -> int:
        return self.n_levels * self.features_per_level


def level_resolutions(n_levels: int, base_resolution: int, max_resolution: int) -> list[int]:
    """res_l = floor(N_min * b ** l + 1e-6), b = exp((ln N_max - ln N_min) / (L - 1)).

    >>> level_resolutions(3, 16, 64)
    [16, 32, 64]
    """
    if n_levels == 1:
        return [base_resolution]
    b = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1))
    return [int(math.floor(base_resolution * b**level + 1e-6)) for level in range(n_levels)]


def vertex_rows(corner: Tensor, res: int, table_rows: int) -> Tensor:
    """Row in a level's table of integer vertices ``corner`` ``(..., D)`` int64, ``D`` = 3 (or 2
    for planes: the same rule on the first two coordinates) -> ``(...)`` int64: dense
    ``c_0 + c_1 (res + 1) + c_2 (res + 1)^2`` when ``(res + 1)^D <= table_rows``, else
    ``(c_0 * 1 xor c_1 * 2654435761 xor c_2 * 805459861) mod 2^32 mod table_rows``."""
    coords = corner.unbind(-1)
    if (res + 1) ** len(coords) <= table_rows:
        r1, row = res + 1, coords[0]
        for power, c in enumerate(coords[1:], start=1):
            row = row + c * r1 ** power
        return row
    h = coords[0] * PRIMES[0]
    for c, prime in zip(coords[1:], PRIMES[1:]):
        h = h ^ ((c * prime) & _MASK32)
    return (h & _MASK32) % table_rows


def check_points(x: Tensor) -> None:
    """A ValueError unless ``x`` has shape ``(n, 3)``: the input check of every hash-grid path."""
    if x.ndim != 2 or x.shape[-1] != 3:
        raise ValueError(f"x must have shape (n, 3), got {tuple(x.shape)}")


def clamp_gradient(x: Tensor, grad_x: Tensor) -> Tensor:
    """``grad_x`` carried back through ``clamp(x, 0, 1)``: zero where ``x`` lies outside [0, 1]
    (the bounds themselves pass, as ``torch.clamp`` defines it). The kernels' input gradient."""
    return grad_x * ((x >= 0.0) & (x <= 1.0))


def hash_grid_reference(x: Tensor, tables: Sequence[Tensor], resolutions: Sequence[int]) -> Tensor:
    """Plain PyTorch hash encoding: x (n, 3) in [0, 1]^3 -> (n, L * F), level-major columns.

    `tables[l]` has shape (T_l, F); level l is dense iff (res_l + 1) ** 3 <= T_l. Gradients flow
    to the tables and to x (through the fractional position t; zero where x is clamped).
    """
    check_points(x)
    xc = x.clamp(0.0, 1.0)
    outs = []
    for table, res in zip(tables, resolutions):
        p = xc * res
        p0 = torch.floor(p).clamp(max=res - 1).detach()
        t = p - p0
        omt = 1.0 - t
        i0 = p0.long()
        acc = None
        for c in range(8):
            bits = (c & 1, (c >> 1) & 1, (c >> 2) & 1)
            offset = torch.tensor(bits, dtype=torch.long, device=x.device)
            rows = vertex_rows(i0 + offset, res, table.shape[0])
            wd = [t[:, d] if bits[d] else omt[:, d] for d in range(3)]
            w = (wd[0] * wd[1]) * wd[2]
            term = w[:, None] * table[rows]
            acc = term if acc is None else acc + term
        outs.append(acc)
    return torch.cat(outs, dim=-1)


# ---------------------------------------------------------------------------------------------
# The compiled CPU kernel.

_SOURCE = Path(__file__).with_name("_hashgrid_cpu.c")
_FORWARD_ORDER = 0  # 0: points outer (all levels per point); 1: levels outer. 0 measured faster.
_P, _I32, _I64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
_KERNEL = NativeLibrary(_SOURCE, {
    "hg_forward": [_P, _I64, _I32, _I32, _P, _P, _P, _P, _I32, _I32],
    "hg_backward_tables": [_P, _I64, _I32, _I32, _P, _P, _P, _P, _I32],
    "hg_forward_jacobian": [_P, _I64, _I32, _I32, _P, _P, _P, _P, _P, _I32],
    "hg_forward_sliced": [_P, _P, _P, _I64, _I32, _I32, _I32, _P, _P, _P, _P, _I32],
    "hg_backward_tables_sliced": [_P, _P, _P, _I64, _I32, _I32, _I32, _P, _P, _P, _P, _I32],
    "hg_backward_input_sliced": [_P, _P, _P, _I64, _I32, _I32, _I32, _P, _P, _P, _P, _P, _I32],
}, "hash grid CPU kernel", "the PyTorch reference")


def _get_library() -> ctypes.CDLL | None:
    """The loaded kernel, or None (RADFIELD_NO_KERNEL=1, or the build failed: warned once)."""
    return _KERNEL.load()


def kernel_available() -> bool:
    """True when the compiled CPU kernel can be used (builds it on first call)."""
    return _get_library() is not None


_TRITON = TritonModule("radfield.fields.hashgrid_triton", "the hash grid")


def triton_kernels():
    """:mod:`radfield.fields.hashgrid_triton`, or None: RADFIELD_NO_KERNEL=1, or the ``triton``
    package missing or failing to import (then one warning, and the reference runs)."""
    return _TRITON.load()


def triton_for(x: Tensor):
    """The Triton kernels (:func:`triton_kernels`) for points ``x`` on a GPU, else None (tests
    run them on the CPU under Triton's interpreter by replacing this function)."""
    return triton_kernels() if x.is_cuda else None


def _kernel_applies(x: Tensor, tables: Sequence[Tensor]) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tables):
        return False
    return _get_library() is not None


class GradientStorage:
    """Storage for the tables' gradients, reused from one backward to the next.

    A fresh gradient for every table at every step is mostly page faults on the CPU: the 12 M
    floats of the default grid cost ~25 ms per backward as new memory, against ~1 ms to clear
    memory already mapped (measured at 2^16 samples, `bench/field_throughput.py`). So the
    backward hands autograd a new tensor on a kept storage; autograd adopts it as ``table.grad``
    (when that is None), and once the optimiser's ``zero_grad(set_to_none=True)`` drops it the
    storage is free for the next backward. A storage is reused only while nothing else holds it
    (a kept gradient, ``zero_grad(set_to_none=False)``, ``torch.autograd.grad``): otherwise the
    backward allocates a new one, so results never depend on it.

    Who holds a storage is read from PyTorch's private ``torch._C._storage_Use_Count`` (there is
    no public count; a weak reference cannot tell, since autograd adopts the gradient's C++
    tensor, not the Python object). A PyTorch without it gets a fresh gradient every backward.
    """

    _use_count = getattr(torch._C, "_storage_Use_Count", None)

    def __init__(self):
        self._kept: dict[int, tuple[Tensor, int]] = {}  # level -> (storage holder, its free count)

    @classmethod
    def _users(cls, holder: Tensor) -> int:
        return cls._use_count(holder.untyped_storage()._cdata)

    def take(self, level: int, like: Tensor) -> Tensor:
        """An uninitialised tensor shaped like ``like`` whose storage no one else holds."""
        if self._use_count is None:
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        kept = self._kept.get(level)
        if kept is None or kept[0].shape != like.shape or self._users(kept[0]) != kept[1]:
            holder = torch.empty_like(like, memory_format=torch.contiguous_format)
            kept = (holder, self._users(holder))
            self._kept[level] = kept
        holder = kept[0]
        return torch.empty(0, dtype=holder.dtype).set_(holder.untyped_storage(), 0, holder.shape,
                                                       holder.stride())

    def __deepcopy__(self, memo) -> "GradientStorage":
        return GradientStorage()  # a copy of the module starts with storage of its own

    def __getstate__(self) -> dict:
        return {"_kept": {}}


class _HashGridFunction(torch.autograd.Function):
    """Kernel forward/backward. Inputs: x (n, 3) contiguous float32, resolutions, the gradient
    storage (or None: fresh gradients), the time slices (None, or ``(k, a, K)``: per point the
    int32 slice ``k`` and float32 blend ``a`` of :class:`TimeSlicedHashGrid`, whose tables hold
    ``K`` slices per row), the precomputed output (or None: computed here), *tables."""

    @staticmethod
    def _head(x: Tensor, resolutions, tables, slices) -> list:
        """The leading arguments of every kernel call: x, (k, a,) n, L, F, (K,) res, sizes."""
        res_t = torch.tensor(resolutions, dtype=torch.int32)
        size_t = torch.tensor([t.shape[0] for t in tables], dtype=torch.int64)
        n_slices = 1 if slices is None else slices[2]
        sliced = [] if slices is None else [slices[0].data_ptr(), slices[1].data_ptr()]
        counts = [x.shape[0], len(tables), tables[0].shape[1] // n_slices]
        if slices is not None:
            counts.append(n_slices)
        # the tensors ride along so that their memory outlives the call
        return [x.data_ptr(), *sliced, *counts, res_t.data_ptr(), size_t.data_ptr()], (res_t, size_t)

    @staticmethod
    def forward(ctx, x: Tensor, resolutions: tuple[int, ...], storage: GradientStorage | None,
                slices: tuple[Tensor, Tensor, int] | None, precomputed: Tensor | None,
                *tables: Tensor) -> Tensor:
        lib = _get_library()
        assert lib is not None
        x = x.contiguous()
        tables = tuple(t.contiguous() for t in tables)
        ctx.save_for_backward(x, *tables)
        ctx.resolutions = resolutions
        ctx.storage = storage
        ctx.slices = slices
        ctx.jacobian = None
        if precomputed is not None:  # read from the tables already (hash_grid_kernel's checks)
            return precomputed.detach()
        head, keep = _HashGridFunction._head(x, resolutions, tables, slices)
        n_feat = tables[0].shape[1] // (1 if slices is None else slices[2])
        ptrs = addresses(tables)
        out = torch.empty(x.shape[0], len(tables) * n_feat, dtype=torch.float32)
        if slices is None and x.requires_grad:  # an input gradient will be asked for: dy/dx now
            ctx.jacobian = torch.empty(x.shape[0], len(tables) * n_feat, 3, dtype=torch.float32)
            lib.hg_forward_jacobian(*head, ptrs.data_ptr(), out.data_ptr(), ctx.jacobian.data_ptr(),
                                    torch.get_num_threads())
        elif slices is None:
            lib.hg_forward(*head, ptrs.data_ptr(), out.data_ptr(), torch.get_num_threads(), _FORWARD_ORDER)
        else:
            lib.hg_forward_sliced(*head, ptrs.data_ptr(), out.data_ptr(), torch.get_num_threads())
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        lib = _get_library()
        assert lib is not None
        x, *tables = ctx.saved_tensors
        grad_out = grad_out.contiguous().float()
        head, keep = _HashGridFunction._head(x, ctx.resolutions, tables, ctx.slices)
        sliced = ctx.slices is not None
        nthreads = torch.get_num_threads()
        grad_tables: list[Tensor | None] = [None] * len(tables)
        if any(ctx.needs_input_grad[5:]):
            for level, table in enumerate(tables):
                if ctx.needs_input_grad[5 + level]:  # zero-filled by the kernel
                    grad_tables[level] = (torch.empty_like(table) if ctx.storage is None
                                          else ctx.storage.take(level, table))
            # keep every address array in a variable: a temporary would be freed before the call
            grad_ptrs = addresses(grad_tables)
            call = lib.hg_backward_tables_sliced if sliced else lib.hg_backward_tables
            call(*head, grad_ptrs.data_ptr(), grad_out.data_ptr(), nthreads)
        grad_x = None
        if ctx.needs_input_grad[0] and ctx.jacobian is not None:
            grad_x = clamp_gradient(x, torch.einsum("nk,nkd->nd", grad_out, ctx.jacobian))
        elif ctx.needs_input_grad[0]:  # time-sliced tables: a second pass over the corners
            grad_x = torch.empty_like(x)
            table_ptrs = addresses(tables)
            lib.hg_backward_input_sliced(*head, table_ptrs.data_ptr(), grad_out.data_ptr(), grad_x.data_ptr(),
                                         nthreads)
            grad_x = clamp_gradient(x, grad_x)
        return (grad_x, None, None, None, None, *grad_tables)


@torch.compiler.disable
def hash_grid_kernel(x: Tensor, tables: Sequence[Tensor], resolutions: Sequence[int],
                     storage: GradientStorage | None = None,
                     slices: tuple[Tensor, Tensor, int] | None = None,
                     precomputed: Tensor | None = None) -> Tensor:
    """The compiled CPU kernel: same contract as `hash_grid_reference` (float32 CPU only).
    ``storage``: where the tables' gradients are written (reused between steps), or None.
    ``slices``: ``(k, a, K)`` for time-sliced tables (:class:`TimeSlicedHashGrid`).
    ``precomputed``: the output, computed earlier over the same tables; it is returned with
    this call's backward, and the forward is skipped (not with slices, nor with ``x``
    requiring a gradient)."""
    check_points(x)
    if precomputed is not None and (slices is not None or x.requires_grad
                                    or precomputed.shape != (x.shape[0], sum(t.shape[1] for t in tables))):
        raise ValueError("hash_grid_kernel: a precomputed encoding needs static tables, an x without "
                         f"gradient and shape (n, L * F); got {tuple(precomputed.shape)} for x {tuple(x.shape)}")
    return _HashGridFunction.apply(x, tuple(int(r) for r in resolutions), storage, slices, precomputed, *tables)


class HashGrid(WindowedBands, nn.Module):
    """Multiresolution hash encoding: x (n, 3) in [0, 1]^3 -> (n, L * F).

    One `nn.Parameter` per level in `tables` (shape (T_l, F)); `resolutions[l]` is res_l.
    `set_window(alpha)` weights the levels coarse to fine (`radfield.fields.window`, the coarsest
    level always open): pose refinement's coarse-to-fine schedule.
    """

    keep_first = True

    def __init__(self, config: HashGridConfig | None = None):
        super().__init__()
        self.config = config or HashGridConfig()
        cfg = self.config
        self.n_bands = cfg.n_levels
        self.register_buffer("window", None, persistent=False)
        self.resolutions = level_resolutions(
            cfg.n_levels, cfg.base_resolution, cfg.max_resolution
        )
        self.tables = nn.ParameterList()
        for res in self.resolutions:
            rows = min(cfg.table_size, (res + 1) ** 3)
            init = torch.empty(rows, cfg.features_per_level).uniform_(-cfg.init_scale, cfg.init_scale)
            self.tables.append(nn.Parameter(init))
        self.gradient_storage = GradientStorage()

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    def forward(self, x: Tensor, encoding: Tensor | None = None) -> Tensor:
        """x (n, 3) -> (n, L * F): :meth:`encode`, then the window. ``encoding``: ``encode(x)``
        computed earlier without a graph over the same tables, or None. Where the CPU kernel
        applies and ``x`` needs no gradient it is reused as the output, and the backward still
        gives the tables' gradient (it reads only ``x``); elsewhere it is computed again."""
        tables = list(self.tables)
        if (encoding is not None and not x.requires_grad and self.config.use_kernel and triton_for(x) is None
                and _kernel_applies(x, tables)):
            out = hash_grid_kernel(x, tables, self.resolutions, self.gradient_storage, precomputed=encoding)
        else:
            out = self.encode(x)
        return self.windowed(out)

    def encode(self, x: Tensor) -> Tensor:
        """x (n, 3) -> (n, L * F) before the window; the kernel path where it applies, else the
        reference."""
        tables = list(self.tables)
        if self.config.use_kernel and (triton_path := triton_for(x)) is not None and triton_path.applies(x, tables):
            return triton_path.hash_grid_triton(x, tables, self.resolutions)
        if self.config.use_kernel and _kernel_applies(x, tables):
            return hash_grid_kernel(x, tables, self.resolutions, self.gradient_storage)
        return hash_grid_reference(x, tables, self.resolutions)

    def windowed(self, encoding: Tensor) -> Tensor:
        """The encoding weighted by the coarse-to-fine window (itself without one)."""
        weights = self.band_weights(encoding, self.config.features_per_level)
        return encoding if weights is None else encoding * weights

    def extra_repr(self) -> str:
        cfg = self.config
        return (
            f"levels={cfg.n_levels}, F={cfg.features_per_level}, T=2^{cfg.log2_table_size}, "
            f"res={self.resolutions[0]}..{self.resolutions[-1]}"
        )


class TimeSlicedHashGrid(HashGrid):
    """A hash grid over ``(x, t)``: every vertex holds ``F`` features for each of ``slices``
    times evenly spread over ``time_range`` (ends included), linearly interpolated in ``t``.

    It is one :class:`HashGrid` with ``slices * F`` features per level (one lookup gathers every
    slice of a vertex from one contiguous row), whose level ``l`` output, viewed as
    ``(slices, F)``, is blended between the two slices around ``t``:
    ``tau = (t - t0) / (t1 - t0) * (slices - 1)``, ``k = min(floor(tau), slices - 2)``,
    ``enc_l = (1 - (tau - k)) * slice_k + (tau - k) * slice_{k+1}``. Output ``(n, L * F)``, as
    a static grid's. ``config`` is the per-slice grid (``features_per_level = F``).
    """

    def __init__(self, config: HashGridConfig, slices: int, time_range: tuple[float, float] = (0.0, 1.0)):
        if slices < 2:
            raise ValueError(f"a time-sliced hash grid needs at least 2 slices, got {slices}")
        super().__init__(replace(config, features_per_level=config.features_per_level * slices))
        self.slices = slices
        self.slice_features = config.features_per_level
        self.time_range = (float(time_range[0]), float(time_range[1]))

    @property
    def output_dim(self) -> int:
        return self.config.n_levels * self.slice_features

    def forward(self, x: Tensor, times: Tensor) -> Tensor:
        """x (n, 3) in [0, 1]^3, times (n,) -> (n, L * F)."""
        lo, hi = self.time_range
        tau = ((times.to(x.dtype) - lo) / max(hi - lo, 1e-12)).clamp(0.0, 1.0) * (self.slices - 1)
        k = tau.floor().clamp(max=self.slices - 2)
        tables = list(self.tables)
        if self.config.use_kernel and _kernel_applies(x, tables):
            slices = (k.to(torch.int32).contiguous(), (tau - k).float().contiguous(), self.slices)
            out = hash_grid_kernel(x, tables, self.resolutions, self.gradient_storage, slices)
            weights = self.band_weights(out, self.slice_features)
            return out if weights is None else out * weights
        w = (tau - k)[:, None, None]
        n, L, K, F = x.shape[0], self.config.n_levels, self.slices, self.slice_features
        every = self.lookup_every_slice(x).view(n, L, K, F)
        index = k.long()[:, None, None, None].expand(n, L, 1, F)
        below = every.gather(2, index).squeeze(2)
        above = every.gather(2, index + 1).squeeze(2)
        return ((1.0 - w) * below + w * above).reshape(n, L * F)

    def lookup_every_slice(self, x: Tensor) -> Tensor:
        """``(n, L * K * F)``: every slice's features (the static grid's lookup of whole rows;
        the kernel's sliced path gathers only the two slices it blends)."""
        return HashGrid.forward(self, x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", slices={self.slices}"
