"""The occupancy march's Triton kernels (its GPU path), run on the CPU under Triton's interpreter:
the same samples as the PyTorch march, bit for bit, and a hand-checked ray.
``RADFIELD_TEST_DEVICE=cuda`` runs them compiled on a GPU (``bench/gpu_check.sh``), where a step
on a cell's face may fall in the neighbouring cell (fused multiply-adds), so there the samples are
compared as sets with a tolerance."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")

from radfield.samplers import occupancy  # noqa: E402
from radfield.samplers.occupancy import OccupancyGrid, OccupancyGridConfig  # noqa: E402
from test_sampler import _rays, march_case  # noqa: E402

# conftest.py sets TRITON_INTERPRET=1 before anything imports triton (unless RADFIELD_TEST_DEVICE
# names a GPU).

DEVICE = torch.device(os.environ.get("RADFIELD_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("RADFIELD_TEST_DEVICE=cuda, but torch sees no GPU", allow_module_level=True)
kernels = occupancy._TRITON.load()


@pytest.fixture
def triton_march(monkeypatch):
    """The Triton march for the rays of this module's device (the CPU: the interpreter)."""
    monkeypatch.setattr(occupancy, "_triton_marcher", lambda o: kernels)


def test_the_kernels_run_under_the_interpreter():
    assert kernels is not None
    interpreted = type(kernels._march).__name__ == "InterpretedFunction"
    assert interpreted == (DEVICE.type == "cpu")


def _same_samples(a, b):
    if DEVICE.type == "cpu":
        assert torch.equal(a.ray_indices.cpu(), b.ray_indices) and torch.equal(a.t_starts.cpu(), b.t_starts)
        assert torch.equal(a.t_ends.cpu(), b.t_ends)
    else:  # compiled: fused multiply-adds may move a step on a cell's face
        assert abs(len(a) - len(b)) <= 0.01 * len(b)


@pytest.mark.parametrize("aabb_scale", [1, 4, 3])
def test_triton_march_equals_the_pytorch_march(aabb_scale, triton_march):
    """As ``test_compiled_march_equals_the_pytorch_march_to_the_bit``: fixed steps (aabb_scale 1),
    three cascades with a cone angle (4, and 3, whose last box clips), 30 % random occupancy, rays
    from inside and outside the box (some missing it, some axis-parallel), with and without jitter
    and a near plane; rays longer than one block of steps."""
    n = 120
    grid, reference, rays = march_case(aabb_scale, n)
    grid = grid.to(DEVICE)
    on_device = rays.to(DEVICE)
    for jitter, near in ((False, 0.0), (True, 2.5)):
        a = grid.sample(on_device, near=near, jitter=jitter, jitter_generator=torch.Generator(DEVICE).manual_seed(7))
        b = reference.sample(rays, near=near, jitter=jitter, jitter_generator=torch.Generator().manual_seed(7))
        assert len(b) > 200 and b.ray_indices.unique().numel() < n  # some rays keep nothing
        assert _longest_march(b) > kernels.BLOCK  # some ray's kept steps span more than a block
        if DEVICE.type == "cpu" or not jitter:  # the GPU's generator draws other offsets
            _same_samples(a, b)


def _longest_march(s) -> float:
    """The most steps any ray's kept samples span (at least: its longest step counted)."""
    n = int(s.ray_indices.max()) + 1
    first = torch.full((n,), float("inf")).scatter_reduce(0, s.ray_indices, s.t_starts, "amin")
    last = torch.zeros(n).scatter_reduce(0, s.ray_indices, s.t_ends, "amax")
    longest = torch.zeros(n).scatter_reduce(0, s.ray_indices, s.t_ends - s.t_starts, "amax")
    seen = torch.isfinite(first)
    return float(((last - first)[seen] / longest[seen]).max())


def test_a_ray_through_one_occupied_cell(triton_march):
    """A ray along x through the middle of a 4^3 grid over the unit box, one occupied cell
    (1, 2, 2): fixed steps of the diagonal / 40 from t_near = 1, midpoints 1 + (k + 0.5) dt; the
    kept ones are those with x in [0.25, 0.5): k = 6 .. 11."""
    box = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    grid = OccupancyGrid(box, OccupancyGridConfig(resolution=4, steps_per_diagonal=40))
    occ = torch.zeros(4, 4, 4, dtype=torch.bool)
    occ[1, 2, 2] = True
    grid.occupied.copy_(occ.reshape(-1))
    grid = grid.to(DEVICE)
    rays = _rays(torch.tensor([[-1.0, 0.6, 0.6]]).to(DEVICE), torch.tensor([[1.0, 0.0, 0.0]]).to(DEVICE))
    s = grid.sample(rays)
    dt = 3 ** 0.5 / 40
    mids = [1.0 + (k + 0.5) * dt for k in range(40) if 0.25 <= 1.0 + (k + 0.5) * dt - 1.0 < 0.5]
    assert len(s) == len(mids) == 6
    assert ((s.t_starts + s.t_ends) / 2).cpu().tolist() == pytest.approx(mids, abs=1e-5)
    assert (s.ray_indices == 0).all()


def test_no_rays_and_rays_that_miss(triton_march):
    grid = OccupancyGrid(torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), OccupancyGridConfig(resolution=4)).to(DEVICE)
    empty = grid.sample(_rays(torch.zeros(0, 3).to(DEVICE), torch.zeros(0, 3).to(DEVICE)))
    assert len(empty) == 0
    away = grid.sample(_rays(torch.tensor([[5.0, 5.0, 5.0]]).to(DEVICE), torch.tensor([[1.0, 0.0, 0.0]]).to(DEVICE)))
    assert len(away) == 0
