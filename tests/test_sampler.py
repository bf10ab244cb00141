"""The occupancy-grid ray marcher and its update, against hand-computed distances, a
brute-force float64 march and analytic density fields; cascades and cone-angle steps against
boxes and cells by hand, a float64 per-ray march of ``t += clamp(c t, dt_min, dt_max)`` and the
fixed-step march of the single grid (to the bit)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor

from radfield.cameras import (Cameras, Rays, frustum_slopes, generate_rays, near_frustum, orbit_poses,
                              project)
from radfield.cli import build_parser, run_config_from_args
from radfield.config import PRESETS, RunConfig, apply_overrides
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.fields.nerfacto import Contraction, SeenGrid
from radfield.lens import Lens
from radfield.geometry import ray_aabb_intersect
from radfield.models import SceneInfo, build_model
from radfield.rendering.pipeline import prune_occluded
from radfield.rendering.volume import render
from radfield.samplers.samples import Samples
from radfield.samplers import occupancy
from radfield.samplers.occupancy import (STEPS_PER_FOOTPRINT, OccupancyGrid, OccupancyGridConfig, StepSchedule,
                                         cascade_boxes, footprint_steps, pixel_footprint, resolve_config)
from radfield.training.checkpoint import load_run
from radfield.training.trainer import Trainer
from conftest import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

# An asymmetric box: x in [-1, 1], y in [-0.5, 1.5], z in [0, 1]; its diagonal is exactly 3.
LO = np.array([-1.0, -0.5, 0.0])
HI = np.array([1.0, 1.5, 1.0])
AABB = torch.tensor([*LO, *HI], dtype=torch.float32)


def _rays(origins, directions) -> Rays:
    o = torch.as_tensor(np.asarray(origins, dtype=np.float32))
    d = torch.as_tensor(np.asarray(directions, dtype=np.float32))
    d = d / d.norm(dim=-1, keepdim=True)
    return Rays(o, d, torch.ones(o.shape[0]))


# ------------------------------------------------------------------------- brute-force marching
def _ref_slab(o, d):
    t_near, t_far = -math.inf, math.inf
    for a in range(3):
        if d[a] == 0.0:
            if not LO[a] <= o[a] <= HI[a]:
                return math.inf, -math.inf
            continue
        t0, t1 = (LO[a] - o[a]) / d[a], (HI[a] - o[a]) / d[a]
        t_near, t_far = max(t_near, min(t0, t1)), min(t_far, max(t0, t1))
    return t_near, t_far


def _ref_cell(x, res):
    u = (x - LO) / (HI - LO) * res
    return tuple(np.clip(np.floor(u).astype(int), 0, res - 1)), u


def _ref_march(o, d, occ, dt, near=0.0, offset=0.5, tol=1e-4):
    """Steps k kept by a float64 march (midpoints t_near + (k + offset) dt < t_far in occupied
    cells), and the steps too close to a cell face or to t_far to call either way."""
    o, d = np.asarray(o, dtype=np.float64), np.asarray(d, dtype=np.float64)
    t_near, t_far = _ref_slab(o, d)
    t_near = max(t_near, near)
    kept, ambiguous = set(), set()
    if not t_far > t_near:
        return t_near, kept, ambiguous
    k = 0
    while (t_mid := t_near + (k + offset) * dt) < t_far + tol:
        cell, u = _ref_cell(o + t_mid * d, occ.shape[0])
        inner = (u > tol) & (u < occ.shape[0] - tol)  # faces on the box boundary do not matter
        if abs(t_mid - t_far) < tol or np.any((np.abs(u - np.round(u)) < tol) & inner):
            ambiguous.add(k)
        if t_mid < t_far and occ[cell]:
            kept.add(k)
        k += 1
    return t_near, kept, ambiguous


def _grid(res=8, steps_per_diagonal=100, occ=None) -> OccupancyGrid:
    grid = OccupancyGrid(AABB, OccupancyGridConfig(resolution=res, steps_per_diagonal=steps_per_diagonal))
    if occ is not None:
        grid.occupied.copy_(torch.from_numpy(occ.reshape(-1)))  # cell x * R^2 + y * R + z
    return grid


def _sub_box_occupancy(res=8):
    occ = np.zeros((res, res, res), dtype=bool)
    occ[2:6, 1:5, 3:7] = True
    return occ


def _random_rays(n, seed):
    g = np.random.default_rng(seed)
    centre = (LO + HI) / 2
    v = g.normal(size=(n, 3))
    origins = centre + 3.0 * v / np.linalg.norm(v, axis=1, keepdims=True)
    origins[: n // 8] = LO + (HI - LO) * g.uniform(size=(n // 8, 3))  # some start inside the box
    targets = LO + (HI - LO) * g.uniform(size=(n, 3))
    dirs = targets - origins
    dirs[n // 8: n // 8 + 2] *= -1  # two rays look away from the box
    return origins, dirs


def _check_layout(s, grid, rays, occ):
    """Sorted by ray then t, intervals of length step_size, midpoints in the box and in occupied cells."""
    dt = grid.step_size
    ri, t0, t1 = s.ray_indices, s.t_starts, s.t_ends
    assert ri.dtype == torch.long and t0.shape == t1.shape == ri.shape == (len(s),)
    assert s.n_rays == len(rays)
    torch.testing.assert_close(t1 - t0, torch.full_like(t0, dt), atol=1e-5, rtol=0)
    assert (ri[1:] >= ri[:-1]).all()
    same = ri[1:] == ri[:-1]
    assert ((t0[1:] - t0[:-1])[same] > dt * 0.99).all()
    x = s.positions(rays)
    mid = (t0 + t1) / 2
    torch.testing.assert_close(x, rays.origins[ri] + mid[:, None] * rays.directions[ri])
    xs = x.double().numpy()
    assert (xs >= LO - 1e-5).all() and (xs <= HI + 1e-5).all()
    for p in xs:
        cell, u = _ref_cell(p, occ.shape[0])
        near_face = np.any(np.abs(u - np.round(u)) < 1e-4)
        assert occ[cell] or near_face


def test_step_size_is_diagonal_over_steps():
    assert _grid(steps_per_diagonal=100).step_size == pytest.approx(0.03, rel=1e-6)


def test_sample_matches_brute_force_march():
    occ = _sub_box_occupancy()
    grid = _grid(occ=occ)
    dt = grid.step_size
    origins, dirs = _random_rays(48, seed=0)
    rays = _rays(origins, dirs)
    s = grid.sample(rays)
    assert len(s) > 200
    _check_layout(s, grid, rays, occ)
    n_ambiguous = 0
    for r in range(len(rays)):
        o, d = rays.origins[r].double().numpy(), rays.directions[r].double().numpy()
        t_near, kept, ambiguous = _ref_march(o, d, occ, dt)
        n_ambiguous += len(ambiguous)
        got_t = s.t_starts[s.ray_indices == r].double().numpy()
        k = np.round((got_t - t_near) / dt)
        np.testing.assert_allclose(got_t, t_near + k * dt, atol=1e-4)  # on the step lattice
        assert set(k.astype(int).tolist()) ^ kept <= ambiguous, r
    assert n_ambiguous < 0.02 * len(s)
    # Rays looking away from the box (indices 6, 7) have no samples.
    assert not ((s.ray_indices == 6) | (s.ray_indices == 7)).any()


def test_sample_with_jitter_and_near():
    occ = _sub_box_occupancy()
    grid = _grid(occ=occ)
    dt = grid.step_size
    origins, dirs = _random_rays(32, seed=1)
    rays = _rays(origins, dirs)
    near = 0.1
    s = grid.sample(rays, near=near, jitter=True, jitter_generator=torch.Generator().manual_seed(0))
    _check_layout(s, grid, rays, occ)
    for r in range(len(rays)):
        o, d = rays.origins[r].double().numpy(), rays.directions[r].double().numpy()
        got_t = s.t_starts[s.ray_indices == r].double().numpy()
        if got_t.size == 0:
            continue
        t_near = max(_ref_slab(o, d)[0], near)
        steps = (got_t + dt / 2 - t_near) / dt  # k + offset, one offset in [0, 1) per ray
        offset = steps[0] - math.floor(steps[0])
        k = np.round(steps - offset)
        np.testing.assert_allclose(steps - k, offset, atol=1e-3)  # the same offset on the whole ray
        _, kept, ambiguous = _ref_march(o, d, occ, dt, near=near, offset=offset)
        assert set(k.astype(int).tolist()) ^ kept <= ambiguous, r
    # Rays starting inside the box begin at `near`, not at their (negative) box entry.
    inside = s.ray_indices < 4
    assert (s.t_starts[inside] + dt / 2 >= near - 1e-6).all()


def test_misses_and_empty_grid_give_zero_samples():
    o = [[-2.0, 3.0, 0.5], [0.0, 0.5, 0.5], [0.0, 2.0, 0.5], [3.0, 0.0, 0.5]]
    d = [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
    rays = _rays(o, d)
    s = _grid().sample(rays)  # all cells occupied (fresh grid)
    # Only ray 1 (inside the box, along +x from x = 0 to x = 1: 1 / 0.03 -> 33 midpoints) has samples.
    assert s.ray_indices.unique().tolist() == [1]
    assert len(s) == 33
    torch.testing.assert_close(s.t_starts, torch.arange(33, dtype=torch.float32) * 0.03, atol=1e-5, rtol=0)

    empty = _grid(occ=np.zeros((8, 8, 8), dtype=bool))
    s = empty.sample(rays)
    assert len(s) == 0 and s.n_rays == 4
    assert s.t_starts.shape == s.t_ends.shape == s.ray_indices.shape == (0,)
    assert s.ray_indices.dtype == torch.long
    assert s.positions(rays).shape == (0, 3)
    out = render(torch.zeros(0), torch.zeros(0, 3), s.t_starts, s.t_ends, s.ray_indices, s.n_rays,
                 torch.tensor([0.2, 0.4, 0.6]))
    torch.testing.assert_close(out.rgb, torch.tensor([[0.2, 0.4, 0.6]]).expand(4, 3))

    # All rays missing, and a batch of no rays at all.
    assert len(_grid().sample(rays[[0, 2, 3]])) == 0
    s0 = _grid().sample(rays[:0])
    assert len(s0) == 0 and s0.n_rays == 0



def test_sample_follows_changes_of_the_occupied_buffer():
    """Whatever the sampler caches (e.g. a dilated grid), changing ``occupied`` in place, through
    ``load_state_dict`` or through ``update`` changes the samples to those of a fresh grid."""
    occ = _sub_box_occupancy()
    rays = _rays(*_random_rays(48, seed=0))
    sub = _grid(occ=occ).sample(rays)
    full = _grid().sample(rays)
    assert len(full) > len(sub) > 0

    def same(a, b):
        return torch.equal(a.ray_indices, b.ray_indices) and torch.allclose(a.t_starts, b.t_starts)

    grid = _grid(occ=occ)
    assert same(grid.sample(rays), sub)
    grid.occupied.fill_(True)
    assert same(grid.sample(rays), full)
    grid.occupied.copy_(torch.from_numpy(occ.reshape(-1)))
    assert same(grid.sample(rays), sub)
    grid.load_state_dict({**grid.state_dict(), "occupied": torch.ones(8 ** 3, dtype=torch.bool)})
    assert same(grid.sample(rays), full)
    grid.occupied[torch.from_numpy(~occ.reshape(-1))] = False
    assert same(grid.sample(rays), sub)
    grid.update(lambda x: torch.zeros(x.shape[0]))  # zero density everywhere: nothing occupied
    assert len(grid.sample(rays)) == 0

# ---------------------------------------------------------------------------------------- update
def test_update_ema_hand_computed():
    """8 cells, constant densities: density <- max(0.95 density, new)."""
    grid = OccupancyGrid(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), OccupancyGridConfig(resolution=2))
    for value, expected in [(10.0, 10.0), (0.0, 9.5), (9.6, 9.6), (0.0, 9.12)]:
        grid.update(lambda x, v=value: torch.full((x.shape[0],), v))
        torch.testing.assert_close(grid.density, torch.full((8,), expected))
        assert grid.occupied.all()  # opacity 9.12 * sqrt(3) / 1024 > 0.01
    assert grid.n_updates.item() == 4


def test_update_threshold_is_min_of_threshold_and_mean():
    """Density 1 for x < 0.5 (opacity sqrt3 / 1024 = 0.0017 < 0.01) and 0 elsewhere: the mean
    (0.00085) is the threshold, so exactly the x < 0.5 cells are occupied. A uniform field equal
    to its own mean occupies nothing."""
    grid = OccupancyGrid(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), OccupancyGridConfig(resolution=4))
    grid.update(lambda x: (x[:, 0] < 0.5).float())
    expected = torch.zeros(4, 4, 4, dtype=torch.bool)
    expected[:2] = True
    assert torch.equal(grid.occupied, expected.reshape(-1))
    uniform = OccupancyGrid(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), OccupancyGridConfig(resolution=4))
    uniform.update(lambda x: torch.ones(x.shape[0]))
    assert not uniform.occupied.any()


def test_update_keeps_the_max_of_repeated_draws_of_a_cell():
    """After warm-up with a single occupied cell (0), both occupied draws land in cell 0; the
    density function gives earlier points larger values (4, 3, 2, 1), so the max of cell 0's
    draws is not its last. Expected grid by hand from the drawn points: decay, then the max."""
    cfg = OccupancyGridConfig(resolution=2, warmup_steps=0, decay=0.5)
    grid = OccupancyGrid(torch.tensor([0.0, 0.0, 0.0, 2.0, 2.0, 2.0]), cfg)  # cells of size 1
    old = torch.tensor([0.8, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 0.0])
    grid.density.copy_(old)
    grid.occupied.copy_(torch.arange(8) == 0)
    drawn = []

    def density_fn(x):
        drawn.append(x.clone())
        return torch.arange(x.shape[0], 0, -1, dtype=torch.float32)

    grid.update(density_fn, generator=torch.Generator().manual_seed(0))
    x = torch.cat(drawn)
    assert x.shape == (4, 3)  # 8 // 4 random cells + 8 // 4 draws among the occupied ones
    ijk = x.floor().long()
    cells = (ijk[:, 0] * 2 + ijk[:, 1]) * 2 + ijk[:, 2]
    assert cells[2:].tolist() == [0, 0]  # one cell drawn twice, with values 2 then 1
    expected = (0.5 * old).tolist()
    for c, value in zip(cells.tolist(), [4.0, 3.0, 2.0, 1.0]):
        expected[c] = max(expected[c], value)
    assert expected[0] >= 2.0
    assert torch.equal(grid.density, torch.tensor(expected))


def _cell_distance_bounds(res, lo, hi):
    """Nearest and farthest distance from the origin of every cell (flat x * R^2 + y * R + z)."""
    size = (hi - lo) / res
    ijk = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    c0 = lo + ijk * size
    c1 = c0 + size
    nearest = np.clip(0.0, c0, c1)
    farthest = np.where(np.abs(c0) > np.abs(c1), c0, c1)
    return np.linalg.norm(nearest, axis=1), np.linalg.norm(farthest, axis=1)


def test_update_finds_a_sphere():
    res, radius = 16, 0.3
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, OccupancyGridConfig(resolution=res))
    g = torch.Generator().manual_seed(0)

    def density_fn(x):
        return torch.where(x.norm(dim=-1) < radius, 1000.0, 0.0)

    # One update with warm-up visits every cell: a constant field sets every cell exactly.
    grid.update(lambda x: torch.full((x.shape[0],), 3.0), generator=g)
    assert torch.equal(grid.density, torch.full((res ** 3,), 3.0))
    grid.density.zero_()
    for _ in range(15):  # warm-up: 256 // 16 = 16 updates visit all cells
        grid.update(density_fn, generator=g)
    near, far = _cell_distance_bounds(res, -1.0, 1.0)
    touches = torch.from_numpy(near < radius)
    inside = torch.from_numpy(far < radius)
    centre_in = torch.from_numpy(np.linalg.norm(_cell_centres(res), axis=1) < radius)
    occ = grid.occupied
    assert inside.sum() > 0 and touches.sum() > inside.sum()
    assert not (occ & ~touches).any()  # nothing outside the sphere
    assert occ[centre_in].all()  # every cell with its centre inside
    assert occ[touches].float().mean() > 0.6
    torch.testing.assert_close(grid.density[inside], torch.full((int(inside.sum()),), 1000.0))
    assert (grid.density[~touches] == 0).all()

    # After warm-up: a quarter of the cells at random plus a quarter among the occupied ones, i.e.
    # with repeats a fraction 1 - exp(-1/4) - ... of all cells; with every cell occupied,
    # 1 - exp(-1/2) = 0.393 of them get the new value and the rest decay.
    assert grid.n_updates.item() == 16
    saved = grid.density.clone(), grid.occupied.clone()
    grid.density.fill_(1.0)
    grid.occupied.fill_(True)
    grid.update(lambda x: torch.full((x.shape[0],), 2.0), generator=g)
    visited = (grid.density == 2.0).float().mean().item()
    assert (grid.density[grid.density != 2.0] == 0.95).all()
    assert visited == pytest.approx(1 - math.exp(-0.5), abs=0.03)
    grid.density.copy_(saved[0])
    grid.occupied.copy_(saved[1])
    for _ in range(4):
        grid.update(density_fn, generator=g)
    assert not (grid.occupied & ~touches).any()
    assert grid.occupied[inside].all()


def _cell_centres(res):
    ijk = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return -1.0 + (ijk + 0.5) * 2.0 / res


# -------------------------------------------------------------------------------- early stopping
def _slab_sigma(dense: float):
    """Density in the slab 0 <= x < 0.5, |y| < 0.5: `dense` for even rays, `dense / 2` for odd."""
    def sigma_fn(x, ray_indices):
        in_slab = (x[:, 0] >= 0) & (x[:, 0] < 0.5) & (x[:, 1].abs() < 0.5)
        value = torch.where(ray_indices % 2 == 0, dense, dense / 2)
        return torch.where(in_slab, value, torch.zeros_like(value))
    return sigma_fn


def _slab_setup():
    aabb = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(aabb, OccupancyGridConfig(resolution=4, steps_per_diagonal=128))
    # Along +x from x = -2: rays 0, 1, 2 cross the slab, ray 3 passes beside it (y = 0.8).
    rays = _rays([[-2.0, 0.0, 0.1], [-2.0, -0.2, -0.3], [-2.0, 0.3, 0.6], [-2.0, 0.8, 0.0]],
                 [[1.0, 0.0, 0.0]] * 4)
    return grid, rays


def _pruning_rounds(compiled: bool, monkeypatch) -> None:
    """Run the pruning rounds compiled (``_composite_cpu.c``'s ``prune_round``; skip without a C
    compiler) or in PyTorch."""
    from radfield.rendering import pipeline
    if compiled and pipeline._COMPOSITOR.load() is None:
        pytest.skip("no C compiler: the compiled pruning rounds are not built")
    if not compiled:
        monkeypatch.setattr(pipeline._COMPOSITOR, "load", lambda: None)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("first_round", [0, 1, 3, 16])
def test_early_stopping_drops_samples_behind_a_dense_slab(first_round, compiled, monkeypatch):
    """dt = 2 sqrt3 / 128 = 0.02706. With sigma 50 each slab sample has tau = 1.353; a sample is
    kept while the optical depth in front of it is < ln(1e4) = 9.21: 7 slab samples (6 * 1.353 =
    8.12, 7 * 1.353 = 9.47). With sigma 25 (odd rays) tau = 0.677: 14 slab samples. The same in
    one pass (``first_round`` 0) and in rounds of 1, 3 and 16 samples, then doubling (rounds
    compiled and in PyTorch)."""
    _pruning_rounds(compiled, monkeypatch)
    grid, rays = _slab_setup()
    dt = grid.step_size
    assert dt == pytest.approx(2 * math.sqrt(3) / 128)
    full = grid.sample(rays)
    stopped = prune_occluded(rays, grid.sample(rays), _slab_sigma(50.0), first_round=first_round)
    assert (full.ray_indices.bincount(minlength=4) == 74).all()  # 2 / dt = 73.9 midpoints per ray
    x_full = full.positions(rays)[:, 0]
    x_kept = stopped.positions(rays)[:, 0]
    for r, n_slab_kept in [(0, 7), (1, 14), (2, 7)]:
        xr = x_kept[stopped.ray_indices == r]
        xf = x_full[full.ray_indices == r]
        assert torch.equal(xr[xr < 0], xf[xf < 0])  # everything in front of the slab is kept
        assert int(((xr >= 0) & (xr < 0.5)).sum()) == n_slab_kept
        assert not (xr >= 0.5).any()  # nothing behind it
    assert torch.equal(x_kept[stopped.ray_indices == 3], x_full[full.ray_indices == 3])

    # Same set as a float64 reference applied to the full march: keep T = exp(-sum_{k<i} tau_k) > 1e-4.
    sig = _slab_sigma(50.0)(full.positions(rays), full.ray_indices).double()
    keep = []
    for r in range(4):
        tau = sig[full.ray_indices == r] * dt
        trans = torch.exp(-(torch.cumsum(tau, 0) - tau))
        keep.append(trans > 1e-4)
    sel = torch.cat(keep)
    assert torch.equal(stopped.t_starts, full.t_starts[sel])
    assert torch.equal(stopped.ray_indices, full.ray_indices[sel])


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("first_round", [0, 4])
def test_early_stopping_with_infinite_density_keeps_other_rays(first_round, compiled, monkeypatch):
    _pruning_rounds(compiled, monkeypatch)
    grid, rays = _slab_setup()
    full = grid.sample(rays)
    stopped = prune_occluded(rays, grid.sample(rays), _slab_sigma(math.inf), first_round=first_round)
    x_kept = stopped.positions(rays)[:, 0]
    for r in range(3):  # in front of the slab plus its first sample
        xr = x_kept[stopped.ray_indices == r]
        assert int((xr < 0).sum()) == int((full.positions(rays)[full.ray_indices == r, 0] < 0).sum())
        assert int((xr >= 0).sum()) == 1
    assert int((stopped.ray_indices == 3).sum()) == 74


@pytest.mark.parametrize("compiled", [True, False])
def test_early_stopping_in_rounds_evaluates_fewer_samples_and_carries_features(compiled, monkeypatch):
    """In rounds, the samples behind the slab are never evaluated: ray 3 (beside the slab) needs
    all its 74 samples; rays 0 and 2 terminate at their 7th slab sample and ray 1 at its 14th, so
    with rounds of 4, 8, 16, 32, ... samples they stop in the round that holds that sample. The
    kept samples carry the features their round computed (here the positions themselves)."""
    _pruning_rounds(compiled, monkeypatch)
    grid, rays = _slab_setup()
    full = grid.sample(rays)
    x_full = full.positions(rays)
    sigma = _slab_sigma(50.0)
    evaluated = []

    def with_features(x, ray_indices):
        evaluated.append(len(x))
        return sigma(x, ray_indices), torch.cat([x, ray_indices[:, None].float()], 1)

    one = prune_occluded(rays, full, with_features)
    assert evaluated == [len(full)]
    evaluated.clear()
    rounds = prune_occluded(rays, full, with_features, first_round=4)
    assert torch.equal(rounds.t_starts, one.t_starts) and torch.equal(rounds.ray_indices, one.ray_indices)
    assert torch.equal(rounds.features, one.features)
    assert torch.equal(rounds.features[:, :3], rounds.positions(rays))
    assert rounds.n_marched == one.n_marched == len(full)
    # Per ray, the samples up to the end of the round that holds its last kept sample (behind
    # which the transmittance is below eps), or all of them (ray 3).
    ends = [4, 12, 28, 60, 124]
    expected = 0
    for r in range(4):
        n_kept = int((one.ray_indices == r).sum())
        n_ray = int((full.ray_indices == r).sum())
        expected += min(next(e for e in ends if e >= n_kept), n_ray)
    assert sum(evaluated) == expected < len(full)
    assert int((x_full[full.ray_indices == 0, 0] < 0).sum()) + 7 == int((one.ray_indices == 0).sum())


def test_compiled_pruning_rounds_match_pytorch_on_random_rays(monkeypatch):
    """200 rays of 0 to 300 samples of random lengths and densities (a third of them 0, a few
    infinite or NaN), in rounds of 5 then doubling: the compiled rounds evaluate the same samples
    in the same order as PyTorch's and keep the same ones: exactly those whose float64
    transmittance ``exp(-sum_{k<i} tau_k)`` exceeds 1e-4 (none behind a NaN). Sample ``i`` lies
    at ``t`` in ``[i, i + 0.05)`` on rays along x from the origin, so its position names it."""
    from radfield.rendering import pipeline
    if pipeline._COMPOSITOR.load() is None:
        pytest.skip("no C compiler: the compiled pruning rounds are not built")
    g = torch.Generator().manual_seed(3)
    counts = torch.randint(0, 301, (200,), generator=g)
    counts[:5] = 0
    ray_indices = torch.repeat_interleave(torch.arange(200), counts)
    n = len(ray_indices)
    t_starts = torch.arange(n, dtype=torch.float32)
    t_ends = t_starts + 0.05 * torch.rand(n, generator=g)
    sigma = torch.empty(n).exponential_(1.0, generator=g) * 40
    sigma[torch.rand(n, generator=g) < 0.33] = 0.0
    sigma[torch.rand(n, generator=g) < 0.002] = math.inf
    sigma[torch.rand(n, generator=g) < 0.002] = math.nan
    samples = Samples(t_starts, t_ends, ray_indices, 200)
    rays = Rays(torch.zeros(200, 3), torch.tensor([[1.0, 0.0, 0.0]]).repeat(200, 1), torch.ones(200))
    kept, evaluated = {}, {}
    for compiled in (True, False):
        if not compiled:
            monkeypatch.setattr(pipeline._COMPOSITOR, "load", lambda: None)
        picked = []

        def sigma_fn(x, _ray_indices):
            picked.append(x[:, 0].floor().long())
            return sigma[picked[-1]]

        kept[compiled] = prune_occluded(rays, samples, sigma_fn, 1e-4, first_round=5)
        evaluated[compiled] = torch.cat(picked)
    assert torch.equal(evaluated[True], evaluated[False]) and len(evaluated[True]) < n
    assert torch.equal(kept[True].t_starts, kept[False].t_starts)
    keep = []
    for r in range(200):
        on = ray_indices == r
        tau = (sigma[on].double() * (t_ends - t_starts)[on].double()).clamp(max=1e3)
        keep.append(torch.exp(-(torch.cumsum(tau, 0) - tau)) > 1e-4)
    assert torch.equal(kept[True].t_starts, t_starts[torch.cat(keep)])
    assert torch.equal(kept[True].ray_indices, ray_indices[torch.cat(keep)])


# ------------------------------------------------------------------- cascades and cone angle
# A box four times the region of interest: centre (0, 0.5, 0.5), half-sizes (4, 4, 2); the region
# of interest (cascade 0 at aabb_scale 4) has half-sizes (1, 1, 0.5) and a diagonal of 3.
BIG_CENTRE = np.array([0.0, 0.5, 0.5])
BIG_HALF = np.array([4.0, 4.0, 2.0])
BIG = torch.tensor([*(BIG_CENTRE - BIG_HALF), *(BIG_CENTRE + BIG_HALF)], dtype=torch.float32)


def test_cascade_boxes_and_auto_settings_by_hand():
    grid = OccupancyGrid(BIG, OccupancyGridConfig(resolution=8), aabb_scale=4)
    assert grid.n_cascades == 3 and grid.config.cone_angle == 1 / 256
    expected = [[-1.0, -0.5, 0.0, 1.0, 1.5, 1.0], [-2.0, -1.5, -0.5, 2.0, 2.5, 1.5], [-4.0, -3.5, -1.5, 4.0, 4.5, 2.5]]
    assert torch.equal(grid.boxes, torch.tensor(expected))
    assert grid.density.shape == grid.occupied.shape == (3 * 8 ** 3,)
    # dt_min = cascade 0's diagonal 3 / 1024; dt_max = a cell of the last cascade, (1, 1, 0.5):
    # diagonal 1.5; each cascade's step for its opacity: dt_min * (1, 2, 4).
    assert grid.step_size == pytest.approx(3 / 1024) and grid.max_step == pytest.approx(1.5)
    torch.testing.assert_close(grid.cascade_steps(), torch.tensor([3, 6, 12]) / 1024)
    # aabb_scale 3: half-sizes H / 3, 2 H / 3 and H (the last clipped to the box, to the bit).
    third = cascade_boxes(BIG, 3, 3)
    for k, f in enumerate([1 / 3, 2 / 3]):
        np.testing.assert_allclose(third[k].numpy(), [*(BIG_CENTRE - f * BIG_HALF), *(BIG_CENTRE + f * BIG_HALF)],
                                   rtol=0, atol=1e-6)
    assert torch.equal(third[2], BIG)
    # Auto values: 1 + ceil(log2(aabb_scale)) cascades; a cone angle of 1/256 and an occupancy
    # threshold of 0.03 for large scenes (Instant-NGP's 0.01 in a unit box).
    for scale, cascades, cone, threshold in [(1, 1, 0.0, 0.01), (2, 2, 1 / 256, 0.03), (3, 3, 1 / 256, 0.03),
                                             (4, 3, 1 / 256, 0.03), (5, 4, 1 / 256, 0.03),
                                             (128, 8, 1 / 256, 0.03)]:
        cfg = resolve_config(OccupancyGridConfig(), scale)
        assert (cfg.cascades, cfg.cone_angle, cfg.threshold) == (cascades, cone, threshold), scale
    # Explicit values stand; impossible ones are one-line errors.
    cfg = resolve_config(OccupancyGridConfig(cascades=2, cone_angle=0.0, threshold=0.01), 4)
    assert (cfg.cascades, cfg.cone_angle, cfg.threshold) == (2, 0.0, 0.01)
    assert resolve_config(cfg, 4) == cfg  # resolving twice changes nothing (config.json rebuilds)
    for bad, scale in [(OccupancyGridConfig(cascades=4), 4), (OccupancyGridConfig(cascades=2), 1),
                       (OccupancyGridConfig(cone_angle=-0.5), 4), (OccupancyGridConfig(), 0.5),
                       (OccupancyGridConfig(threshold=-0.5), 1), (OccupancyGridConfig(threshold=float("nan")), 4)]:
        with pytest.raises(RadfieldError) as err:
            resolve_config(bad, scale)
        assert "\n" not in str(err.value)


def test_point_occupancy_is_read_in_the_finest_cascade_containing_it():
    grid = OccupancyGrid(BIG, OccupancyGridConfig(resolution=4), aabb_scale=4)
    # Cells by hand (R = 4): cascade 0 cells (0.5, 0.5, 0.25), cascade 1 (1, 1, 0.5), cascade 2 (2, 2, 1).
    x = torch.tensor([[0.1, 0.6, 0.3],   # box 0: u = (2.2, 2.2, 1.2) -> 2 * 16 + 2 * 4 + 1 = 41
                      [1.5, 0.6, 0.3],   # x > 1, box 1: u = (3.5, 2.1, 1.6) -> 64 + 48 + 8 + 1 = 121
                      [0.1, 0.6, 2.2],   # z > 1.5, box 2: u = (2.05, 2.05, 3.7) -> 128 + 32 + 8 + 3 = 171
                      [1.0, 1.5, 1.0],   # box 0's far corner (boxes are closed): u = 4 clamped to 3 -> 63
                      [9.0, 0.0, 0.0]])  # outside the box: the last cascade, u = (6.5, 1.75, 1.5) -> 181
    assert grid.cascade_of(x).tolist() == [0, 1, 2, 0, 2]
    assert grid.cell_index(x).tolist() == [41, 121, 171, 63, 181]
    # Asked in cascade 2, the first two share its cell u = (2.05 | 2.75, 2.05, 1.8) -> 128 + 41 = 169.
    assert grid.cell_index(x, torch.full((5,), 2)).tolist()[:2] == [169, 169]

    # Along x through the middle: with only the coarser cascades occupied no sample lies in box 0
    # (though cascades 1 and 2 are occupied there); with only cascade 0, all of them do.
    rays = _rays([[-3.9, 0.6, 0.3]], [[1.0, 0.0, 0.0]])
    grid.occupied.view(3, -1)[0] = False
    outside = grid.sample(rays).positions(rays)[:, 0]
    assert (outside < -1).any() and (outside > 1).any() and not ((outside > -1) & (outside < 1)).any()
    grid.occupied.view(3, -1)[0] = True
    grid.occupied.view(3, -1)[1:] = False
    inside = grid.sample(rays).positions(rays)[:, 0]
    assert len(inside) > 0 and ((inside > -1) & (inside < 1)).all()


def _ref_schedule(t_near, offset, dt_min, dt_max, c, t_end):
    """Float64 per-ray loop: ``t_0 = t_near + (offset - 1/2) dt(t_near)``, ``t += dt(t)``; the
    ``(start, dt)`` of every step starting before ``t_end``."""
    def step(t):
        return min(max(c * t, dt_min), dt_max)

    t, out = t_near + (offset - 0.5) * step(t_near), []
    while t < t_end:
        out.append((t, step(t)))
        t += step(t)
    return np.array(out).reshape(-1, 2)


def test_step_schedule_matches_the_recursion():
    # The docstring's example: c = 0.5, dt_min = 1, dt_max = 4, t_0 = 0.5.
    s = StepSchedule.start(torch.tensor([0.5]), torch.tensor([0.5]), 1.0, 4.0, 0.5)
    mid, dt = s.at(torch.arange(7.0)[None])
    torch.testing.assert_close(mid - dt / 2, torch.tensor([[0.5, 1.5, 2.5, 3.75, 5.625, 8.4375, 12.4375]]))
    torch.testing.assert_close(dt, torch.tensor([[1.0, 1.0, 1.25, 1.875, 2.8125, 4.0, 4.0]]))
    assert s.steps_before(torch.tensor([8.4375])).tolist() == [5]  # 0.5 ... 5.625

    g = np.random.default_rng(0)
    dt_min, dt_max = 0.01, 0.5
    for c in [0.0, 1 / 256, 1 / 16, 0.3]:  # 1/16: phase A to t = 0.16, B to 8, C beyond
        t_near = np.concatenate([[0.0], g.uniform(0, 30, 39)])
        offset = g.uniform(0, 1, 40)
        s = StepSchedule.start(torch.tensor(t_near, dtype=torch.float32), torch.tensor(offset, dtype=torch.float32),
                               dt_min, dt_max, c)
        for r in range(40):
            ref = _ref_schedule(t_near[r], offset[r], dt_min, dt_max, c, t_near[r] + 40)
            if c > 0 and np.min(np.abs(ref[:, 0, None] - [dt_min / c, dt_max / c])) < 1e-4:
                continue  # a step starting on a phase boundary: float32 may switch a step early
            mid, dt = s.rows([r]).at(torch.arange(len(ref), dtype=torch.float32)[None])
            np.testing.assert_allclose((mid - dt / 2)[0].double().numpy(), ref[:, 0], rtol=2e-6, atol=2e-5)
            np.testing.assert_allclose(dt[0].double().numpy(), ref[:, 1], rtol=1e-5)
            t = g.uniform(t_near[r], t_near[r] + 40, 20)
            t = t[np.min(np.abs(t[:, None] - ref[None, :, 0]), axis=1) > 1e-4]
            count = (ref[None, :, 0] < t[:, None]).sum(1)
            got = s.rows(torch.full((len(t),), r)).steps_before(torch.tensor(t, dtype=torch.float32))
            assert got.tolist() == count.tolist(), (c, r)


def _big_boxes(aabb_scale):
    """The cascades of BIG by hand: centre -+ min(H / aabb_scale * 2^k, H)."""
    n = 1 + math.ceil(math.log2(aabb_scale))
    halves = [np.minimum(BIG_HALF / aabb_scale * 2 ** k, BIG_HALF) for k in range(n)]
    return [(BIG_CENTRE - h, BIG_CENTRE + h) for h in halves]


def _ref_cascade_march(o, d, occ, boxes, dt_min, dt_max, c, offset=0.5, tol=1e-3):
    """The float64 march ``t += clamp(c t, dt_min, dt_max)`` from ``t_near + (offset - 1/2)
    dt(t_near)``, each midpoint looked up in the finest box containing it: ``(starts, dts, kept,
    ambiguous)`` with ``kept`` / ``ambiguous`` sets of step numbers (``ambiguous``: within
    ``tol`` cell of a face, of a box face or of the exit, or on a phase boundary)."""
    res = occ.shape[1]
    lo, hi = boxes[-1]
    t_near, t_far = -math.inf, math.inf
    for a in range(3):
        t0, t1 = (lo[a] - o[a]) / d[a], (hi[a] - o[a]) / d[a]
        t_near, t_far = max(t_near, min(t0, t1)), min(t_far, max(t0, t1))
    t_near = max(t_near, 0.0)
    steps = _ref_schedule(t_near, offset, dt_min, dt_max, c, max(t_far, t_near) + 1.0)
    kept, ambiguous = set(), set()
    for j, (t, dt) in enumerate(steps):
        mid = t + dt / 2
        if mid >= t_far + tol:
            break
        x = o + mid * d
        k = next((i for i, (b0, b1) in enumerate(boxes) if np.all((x >= b0) & (x <= b1))), len(boxes) - 1)
        u = (x - boxes[k][0]) / (boxes[k][1] - boxes[k][0]) * res
        near_face = np.any((np.abs(u - np.round(u)) < tol) & (u > tol) & (u < res - tol))
        near_box = any(np.any(np.abs(x - b) < tol * (b1 - b0) / res) for b0, b1 in boxes[:-1] for b in (b0, b1))
        near_phase = c > 0 and min(abs(t - dt_min / c), abs(t - dt_max / c)) < 1e-4
        if near_face or near_box or near_phase or abs(mid - t_far) < 1e-4:
            ambiguous.add(j)
        if mid < t_far and occ[k][tuple(np.clip(np.floor(u).astype(int), 0, res - 1))]:
            kept.add(j)
    return steps, kept, ambiguous


@pytest.mark.parametrize("aabb_scale", [4, 3])
def test_cascaded_cone_march_matches_brute_force(aabb_scale):
    """Sparse random occupancy in every cascade (2% of the cells: the coarse pass skips segments,
    and must not drop a step next to a cascade's face), rays from inside the region of interest
    to 30 away (phase C of the steps) aimed at occupied cells."""
    res, cone = 16, 1 / 32
    grid = OccupancyGrid(BIG, OccupancyGridConfig(resolution=res, steps_per_diagonal=256, cone_angle=cone), aabb_scale)
    boxes = _big_boxes(aabb_scale)
    assert len(boxes) == grid.n_cascades == 3
    g = np.random.default_rng(aabb_scale)
    occ = g.uniform(size=(3, res, res, res)) < 0.02
    grid.occupied.copy_(torch.from_numpy(occ.reshape(-1)))
    # dt_min: cascade 0's diagonal / 256; dt_max: a cell of the box, (8, 8, 4) / 16 -> diagonal
    # 0.75, so phase C starts at t = 24.
    dt_min = 2 * np.linalg.norm(BIG_HALF / aabb_scale) / 256
    assert grid.step_size == pytest.approx(dt_min) and grid.max_step == pytest.approx(0.75)
    n = 192
    v = g.normal(size=(n, 3))
    origins = BIG_CENTRE + g.uniform(2, 30, (n, 1)) * v / np.linalg.norm(v, axis=1, keepdims=True)
    origins[:16] = BIG_CENTRE + g.uniform(-0.5, 0.5, (16, 3))  # inside the region of interest
    k, *ijk = np.nonzero(occ)
    lo, hi = np.array([boxes[i][0] for i in k]), np.array([boxes[i][1] for i in k])
    centres = lo + (np.stack(ijk, -1) + 0.5) * (hi - lo) / res
    own = [i == 0 or np.any(np.abs(c - BIG_CENTRE) > boxes[i - 1][1] - BIG_CENTRE) for i, c in zip(k, centres)]
    pick = g.choice(np.flatnonzero(own), n)  # occupied cells not covered by a finer cascade
    targets = centres[pick] + g.uniform(-0.4, 0.4, (n, 3)) * (hi - lo)[pick] / res
    rays = _rays(origins, targets - origins)
    for jitter in (False, True):
        s = grid.sample(rays, jitter=jitter, jitter_generator=torch.Generator().manual_seed(3))
        offsets = torch.rand(n, generator=torch.Generator().manual_seed(3)).numpy() if jitter else np.full(n, 0.5)
        assert len(s) > 200
        assert (s.ray_indices[1:] >= s.ray_indices[:-1]).all()
        steps = s.t_ends - s.t_starts  # all three phases: dt_min, c t, dt_max
        assert (steps < dt_min * 1.001).any() and (steps > 0.75 * 0.999).any()
        assert ((steps > dt_min * 1.01) & (steps < 0.75 * 0.99)).any()
        n_ambiguous = n_steps = 0
        for r in range(n):
            o, d = rays.origins[r].double().numpy(), rays.directions[r].double().numpy()
            steps, kept, ambiguous = _ref_cascade_march(o, d, occ, boxes, dt_min, 0.75, cone, offsets[r])
            n_ambiguous, n_steps = n_ambiguous + len(ambiguous), n_steps + len(steps)
            mine = s.ray_indices == r
            got_t, got_dt = s.t_starts[mine].double().numpy(), (s.t_ends - s.t_starts)[mine].double().numpy()
            j = np.abs(got_t[:, None] - steps[None, :, 0]).argmin(1) if len(got_t) else np.zeros(0, dtype=int)
            np.testing.assert_allclose(got_t, steps[j, 0], rtol=2e-6, atol=5e-5)  # on the lattice
            np.testing.assert_allclose(got_dt, steps[j, 1], rtol=1e-4)
            assert set(j.tolist()) ^ kept <= ambiguous, (jitter, r)
        assert n_ambiguous < 0.02 * n_steps
    # Memory: the PyTorch march in chunks of a few rays gives the same samples, to the bit.
    small = OccupancyGrid(BIG, OccupancyGridConfig(resolution=res, steps_per_diagonal=256, cone_angle=cone,
                                                   max_points_per_chunk=300), aabb_scale)
    small.load_state_dict(grid.state_dict())
    small.use_kernel = False
    a, b = grid.sample(rays), small.sample(rays)
    assert torch.equal(a.ray_indices, b.ray_indices) and torch.equal(a.t_starts, b.t_starts)


def march_case(aabb_scale: int, n: int) -> tuple[OccupancyGrid, OccupancyGrid, Rays]:
    """``(grid, reference, rays)``: a grid of 16^3 cells per cascade over ``BIG`` (fixed steps at
    aabb_scale 1, three cascades with a cone angle at 4 and 3) with 30 % random occupancy, the
    same grid marched by PyTorch, and ``n`` rays from inside and outside the box, some missing it,
    five axis-parallel."""
    grid = OccupancyGrid(BIG, OccupancyGridConfig(resolution=16, steps_per_diagonal=200), aabb_scale)
    g = torch.Generator().manual_seed(aabb_scale)
    grid.occupied.copy_(torch.rand(grid.occupied.shape, generator=g) < 0.3)
    v = torch.randn(n, 3, generator=g)
    reach = 12 * torch.rand(n, 1, generator=g)
    origins = torch.tensor(BIG_CENTRE, dtype=torch.float32) + v / v.norm(dim=1, keepdim=True) * reach
    directions = torch.randn(n, 3, generator=g) * torch.rand(n, 1, generator=g) * 2  # not unit length
    directions[:5] = torch.tensor([1.0, 0.0, 0.0])  # axis-parallel
    reference = OccupancyGrid(BIG, grid.config, aabb_scale)
    reference.load_state_dict(grid.state_dict())
    reference.use_kernel = False
    return grid, reference, _rays(origins, directions)


@pytest.mark.skipif(not occupancy._MARCHER.load(), reason="no C compiler: the compiled marcher is not built")
@pytest.mark.parametrize("aabb_scale", [1, 4, 3])
def test_compiled_march_equals_the_pytorch_march_to_the_bit(aabb_scale):
    """The compiled marcher (``_march_cpu.c``) against the PyTorch march, bit for bit, with and
    without jitter and a near plane: one grid with fixed steps (aabb_scale 1), three cascades with a
    cone angle (4, and 3, whose last box clips), random occupancy of 30%, rays from inside and
    outside the box, some missing it."""
    n = 300
    grid, reference, rays = march_case(aabb_scale, n)
    assert (grid.n_cascades, grid.config.cone_angle > 0) == ((1, False) if aabb_scale == 1 else (3, True))
    for jitter, near in ((False, 0.0), (True, 0.0), (True, 2.5)):
        a, b = (m.sample(rays, near=near, jitter=jitter, jitter_generator=torch.Generator().manual_seed(7))
                for m in (grid, reference))
        assert len(a) > 500 and a.ray_indices.unique().numel() < n  # some rays keep nothing
        assert torch.equal(a.ray_indices, b.ray_indices), (jitter, near)
        assert torch.equal(a.t_starts, b.t_starts) and torch.equal(a.t_ends, b.t_ends), (jitter, near)


def test_single_cascade_is_the_fixed_step_march_to_the_bit():
    """Without an aabb_scale the defaults (cascades 0, cone angle -1) are one grid and fixed steps:
    the samples are those of the single grid's formula ``t_near + (k + offset) dt`` over all
    steps (no coarse pass), bit for bit; its checkpoint buffers are the single grid's (and ``seen``)."""
    occ = _sub_box_occupancy()
    grid = _grid(occ=occ)
    assert (grid.n_cascades, grid.config.cone_angle) == (1, 0.0)
    assert {k: tuple(v.shape) for k, v in grid.state_dict().items()} == {
        "aabb": (6,), "density": (8 ** 3,), "occupied": (8 ** 3,), "seen": (8 ** 3,), "n_updates": ()}
    rays = _rays(*_random_rays(64, seed=2))
    o, d = rays.origins, rays.directions
    dt = grid.step_size
    for jitter in (False, True):
        s = grid.sample(rays, near=0.05, jitter=jitter, jitter_generator=torch.Generator().manual_seed(4))
        offset = (torch.rand(64, generator=torch.Generator().manual_seed(4)) if jitter else torch.full((64,), 0.5))
        t_near, t_far = ray_aabb_intersect(o, d, AABB)
        t_near = t_near.clamp(min=0.05)
        t_far = torch.where(t_far > t_near, t_far, t_near)
        k = torch.arange(int(((t_far - t_near).max() / dt).item()) + 2)
        t_mid = t_near[:, None] + (k + offset[:, None]) * dt
        x = o[:, None] + t_mid[..., None] * d[:, None]
        ijk = ((x - AABB[:3]) / (AABB[3:] - AABB[:3]) * 8).long().clamp(0, 7)
        keep = (t_mid < t_far[:, None]) & torch.from_numpy(occ)[ijk[..., 0], ijk[..., 1], ijk[..., 2]]
        t_starts = t_mid[keep] - dt / 2
        assert len(s) > 100
        assert torch.equal(s.t_starts, t_starts) and torch.equal(s.t_ends, t_starts + dt)
        assert torch.equal(s.ray_indices, torch.arange(64)[:, None].expand_as(keep)[keep])


def test_cone_angle_bounds_the_samples_per_ray():
    """Box [-16, 16]^3 with aabb_scale 16: 5 cascades, dt_min = 2 sqrt3 / 1024 (so t1 = 256 dt_min
    = 0.866), dt_max = 32 sqrt3 / 8 = 6.93 (t2 = 1774, beyond every ray). Along the box diagonal
    fixed steps would take 16 * 1024 = 16384 samples; with the cone, from t = 4 sqrt3 to 36 sqrt3,
    ln(9) / ln(1 + 1/256) = 563.6 of them."""
    aabb = torch.tensor([-16.0] * 3 + [16.0] * 3)
    grid = OccupancyGrid(aabb, OccupancyGridConfig(resolution=8), aabb_scale=16)  # all cells occupied
    assert grid.n_cascades == 5 and grid.max_step == pytest.approx(4 * math.sqrt(3))
    c, dt_min, dt_max = 1 / 256, 2 * math.sqrt(3) / 1024, 4 * math.sqrt(3)
    diagonal = _rays([[-20.0, -20.0, -20.0]], [[1.0, 1.0, 1.0]])
    count = len(grid.sample(diagonal))
    ref = _ref_schedule(4 * math.sqrt(3), 0.5, dt_min, dt_max, c, 36 * math.sqrt(3))
    assert count == (ref[:, 0] + ref[:, 1] / 2 < 36 * math.sqrt(3)).sum() == 564
    # From the centre outwards: 256 fixed steps to t1, then ln(16 / 0.866) / ln(1 + 1/256) = 748.
    centre = _rays([[0.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]])
    ref = _ref_schedule(0.0, 0.5, dt_min, dt_max, c, 16.0)
    assert len(grid.sample(centre)) == (ref[:, 0] + ref[:, 1] / 2 < 16.0).sum() == 256 + 748
    # Any ray: at most 1 / c + ln(dt_max / dt_min) / ln(1 + c) + diagonal / dt_max = 2220 steps.
    bound = 1 / c + math.log(dt_max / dt_min) / math.log1p(c) + 32 * math.sqrt(3) / dt_max
    g = np.random.default_rng(0)
    origins = g.uniform(-40, 40, (200, 3))
    rays = _rays(origins, g.uniform(-16, 16, (200, 3)) - origins)
    counts = grid.sample(rays).ray_indices.bincount(minlength=200)
    assert counts.max() <= bound and counts.max() < 16384 / 8


def test_update_visits_every_cascade_and_thresholds_each_over_its_step():
    """The warm-up update draws one point in every cell of every cascade. A uniform density 1
    gives opacities dt_min * (1, 2, 4) = (3, 6, 12) / 1024 per cascade; the threshold is
    min(0.01, cascade 0's mean 3 / 1024): cascade 0 is empty (equal to its mean, as the single
    grid's uniform field), the coarser ones full."""
    res = 4
    grid = OccupancyGrid(BIG, OccupancyGridConfig(resolution=res), aabb_scale=4)
    drawn = []

    def density_fn(x):
        drawn.append(x.clone())
        return torch.ones(x.shape[0])

    grid.update(density_fn, generator=torch.Generator().manual_seed(0))
    x = torch.cat(drawn).double().numpy()
    assert x.shape == (3 * res ** 3, 3)
    for i, (lo, hi) in enumerate(_big_boxes(4)):  # point k R^3 + ijk lies in cell ijk of cascade k
        cell = (hi - lo) / res
        ijk = np.stack(np.meshgrid(*[np.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
        pts = x[i * res ** 3:(i + 1) * res ** 3]
        assert (pts >= lo + ijk * cell - 1e-6).all() and (pts <= lo + (ijk + 1) * cell + 1e-6).all()
    assert torch.equal(grid.density, torch.ones(3 * res ** 3))
    assert grid.occupied.view(3, -1).all(1).tolist() == [False, True, True]
    assert not grid.occupied.view(3, -1)[0].any()


def test_tiny_ngp_trains_with_aabb_scale_4(tmp_path):
    """A Blender scene whose box is 4 times the default one (half-size 6) with aabb_scale 4: the
    model resolves 3 cascades and cone angle 1/256 (written to config.json), four training steps
    run, the warm-up update reaches every cell of every cascade (the field's density is positive
    everywhere), and the run rebuilds from its checkpoint with the same grid."""
    scene = make_scene(tmp_path / "scene", n_train=3, n_val=1, n_test=0, size=24)
    for split in ("train", "val"):
        path = scene / f"transforms_{split}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "aabb_scale": 4, "bound": 6.0}))
    config = make_config(scene, "ngp-small", {"ngp.occupancy.resolution": 8, "ngp.occupancy.update_every": 2,
                                              "ngp.optim.target_samples": 1024, "ngp.optim.warmup_steps": 2},
                         steps=4)
    trainer = Trainer(config, tmp_path / "run", progress=False, log_tensorboard=False)
    trainer.train()
    grid = trainer.model.grid
    assert grid.n_cascades == 3 and torch.equal(grid.aabb, torch.tensor([-6.0] * 3 + [6.0] * 3))
    assert grid.boxes[0].tolist() == [-1.5] * 3 + [1.5] * 3
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["ngp"]["occupancy"]
    assert (saved["cascades"], saved["cone_angle"]) == (3, 1 / 256)
    assert grid.n_updates.item() >= 1
    assert (grid.density.view(3, -1) > 0).all()
    _, model = load_run(tmp_path / "run")
    assert torch.equal(model.grid.density, grid.density) and torch.equal(model.grid.occupied, grid.occupied)
    # --set ngp.occupancy.cascades=2 (two cascades: half the box's size, then the box).
    args = build_parser().parse_args(["train", str(scene), "--preset", "ngp-small",
                                      "--set", "ngp.occupancy.cascades=2"])
    two = build_model(run_config_from_args(args), SceneInfo(grid.aabb, meta={"aabb_scale": 4}))
    assert two.grid.n_cascades == 2 and two.grid.boxes[0].tolist() == [-1.5] * 3 + [1.5] * 3


def _ring_cameras(n: int = 6, lens=None) -> Cameras:
    """``n`` cameras 4 units from the origin looking at it, 40 x 30 pixels, fx = fy = 40."""
    c2w = orbit_poses(n, 4.0, elevation_deg=20.0)
    one = torch.ones(n)
    return Cameras(c2w, 40.0 * one, 40.0 * one, 20.0 * one, 15.0 * one, 40, 30, lens=lens)


def _visible_brute_force(points: Tensor, cameras: Cameras) -> Tensor:
    """``(n,)`` bool: does each point project into some camera's image, in front of it? Through
    a lens, only points within the angle of the image's farthest corner count: beyond it a
    polynomial distortion folds back into the image (points no real lens sees)."""
    seen = torch.zeros(len(points), dtype=torch.bool)
    corners = torch.tensor([[0.0, 0.0], [cameras.width, 0.0], [0.0, cameras.height],
                            [cameras.width, cameras.height]])
    for c in range(len(cameras)):
        uv, z = project(cameras, c, points)
        inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cameras.width) & (uv[:, 1] >= 0) & \
            (uv[:, 1] <= cameras.height)
        if cameras.lens is not None:
            rays = generate_rays(cameras, torch.full((4,), c), corners[:, 0], corners[:, 1])
            cos_max = (rays.z_per_t.min() - 1e-6).clamp(min=0)  # the farthest corner's cos(angle to the axis)
            axis = -cameras.c2w[c, :3, 2]
            to_point = points - cameras.c2w[c, :3, 3]
            inside &= (to_point @ axis) >= cos_max * to_point.norm(dim=-1)
        seen |= inside
    return seen


def test_frustum_slopes_and_plane_distances_by_hand():
    """A pinhole at the origin looking down -z, fx = fy = 100, 100 x 100: slopes +-0.5. The
    point (x, 0, -5) is 0.8944 (x - 2.5) outside the x_max side (its plane x = 0.5 f has unit
    normal (-1, 0, -0.5) / 1.118 inward, f = -z): kept at radius 0.1 up to x = 2.6118."""
    one = torch.ones(1)
    cam = Cameras(torch.eye(4)[:3][None], 100 * one, 100 * one, 50 * one, 50 * one, 100, 100)
    assert torch.allclose(frustum_slopes(cam), torch.tensor([[-0.5, 0.5, -0.5, 0.5]]), atol=1e-6)
    pts = torch.tensor([[0.0, 0.0, -5.0], [2.61, 0.0, -5.0], [2.615, 0.0, -5.0], [0.0, -2.61, -5.0],
                        [0.0, 0.0, 5.0], [0.0, 0.0, 0.09], [0.0, 0.0, 0.11]])
    kept = near_frustum(pts, torch.full((len(pts),), 0.1), cam)
    assert kept.tolist() == [True, True, False, True, False, True, False]


@pytest.mark.parametrize("lens", [None, "opencv", "fisheye"])
def test_near_frustum_keeps_every_visible_point_and_drops_far_ones(lens):
    """Against projection through the lens (radfield.cameras.project): every point that lands in
    some image is kept at radius 0; a pinhole keeps no point that lands outside every image by
    more than a pixel's worth; the frustum with a lens bounds its (barrel or pincushion) image."""
    lenses = {None: None,
              "opencv": Lens(torch.tensor([[0.2, -0.05, 0.0, 0.0, 0.01, 0.0]]).repeat(6, 1),
                             torch.zeros(6, dtype=torch.bool)),
              "fisheye": Lens(torch.tensor([[0.05, 0.01, 0.0, 0.0, 0.0, 0.0]]).repeat(6, 1),
                              torch.ones(6, dtype=torch.bool))}
    cams = _ring_cameras(lens=lenses[lens])
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(20000, 3, generator=g) * 16 - 8
    visible = _visible_brute_force(pts, cams)
    kept = near_frustum(pts, torch.zeros(len(pts)), cams)
    assert visible.float().mean() > 0.1 and (~visible).float().mean() > 0.1  # both kinds are tested
    assert kept[visible].all()
    if lens is None:  # the pyramid is the image: no point far outside is kept
        shrunk = near_frustum(pts, torch.full((len(pts),), -0.05), cams)
        assert not shrunk[~visible].any()
    else:
        assert (kept & ~visible).float().mean() < 0.05


def test_unseen_cells_are_never_occupied(tmp_path):
    """A ring of cameras in a box with aabb_scale 4: mark_seen keeps every cell that a point
    inside it is visible from (brute force over 8 random points per cell and every camera), the
    cells behind every camera stay unoccupied under a field dense everywhere, and rays march no
    sample there (while the rays' ends are unseen); a state dict without ``seen`` (older
    checkpoints) loads as all seen."""
    cams = _ring_cameras()
    grid = OccupancyGrid(torch.tensor([-6.0] * 3 + [6.0] * 3), OccupancyGridConfig(resolution=8), 4.0)
    state = {k: v.clone() for k, v in grid.state_dict().items() if k != "seen"}
    grid.mark_seen(cams)
    seen = grid.seen.view(grid.n_cascades, -1)
    assert seen[0].all() and not seen[-1].all()
    centres, radius = grid.cell_centres()
    g = torch.Generator().manual_seed(1)
    res = grid.config.resolution
    k = torch.arange(grid.n_cascades).repeat_interleave(res ** 3)
    for _ in range(8):
        u = (grid.cell_ijk.repeat(grid.n_cascades, 1) + torch.rand(len(k), 3, generator=g)) / res
        x = grid.box_lo[k] + u * grid.box_size[k]
        assert grid.seen[_visible_brute_force(x, cams)].all()
    grid.update(lambda x: torch.full((len(x),), 100.0))
    assert grid.occupied.equal(grid.seen)
    o = torch.tensor([[0.0, 0.0, 0.0]]).repeat(2, 1)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]])  # straight up, straight down: out of every view
    s = grid.sample(Rays(o, d, torch.ones(2)))
    x = o[s.ray_indices] + ((s.t_starts + s.t_ends) / 2)[:, None] * d[s.ray_indices]
    assert len(s) > 0 and grid.seen[grid.cell_index(x)].all()
    assert not grid.seen[grid.cell_index(torch.tensor([[0.0, 0.0, 5.5], [0.0, 0.0, -5.5]]))].any()
    fresh = OccupancyGrid(torch.tensor([-6.0] * 3 + [6.0] * 3), OccupancyGridConfig(resolution=8), 4.0)
    fresh.seen.zero_()
    fresh.load_state_dict(state)
    assert fresh.seen.all()


