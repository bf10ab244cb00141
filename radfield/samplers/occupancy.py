"""Occupancy-grid sampling (Instant-NGP): march rays through a box, skip empty cells.

Vocabulary:

* **box** ``aabb`` and ``aabb_scale`` (Instant-NGP's, :class:`radfield.models.SceneInfo`'s
  ``meta``; 1 when absent): the **region of interest** is the box shrunk ``aabb_scale`` times
  about its centre, of half-size ``h`` per axis (the box's is ``H = aabb_scale * h``).
* **cascades** ``k = 0 .. C - 1``: nested grids of ``resolution^3`` cells each. Cascade ``k``
  covers the box of half-size ``h 2^k`` about the centre, the last one the whole box (``H``,
  which clips ``h 2^(C-1)`` when ``aabb_scale`` is not a power of two). Example:
  ``aabb_scale = 4``, box ``[-4, 4]^3``: three cascades ``[-1, 1]^3``, ``[-2, 2]^3``,
  ``[-4, 4]^3`` with cells of 1/32, 1/16 and 1/8 at resolution 64. Without ``aabb_scale``
  there is one cascade, the box. A point's occupancy is that of its cell in the **finest
  cascade containing it**. Cells are indexed ``k R^3 + x R^2 + y R + z``.
* **density** and **occupied**: each cell keeps an exponential moving average of the field's
  density at jittered points inside it; it is occupied when its opacity over one marching step
  of its cascade, ``density * step_k``, exceeds ``min(threshold, mean opacity of cascade 0)``.
* **seen** cells (Instant-NGP's untrained cells): a cell is seen when it lies within its
  half-diagonal of some training camera's viewing frustum (:func:`radfield.cameras.near_frustum`,
  through the cameras' lenses); no training ray passes through an unseen cell, so whatever
  density the field learns there is unconstrained (floaters in front of novel views, and work
  for every ray through it), and it is never occupied. Without training cameras every cell is
  seen.
* **marching**: steps ``dt(t) = clamp(cone_angle * t, dt_min, dt_max)``, so with a cone angle
  samples grow sparse with distance (``cone_angle = 0``: fixed steps ``dt_min``). Boundaries
  ``t_{j+1} = t_j + dt(t_j)`` from ``t_0 = t_near + (offset - 1/2) dt(t_near)`` (``offset``
  1/2, or random in ``[0, 1)`` when jittering); sample ``j`` is the interval
  ``[t_j, t_j + dt(t_j)]``, kept when its midpoint lies before the box exit and in an occupied
  cell. :class:`StepSchedule` computes ``t_j`` in closed form, so the steps per ray are bounded
  (``1 / cone_angle + log(dt_max / dt_min) / log(1 + cone_angle) + diagonal / dt_max``).
  ``dt_min``: cascade 0's diagonal over ``steps_per_diagonal``; ``dt_max``: the diagonal of a
  cell of the last cascade (Instant-NGP's ``sqrt3 / 1024`` and ``sqrt3 2^(C-1) / 128`` for its
  unit cube at resolution 128); ``step_k = min(dt_min * (cascade k's size / cascade 0's),
  dt_max)`` with a cone angle, ``dt_min`` without.

Early ray termination, which needs the field, is the model's:
:func:`radfield.rendering.pipeline.prune_occluded` with ``early_stop_eps``.

Output: packed samples (see :mod:`radfield.rendering.volume`) in a :class:`Samples`.
"""

from __future__ import annotations

import ctypes
import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from radfield.cameras import Rays, near_frustum
from radfield.errors import RadfieldError
from radfield.geometry import ray_aabb_intersect
from radfield.native import NativeLibrary, TritonModule
from radfield.samplers.samples import Samples

__all__ = ["OccupancyGrid", "OccupancyGridConfig", "Samples", "StepSchedule", "cascade_boxes",
           "footprint_steps", "pixel_footprint", "resolve_config"]

_P, _I32, _I64, _F32 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
_MARCH_HEAD = [_P, _P, _P, _P, _I64, _I64, _P, _F32, _F32, _F32, _P, _P, _P, _I32, _I32]
_MARCHER = NativeLibrary(Path(__file__).with_name("_march_cpu.c"), {
    "occ_march_count": [*_MARCH_HEAD, _P, _P, _I32],
    "occ_march_fill": [*_MARCH_HEAD, _P, _P, _P, _P, _P, _P, _I32],
}, "occupancy marcher CPU kernel", "the PyTorch march")
_TRITON = TritonModule("radfield.samplers.march_triton", "the occupancy march")


def _triton_marcher(o: Tensor):
    """:mod:`radfield.samplers.march_triton` for rays on a GPU, else None (the tests run it on the
    CPU under Triton's interpreter by replacing this function)."""
    return _TRITON.load() if o.is_cuda else None

LARGE_SCENE_CONE_ANGLE = 1 / 256
"""Instant-NGP's cone angle for scenes larger than the region of interest."""


