"""Lens distortion against hand values and independent inversions: the worked examples of
:mod:`radfield.lens`, undistortion against bisection on the radial / angle equations, rays and
projection through a lens, and which lenses can be inverted over their images."""

from __future__ import annotations

import math

import pytest
import torch

from radfield.cameras import Cameras, image_rays, project
from radfield.lens import Lens, check_invertible, distort, undistorted_directions

pytestmark = pytest.mark.usefixtures("one_thread")


def lens(coeffs, fisheye=False, n=1):
    return torch.tensor([coeffs] * n, dtype=torch.float64), torch.tensor([fisheye] * n)


def test_hand_examples():
    c, f = lens([0.1, 0, 0, 0, 0, 0])
    xd, yd = distort(c, f, torch.tensor([0.5], dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert float(xd) == pytest.approx(0.5125) and float(yd) == 0.0
    c, f = lens([0, 0, 0, 0, 0, 0], fisheye=True)
    xd, yd = distort(c, f, torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    assert float(xd) == pytest.approx(math.pi / 4) and float(yd) == 0.0


def bisect(fn, target, lo, hi):
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if fn(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("fisheye", [False, True])
def test_undistortion_against_bisection(fisheye):
    """Radial lenses keep the direction in the image plane: only the radius (opencv) or the angle
    (fisheye) changes, found here by bisection of the lens polynomial, one point at a time."""
    k = [0.08, -0.03, 0.01, -0.002, 0.0, 0.0]
    g = torch.Generator().manual_seed(0)
    xd = torch.rand(50, generator=g, dtype=torch.float64) * 1.2 - 0.6
    yd = torch.rand(50, generator=g, dtype=torch.float64) * 1.2 - 0.6
    c, f = lens(k, fisheye, 50)
    d = undistorted_directions(c, f, xd, yd)
    for i in range(50):
        rd = math.hypot(float(xd[i]), float(yd[i]))
        if fisheye:
            theta = bisect(lambda t: t * (1 + k[0] * t ** 2 + k[1] * t ** 4 + k[2] * t ** 6 + k[3] * t ** 8),
                           rd, 0.0, math.pi / 2)
            expected = [math.sin(theta) * xd[i] / rd, math.sin(theta) * yd[i] / rd, math.cos(theta)]
        else:
            r = bisect(lambda r: r * (1 + k[0] * r ** 2 + k[1] * r ** 4 + k[2] * r ** 6 + k[3] * r ** 8), rd, 0.0, 2.0)
            expected = [r * xd[i] / rd, r * yd[i] / rd, 1.0]
        torch.testing.assert_close(d[i], torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-9)


def test_tangential_undistortion_redistorts():
    """With tangential terms there is no 1D equation: Newton's answer re-distorts to its input,
    and differs from the radial-only answer (so the tangential terms are used)."""
    g = torch.Generator().manual_seed(1)
    xd = torch.rand(200, generator=g, dtype=torch.float64) - 0.5
    yd = torch.rand(200, generator=g, dtype=torch.float64) - 0.5
    c, f = lens([0.1, 0.03, 0, 0, 0.02, -0.025], n=200)
    d = undistorted_directions(c, f, xd, yd)
    rx, ry = distort(c, f, d[:, 0], d[:, 1])
    torch.testing.assert_close(rx, xd, rtol=0, atol=1e-12)
    torch.testing.assert_close(ry, yd, rtol=0, atol=1e-12)
    c0, _ = lens([0.1, 0.03, 0, 0, 0, 0], n=200)
    assert float((undistorted_directions(c0, f, xd, yd) - d).abs().max()) > 1e-3


def test_rays_and_projection_through_a_fisheye():
    """Every pixel's ray projects back onto its pixel centre; the planar depth of a point at ray
    distance t is t * z_per_t, with z_per_t = cos(theta), the angle from the optical axis."""
    c2w = torch.eye(4)[:3][None]
    one = torch.ones(1)
    fish = Lens(torch.tensor([[0.02, -0.01, 0.003, 0.0, 0.0, 0.0]]), torch.tensor([True]))
    cams = Cameras(c2w, 60 * one, 55 * one, 50 * one, 45 * one, 100, 90, lens=fish)
    rays = image_rays(cams, 0)
    uv, z = project(cams, 0, rays.origins + 3.0 * rays.directions)
    j, i = torch.meshgrid(torch.arange(90), torch.arange(100), indexing="ij")
    centres = torch.stack([i.reshape(-1) + 0.5, j.reshape(-1) + 0.5], -1).float()
    torch.testing.assert_close(uv, centres, rtol=0, atol=1e-3)
    cos_theta = -rays.directions[:, 2]  # camera looks down -z, at the origin with identity pose
    torch.testing.assert_close(rays.z_per_t, cos_theta)
    torch.testing.assert_close(z, 3.0 * cos_theta, rtol=0, atol=1e-5)
    # the corner pixel sees wider than a pinhole with the same focal length would
    pinhole = image_rays(Cameras(c2w, 60 * one, 55 * one, 50 * one, 45 * one, 100, 90), 0)
    assert float(-rays.directions[0, 2]) < float(-pinhole.directions[0, 2]) - 0.05


def test_zero_coefficients_and_downscale():
    c2w = torch.eye(4)[:3][None]
    one = torch.ones(1)
    plain = Cameras(c2w, 40 * one, 40 * one, 16 * one, 12 * one, 32, 24)
    assert Lens.from_dicts([("opencv", {"k1": 0.0})]) is None
    zero = Cameras(c2w, 40 * one, 40 * one, 16 * one, 12 * one, 32, 24,
                   lens=Lens(torch.zeros(1, 6), torch.tensor([False])))
    torch.testing.assert_close(image_rays(zero, 0).directions, image_rays(plain, 0).directions)
    bent = Cameras(c2w, 40 * one, 40 * one, 16 * one, 12 * one, 32, 24,
                   lens=Lens(torch.tensor([[0.1, 0.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([False])))
    half = bent.downscaled(2)  # pixel (i, j) of the half image is the centre of block (2i..2i+1)
    torch.testing.assert_close(half.lens.coeffs, bent.lens.coeffs)
    from radfield.cameras import generate_rays
    zero_idx = torch.zeros(1, dtype=torch.long)
    a = generate_rays(half, zero_idx, torch.tensor([3.5]), torch.tensor([2.5])).directions
    b = generate_rays(bent, zero_idx, torch.tensor([7.0]), torch.tensor([5.0])).directions
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("coeffs,fisheye,f,why", [
    ([0.05, -0.08, 0, 0, 0, 0], False, 100.0, None),
    ([0.05, -0.08, 0, 0, 0, 0], False, 60.0, "not invertible"),  # r_d peaks at 1.11 < corner 1.18
    ([0.02, -0.01, 0.003, 0, 0, 0], True, 60.0, None),
    ([0.0, 0.0, 0.0, 0, 0, 0], True, 40.0, "180 degrees"),  # corner r_d = 1.77 rad > pi / 2
    ([-0.3, 0.0, 0.0, 0, 0, 0], True, 60.0, "not invertible"),  # theta_d(theta) turns back
])
def test_which_lenses_invert_over_the_image(coeffs, fisheye, f, why):
    out = check_invertible(torch.tensor(coeffs), fisheye, f, f, 50.0, 50.0, 100, 100)
    assert (out is None) if why is None else (why in out)