def test_near_frustum_box_margin_by_hand():
    """The pinhole of the test above: (2.7, 0, -5) is 0.8944 * 0.2 = 0.1789 outside the x_max
    side, whose unit normal is (-1, 0, -0.5) / 1.118. A box of half-extents (0.25, 0, 0) reaches
    0.25 / 1.118 = 0.2236 towards it (kept); a cube of half-extent 0.1 reaches 0.15 / 1.118 =
    0.1342 (not kept), though its bounding sphere (radius 0.1732) would be within 0.006 of it."""
    one = torch.ones(1)
    cam = Cameras(torch.eye(4)[:3][None], 100 * one, 100 * one, 50 * one, 50 * one, 100, 100)
    pts = torch.tensor([[2.7, 0.0, -5.0]] * 3)
    half = torch.tensor([[0.25, 0.0, 0.0], [0.1, 0.1, 0.1], [0.0, 0.0, 0.36]])  # the last: 0.18 / 1.118 = 0.161
    assert near_frustum(pts, half, cam).tolist() == [True, False, False]
    assert near_frustum(pts[:1], torch.tensor([0.18]), cam).tolist() == [True]


@pytest.mark.parametrize("norm,lens", [("inf", None), ("l2", None), ("inf", "opencv")])
def test_seen_grid_keeps_every_visible_point(norm, lens):
    """SeenGrid over a contracted scene (box [-2, 2]^3, cameras 4 units out): every point that
    projects into some image (brute force through the lens), near or out to 1e4, lies in a seen
    cell; the space straight above the scene, which no camera looks at, is unseen;
    cells at infinity are seen; a state dict without ``seen`` loads as all seen."""
    lenses = {None: None, "opencv": Lens(torch.tensor([[0.2, -0.05, 0.0, 0.0, 0.01, 0.0]]).repeat(6, 1),
                                         torch.zeros(6, dtype=torch.bool))}
    cams = _ring_cameras(lens=lenses[lens])
    contraction = Contraction(torch.tensor([-2.0] * 3 + [2.0] * 3), norm)
    grid = SeenGrid(16)
    state = {k: v.clone() for k, v in grid.state_dict().items() if k != "seen"}
    grid.mark(contraction, cams)
    g = torch.Generator().manual_seed(3)
    d = torch.randn(40000, 3, generator=g)
    pts = d / d.norm(dim=-1, keepdim=True) * torch.logspace(-1, 4, 40000)[torch.randperm(40000, generator=g)][:, None]
    visible = _visible_brute_force(pts, cams)
    in_seen = grid(contraction(pts))
    assert visible.float().mean() > 0.05 and (~in_seen).float().mean() > 0.02  # both kinds are tested
    assert in_seen[visible].all()
    assert not grid(contraction(torch.tensor([[0.0, 0.0, 3.0]]))).any()
    assert grid.seen[0].all() and grid.seen[-1].all()  # the faces of the cube: infinity
    assert not grid.seen.all()
    grid.load_state_dict(state)
    assert grid.seen.all()