@dataclass
class OccupancyGridConfig:
    resolution: int = 64
    """Cells per axis of each cascade. Instant-NGP uses 128 on a GPU; 64 keeps the CPU update
    cheap."""
    cascades: int = 0
    """Nested grids; 0 = auto: ``1 + ceil(log2(aabb_scale))``, one without an ``aabb_scale``."""
    cone_angle: float = -1.0
    """Steps grow as ``cone_angle * t``; -1 = auto: 0 (fixed steps) when ``aabb_scale`` is 1,
    else 1/256 (Instant-NGP's for large scenes)."""
    update_every: int = 16
    decay: float = 0.95
    threshold: float = -1.0
    """Opacity per step (``density * step_k``) above which a cell is occupied (or the first
    cascade's mean opacity, when lower, as in Instant-NGP). -1 = auto: :data:`INSTANT_NGP_THRESHOLD`
    when ``aabb_scale`` is 1, else :data:`LARGE_SCENE_THRESHOLD`."""
    warmup_steps: int = 256
    """Before this step every update visits all cells; afterwards a quarter of all cells at random
    plus a quarter drawn from the occupied ones (Instant-NGP's schedule, over all cascades)."""
    steps_per_diagonal: int = 0
    """``dt_min`` = cascade 0's diagonal / this (Instant-NGP: sqrt(3) * 2 * bound / 1024); 0 = auto,
    from the training images' resolution (:func:`footprint_steps`), 1024 where no cameras say."""
    early_stop_eps: float = 1e-4
    early_stop_round: int = 16
    """Training's early-termination pass evaluates each ray's first this many samples, then twice
    as many a round, until the ray terminates (:func:`~radfield.rendering.pipeline.prune_occluded`);
    0 = all marched samples in one pass."""
    skip_unseen: bool = True
    """Cells that no training camera sees are never occupied (Instant-NGP's untrained cells)."""
    max_points_per_chunk: int = 1 << 21


INSTANT_NGP_THRESHOLD = 0.01
"""Instant-NGP's occupancy threshold (``NERF_MIN_OPTICAL_THICKNESS``), the auto value in a unit box."""
LARGE_SCENE_THRESHOLD = 0.03
"""The auto occupancy threshold when ``aabb_scale`` > 1. Instant-NGP's 0.01 leaves a thin haze in
a large box occupied, and renders march through all of it: on garden through a lens
(``aabb_scale`` 4, ``ngp``, 10 minutes, two seeds) 0.03 rendered the 15 test views 1.49-1.59x as
fast, at test PSNR +0.72 and -0.22 dB (within the seeds' 1.6 dB spread), SSIM +0.024 and +0.002,
the worst view better both times (``bench/RESULTS.md``, 2026-12-06)."""


def resolve_config(config: OccupancyGridConfig, aabb_scale: float = 1.0) -> OccupancyGridConfig:
    """A copy of ``config`` with ``cascades``, ``cone_angle`` and ``threshold`` decided for
    ``aabb_scale``.

    Example: ``aabb_scale = 4``, auto values -> 3 cascades, cone angle 1/256, threshold 0.03;
    ``aabb_scale = 1`` -> 1 cascade, cone angle 0 (a single grid with fixed steps), threshold 0.01."""
    if aabb_scale < 1:
        raise RadfieldError(f"aabb_scale {aabb_scale} is below 1 (the box must contain the region of interest)")
    most = 1 + math.ceil(math.log2(aabb_scale))
    cascades = config.cascades or most
    if not 1 <= cascades <= most:
        raise RadfieldError(f"occupancy.cascades={config.cascades}: aabb_scale {aabb_scale:g} allows 1 to {most} "
                            "(1 + ceil(log2(aabb_scale)); more would repeat the whole box), or 0 = auto")
    cone_angle = config.cone_angle
    if cone_angle == -1:
        cone_angle = 0.0 if aabb_scale == 1 else LARGE_SCENE_CONE_ANGLE
    elif cone_angle < 0:
        raise RadfieldError(f"occupancy.cone_angle={cone_angle}: use a value >= 0, or -1 = auto")
    threshold = config.threshold
    if threshold == -1:
        threshold = INSTANT_NGP_THRESHOLD if aabb_scale == 1 else LARGE_SCENE_THRESHOLD
    elif not (math.isfinite(threshold) and threshold >= 0):
        raise RadfieldError(f"occupancy.threshold={threshold}: use a finite value >= 0, or -1 = auto")
    return replace(config, cascades=cascades, cone_angle=float(cone_angle), threshold=float(threshold))


DEFAULT_STEPS_PER_DIAGONAL = 1024
"""Instant-NGP's march: 1024 steps over the diagonal of its unit cube (for 800 px images)."""
STEPS_PER_FOOTPRINT = 0.7
"""Auto ``steps_per_diagonal``: marching steps per pixel footprint at the box's centre."""
MIN_STEPS_PER_DIAGONAL = 64
"""The coarsest auto march (tiny images)."""


