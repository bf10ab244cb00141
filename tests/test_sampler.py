"""The occupancy-grid ray marcher and its update, against hand-computed distances, a
brute-force float64 march and analytic density fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfield.cameras import Rays
from radfield.rendering.pipeline import prune_occluded
from radfield.rendering.volume import render
from radfield.samplers.occupancy import OccupancyGrid, OccupancyGridConfig

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


def test_early_stopping_drops_samples_behind_a_dense_slab():
    """dt = 2 sqrt3 / 128 = 0.02706. With sigma 50 each slab sample has tau = 1.353; a sample is
    kept while the optical depth in front of it is < ln(1e4) = 9.21: 7 slab samples (6 * 1.353 =
    8.12, 7 * 1.353 = 9.47). With sigma 25 (odd rays) tau = 0.677: 14 slab samples."""
    grid, rays = _slab_setup()
    dt = grid.step_size
    assert dt == pytest.approx(2 * math.sqrt(3) / 128)
    full = grid.sample(rays)
    stopped = prune_occluded(rays, grid.sample(rays), _slab_sigma(50.0))
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


def test_early_stopping_with_infinite_density_keeps_other_rays():
    grid, rays = _slab_setup()
    full = grid.sample(rays)
    stopped = prune_occluded(rays, grid.sample(rays), _slab_sigma(math.inf))
    x_kept = stopped.positions(rays)[:, 0]
    for r in range(3):  # in front of the slab plus its first sample
        xr = x_kept[stopped.ray_indices == r]
        assert int((xr < 0).sum()) == int((full.positions(rays)[full.ray_indices == r, 0] < 0).sum())
        assert int((xr >= 0).sum()) == 1
    assert int((stopped.ray_indices == 3).sum()) == 74