def test_nerfacto_has_no_density_where_no_camera_sees():
    """A nerfacto model built for training cameras (unbounded scene): its field and each proposal
    network give density 0 at points of unseen cells, and the same densities as the same model
    without the grid (``skip_unseen`` off, same initial weights) where cameras see; a saved model
    keeps the grid, and an odd resolution is refused."""
    def config(**changes):
        return apply_overrides(RunConfig(), {**PRESETS["nerfacto-small"], "nerfacto.bounded": False,
                                             "nerfacto.skip_unseen": True, "nerfacto.seen_resolution": 32, **changes})

    info = SceneInfo(torch.tensor([-1.0] * 3 + [1.0] * 3), n_images=6, meta={"camera_radius": 4.0},
                     cameras=_ring_cameras())
    torch.manual_seed(0)
    model = build_model(config(), info)
    torch.manual_seed(0)
    plain = build_model(config(**{"nerfacto.skip_unseen": False}), info)
    assert plain.seen is None
    x = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.3, 0.2], [0.0, 0.0, 3.0], [0.0, 0.0, -3.0]])
    d = torch.nn.functional.normalize(torch.ones(4, 3), dim=-1)
    code = model.field.appearance_code(torch.full((4,), -1))
    seen = model.seen(model.field.contraction(x))
    assert seen.tolist() == [True, True, False, False]
    for masked, full in [(model.field.density, plain.field.density),
                         *[(m.density, p.density) for m, p in zip(model.proposals, plain.proposals)],
                         (lambda x: model.field.activate(model.field.raw(x, d, code))[0],
                          lambda x: plain.field.activate(plain.field.raw(x, d, code))[0])]:
        a, b = masked(x), full(x)
        assert (b > 1e-3).all() and torch.equal(a[:2], b[:2]) and (a[2:] < 1e-12).all()
    loaded = build_model(config(), SceneInfo(info.aabb, n_images=6, meta=info.meta))
    assert loaded.seen.seen.all()
    loaded.load_state_dict(model.state_dict())
    assert torch.equal(loaded.seen.seen, model.seen.seen) and not loaded.seen.seen.all()
    with pytest.raises(RadfieldError, match="seen_resolution=33"):
        build_model(config(**{"nerfacto.seen_resolution": 33}), info)


