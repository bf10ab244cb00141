"""Scene geometry: the ray-box slab test and scene contraction, against hand-computed distances,
the contraction formula evaluated point by point in numpy, and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfield.cameras import Rays
from radfield.geometry import box_near_far, contract, ray_aabb_intersect, uncontract

# An asymmetric box: x in [-1, 1], y in [-0.5, 1.5], z in [0, 1].
AABB = torch.tensor([-1.0, -0.5, 0.0, 1.0, 1.5, 1.0])


# ---------------------------------------------------------------------------- ray_aabb_intersect
def test_ray_aabb_intersect_hand_computed():
    s3 = math.sqrt(3.0)
    cases = [
        # origin, direction (unit), t_near, t_far
        ((0.5, 0.5, -1.0), (0.0, 0.0, 1.0), 1.0, 2.0),  # +z, enters z = 0, leaves z = 1
        ((4.0, 0.0, 0.5), (-1.0, 0.0, 0.0), 3.0, 5.0),  # -x, enters x = 1, leaves x = -1
        # Diagonal (1,1,1)/sqrt3 from (-2, -1, -0.5): in units s = t / sqrt3 the slabs are
        # x: [1, 3], y: [0.5, 2.5], z: [0.5, 1.5] -> s in [1, 1.5].
        ((-2.0, -1.0, -0.5), (1 / s3, 1 / s3, 1 / s3), s3, 1.5 * s3),
        # Inside, direction (0.6, -0.8, 0): x: [-5/3, 5/3], y: [-1.25, 1.25], z parallel -> [-1.25, 1.25].
        ((0.0, 0.5, 0.5), (0.6, -0.8, 0.0), -1.25, 1.25),
    ]
    o = torch.tensor([c[0] for c in cases])
    d = torch.tensor([c[1] for c in cases])
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    assert t_near.shape == t_far.shape == (len(cases),)
    torch.testing.assert_close(t_near, torch.tensor([c[2] for c in cases]), atol=1e-5, rtol=0)
    torch.testing.assert_close(t_far, torch.tensor([c[3] for c in cases]), atol=1e-5, rtol=0)
    assert t_near[3] < 0 < t_far[3]


def test_ray_aabb_intersect_misses():
    s2 = math.sqrt(0.5)
    o = torch.tensor([[-2.0, 3.0, 0.5],   # (1,1,0)/sqrt2: x needs t in [1, 3] sqrt2, y in [-3.5, -1.5] sqrt2
                      [2.0, 0.0, 0.5],    # along +z at x = 2: zero x component, outside the x slab
                      [0.0, 2.0, 0.5],    # along +x at y = 2: zero y component, outside the y slab
                      [3.0, 0.0, 0.5]])   # along +x, box behind the origin: t_near < t_far < 0
    d = torch.tensor([[s2, s2, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t_near, t_far = ray_aabb_intersect(o, d, AABB)
    assert (t_near[:3] > t_far[:3]).all()
    torch.testing.assert_close(t_near[0], torch.tensor(math.sqrt(2.0)), atol=1e-5, rtol=0)
    torch.testing.assert_close(t_far[0], torch.tensor(-1.5 * math.sqrt(2.0)), atol=1e-5, rtol=0)
    torch.testing.assert_close(t_near[3], torch.tensor(-4.0))
    torch.testing.assert_close(t_far[3], torch.tensor(-2.0))


def test_box_near_far_clamps_inside_origins_and_empties_misses():
    o = torch.tensor([[0.5, 0.5, -1.0],   # +z from below: enters at 1, leaves at 2
                      [0.0, 0.5, 0.5],    # inside, +z: t_near = -0.5 -> min_near, leaves at 0.5
                      [2.0, 0.0, 0.5]])   # +z outside the x slab: a miss
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    near, far = box_near_far(Rays(o, d, torch.ones(3)), AABB, min_near=0.01)
    torch.testing.assert_close(near[:2], torch.tensor([1.0, 0.01]))
    torch.testing.assert_close(far[:2], torch.tensor([2.0, 0.5]))
    assert near[2] >= 0.01 and far[2] == near[2]  # an empty range


# --------------------------------------------------------------------------- contract

def _contract_np(p, norm):
    n = np.linalg.norm(p) if norm == "l2" else np.abs(p).max()
    return p if n <= 1 else (2 - 1 / n) * p / n


@pytest.mark.parametrize("norm", ["l2", "inf"])
def test_contract_matches_formula_inside_and_outside(norm):
    g = torch.Generator().manual_seed(0)
    d = torch.randn(400, 3, generator=g, dtype=torch.float64)
    x = d / d.norm(dim=-1, keepdim=True) * torch.rand(400, 1, generator=g, dtype=torch.float64) * 10
    y = contract(x, norm).numpy()
    ref = np.stack([_contract_np(p, norm) for p in x.numpy()])
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-14)
    mags = np.linalg.norm(y, axis=-1) if norm == "l2" else np.abs(y).max(-1)
    assert (mags < 2).all() and (mags > 1).sum() > 100  # many points really were outside
    big = contract(torch.tensor([[1e10, -3e9, 0.0]], dtype=torch.float64), norm)
    big_mag = big.norm() if norm == "l2" else big.abs().max()
    assert 1.99 < big_mag.item() < 2


def test_contract_hand_values():
    x = torch.tensor([[3.0, 4.0, 0.0], [0.5, 0.0, 0.0]])
    assert torch.allclose(contract(x, "l2"), torch.tensor([[1.08, 1.44, 0.0], [0.5, 0.0, 0.0]]))
    assert torch.allclose(contract(torch.tensor([4.0, 2.0, 0.0]), "inf"), torch.tensor([1.75, 0.875, 0.0]))


@pytest.mark.parametrize("norm", ["l2", "inf"])
def test_contract_continuous_at_unit_norm_and_gradients(norm):
    d = torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64)
    d = d / (d.norm() if norm == "l2" else d.abs().max())
    inside, outside = contract(d * (1 - 1e-9), norm), contract(d * (1 + 1e-9), norm)
    assert (inside - outside).abs().max() < 1e-8
    # finite gradients at 0 and at huge |x|; identity Jacobian at 0
    for x0, expect in [(torch.zeros(2, 3), torch.ones(2, 3)), (torch.full((2, 3), 1e10), None)]:
        x = x0.clone().requires_grad_(True)
        contract(x, norm).sum().backward()
        assert torch.isfinite(x.grad).all()
        if expect is not None:
            assert torch.equal(x.grad, expect)
    # Jacobian against finite differences, away from |x| = 1 and from ties in the max
    x = torch.tensor([[0.2, -0.3, 0.1], [2.5, -1.0, 0.7], [-4.0, 3.0, 9.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: contract(v, norm), (x.requires_grad_(True),))


def test_contract_rejects_unknown_norm():
    with pytest.raises(ValueError):
        contract(torch.zeros(3), "l1")
    with pytest.raises(ValueError):
        uncontract(torch.zeros(3), "l1")


@pytest.mark.parametrize("norm", ["l2", "inf"])
def test_uncontract_inverts_contract(norm):
    """Points near and far (up to 1e6) go to the contracted ball and back; hand values from
    test_contract_hand_values read backwards; |y| = 2 is infinity."""
    g = torch.Generator().manual_seed(2)
    d = torch.randn(500, 3, generator=g, dtype=torch.float64)
    x = d * torch.logspace(-2, 6, 500, dtype=torch.float64)[:, None]
    torch.testing.assert_close(uncontract(contract(x, norm), norm), x, rtol=1e-9, atol=1e-12)
    if norm == "l2":
        torch.testing.assert_close(uncontract(torch.tensor([1.08, 1.44, 0.0]), norm), torch.tensor([3.0, 4.0, 0.0]))
    else:
        torch.testing.assert_close(uncontract(torch.tensor([1.75, 0.875, 0.0]), norm), torch.tensor([4.0, 2.0, 0.0]))
    edge = torch.tensor([1.6, 1.2, 0.0]) if norm == "l2" else torch.tensor([2.0, 0.5, 0.0])  # |y| = 2
    assert torch.isinf(uncontract(edge, norm)[:2]).all()
