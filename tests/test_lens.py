"""Lens distortion against hand values and independent inversions: the worked examples of
:mod:`radfield.lens`, undistortion against bisection on the radial / angle equations, rays and
projection through a lens, and which lenses can be inverted over their images."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import make_config
from radfield.cameras import Cameras, image_rays, lens_directions, orbit_poses, pixel_rays, project
from radfield.data.synthetic import make_scene
from radfield.lens import Lens, check_invertible, distort, undistorted_directions
from radfield.training.trainer import Trainer

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


def test_looked_up_lens_directions_give_the_same_rays():
    """Five cameras: three share an OpenCV lens and intrinsics, one has its own focal length, one
    a fisheye: three tables. Rays of random pixels with the looked-up directions equal those
    undistorted per ray, bit for bit; pinholes and tables over the memory bound get None."""
    c2w = orbit_poses(5, 4.0)
    fx = torch.tensor([50.0, 50, 50, 60, 50])
    coeffs = torch.tensor([[0.1, -0.05, 0, 0, 0.01, 0.0]] * 4 + [[0.02, -0.01, 0.0, 0.0, 0.0, 0.0]])
    lens = Lens(coeffs, torch.tensor([False, False, False, False, True]))
    cams = Cameras(c2w, fx, fx.clone(), torch.full((5,), 20.0), torch.full((5,), 15.0), 40, 30, lens=lens)
    table = lens_directions(cams)
    assert table.group.tolist()[:3] == [table.group[0].item()] * 3 and len(set(table.group.tolist())) == 3
    assert table.table.shape == (3, 30 * 40, 3)
    g = torch.Generator().manual_seed(0)
    cam, i, j = (torch.randint(0, n, (500,), generator=g) for n in (5, 40, 30))
    a, b = pixel_rays(cams, cam, i, j, table), pixel_rays(cams, cam, i, j)
    for name in ("origins", "directions", "z_per_t"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert torch.equal(a.attrs["radii"], b.attrs["radii"])
    assert lens_directions(Cameras(c2w, fx, fx.clone(), torch.full((5,), 20.0), torch.full((5,), 15.0), 40, 30)) is None
    assert lens_directions(cams, max_bytes=2 * 30 * 40 * 3 * 4) is None


def test_training_through_a_lens_looks_the_directions_up(tmp_path):
    """A built-in scene declared to have an OpenCV lens trains with one direction table (its
    cameras share their intrinsics), and its steps' rays are those undistorted per ray."""
    scene = make_scene(tmp_path / "scene", n_train=3, n_val=1, n_test=0, size=16)
    for split in ("train", "val"):
        path = scene / f"transforms_{split}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "camera_model": "OPENCV", "k1": 0.05}))
    trainer = Trainer(make_config(scene, "ngp-small", steps=2), tmp_path / "run", progress=False,
                      log_tensorboard=False)
    group = trainer.groups[0]
    assert group.directions is not None and group.directions.table.shape == (1, 16 * 16, 3)
    cam, i, j = torch.tensor([0, 2, 1]), torch.tensor([0, 15, 7]), torch.tensor([3, 15, 0])
    a, b = pixel_rays(group.cameras, cam, i, j, group.directions), pixel_rays(group.cameras, cam, i, j)
    assert torch.equal(a.directions, b.directions) and b.directions[1, 0] != 0
    trainer.train()
    assert trainer.state.step == 2


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
