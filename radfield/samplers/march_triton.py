"""Occupancy-grid ray marching as Triton kernels: the GPU path of
:meth:`radfield.samplers.occupancy.OccupancyGrid.sample`.

The steps and the test of ``_march_cpu.c`` (its header comment), one program per ray, its steps
``BLOCK`` at a time as vectors: each step's midpoint and length by the step schedule's three phases,
its point's cascade (the finest box that holds it) and cell, kept when the midpoint lies before
``t_far`` and the cell is occupied. A ray stops at the first block that reaches past ``t_far``
(midpoints only grow). Two launches, as the C kernel: one counts each ray's kept steps, the other
writes them at the ray's offset (the counts' exclusive sum) in ray order, then step order.

Used on CUDA tensors; tested on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set
before this module is imported) against the PyTorch march, bit for bit
(``tests/test_march_triton.py``). Compiled for a GPU, Triton may fuse multiplies and adds, so a
step on a cell's face may land in the neighbouring cell there.
"""

from __future__ import annotations

import torch
from torch import Tensor

import triton
import triton.language as tl

BLOCK = 64
"""Steps a program tests at a time."""


@triton.jit
def _march(o_ptr, d_ptr, sched_ptr, t_far_ptr, growth_ptr, occupied_ptr, boxes_ptr, sizes_ptr, n_rays, n_steps,
           dt_min, dt_max, cone, n_cascades, res, starts_ptr, counts_ptr, ray_out, mid_out, dt_out,
           FILL: tl.constexpr, CONE: tl.constexpr, BLOCK: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    ox, oy, oz = tl.load(o_ptr + 3 * r), tl.load(o_ptr + 3 * r + 1), tl.load(o_ptr + 3 * r + 2)
    dx, dy, dz = tl.load(d_ptr + 3 * r), tl.load(d_ptr + 3 * r + 1), tl.load(d_ptr + 3 * r + 2)
    offset, anchor = tl.load(sched_ptr + r), tl.load(sched_ptr + n_rays + r)
    t_far = tl.load(t_far_ptr + r)
    if FILL:
        kept = tl.load(starts_ptr + r)  # where the ray's next kept step goes
    else:
        kept = r * 0  # the ray's kept steps so far (int64)
    j0 = 0
    go = tl.sum(tl.zeros((1,), dtype=tl.int32), 0) < n_steps
    while go:
        jj = j0 + tl.arange(0, BLOCK)
        j = jj.to(tl.float32)
        mid = anchor + (j + offset) * dt_min
        dt = tl.zeros((BLOCK,), dtype=tl.float32) + dt_min
        if CONE:
            n_a, t_a = tl.load(sched_ptr + 3 * n_rays + r), tl.load(sched_ptr + 4 * n_rays + r)
            n_b, t_b = tl.load(sched_ptr + 5 * n_rays + r), tl.load(sched_ptr + 6 * n_rays + r)
            n_ab = n_a + n_b
            k_b = tl.minimum(tl.maximum(j - n_a, 0.0), n_b)
            s_b = t_a * tl.load(growth_ptr + k_b.to(tl.int64), mask=(j >= n_a) & (j < n_ab), other=0.0)
            dt_b = cone * s_b
            mid_b = s_b + dt_b / 2.0
            s_c = t_b + tl.maximum(j - n_ab, 0.0) * dt_max
            mid_c = s_c + dt_max / 2.0
            mid = tl.where(j < n_a, mid, tl.where(j < n_ab, mid_b, mid_c))
            dt = tl.where(j < n_a, dt, tl.where(j < n_ab, dt_b, dt_max))
        valid = (jj < n_steps) & (mid < t_far)
        x, y, z = ox + mid * dx, oy + mid * dy, oz + mid * dz
        k = tl.zeros((BLOCK,), dtype=tl.int32)
        for c in range(0, n_cascades - 1):
            b = boxes_ptr + 6 * c
            inside = (x >= tl.load(b)) & (x <= tl.load(b + 3)) & (y >= tl.load(b + 1)) & (y <= tl.load(b + 4)) \
                & (z >= tl.load(b + 2)) & (z <= tl.load(b + 5))
            k += tl.where(inside, 0, 1)
        index = k.to(tl.int64) * res * res * res
        for a in tl.static_range(3):
            coord = x if a == 0 else (y if a == 1 else z)
            lo = tl.load(boxes_ptr + 6 * k + a)
            size = tl.load(sizes_ptr + 3 * k + a)
            v = (coord - lo) / size * res
            i = tl.where(v > 0.0, tl.where(v < res, v.to(tl.int64), res - 1), 0)  # NaN -> 0
            index = index + i * (res * res if a == 0 else (res if a == 1 else 1))
        occupied = tl.load(occupied_ptr + index, mask=valid, other=0)
        keep = valid & (occupied != 0)
        if FILL:
            at = kept + tl.cumsum(keep.to(tl.int64), 0) - keep.to(tl.int64)
            tl.store(ray_out + at, r + at * 0, mask=keep)
            tl.store(mid_out + at, mid, mask=keep)
            tl.store(dt_out + at, dt, mask=keep)
        kept += tl.sum(keep.to(tl.int64), 0)
        j0 += BLOCK
        go = tl.sum(valid.to(tl.int32), 0) == BLOCK  # no midpoint past t_far yet, and steps left
    if not FILL:
        tl.store(counts_ptr + r, kept)


def march(o: Tensor, d: Tensor, sched: Tensor, t_far: Tensor, n_steps: int, growth: Tensor, dt_min: float,
          dt_max: float, cone: float, occupied: Tensor, boxes: Tensor, sizes: Tensor, n_cascades: int,
          res: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(ray_indices, t_mid, dt)`` of the kept steps ``j < n_steps``, sorted by ray then step.
    Arguments as ``_march_cpu.c``'s (contiguous float32, ``sched`` ``(7, n_rays)``, ``occupied``
    uint8)."""
    n_rays, device = o.shape[0], o.device
    counts = torch.zeros(n_rays, dtype=torch.int64, device=device)
    head = (o, d, sched, t_far, growth, occupied, boxes, sizes, n_rays, n_steps, dt_min, dt_max, cone,
            n_cascades, res)
    dummy_i, dummy_f = counts[:0], o.new_zeros(0)
    if n_rays:
        _march[(n_rays,)](*head, counts, counts, dummy_i, dummy_f, dummy_f, FILL=False, CONE=cone != 0, BLOCK=BLOCK)
    starts = torch.cumsum(counts, 0) - counts
    total = int(counts.sum())
    ray_indices = torch.empty(total, dtype=torch.int64, device=device)
    t_mid, dt = torch.empty(total, device=device), torch.empty(total, device=device)
    if total:
        _march[(n_rays,)](*head, starts, counts, ray_indices, t_mid, dt, FILL=True, CONE=cone != 0, BLOCK=BLOCK)
    return ray_indices, t_mid, dt
