"""The hash encoding as Triton kernels: the GPU path of :class:`radfield.fields.hashgrid.HashGrid`.

The same equations as :func:`radfield.fields.hashgrid.hash_grid_reference` (its module
docstring), one kernel launch per level and pass, each program a block of ``BLOCK`` points:

* forward: ``out[n, l F + f] = sum_c w_c table_l[row_c, f]`` (corners in the reference's order);
* table gradient: ``grad_table_l[row_c, f] += w_c grad_out[n, l F + f]`` (atomic adds: many
  points share a vertex);
* input gradient: ``grad_x[n, d] += res_l sum_c (dw_c / dt_d) sum_f grad_out[n, l F + f]
  table_l[row_c, f]``, the levels launched one after another (each program owns its points, so
  no atomics), then zeroed where ``x`` is outside [0, 1] (the clamp's gradient).

Hashed rows use uint32 arithmetic: ``(c_x xor c_y 2654435761 xor c_z 805459861) mod T_l``.
Used on CUDA tensors (float32, features per level a power of two); tested on the CPU under
Triton's interpreter (``TRITON_INTERPRET=1``, set before this module is imported). Importing
this module needs the ``triton`` package: :func:`available` says whether it is there.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

import triton
import triton.language as tl

from radfield.fields.hashgrid import check_points, clamp_gradient

BLOCK = 128
"""Points per program."""


@triton.jit
def _corner_rows(i0x, i0y, i0z, res, rows, c: tl.constexpr, DENSE: tl.constexpr):
    cx = i0x + (c & 1)
    cy = i0y + ((c >> 1) & 1)
    cz = i0z + ((c >> 2) & 1)
    if DENSE:
        r1 = res + 1
        row = cx + cy * r1 + cz * r1 * r1
    else:
        h = (cx.to(tl.uint32) * 1) ^ (cy.to(tl.uint32) * 2654435761) ^ (cz.to(tl.uint32) * 805459861)
        row = (h % rows.to(tl.uint32)).to(tl.int32)
    return row


@triton.jit
def _block(x_ptr, n, res, BLOCK: tl.constexpr):
    """This program's points ``offs`` (and ``mask``, those below ``n``): per axis, the cell's lower
    corner ``i0`` and the fraction ``t`` inside it."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    xs = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 0, mask=mask, other=0.0), 0.0), 1.0)
    ys = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 1, mask=mask, other=0.0), 0.0), 1.0)
    zs = tl.minimum(tl.maximum(tl.load(x_ptr + offs * 3 + 2, mask=mask, other=0.0), 0.0), 1.0)
    px, py, pz = xs * res, ys * res, zs * res
    fx = tl.minimum(tl.floor(px), res - 1.0)
    fy = tl.minimum(tl.floor(py), res - 1.0)
    fz = tl.minimum(tl.floor(pz), res - 1.0)
    return offs, mask, fx.to(tl.int32), fy.to(tl.int32), fz.to(tl.int32), px - fx, py - fy, pz - fz


@triton.jit
def _weight(tx, ty, tz, c: tl.constexpr):
    wx = tx if (c & 1) else 1.0 - tx
    wy = ty if ((c >> 1) & 1) else 1.0 - ty
    wz = tz if ((c >> 2) & 1) else 1.0 - tz
    return (wx * wy) * wz