def pixel_footprint(cameras, point: Tensor) -> float:
    """The median over ``cameras`` of the width one pixel covers at ``point`` ``(3,)``: the
    camera's distance to it over its focal length in pixels. Example: a camera 4 units away with
    ``fx = fy = 277.8`` (200 px, 40 degrees) -> 0.0144."""
    centres = cameras.centers.detach().double()
    focal = (cameras.fx.detach() + cameras.fy.detach()).double() / 2
    return float(((centres - point.double()).norm(dim=-1) / focal).median())


def footprint_steps(cameras, aabb: Tensor, aabb_scale: float, cascades: int) -> int:
    """``steps_per_diagonal`` for ``cameras``: :data:`STEPS_PER_FOOTPRINT` steps per pixel footprint
    at the box's centre (:func:`pixel_footprint`) over cascade 0's diagonal, at most
    :data:`DEFAULT_STEPS_PER_DIAGONAL` and at least :data:`MIN_STEPS_PER_DIAGONAL`. A step much
    finer than a pixel adds samples that see the same colour (Instant-NGP's 1024 steps suit 800 px
    images); one coarser than a pixel misses thin surfaces. Example: box ``[-1.5, 1.5]^3``
    (diagonal 5.2), 200 px cameras 4 units away (footprint 0.0144): ``5.2 / 0.0144 *
    STEPS_PER_FOOTPRINT`` rounded up."""
    box = cascade_boxes(aabb, aabb_scale, cascades)[0]
    diagonal = float((box[3:] - box[:3]).double().norm())
    footprint = pixel_footprint(cameras, (aabb[:3] + aabb[3:]) / 2)
    steps = math.ceil(diagonal / footprint * STEPS_PER_FOOTPRINT)
    return int(min(max(steps, MIN_STEPS_PER_DIAGONAL), DEFAULT_STEPS_PER_DIAGONAL))


def cascade_boxes(aabb: Tensor, aabb_scale: float, cascades: int) -> Tensor:
    """``(cascades, 6)`` the cascades' boxes: cascade ``k`` is ``centre -+ min(h 2^k, H)`` with
    ``H`` the box's half-size and ``h = H / aabb_scale``; the last is ``aabb`` itself (to the bit).

    Example: ``aabb = [-4, -4, -4, 4, 4, 4]``, ``aabb_scale = 4``, 3 cascades: half-sizes 1, 2, 4.
    ``aabb_scale = 3``: half-sizes 4/3, 8/3 and 4 (the last clipped to the box)."""
    a = aabb.double()
    centre, half = (a[:3] + a[3:]) / 2, (a[3:] - a[:3]) / 2
    boxes = []
    for k in range(cascades - 1):
        hk = torch.minimum(half / aabb_scale * 2 ** k, half)
        boxes.append(torch.cat([centre - hk, centre + hk]).to(aabb.dtype))
    return torch.stack([*boxes, aabb.clone()])


