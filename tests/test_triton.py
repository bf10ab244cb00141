"""The hash grid's Triton kernels (its GPU path), run on the CPU under Triton's interpreter:
forward against a brute-force python evaluation, gradients against the PyTorch reference's
autograd (itself checked against finite differences in ``test_hashgrid.py``) and a hand-built
scatter of the table gradient. ``RADFIELD_TEST_DEVICE=cuda`` runs the same tests compiled on a
GPU (``bench/gpu_check.sh``)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")

from radfield.fields import hashgrid  # noqa: E402
from radfield.fields.hashgrid import HashGrid, HashGridConfig, hash_grid_reference  # noqa: E402
from test_hashgrid import _brute_force_level  # noqa: E402

# conftest.py sets TRITON_INTERPRET=1 before anything imports triton (unless RADFIELD_TEST_DEVICE
# names a GPU).

DEVICE = torch.device(os.environ.get("RADFIELD_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("RADFIELD_TEST_DEVICE=cuda, but torch sees no GPU", allow_module_level=True)
triton_path = hashgrid.triton_kernels()


def _grid(features: int = 2) -> HashGrid:
    """Resolutions 4, 8, 16 with 2^9 rows: level 0 (5^3 = 125 rows) dense, levels 1 and 2 hashed."""
    grid = HashGrid(HashGridConfig(n_levels=3, features_per_level=features, log2_table_size=9,
                                   base_resolution=4, max_resolution=16))
    torch.manual_seed(0)
    with torch.no_grad():
        for table in grid.tables:
            table.uniform_(-1.0, 1.0)
    return grid.to(DEVICE)


def _points(n: int = 150) -> torch.Tensor:
    """Random points, some outside the unit cube, plus the corners and faces of the cube."""
    torch.manual_seed(1)
    x = torch.rand(n, 3) * 1.2 - 0.1
    edges = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0], [0.25, 1.0, 0.75]])
    return torch.cat([x, edges]).to(DEVICE)


def test_the_kernels_run_under_the_interpreter():
    """On the CPU under the interpreter; on a GPU compiled."""
    assert triton_path is not None
    interpreted = type(triton_path._forward_level).__name__ == "InterpretedFunction"
    assert interpreted == (DEVICE.type == "cpu")


@pytest.mark.parametrize("features", [1, 2, 4])
def test_forward_matches_brute_force_and_reference(features):
    grid = _grid(features)
    x = _points()
    tables = list(grid.tables)
    assert triton_path.applies(x, tables)
    out = triton_path.hash_grid_triton(x, tables, grid.resolutions)
    assert out.shape == (len(x), 3 * features)
    for i in (0, 7, 150, 151, 152, 153):
        expect = [v for t, r in zip(tables, grid.resolutions)
                  for v in _brute_force_level(x[i].cpu(), t.detach().double().cpu(), r)]
        assert out[i].tolist() == pytest.approx(expect, abs=1e-5)
    assert torch.allclose(out, hash_grid_reference(x, tables, grid.resolutions), atol=1e-6)


def test_gradients_match_the_reference():
    grid = _grid()
    tables = list(grid.tables)
    x = _points().requires_grad_()
    upstream = torch.randn(len(x), 6, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    got = torch.autograd.grad(triton_path.hash_grid_triton(x, tables, grid.resolutions), [x, *tables], upstream)
    want = torch.autograd.grad(hash_grid_reference(x, tables, grid.resolutions), [x, *tables], upstream)
    for g, w in zip(got, want):
        assert torch.allclose(g, w, rtol=1e-5, atol=1e-4)
    outside = ((x < 0) | (x > 1)).detach()
    assert outside.any() and (got[0][outside] == 0).all()  # the clamp's gradient


def test_table_gradient_is_the_scatter_of_corner_weights():
    """One point at the centre of a cell of the dense level (res 4): each of its 8 corners gets
    1/8 of the upstream gradient, in the dense rows c_x + 5 c_y + 25 c_z."""
    grid = _grid()
    tables = list(grid.tables)
    x = torch.tensor([[0.375, 0.125, 0.625]], device=DEVICE)  # p = (1.5, 0.5, 2.5): cell (1, 0, 2)
    upstream = torch.zeros(1, 6, device=DEVICE)
    upstream[0, :2] = torch.tensor([1.0, -2.0])
    grads = torch.autograd.grad(triton_path.hash_grid_triton(x, tables, grid.resolutions), tables, upstream)
    expect = torch.zeros_like(tables[0])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                expect[(1 + dx) + 5 * (0 + dy) + 25 * (2 + dz)] = torch.tensor([1.0, -2.0], device=DEVICE) / 8
    assert torch.allclose(grads[0], expect)
    assert (grads[1] == 0).all() and (grads[2] == 0).all()


def test_empty_batch_and_unsupported_inputs():
    grid = _grid()
    tables = list(grid.tables)
    out = triton_path.hash_grid_triton(torch.zeros(0, 3, device=DEVICE), tables, grid.resolutions)
    assert out.shape == (0, 6)
    assert not triton_path.applies(torch.zeros(4, 3, dtype=torch.float64, device=DEVICE), tables)
    three = list(_grid(3).tables)  # 3 features: not a power of 2
    assert not triton_path.applies(torch.zeros(4, 3, device=DEVICE), three)