def _orbit_cameras(n: int, radius: float, focal: float, size: int) -> Cameras:
    ones = torch.ones(n)
    return Cameras(orbit_poses(n, radius), focal * ones, focal * ones, size / 2 * ones, size / 2 * ones, size, size)


def test_pixel_footprint_is_distance_over_focal():
    # every camera 4 units from the origin at 250 px focal length: one pixel covers 4 / 250 there
    cams = _orbit_cameras(5, 4.0, 250.0, 200)
    assert pixel_footprint(cams, torch.zeros(3)) == pytest.approx(0.016, rel=1e-6)
    # the median: one camera twice as far does not move it
    far = Cameras(torch.cat([cams.c2w, orbit_poses(1, 8.0)]), *(torch.cat([t, t[:1]]) for t in
                  (cams.fx, cams.fy, cams.cx, cams.cy)), 200, 200)
    assert pixel_footprint(far, torch.zeros(3)) == pytest.approx(0.016, rel=1e-6)


def test_footprint_steps_follow_the_image_resolution():
    aabb = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
    diagonal = 3 * math.sqrt(3)
    for focal, size in ((250.0, 200), (125.0, 100)):
        cams = _orbit_cameras(4, 4.0, focal, size)
        expect = math.ceil(diagonal / (4.0 / focal) * STEPS_PER_FOOTPRINT)
        assert footprint_steps(cams, aabb, 1.0, 1) == min(max(expect, 64), 1024)
    # 800 px images: Instant-NGP's 1024 at most; a tiny image: at least 64
    assert footprint_steps(_orbit_cameras(4, 4.0, 5000.0, 4000), aabb, 1.0, 1) == 1024
    assert footprint_steps(_orbit_cameras(4, 4.0, 5.0, 4), aabb, 1.0, 1) == 64
    # cascades: cascade 0's diagonal (a quarter of the box's with aabb_scale 4)
    cams = _orbit_cameras(4, 4.0, 250.0, 200)
    assert footprint_steps(cams, aabb * 4, 4.0, 3) == footprint_steps(cams, aabb, 1.0, 1)