@dataclass
class StepSchedule:
    """The march of each ray in closed form: ``t_{j+1} = t_j + dt(t_j)``,
    ``dt(t) = clamp(c t, dt_min, dt_max)``, from ``t_0 = t_near + (offset - 1/2) dt(t_near)``,
    in three phases (``t1 = dt_min / c``, ``t2 = dt_max / c``):

    * A, ``t_j < t1``: steps ``dt_min``, ``t_j = t_0 + j dt_min`` for
      ``j < n_a = ceil((t1 - t_0) / dt_min)`` (all ``j`` when ``c = 0``);
    * B, ``t1 <= t_j < t2``: steps ``c t_j``, ``t_j = t_a (1 + c)^(j - n_a)`` from
      ``t_a = t_0 + n_a dt_min``, for ``n_b = ceil(log(t2 / t_a) / log(1 + c))`` steps;
    * C, beyond: steps ``dt_max``, ``t_j = t_b + (j - n_a - n_b) dt_max`` from
      ``t_b = t_a (1 + c)^n_b``.

    Example: ``c = 0.5``, ``dt_min = 1``, ``dt_max = 4``, ``t_0 = 0.5`` (so ``t1 = 2``, ``t2 = 8``):
    A: 0.5, 1.5 (``n_a = 2``); B from ``t_a = 2.5``: 2.5, 3.75, 5.625 (``n_b = ceil(2.87) = 3``);
    C from ``t_b = 8.4375``: 8.4375, 12.4375, ... Phase A midpoints are written
    ``anchor + (j + offset) dt_min`` with ``anchor = t_near`` when ``dt(t_near) = dt_min``: the
    fixed-step march's formula, to the bit.

    Attributes (``(n_rays,)``; ``n_a``, ``n_b`` as floats, ``n_a = inf`` when ``c = 0``):
        offset, anchor, t_0, n_a, t_a, n_b, t_b; the scalars dt_min, dt_max, cone_angle; and
        ``growth`` ``(max n_b + 1,)``, the table of ``(1 + c)^k`` that phase B multiplies ``t_a``
        by (one table, so the compiled marcher's steps equal these to the bit).
    """

    offset: Tensor
    anchor: Tensor
    t_0: Tensor
    n_a: Tensor
    t_a: Tensor
    n_b: Tensor
    t_b: Tensor
    dt_min: float
    dt_max: float
    cone_angle: float
    growth: Tensor

    @classmethod
    def start(cls, t_near: Tensor, offset: Tensor, dt_min: float, dt_max: float,
              cone_angle: float) -> "StepSchedule":
        """The schedule of rays entering at ``t_near`` with ``offset`` (both ``(n_rays,)``)."""
        c, dt_max = cone_angle, max(dt_max, dt_min)
        dt_first = (t_near * c).clamp(dt_min, dt_max)
        t_0 = t_near + (offset - 0.5) * dt_first
        anchor = torch.where(t_near * c > dt_min, t_0 - (offset - 0.5) * dt_min, t_near)
        if c == 0:
            inf = torch.full_like(t_near, math.inf)
            return cls(offset, anchor, t_0, inf, inf, torch.zeros_like(t_near), inf, dt_min, dt_max, 0.0,
                       t_near.new_ones(1))
        n_a = torch.ceil((dt_min / c - t_0) / dt_min).clamp(min=0)
        t_a = t_0 + n_a * dt_min
        n_b = torch.ceil(torch.log(dt_max / c / t_a) / math.log1p(c)).clamp(min=0)
        n_growth = int(n_b.max().item()) + 1 if len(n_b) else 1
        growth = t_near.new_tensor(1 + c) ** torch.arange(n_growth, device=t_near.device, dtype=t_near.dtype)
        return cls(offset, anchor, t_0, n_a, t_a, n_b, t_a * growth[n_b.long()], dt_min, dt_max, c, growth)

    def rows(self, index: Tensor | slice) -> "StepSchedule":
        """The schedule of the rays ``index`` (in that order, repeats allowed)."""
        pick = [getattr(self, k)[index] for k in ("offset", "anchor", "t_0", "n_a", "t_a", "n_b", "t_b")]
        return StepSchedule(*pick, self.dt_min, self.dt_max, self.cone_angle, self.growth)

    def at(self, j: Tensor) -> tuple[Tensor, Tensor]:
        """``(midpoint, dt)`` of steps ``j`` (float, ``(n_rays, k)``, row ``r`` of ray ``r``)."""
        col = lambda v: v[:, None]  # noqa: E731
        mid_a = col(self.anchor) + (j + col(self.offset)) * self.dt_min
        if self.cone_angle == 0:
            return mid_a, torch.full_like(mid_a, self.dt_min)
        n_a, n_ab = col(self.n_a), col(self.n_a + self.n_b)
        start_b = col(self.t_a) * self.growth[(j - n_a).clamp(min=0).minimum(col(self.n_b)).long()]
        start_c = col(self.t_b) + (j - n_ab).clamp(min=0) * self.dt_max
        in_a, in_b = j < n_a, j < n_ab
        dt = torch.where(in_a, self.dt_min, torch.where(in_b, self.cone_angle * start_b, self.dt_max))
        return torch.where(in_a, mid_a, torch.where(in_b, start_b, start_c) + dt / 2), dt

    def steps_before(self, t: Tensor) -> Tensor:
        """``(n_rays,)`` long: the number of steps starting before ``t`` (``(n_rays,)``), the
        inverse of the phases above, rounded up."""
        s = (t - self.t_0) / self.dt_min
        if self.cone_angle > 0:
            s_b = self.n_a + torch.log(t.clamp(min=1e-30) / self.t_a) / math.log1p(self.cone_angle)
            s_c = self.n_a + self.n_b + (t - self.t_b) / self.dt_max
            s = torch.where(t <= self.t_a, s, torch.where(t <= self.t_b, s_b, s_c))
        return torch.ceil(s).clamp(min=0).long()


def _window_any(cells: Tensor, axis: int, k: int) -> Tensor:
    """``cells`` (bool, any shape) with each cell set when one within ``k`` cells of it along
    ``axis`` is (a 1-D max filter of width ``2 k + 1``): the window counts are differences of a
    cumulative sum, so the cost does not grow with ``k``."""
    if k == 0:
        return cells
    n = cells.shape[axis]
    counts = torch.cumsum(cells.int(), axis)
    zero = torch.zeros_like(counts.narrow(axis, 0, 1))
    counts = torch.cat([zero, counts], axis)  # counts[i] = occupied cells before i
    hi = counts.index_select(axis, torch.arange(n, device=cells.device).add(k + 1).clamp(max=n))
    lo = counts.index_select(axis, torch.arange(n, device=cells.device).sub(k).clamp(min=0))
    return hi > lo


def _cube_any(cells: Tensor, k: int) -> Tensor:
    """``cells`` (bool, ``(..., R, R, R)``) with each cell set when one within ``k`` cells of it
    along every one of the last three axes is: the ``(2 k + 1)^3`` max filter, one axis at a time
    (:func:`_window_any`)."""
    for axis in range(cells.ndim - 3, cells.ndim):
        cells = _window_any(cells, axis, k)
    return cells