@triton.jit
def _forward_level(x_ptr, table_ptr, out_ptr, n, res, rows, out_cols, col,
                   DENSE: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, i0x, i0y, i0z, tx, ty, tz = _block(x_ptr, n, res, BLOCK)
    feats = tl.arange(0, F)
    acc = tl.zeros((BLOCK, F), dtype=tl.float32)
    for c in tl.static_range(8):
        row = _corner_rows(i0x, i0y, i0z, res, rows, c, DENSE)
        value = tl.load(table_ptr + row[:, None] * F + feats[None, :], mask=mask[:, None], other=0.0)
        acc += _weight(tx, ty, tz, c)[:, None] * value
    tl.store(out_ptr + offs[:, None] * out_cols + col + feats[None, :], acc, mask=mask[:, None])


@triton.jit
def _backward_table_level(x_ptr, grad_out_ptr, grad_table_ptr, n, res, rows, out_cols, col,
                          DENSE: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, i0x, i0y, i0z, tx, ty, tz = _block(x_ptr, n, res, BLOCK)
    feats = tl.arange(0, F)
    g = tl.load(grad_out_ptr + offs[:, None] * out_cols + col + feats[None, :], mask=mask[:, None], other=0.0)
    for c in tl.static_range(8):
        row = _corner_rows(i0x, i0y, i0z, res, rows, c, DENSE)
        tl.atomic_add(grad_table_ptr + row[:, None] * F + feats[None, :], _weight(tx, ty, tz, c)[:, None] * g,
                      mask=mask[:, None])


@triton.jit
def _backward_input_level(x_ptr, table_ptr, grad_out_ptr, grad_x_ptr, n, res, rows, out_cols, col,
                          DENSE: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr):
    offs, mask, i0x, i0y, i0z, tx, ty, tz = _block(x_ptr, n, res, BLOCK)
    feats = tl.arange(0, F)
    g = tl.load(grad_out_ptr + offs[:, None] * out_cols + col + feats[None, :], mask=mask[:, None], other=0.0)
    gx = tl.zeros((BLOCK,), dtype=tl.float32)
    gy = tl.zeros((BLOCK,), dtype=tl.float32)
    gz = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in tl.static_range(8):
        row = _corner_rows(i0x, i0y, i0z, res, rows, c, DENSE)
        value = tl.load(table_ptr + row[:, None] * F + feats[None, :], mask=mask[:, None], other=0.0)
        dot = tl.sum(value * g, axis=1)
        wx = tx if (c & 1) else 1.0 - tx
        wy = ty if ((c >> 1) & 1) else 1.0 - ty
        wz = tz if ((c >> 2) & 1) else 1.0 - tz
        sx = 1.0 if (c & 1) else -1.0
        sy = 1.0 if ((c >> 1) & 1) else -1.0
        sz = 1.0 if ((c >> 2) & 1) else -1.0
        gx += sx * wy * wz * dot
        gy += sy * wx * wz * dot
        gz += sz * wx * wy * dot
    for d, gd in ((0, gx), (1, gy), (2, gz)):
        old = tl.load(grad_x_ptr + offs * 3 + d, mask=mask, other=0.0)
        tl.store(grad_x_ptr + offs * 3 + d, old + gd * res, mask=mask)


def _levels(tables: Sequence[Tensor], resolutions: Sequence[int]):
    """Per level: ``(level, table, res, rows, dense)``."""
    for level, (table, res) in enumerate(zip(tables, resolutions)):
        yield level, table, int(res), table.shape[0], (res + 1) ** 3 <= table.shape[0]


class _TritonHashGrid(torch.autograd.Function):
    """Inputs: x (n, 3) float32, resolutions, *tables (T_l, F) float32, all on one device."""

    @staticmethod
    def forward(ctx, x: Tensor, resolutions: tuple[int, ...], *tables: Tensor) -> Tensor:
        x = x.contiguous()
        tables = tuple(t.contiguous() for t in tables)
        n, n_feat = x.shape[0], tables[0].shape[1]
        out = torch.empty(n, len(tables) * n_feat, dtype=torch.float32, device=x.device)
        grid = (triton.cdiv(n, BLOCK),)
        if n:
            for level, table, res, rows, dense in _levels(tables, resolutions):
                _forward_level[grid](x, table, out, n, res, rows, out.shape[1], level * n_feat,
                                     DENSE=dense, F=n_feat, BLOCK=BLOCK)
        ctx.save_for_backward(x, *tables)
        ctx.resolutions = resolutions
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, *tables = ctx.saved_tensors
        grad_out = grad_out.contiguous().float()
        n, n_feat = x.shape[0], tables[0].shape[1]
        grid = (triton.cdiv(n, BLOCK),)
        grad_tables: list[Tensor | None] = [None] * len(tables)
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        for level, table, res, rows, dense in _levels(tables, ctx.resolutions):
            if ctx.needs_input_grad[2 + level]:
                grad_tables[level] = torch.zeros_like(table)
                if n:
                    _backward_table_level[grid](x, grad_out, grad_tables[level], n, res, rows, grad_out.shape[1],
                                                level * n_feat, DENSE=dense, F=n_feat, BLOCK=BLOCK)
            if grad_x is not None and n:
                _backward_input_level[grid](x, table, grad_out, grad_x, n, res, rows, grad_out.shape[1],
                                            level * n_feat, DENSE=dense, F=n_feat, BLOCK=BLOCK)
        if grad_x is not None:
            grad_x = clamp_gradient(x, grad_x)
        return (grad_x, None, *grad_tables)


def applies(x: Tensor, tables: Sequence[Tensor]) -> bool:
    """The Triton path takes float32 inputs on one device with a power-of-two feature count."""
    f = tables[0].shape[1]
    return (x.dtype == torch.float32 and all(t.dtype == torch.float32 and t.device == x.device for t in tables)
            and f & (f - 1) == 0)


@torch.compiler.disable
def hash_grid_triton(x: Tensor, tables: Sequence[Tensor], resolutions: Sequence[int]) -> Tensor:
    """Same contract as :func:`radfield.fields.hashgrid.hash_grid_reference` (float32)."""
    check_points(x)
    return _TritonHashGrid.apply(x, tuple(int(r) for r in resolutions), *tables)