def test_ngp_resolves_auto_steps_from_its_training_cameras(tmp_path):
    scene = make_scene(tmp_path / "scene", n_train=4, n_val=1, n_test=1, size=32)
    trainer = Trainer(make_config(scene, "ngp", steps=1), tmp_path / "run", progress=False)
    steps = trainer.config.ngp.occupancy.steps_per_diagonal
    assert steps == footprint_steps(trainer.data.cameras, trainer.model.aabb, 1.0, 1)
    assert trainer.model.grid.step_size == pytest.approx(trainer.model.grid.box_size[0].norm().item() / steps)
    # a grid built without cameras keeps Instant-NGP's march
    assert _grid(steps_per_diagonal=0).step_size == pytest.approx(0.03 * 100 / 1024, rel=1e-6)


def test_ngp_auto_max_resolution_scales_with_the_box():
    from radfield.config import RunConfig
    from radfield.models.ngp import ROI_MAX_RESOLUTION

    for scale in (1.0, 4.0):
        config = RunConfig()
        scene = SceneInfo(aabb=torch.tensor([-1.0, -1, -1, 1, 1, 1]) * scale, meta={"aabb_scale": scale})
        model = build_model(config, scene)
        assert config.ngp.grid.max_resolution == ROI_MAX_RESOLUTION * scale
        assert max(model.field.grid.resolutions) == ROI_MAX_RESOLUTION * scale
        build_model(config, scene)  # a saved config builds the same grid: resolved once
        assert config.ngp.grid.max_resolution == ROI_MAX_RESOLUTION * scale