class OccupancyGrid(nn.Module):
    """Instant-NGP's cascaded occupancy grid and ray marcher (see the module's vocabulary).

    Buffers (saved in checkpoints): ``density`` ``(C R^3,)`` EMA of density, ``occupied``
    ``(C R^3,)`` bool (one cascade: the names and shapes of the single grid), ``seen``
    ``(C R^3,)`` bool (:meth:`mark_seen`; all True in checkpoints written before it), ``n_updates``.
    ``aabb_scale`` comes from the scene (:class:`radfield.models.SceneInfo`), not the buffers.

    On the CPU (float32 rays) :meth:`sample` marches with the compiled kernel
    ``_march_cpu.c`` (:mod:`radfield.native`; the same samples as the PyTorch march, to the bit,
    tested); ``use_kernel = False`` on an instance, or ``RADFIELD_NO_KERNEL=1``, runs the PyTorch
    march, as do GPUs.
    """

    use_kernel = True

    def __init__(self, aabb: Tensor, config: OccupancyGridConfig = OccupancyGridConfig(),
                 aabb_scale: float = 1.0):
        super().__init__()
        self.config = config = resolve_config(config, aabb_scale)
        res, n = config.resolution, config.cascades
        self.register_buffer("aabb", aabb.float().clone())
        self.register_buffer("density", torch.zeros(n * res ** 3))
        self.register_buffer("occupied", torch.ones(n * res ** 3, dtype=torch.bool))
        self.register_buffer("seen", torch.ones(n * res ** 3, dtype=torch.bool))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))
        ijk = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("cell_ijk", ijk, persistent=False)
        boxes = cascade_boxes(self.aabb, aabb_scale, n)
        self.register_buffer("boxes", boxes, persistent=False)
        self.register_buffer("box_lo", boxes[:, :3].clone(), persistent=False)
        self.register_buffer("box_size", boxes[:, 3:] - boxes[:, :3], persistent=False)
        # Derived grids, keyed by the occupancy they came from (version, storage); each entry holds
        # that tensor, so its storage cannot be reused by another while the entry lives. Two
        # entries: ``occupied`` and a :meth:`widened` one (render passes alternate between them).
        self._dilated: list[tuple[tuple[int, int], Tensor, Tensor]] = []
        self._grown: tuple[tuple[tuple[int, int], float], Tensor, Tensor] | None = None

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "seen", torch.ones_like(self.seen))  # older checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def cell_points(self, cells: Tensor, offset: Tensor | float) -> Tensor:
        """``(n, 3)`` world points at ``offset`` (in ``[0, 1]^3`` of a cell; 0.5: the centre)
        inside flat cells ``cells`` ``(n,)``."""
        res = self.config.resolution
        k = cells // res ** 3
        u = (self.cell_ijk[cells % res ** 3].float() + offset) / res
        return self.box_lo[k] + u * self.box_size[k]

    def cell_centres(self) -> tuple[Tensor, Tensor]:
        """``((C R^3, 3) centres, (C R^3,) half-diagonals)`` of every cell, in index order."""
        cells = torch.arange(self.density.shape[0], device=self.density.device)
        half_diagonal = (self.box_size / self.config.resolution).norm(dim=-1) / 2
        return self.cell_points(cells, 0.5), half_diagonal[cells // self.config.resolution ** 3]

    @torch.no_grad()
    def mark_seen(self, cameras) -> None:
        """``seen``: the cells within their half-diagonal of some camera's frustum (the training
        cameras, :class:`radfield.cameras.Cameras`); the others are unoccupied from now on."""
        centres, radius = self.cell_centres()
        self.seen.copy_(near_frustum(centres, radius, cameras.to(centres.device)))
        self.occupied &= self.seen

    @property
    def n_cascades(self) -> int:
        return self.config.cascades

    @property
    def step_size(self) -> float:
        """``dt_min``: cascade 0's diagonal / ``steps_per_diagonal`` (0: the default's 1024)."""
        return self.box_size[0].norm().item() / (self.config.steps_per_diagonal or DEFAULT_STEPS_PER_DIAGONAL)

    @property
    def max_step(self) -> float:
        """``dt_max``: the diagonal of a cell of the last cascade (at least ``dt_min``)."""
        return max(self.step_size, self.box_size[-1].norm().item() / self.config.resolution)

    def cascade_steps(self) -> Tensor:
        """``(C,)`` ``step_k``, the marching step a cell's opacity is taken over: ``dt_min``
        without a cone angle, else ``min(dt_min * size_k / size_0, dt_max)`` (Instant-NGP's
        ``dt_min 2^k``)."""
        dt_min = self.step_size
        if self.config.cone_angle == 0:
            return torch.full((self.n_cascades,), dt_min, device=self.density.device)
        ratio = self.box_size.norm(dim=-1) / self.box_size[0].norm()
        return (dt_min * ratio).clamp(max=self.max_step)

    def cascade_of(self, x: Tensor) -> Tensor:
        """``(n,)`` long: the finest cascade containing each point of ``x`` ``(n, 3)`` (the last
        for points outside the box). The boxes are nested, so that is the number of boxes
        missing the point."""
        k = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for box in self.boxes[:-1]:
            k += ~((x >= box[:3]) & (x <= box[3:])).all(-1)
        return k

    def cell_index(self, x: Tensor, cascade: Tensor | None = None) -> Tensor:
        """Flat cell index of points ``x`` ``(n, 3)`` in ``cascade`` ``(n,)`` (default: the finest
        containing each point), clamped into that cascade's grid."""
        res = self.config.resolution
        if self.n_cascades == 1:  # no gather: the single grid's arithmetic
            k, lo, size = 0, self.box_lo[0], self.box_size[0]
        else:
            k = self.cascade_of(x) if cascade is None else cascade
            lo, size = self.box_lo[k], self.box_size[k]
        ijk = ((x - lo) / size * res).long().clamp_(0, res - 1)
        return k * res ** 3 + (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator | None = None,
               chunk: int = 1 << 17) -> None:
        """One EMA update, then re-threshold ``occupied``: every visited cell ``c`` (of any
        cascade) gets

        ``density_c <- max(decay * density_c, max_k density_fn(x_k))`` over all the jittered
        points ``x_k`` drawn in ``c`` this update (a cell may be drawn more than once); the
        others decay. Example: ``decay = 0.5``, ``density_c = 0.8``, two draws in ``c`` giving
        2 and 1 -> ``density_c = max(0.4, 2, 1) = 2``."""
        cfg = self.config
        n_cells = self.density.shape[0]
        dev = self.density.device
        if self.n_updates.item() < cfg.warmup_steps // cfg.update_every:
            cells = torch.arange(n_cells, device=dev)
        else:
            rand = torch.randint(0, n_cells, (n_cells // 4,), device=dev, generator=generator)
            occ = self.occupied.nonzero().squeeze(-1)
            if occ.numel() > 0:
                pick = torch.randint(0, occ.numel(), (n_cells // 4,), device=dev, generator=generator)
                cells = torch.cat([rand, occ[pick]])
            else:
                cells = rand
        x = self.cell_points(cells, torch.rand(cells.shape[0], 3, device=dev, generator=generator))
        new = torch.cat([density_fn(x[i:i + chunk]).float() for i in range(0, x.shape[0], chunk)])
        decayed = self.density * cfg.decay
        # A cell drawn several times keeps the max of all its draws (an amax scatter; plain
        # index assignment would keep an arbitrary one of them).
        decayed.scatter_reduce_(0, cells, new, reduce="amax", include_self=True)
        self.density.copy_(decayed)
        opacity = self.density.view(self.n_cascades, -1) * self.cascade_steps()[:, None]
        self.occupied.copy_((opacity > min(cfg.threshold, opacity[0].mean().item())).view(-1) & self.seen)
        self.n_updates += 1

    @torch.no_grad()
    def sample(self, rays: Rays, near: float = 0.0, jitter_generator: torch.Generator | None = None,
               jitter: bool = False) -> Samples:
        """March ``rays`` through the box; keep samples in occupied cells.

        Args:
            near: minimum ray distance.
            jitter: shift each ray's first step by one random fraction of it (training).
        Returns:
            Packed :class:`Samples`, each an interval of length ``dt(t_start)`` (``step_size``
            without a cone angle).
        """
        o, d = rays.origins.detach(), rays.directions.detach()
        n_rays, dev = o.shape[0], o.device
        t_near, t_far = ray_aabb_intersect(o, d, self.aabb)
        t_near = t_near.clamp(min=near)
        t_far = torch.where(t_far > t_near, t_far, t_near)  # misses: an empty range
        offset = (torch.rand(n_rays, device=dev, generator=jitter_generator) if jitter
                  else torch.full((n_rays,), 0.5, device=dev))
        steps = StepSchedule.start(t_near, offset, self.step_size, self.max_step, self.config.cone_angle)
        n_steps = int(steps.steps_before(t_far).max().item()) + 1 if n_rays else 0
        kernel = self.use_kernel and o.dtype == torch.float32
        triton_path = _triton_marcher(o) if kernel else None
        lib = _MARCHER.load() if kernel and triton_path is None and o.device.type == "cpu" else None
        if triton_path is not None:
            ray_indices, t_mid, dt = triton_path.march(*self._kernel_arguments(o, d, steps, t_far, n_steps))
        elif lib is not None:
            ray_indices, t_mid, dt = self._march_compiled(lib, o, d, steps, t_far, n_steps)
        else:
            per_chunk = max(1, self.config.max_points_per_chunk // max(n_steps, 1))
            parts = [self._march(o[r:r + per_chunk], d[r:r + per_chunk], steps.rows(slice(r, r + per_chunk)),
                                 t_far[r:r + per_chunk], n_steps, r) for r in range(0, n_rays, per_chunk)]
            ray_indices = torch.cat([torch.zeros(0, dtype=torch.long, device=dev), *(p[0] for p in parts)])
            t_mid, dt = (torch.cat([o.new_zeros(0), *(p[i] for p in parts)]) for i in (1, 2))
        t_starts = t_mid - dt / 2
        return Samples(t_starts, t_starts + dt, ray_indices, n_rays)

    def _kernel_arguments(self, o: Tensor, d: Tensor, steps: StepSchedule, t_far: Tensor, n_steps: int) -> tuple:
        """The marching kernels' arguments (``_march_cpu.c``'s and :func:`march_triton.march`'s):
        contiguous float32 rays, the schedule's ``(7, n_rays)`` rows, ``t_far``, the step cap (the
        PyTorch march's segments' end), the growth table, ``dt_min``, ``dt_max``, the cone angle,
        the occupancy as bytes, the boxes, their sizes, the cascades and the resolution."""
        k = self.coarse_factor
        sched = torch.stack([steps.offset, steps.anchor, steps.t_0, steps.n_a, steps.t_a, steps.n_b,
                             steps.t_b]).float().contiguous()
        return (o.contiguous(), d.contiguous(), sched, t_far.contiguous(), -(-n_steps // k) * k,
                steps.growth.float().contiguous(), steps.dt_min, steps.dt_max, steps.cone_angle,
                self.occupied.contiguous().view(torch.uint8), self.boxes.float().contiguous(),
                self.box_size.float().contiguous(), self.n_cascades, self.config.resolution)

    def _march_compiled(self, lib, o: Tensor, d: Tensor, steps: StepSchedule, t_far: Tensor,
                        n_steps: int) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_march` of all the rays by the compiled kernel (``_march_cpu.c``): the same steps,
        to the bit. It walks each ray's steps one by one (a few ns each) where the PyTorch march
        tests segments, then steps, as whole tensors; the step cap is the segments' end, as there."""
        o, d, sched, t_far, cap, growth, dt_min, dt_max, cone, occupied, boxes, sizes, n_cascades, res = \
            self._kernel_arguments(o, d, steps, t_far, n_steps)
        head = [o.data_ptr(), d.data_ptr(), sched.data_ptr(), t_far.data_ptr(), o.shape[0], cap,
                growth.data_ptr(), dt_min, dt_max, cone, occupied.data_ptr(),
                boxes.data_ptr(), sizes.data_ptr(), n_cascades, res]
        counts, spans = torch.empty(o.shape[0], dtype=torch.int64), torch.empty(o.shape[0], 2, dtype=torch.int64)
        lib.occ_march_count(*head, counts.data_ptr(), spans.data_ptr(), torch.get_num_threads())
        starts = torch.cumsum(counts, 0) - counts
        total = int(counts.sum())
        ray_indices = torch.empty(total, dtype=torch.int64)
        t_mid, dt = torch.empty(total), torch.empty(total)
        lib.occ_march_fill(*head, counts.data_ptr(), spans.data_ptr(), starts.data_ptr(), ray_indices.data_ptr(),
                           t_mid.data_ptr(), dt.data_ptr(), torch.get_num_threads())
        return ray_indices, t_mid, dt

    def _march(self, o: Tensor, d: Tensor, steps: StepSchedule, t_far: Tensor, n_steps: int,
               first_ray: int) -> tuple[Tensor, Tensor, Tensor]:
        """The kept steps ``j < n_steps`` of a chunk of rays, as ``(ray index + first_ray,
        midpoint, dt)`` sorted by ray then ``j``.

        Coarse pass: segments of K consecutive steps, tested at the middle ``x_c`` of their first
        and last midpoints against the grid dilated by one cell (finer cascades OR-ed into coarser
        ones), in ``x_c``'s cascade and the next coarser one. When the segment's midpoints lie
        within one cell of ``x_c`` per axis, every one of them lies in a cell adjacent to ``x_c``'s
        in one of those two cascades, so the pass never drops an occupied step; a segment longer
        than that (large steps in a fine cascade) is kept for the fine pass.
        Fine pass: the kept segments' steps, tested against the grid itself."""
        k = self.coarse_factor
        first = torch.arange(0, n_steps, k, device=o.device, dtype=o.dtype).expand(o.shape[0], -1)
        mid0, _ = steps.at(first)
        mid1, _ = steps.at(first + (k - 1))
        keep = mid0 < t_far[:, None]
        t_c, reach = (mid0 + mid1) / 2, (mid1 - mid0) / 2
        seg_ray = keep.nonzero()[:, 0]
        x_c = o[seg_ray] + t_c[keep][:, None] * d[seg_ray]
        keep[keep.clone()] = self._may_be_occupied(x_c, reach[keep][:, None] * d[seg_ray].abs())
        seg_ray, seg = keep.nonzero(as_tuple=True)
        j = (seg[:, None] * k + torch.arange(k, device=o.device)).to(o.dtype)
        t_mid, dt = steps.rows(seg_ray).at(j)
        fine = t_mid < t_far[seg_ray, None]
        x = o[seg_ray, None, :] + t_mid[..., None] * d[seg_ray, None, :]
        fine &= self.occupied[self.cell_index(x.reshape(-1, 3))].reshape(fine.shape)
        return seg_ray[:, None].expand_as(fine)[fine] + first_ray, t_mid[fine], dt[fine]

    def _may_be_occupied(self, x: Tensor, reach: Tensor) -> Tensor:
        """``(n,)`` bool: may a point within ``reach`` ``(n, 3)`` of ``x`` ``(n, 3)`` per axis be
        occupied? (True where ``reach`` exceeds a cell of ``x``'s cascade.)"""
        cascade = self.cascade_of(x) if self.n_cascades > 1 else torch.zeros_like(x[:, 0], dtype=torch.long)
        cell = self.box_size[cascade] / self.config.resolution
        dilated = self.dilated
        hit = (reach > cell).any(-1) | dilated[self.cell_index(x, cascade)]
        if self.n_cascades > 1:
            hit |= dilated[self.cell_index(x, (cascade + 1).clamp(max=self.n_cascades - 1))]
        return hit

    @property
    def coarse_factor(self) -> int:
        """Steps per coarse segment: the largest K with ``K dt_min / 2 <= `` a cell of cascade 0;
        with a cone angle at most ``1 + 4 / (sqrt3 R c)`` (10 at R = 64, c = 1/256), which keeps
        the geometric phase's segments (``(K - 1) c t`` long) of a ray from the centre within one
        cell of the cascade at distance ``t`` (cells of at least ``2 t / (sqrt3 R)``). K only
        trades speed: longer segments go to the fine pass whole."""
        cell = (self.box_size[0] / self.config.resolution).min().item()
        k = max(1, int(2 * cell / self.step_size))
        if self.config.cone_angle > 0:
            k = min(k, 1 + int(4 / (math.sqrt(3) * self.config.resolution * self.config.cone_angle)))
        return k

    @property
    def dilated(self) -> Tensor:
        """``(C R^3,)`` bool: per cascade, ``occupied`` OR-ed with every finer cascade's occupied
        cells that overlap a cell (:meth:`_with_finer`), then dilated by one cell (3 x 3 x 3 max
        filter)."""
        key = self._occupied_version()
        for k, _, dilated in self._dilated:
            if k == key:
                return dilated
        res = self.config.resolution
        dilated = _cube_any(self._with_finer(self.occupied.reshape(-1, res, res, res)), 1).reshape(-1)
        self._dilated = [*self._dilated[-1:], (key, self.occupied, dilated)]
        return dilated

    def _with_finer(self, occ: Tensor) -> Tensor:
        """``occ`` ``(C, R, R, R)`` with each cascade also marking its cells that overlap an
        occupied cell of the next finer one (so, by induction, of any finer one). A finer cell is
        no larger than a coarser one, so it overlaps at most 2 cells per axis (3 with the 1e-4
        cell margin that makes the overlap test conservative)."""
        occ, res = occ.clone(), self.config.resolution
        for k in range(1, self.n_cascades):
            ijk = occ[k - 1].nonzero().to(self.box_lo.dtype)
            fine = self.box_size[k - 1] / res
            lo = self.box_lo[k - 1] + ijk * fine
            u0 = ((lo - self.box_lo[k]) / self.box_size[k] * res - 1e-4).floor().long()
            u1 = ((lo + fine - self.box_lo[k]) / self.box_size[k] * res + 1e-4).floor().long()
            for shift in itertools.product(range(3), repeat=3):
                idx = u0 + torch.tensor(shift, device=u0.device)
                idx = idx[(idx <= u1).all(-1)].clamp(0, res - 1)
                occ[k][idx[:, 0], idx[:, 1], idx[:, 2]] = True
        return occ

    def grown(self, distance: float) -> Tensor:
        """``(C R^3,)`` bool: ``occupied`` grown by ``distance`` (world units) in every direction,
        in whole cells of each cascade: a ``(2k + 1)^3`` max filter with ``k = ceil(distance /
        cell side)`` (the smallest side of the cascade's cells). Example: cells of 1/32 and
        ``distance = 0.05``: ``k = 2``, every cell within 2 cells of an occupied one."""
        res = self.config.resolution
        occ = self.occupied.reshape(-1, res, res, res)
        out = []
        for k in range(self.n_cascades):
            cells = max(math.ceil(distance / float((self.box_size[k] / res).min()) - 1e-9), 0)
            out.append(_cube_any(occ[k], cells))
        return torch.cat(out).reshape(-1)

    @contextmanager
    def widened(self, distance: float) -> Iterator[None]:
        """Inside the block, march through :meth:`grown` instead of ``occupied`` (restored after):
        samples also in the empty space within ``distance`` of occupied cells. The grown grid is
        kept until ``occupied`` or ``distance`` changes (a frozen field's renders grow it once)."""
        kept = self.occupied
        key = (self._occupied_version(), distance)
        if self._grown is None or self._grown[0] != key:
            self._grown = (key, kept, self.grown(distance))
        self.occupied = self._grown[2]
        try:
            yield
        finally:
            self.occupied = kept

    def _occupied_version(self) -> tuple[int, int]:
        return (self.occupied._version, self.occupied.data_ptr())

    def occupancy_fraction(self) -> float:
        """The fraction of occupied cells, over all cascades."""
        return self.occupied.float().mean().item()
