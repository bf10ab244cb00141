"""Tests of the dataset readers and the synthetic scene.

Ground truth: analytic ray / primitive intersections, depth maps rendered by the synthetic
tracer and by Blender (``../shared/data/toy``), hand-computed intrinsics and block means.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_one_line_naming

from radfield.cameras import generate_rays, image_rays, pixel_rays, project
from radfield.data import SceneData, blender, load_cameras, load_scene
from radfield.data.blender import load_blender
from radfield.data.scene import over_background
from radfield.data.synthetic import (CAMERA_ANGLE_X, CHECKER_BOX, GLOSSY_SPHERE, TEXTURED_SPHERE,
                                     make_scene, trace)
from radfield.errors import RadfieldError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("synthetic"), n_train=6, n_val=1, n_test=4, size=48)


def toy_path() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found: {SHARED_DATA}")
    return SHARED_DATA / "toy"


def scene_path(name: str, synthetic: Path) -> Path:
    return synthetic if name == "synthetic" else toy_path()


# ---------------------------------------------------------------------------- synthetic scene


def test_trace_matches_analytic_hits():
    """Rays straight down onto each primitive's top hit at ``z_top``; a ray away misses."""
    tops = [
        (TEXTURED_SPHERE.centre[:2], TEXTURED_SPHERE.centre[2] + TEXTURED_SPHERE.radius),
        (GLOSSY_SPHERE.centre[:2], GLOSSY_SPHERE.centre[2] + GLOSSY_SPHERE.radius),
        ((0.35, -0.5), CHECKER_BOX.hi[2]),
    ]
    origins = torch.tensor([[x, y, 5.0] for (x, y), _ in tops] + [[5.0, 5.0, 5.0]])
    directions = torch.tensor([[0.0, 0.0, -1.0]] * len(tops) + [[1.0, 0.0, 0.0]])
    rgb, alpha, t_hit = trace(origins, directions)
    expected_t = torch.tensor([5.0 - z for _, z in tops] + [math.inf])
    assert rgb.shape == (4, 3) and alpha.shape == (4,) and t_hit.shape == (4,)
    torch.testing.assert_close(t_hit, expected_t)
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert (rgb[:3] >= 0).all() and (rgb[:3] <= 1).all() and (rgb[3] == 0).all()


def test_trace_is_view_dependent():
    """Same surface point, two viewing directions: the Blinn-Phong term changes the colour."""
    c, r = torch.tensor(GLOSSY_SPHERE.centre), GLOSSY_SPHERE.radius
    point = c + r * torch.tensor([0.0, 0.0, 1.0])
    dirs = torch.tensor([[0.4, -0.3, -1.0], [-0.4, 0.3, -1.0]])
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    rgb, _, t_hit = trace(point - 2.0 * dirs, dirs)
    torch.testing.assert_close(t_hit, torch.tensor([2.0, 2.0]))
    assert (rgb[0] - rgb[1]).abs().max() > 0.1


def test_make_scene_layout_and_cameras(synthetic):
    for split, n in (("train", 6), ("val", 1), ("test", 4)):
        meta = json.loads((synthetic / f"transforms_{split}.json").read_text())
        assert len(meta["frames"]) == n and meta["w"] == meta["h"] == 48
        assert meta["fl_x"] == pytest.approx(24.0 / math.tan(0.5 * CAMERA_ANGLE_X))
        scene = load_blender(synthetic, split)
        centers = scene.cameras.centers
        torch.testing.assert_close(centers.norm(dim=-1), torch.full((n,), 4.0))
        elevation = torch.rad2deg(torch.asin(centers[:, 2] / 4.0))
        if split == "test":
            torch.testing.assert_close(elevation, torch.full((n,), 30.0))
        else:
            assert ((elevation >= 10 - 1e-3) & (elevation <= 70 + 1e-3)).all()
        # every camera looks at the origin: its -z axis points from the centre to the origin
        forward = -scene.cameras.c2w[:, :, 2]
        torch.testing.assert_close(forward, -centers / 4.0)


def test_synthetic_depth_agrees_with_trace_and_alpha(synthetic):
    scene = load_blender(synthetic, "train")
    assert scene.has_alpha and scene.depths is not None
    for k in range(len(scene)):
        rays = image_rays(scene.cameras, k)
        rgb, alpha, t_hit = trace(rays.origins, rays.directions)
        expected = torch.where(torch.isfinite(t_hit), t_hit * rays.z_per_t, 0.0)
        depth = scene.depths[k].reshape(-1)
        torch.testing.assert_close(depth, expected, atol=1e-5, rtol=1e-5)
        png_alpha = scene.images[k, ..., 3].reshape(-1)
        # 2x2 supersampling: coverage and the pixel-centre hit agree except on a few edge pixels
        assert ((depth > 0) == (png_alpha > 127)).float().mean() > 0.98
        assert ((png_alpha == 0) & (depth > 0)).float().mean() < 0.01
        opaque = png_alpha == 255
        png_rgb = scene.images[k, ..., :3].reshape(-1, 3)[opaque].float() / 255
        colour_err = (png_rgb - rgb[opaque]).abs()
        assert colour_err.median() < 2 / 255  # texture edges differ; smooth areas match


# ---------------------------------------------------------------------------- camera conventions


@pytest.mark.parametrize("name", ["synthetic", "toy"])
def test_depth_backprojection_projects_to_pixel_centres(name, synthetic):
    scene = load_blender(scene_path(name, synthetic), "train")
    assert scene.depths is not None
    for k in range(min(len(scene), 5)):
        j, i = torch.nonzero(scene.depths[k] > 0, as_tuple=True)
        depth = scene.depths[k][j, i]
        rays = pixel_rays(scene.cameras, torch.full_like(i, k), i, j)
        points = rays.origins + rays.directions * (depth / rays.z_per_t).unsqueeze(-1)
        uv, z = project(scene.cameras, k, points)
        centres = torch.stack([i, j], dim=-1).float() + 0.5
        torch.testing.assert_close(uv, centres, atol=1e-3, rtol=0)
        torch.testing.assert_close(z, depth, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", ["synthetic", "toy"])
def test_depth_maps_agree_across_views(name, synthetic):
    """Points seen in view 0, projected into other views, land on the depth those views saw
    (or behind it, where occluded): an independent check of c2w axes and pixel centres."""
    scene = load_blender(scene_path(name, synthetic), "train")
    j, i = torch.nonzero(scene.depths[0] > 0, as_tuple=True)
    rays = pixel_rays(scene.cameras, torch.zeros_like(i), i, j)
    t = scene.depths[0][j, i] / rays.z_per_t
    points = rays.origins + rays.directions * t.unsqueeze(-1)
    n_same = 0
    for k in range(1, min(len(scene), 6)):
        uv, z = project(scene.cameras, k, points)
        px = uv.floor().long()
        inside = ((px >= 0) & (px < scene.cameras.width)).all(-1) & (z > 0)
        seen = scene.depths[k][px[inside, 1], px[inside, 0]]
        z, seen = z[inside][seen > 0], seen[seen > 0]
        n_same += int(((z - seen).abs() < 0.02 * z).sum())
        in_front = z < seen - 0.02 * z  # impossible for a consistent pair, except at silhouettes
        assert in_front.float().mean() < 0.05, f"view {k}: {in_front.float().mean():.3f} in front"
    assert n_same > 0.2 * len(points)  # and many points are seen by other views where expected


def test_toy_depth_agrees_with_alpha():
    scene = load_blender(toy_path(), "train")
    assert scene.images.shape[1:] == (100, 100, 4) and len(scene) == 30
    torch.testing.assert_close(scene.cameras.fx, torch.full((30,), 138.88888, dtype=torch.float32))
    has_depth = scene.depths > 0
    has_alpha = scene.images[..., 3] > 127
    assert (has_depth == has_alpha).float().mean() > 0.97


# ---------------------------------------------------------------------------- small fixtures


def pose(angle: float, t: tuple[float, float, float]) -> list[list[float]]:
    """4x4 rigid transform: rotation ``angle`` about z, translation ``t``."""
    c, s = math.cos(angle), math.sin(angle)
    return [[c, -s, 0.0, t[0]], [s, c, 0.0, t[1]], [0.0, 0.0, 1.0, t[2]], [0.0, 0.0, 0.0, 1.0]]


def write_blender(root: Path, images: list[np.ndarray], split: str = "train", **top) -> Path:
    """A Blender dataset with ``images`` as ``./split/r_K.png`` and a json with ``top`` keys."""
    (root / split).mkdir(parents=True, exist_ok=True)
    frames = []
    for k, img in enumerate(images):
        iio.imwrite(root / split / f"r_{k}.png", img)
        frames.append({"file_path": f"./{split}/r_{k}",
                       "transform_matrix": pose(0.3 * k, (1.0, 2.0, 3.0 + k))})
    meta = {"camera_angle_x": 0.8, "frames": frames, **top}
    (root / f"transforms_{split}.json").write_text(json.dumps(meta))
    return root


def rand_image(seed: int, h: int = 4, w: int = 4, c: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def test_blender_intrinsics_poses_and_pixels(tmp_path):
    imgs = [rand_image(0), rand_image(1)]
    scene = load_scene(write_blender(tmp_path, imgs))
    assert isinstance(scene, SceneData) and len(scene) == 2
    cams = scene.cameras
    assert (cams.width, cams.height) == (4, 4)
    fx = 0.5 * 4 / math.tan(0.4)
    torch.testing.assert_close(cams.fx, torch.full((2,), fx))
    torch.testing.assert_close(cams.fy, torch.full((2,), fx))
    torch.testing.assert_close(cams.cx, torch.full((2,), 2.0))
    torch.testing.assert_close(cams.cy, torch.full((2,), 2.0))
    expected = torch.tensor([pose(0.0, (1, 2, 3))[:3], pose(0.3, (1, 2, 4))[:3]])
    torch.testing.assert_close(cams.c2w, expected)
    assert scene.images.dtype == torch.uint8
    assert torch.equal(scene.images, torch.from_numpy(np.stack(imgs)))
    assert scene.names[1].endswith("r_1.png") and Path(scene.names[1]).is_file()
    torch.testing.assert_close(scene.aabb, torch.tensor([-1.5] * 3 + [1.5] * 3))
    assert scene.depths is None and scene.times is None
    # the json file itself may be given
    again = load_blender(tmp_path / "transforms_train.json")
    assert torch.equal(again.images, scene.images)


def test_blender_top_level_intrinsics_aabb_time_and_rgb(tmp_path):
    root = write_blender(tmp_path, [rand_image(0, c=3), rand_image(1, c=4)],
                         fl_x=5.0, fl_y=6.0, cx=1.5, cy=2.5, w=4, h=4,
                         aabb=[[-1, -2, -3], [1, 2, 3]])
    meta = json.loads((root / "transforms_train.json").read_text())
    for k, frame in enumerate(meta["frames"]):
        frame["time"] = 0.25 * k
    (root / "transforms_train.json").write_text(json.dumps(meta))
    scene = load_blender(root)
    torch.testing.assert_close(scene.cameras.fx, torch.full((2,), 5.0))
    torch.testing.assert_close(scene.cameras.fy, torch.full((2,), 6.0))
    torch.testing.assert_close(scene.cameras.cx, torch.full((2,), 1.5))
    torch.testing.assert_close(scene.cameras.cy, torch.full((2,), 2.5))
    torch.testing.assert_close(scene.aabb, torch.tensor([-1.0, -2, -3, 1, 2, 3]))
    torch.testing.assert_close(scene.times, torch.tensor([0.0, 0.25]))
    assert scene.images.shape == (2, 4, 4, 4)  # the RGB image got alpha 255
    assert (scene.images[0, ..., 3] == 255).all()
    assert torch.equal(scene.images[0, ..., :3], torch.from_numpy(rand_image(0, c=3)))


def write_png16(file: Path, img: np.ndarray) -> None:
    """A 16-bit RGB or RGBA PNG written by hand (Pillow cannot write them)."""
    h, w, c = img.shape
    raw = b"".join(b"\x00" + img[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    file.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def test_over_background_by_hand():
    """Half-transparent red over blue is (0.5, 0, 0.5); an opaque pixel keeps its colour; a
    transparent one shows the background; RGB passes through untouched."""
    rgba = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.2, 0.4, 0.6, 1.0], [0.9, 0.9, 0.9, 0.0]])
    blue = torch.tensor([0.0, 0.0, 1.0])
    want = torch.tensor([[0.5, 0.0, 0.5], [0.2, 0.4, 0.6], [0.0, 0.0, 1.0]])
    assert torch.allclose(over_background(rgba, blue), want)
    assert torch.allclose(over_background(rgba, 1.0)[2], torch.ones(3))
    rgb = rgba[:, :3]
    assert over_background(rgb, blue) is rgb


def test_blender_16bit_png(tmp_path):
    img16 = np.random.default_rng(0).integers(0, 65536, (4, 4, 4), dtype=np.uint16)
    root = write_blender(tmp_path, [rand_image(0)])
    write_png16(root / "train" / "r_0.png", img16)
    scene = load_blender(root)
    assert scene.images.dtype == torch.uint8
    assert np.abs(scene.images[0].numpy() - img16 / 257.0).max() <= 1.0


def test_downscale_rgb_is_block_mean(tmp_path):
    img = rand_image(3, h=5, w=4, c=3)  # odd height: the last row is cropped
    root = write_blender(tmp_path, [img])
    scene = load_blender(root, downscale=2)
    block_mean = img[:4].astype(np.float64).reshape(2, 2, 2, 2, 3).mean(axis=(1, 3))
    assert scene.images.shape == (1, 2, 2, 3)
    assert np.abs(scene.images[0].numpy() - block_mean).max() <= 0.5
    full = load_blender(root)
    torch.testing.assert_close(scene.cameras.fx, full.cameras.fx / 2)
    torch.testing.assert_close(scene.cameras.cx, full.cameras.cx / 2)
    assert (scene.cameras.width, scene.cameras.height) == (2, 2)


def test_downscale_rgba_premultiplied_and_depth(tmp_path):
    img = np.zeros((2, 2, 4), np.uint8)
    img[0, 0] = (200, 100, 40, 255)
    img[0, 1] = (0, 250, 0, 128)  # half transparent: weighs half
    root = write_blender(tmp_path, [img])
    depth = np.array([[2.0, 0.0], [4.0, 0.0]], np.float32)
    np.save(root / "train" / "d.npy", depth)
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][0]["depth_file_path"] = "train/d.npy"
    (root / "transforms_train.json").write_text(json.dumps(meta))
    scene = load_blender(root, downscale=2)
    a = 255 + 128
    expected = [round(200 * 255 / a), round((100 * 255 + 250 * 128) / a), round(40 * 255 / a),
                round(a / 4)]
    assert scene.images[0, 0, 0].tolist() == expected
    torch.testing.assert_close(scene.depths, torch.tensor([[[3.0]]]))  # mean of nonzero depths


def ngp_frames(n: int) -> list[dict]:
    return [{"file_path": f"images/img_{k:02d}.png", "transform_matrix": pose(0.1 * k, (0, 0, k)),
             "fl_x": 10.0 + k, "fl_y": 11.0 + k, "cx": 2.0, "cy": 1.0, "w": 4, "h": 4}
            for k in range(n)]


def write_ngp(root: Path, frames: list[dict], **top) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for f in frames:
        iio.imwrite(root / f["file_path"], rand_image(int(f["file_path"][-6:-4]), c=3))
    (root / "transforms.json").write_text(json.dumps({"aabb_scale": 4, "frames": frames, **top}))
    return root


def test_ngp_single_file_split_and_per_frame_intrinsics(tmp_path):
    frames = ngp_frames(10)
    root = write_ngp(tmp_path, frames[::-1], k1=0.0, fl_x=99.0)  # order on disk must not matter
    train, test = load_scene(root, "train"), load_scene(root, "test")
    assert [Path(n).name for n in test.names] == ["img_00.png", "img_08.png"]
    assert [Path(n).name for n in train.names] == [f"img_{k:02d}.png" for k in range(10)
                                                   if k % 8]
    # per-frame fl_x overrides the top-level one
    torch.testing.assert_close(test.cameras.fx, torch.tensor([10.0, 18.0]))
    torch.testing.assert_close(test.cameras.fy, torch.tensor([11.0, 19.0]))
    torch.testing.assert_close(test.cameras.cx, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(test.cameras.c2w[1], torch.tensor(pose(0.8, (0, 0, 8))[:3]))
    assert torch.equal(test.images[1], torch.from_numpy(rand_image(8, c=3)))
    assert train.meta["aabb_scale"] == 4 and train.cameras.lens is None  # k1 = 0: a pinhole
    assert torch.equal(load_scene(root, "val").images, test.images)


def test_ngp_lens_models(tmp_path):
    root = write_ngp(tmp_path, ngp_frames(3), k1=0.1, p2=-0.01)
    scene = load_blender(root / "transforms.json", "train")
    assert scene.meta["camera_model"] == ["opencv"]
    torch.testing.assert_close(scene.cameras.lens.coeffs, torch.tensor([[0.1, 0, 0, 0, 0, -0.01]] * 2))
    assert not scene.cameras.lens.fisheye.any()
    frames = ngp_frames(3)
    frames[1].update(camera_model="OPENCV_FISHEYE", k1=0.02, k2=-0.01, k3=0.003, k4=0.0005)
    write_ngp(tmp_path / "fish", frames, camera_model="PINHOLE", k1=0.5)  # PINHOLE: coefficients unused
    cams = load_cameras(tmp_path / "fish", "train").cameras  # frames 1 and 2
    assert cams.lens.fisheye.tolist() == [True, False]
    torch.testing.assert_close(cams.lens.coeffs, torch.tensor([[0.02, -0.01, 0.003, 0.0005, 0, 0], [0.0] * 6]))
    write_ngp(tmp_path / "ngpfish", ngp_frames(3), is_fisheye=True, k1=0.01)  # Instant-NGP's flag
    assert load_cameras(tmp_path / "ngpfish", "train").cameras.lens.fisheye.all()


def distort_by_hand(x, y, k1, k2, p1, p2, fisheye):
    """OpenCV's lens equations, written out for one point (independent of radfield.lens)."""
    if fisheye:
        r = math.hypot(x, y)
        theta = math.atan(r)
        theta_d = theta * (1 + k1 * theta ** 2 + k2 * theta ** 4)
        return x * theta_d / r, y * theta_d / r
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2 * r2
    return (x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
            y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)


@pytest.mark.parametrize("fisheye", [False, True])
def test_rays_of_a_distorted_capture_hit_the_points_they_see(tmp_path, fisheye):
    """A world point seen by a camera lands, by the lens equations written out by hand, on a
    distorted pixel; the ray radfield generates through that pixel passes through the point."""
    lens = {"k1": 0.05, "k2": -0.08} if fisheye else {"k1": 0.05, "k2": -0.08, "p1": 0.003, "p2": -0.002}
    frames = ngp_frames(10)
    for f in frames:
        f.update(fl_x=30.0, fl_y=32.0, cx=2.1, cy=1.9)
    root = write_ngp(tmp_path, frames, camera_model="OPENCV_FISHEYE" if fisheye else "OPENCV", **lens)
    cams = load_cameras(root, "train").cameras
    g = torch.Generator().manual_seed(0)
    for c in range(len(cams)):
        c2w = cams.c2w[c].double()
        x, y = (torch.rand(2, generator=g).double() - 0.5) * 0.8  # normalised, OpenCV axes
        depth = 2.0 + float(torch.rand(1, generator=g))
        point = c2w[:, :3] @ torch.tensor([x * depth, -y * depth, -depth], dtype=torch.float64) + c2w[:, 3]
        xd, yd = distort_by_hand(float(x), float(y), lens["k1"], lens["k2"], lens.get("p1", 0.0),
                                 lens.get("p2", 0.0), fisheye)
        u, v = 30.0 * xd + 2.1, 32.0 * yd + 1.9
        ray = generate_rays(cams, torch.tensor([c]), torch.tensor([u]), torch.tensor([v]))
        to_point = point.float() - ray.origins[0]
        miss = torch.linalg.cross(to_point, ray.directions[0]).norm()
        assert float(miss) < 1e-5 * depth, (c, float(miss))
        plain_u = 30.0 * float(x) + 2.1  # the lens moved the pixel: the check can fail
        assert abs(u - plain_u) > 1e-4


def test_ngp_scene_box_scale_offset_aabb_scale(tmp_path):
    root = write_ngp(tmp_path, ngp_frames(3), scale=0.25, offset=[0.5, 0.3, 0.5])  # aabb_scale 4
    scene = load_cameras(root, "train")
    # centre (0.5 - offset) / scale = (0, 0.8, 0); half-size 0.5 / scale * aabb_scale = 8
    torch.testing.assert_close(scene.aabb, torch.tensor([-8.0, -7.2, -8.0, 8.0, 8.8, 8.0]))
    assert scene.meta["aabb_scale"] == 4
    (root / "transforms.json").write_text(json.dumps({"frames": ngp_frames(3)}))
    torch.testing.assert_close(load_cameras(root, "train").aabb, torch.tensor([-1.5] * 3 + [1.5] * 3))


def test_missing_and_blurry_frames_are_skipped(tmp_path, recwarn):
    frames = ngp_frames(12)
    for k, f in enumerate(frames):
        f["sharpness"] = 100.0 + k
    frames[3]["sharpness"] = 20.0  # much blurrier than its neighbours (0.3 x ~105)
    frames[5]["sharpness"] = 40.0  # blurrier, not much
    root = write_ngp(tmp_path, frames)
    (root / frames[6]["file_path"]).unlink()
    names = [Path(n).name for n in load_cameras(root, "train").names]
    assert names == [f"img_{k:02d}.png" for k in (1, 2, 4, 5, 7, 9, 10, 11)]  # 0, 8: test
    message = [str(w.message) for w in recwarn if "skipped" in str(w.message)]
    assert message and "skipped 2 of 10 frames: 1 with no image file and 1 much blurrier" in message[0]
    assert "\n" not in message[0]


def test_integer_depth_images(tmp_path):
    frames = ngp_frames(2)
    root = write_ngp(tmp_path, frames, integer_depth_scale=0.001)
    depth = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000
    iio.imwrite(root / "d0.png", depth)
    frames[1]["depth_path"] = "d0.png"
    (root / "transforms.json").write_text(json.dumps({"frames": frames, "integer_depth_scale": 0.001}))
    scene = load_scene(root, "train")  # frame 1 only
    torch.testing.assert_close(scene.depths[0], torch.arange(16, dtype=torch.float32).reshape(4, 4))
    (root / "transforms.json").write_text(json.dumps({"frames": frames}))
    with pytest.raises(RadfieldError) as e:
        load_scene(root, "train")
    assert "integer_depth_scale" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("top,words", [
    ({"k1": "abc"}, ["k1", "must be a number", "'abc'"]),
    ({"k1": float("nan")}, ["k1", "finite"]),
    ({"aabb_scale": -1}, ["aabb_scale", "positive"]),
    ({"aabb_scale": "big"}, ["aabb_scale", "number"]),
    ({"camera_model": "EQUIRECTANGULAR"}, ["EQUIRECTANGULAR", "supported"]),
    ({"camera_model": "OPENCV_FISHEYE", "fl_x": 1.0, "fl_y": 1.0}, ["180 degrees"]),
    ({"k1": -0.9, "fl_x": 2.0, "fl_y": 2.0}, ["not invertible"]),
    ({"applied_transform": [[1, 0], [0, 1]]}, ["applied_transform"]),
    ({"scale": 0}, ["scale", "positive"]),
], ids=["k1-text", "k1-nan", "aabb-negative", "aabb-text", "model", "fisheye-fov", "folds", "applied", "scale"])
def test_bad_lens_and_box_are_one_line(tmp_path, capsys, top, words):
    frames = ngp_frames(3)
    for f in frames:
        f.pop("fl_x"), f.pop("fl_y")
    root = write_ngp(tmp_path, frames, **{"fl_x": 10.0, "fl_y": 10.0, **top})
    from radfield.cli import main
    assert main(["train", str(root), "--max-steps", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "transforms.json" in err
    for w in words:
        assert w in err, err


# ---------------------------------------------------------------------------- cameras only


@pytest.mark.parametrize("split,downscale", [("train", 1), ("test", 1), ("train", 2)])
def test_load_cameras_equals_load_scene_without_decoding(synthetic, split, downscale,
                                                         no_image_decoding, monkeypatch,
                                                         assert_same_cameras):
    cams = load_cameras(synthetic, split, downscale)
    monkeypatch.undo()  # decoding allowed again
    scene = load_scene(synthetic, split, downscale)
    assert_same_cameras(cams, scene)
    size = 48 // downscale  # the synthetic views are 48 x 48
    assert (cams.cameras.width, cams.cameras.height) == (size, size)
    focal = 0.5 * 48 / math.tan(0.5 * CAMERA_ANGLE_X) / downscale
    torch.testing.assert_close(cams.cameras.fx, torch.full((len(cams),), focal))


def test_load_cameras_without_json_size_reads_one_header(tmp_path, no_image_decoding,
                                                         monkeypatch, assert_same_cameras):
    # write_blender's json has no w / h: the size comes from the first image's header
    root = write_blender(tmp_path, [rand_image(0, h=6, w=4), rand_image(1, h=6, w=4)])
    with pytest.raises(Exception):  # the patch does forbid decoding
        load_scene(root)
    headers = []
    real = blender.read_image_size
    monkeypatch.setattr(blender, "read_image_size", lambda f: headers.append(f) or real(f))
    cams = load_cameras(root, downscale=2)
    assert [Path(f).name for f in headers] == ["r_0.png"]
    assert (cams.cameras.width, cams.cameras.height) == (2, 3)
    torch.testing.assert_close(cams.cameras.cx, torch.full((2,), 1.0))
    monkeypatch.undo()
    assert_same_cameras(cams, load_scene(root, downscale=2))


def test_load_cameras_ngp_times_and_distortion(tmp_path, assert_same_cameras):
    frames = ngp_frames(10)
    for k, f in enumerate(frames):
        f["time"] = k / 9
    root = write_ngp(tmp_path, frames, k1=0.1)
    for split in ("train", "test"):
        cams = load_cameras(root, split)
        assert cams.cameras.lens is not None
        assert_same_cameras(cams, load_scene(root, split))
    assert cams.times.tolist() == pytest.approx([0.0, 8 / 9])  # the test frames 0 and 8


# ---------------------------------------------------------------------------- bad input


def edit_json(root: Path, change) -> Path:
    file = root / "transforms_train.json"
    meta = json.loads(file.read_text())
    change(meta)
    file.write_text(json.dumps(meta))
    return file


def bad_matrix(value):
    def change(meta):
        meta["frames"][1]["transform_matrix"] = value
    return change


def _missing_folder(root):
    return root / "nope", "nope: no transforms_train.json or transforms.json"


def _invalid_json(root):
    (root / "transforms_train.json").write_text('{\n "frames": [\n,]}')
    return root, r"transforms_train.json: invalid JSON \(line 3\)"


def _no_frames(root):
    edit_json(root, lambda m: m.update(frames=[]))
    return root, "transforms_train.json: no frames"


def _missing_key(root):
    edit_json(root, lambda m: m["frames"][0].pop("transform_matrix"))
    return root, "transforms_train.json: frame 0: missing transform_matrix"


def _missing_image(root):
    (root / "train" / "r_1.png").unlink()
    return root, r"r_1.png: cannot read image \(file not found\)"


def _unreadable_image(root):
    (root / "train" / "r_1.png").write_bytes(b"not a png")
    return root, r"r_1.png: cannot read image"


def _grayscale(root):
    iio.imwrite(root / "train" / "r_1.png", np.zeros((4, 4), np.uint8))
    return root, "r_1.png: grayscale image"


def _size_differs(root):
    iio.imwrite(root / "train" / "r_1.png", rand_image(0, h=4, w=6))
    return root, r"r_1.png: size 6x4 differs from 4x4 of .*r_0.png"


def _json_size_differs(root):
    edit_json(root, lambda m: m.update(w=4, h=4))
    iio.imwrite(root / "train" / "r_1.png", rand_image(0, h=4, w=6))
    return root, r"r_1.png: size 6x4 differs from 4x4 w x h in .*transforms_train.json"


def _frame_sizes_differ(root):
    edit_json(root, lambda m: (m.update(w=4, h=4), m["frames"][1].update(w=6)))
    return root, r"frame 1 \(./train/r_1\): image size 6x4 differs from 4x4 of frame 0"


def _nonfinite(root):
    nan = float("nan")
    edit_json(root, bad_matrix([[1, 0, 0, nan], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    return root, r"transforms_train.json: frame 1 \(./train/r_1\): transform_matrix is not finite"


def _scaled(root):
    edit_json(root, bad_matrix([[2, 0, 0, 0], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]))
    return root, r"frame 1 \(./train/r_1\): transform_matrix is not a rigid transform"


def _reflection(root):
    edit_json(root, bad_matrix([[-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    return root, r"frame 1 \(./train/r_1\): transform_matrix is not a rigid transform"


def _bad_last_row(root):
    edit_json(root, bad_matrix([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]))
    return root, r"frame 1 \(./train/r_1\): transform_matrix is not a rigid transform"


def _missing_depth(root):
    edit_json(root, lambda m: m["frames"][1].update(depth_file_path="./train/r_1_depth.npy"))
    return root, "r_1_depth.npy: depth file not found"


def _mask_size_differs(root):
    iio.imwrite(root / "train" / "m_1.png", np.zeros((4, 6), np.uint8))
    edit_json(root, lambda m: m["frames"][1].update(mask_path="./train/m_1.png"))
    return root, r"train/m_1.png: mask size 6x4 differs from 4x4 of its image .*r_1.png"


def _missing_mask(root):
    edit_json(root, lambda m: m["frames"][0].update(mask_path="./train/m_0.png"))
    return root, r"train/m_0.png: cannot read mask \(file not found\)"


def _empty_split(root):
    (root / "transforms_train.json").rename(root / "transforms.json")
    edit_json_file = root / "transforms.json"
    meta = json.loads(edit_json_file.read_text())
    meta["frames"] = meta["frames"][:1]  # one frame: it is the held-out test frame
    edit_json_file.write_text(json.dumps(meta))
    return root, r"transforms.json: split 'train' is empty"


BAD_INPUTS = [_missing_folder, _invalid_json, _no_frames, _missing_key, _missing_image,
              _unreadable_image, _grayscale, _size_differs, _json_size_differs,
              _frame_sizes_differ, _nonfinite, _scaled, _reflection,
              _bad_last_row, _missing_depth, _mask_size_differs, _missing_mask, _empty_split]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__[1:] for f in BAD_INPUTS])
def test_bad_input_raises_one_line_error(make_bad, tmp_path):
    root = write_blender(tmp_path / "scene", [rand_image(0), rand_image(1)])
    path, pattern = make_bad(root)
    with pytest.raises(RadfieldError, match=pattern) as info:
        load_blender(path, "train")
    assert_one_line_naming(info.value, tmp_path)


def test_load_scene_rejects_unknown_format(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(RadfieldError, match="unrecognised dataset format"):
        load_scene(tmp_path)
    with pytest.raises(RadfieldError, match="no such file or folder"):
        load_scene(tmp_path / "missing")


NS_PROCESS_DATA = """{
  "w": 8, "h": 6, "fl_x": 7.5, "fl_y": 7.25, "cx": 4.1, "cy": 2.9,
  "k1": 0.021, "k2": -0.013, "p1": 0.0007, "p2": -0.0004, "camera_model": "OPENCV",
  "frames": [%s],
  "applied_transform": [[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [-0.0, -0.0, -1.0, -0.0]],
  "ply_file_path": "sparse_pc.ply"
}"""
NS_FRAME = '{"file_path": "images/frame_%05d.png", "transform_matrix": %s, "colmap_im_id": %d}'

COLMAP2NERF = """{
  "camera_angle_x": 1.0, "camera_angle_y": 0.8, "fl_x": 7.5, "fl_y": 7.25,
  "k1": 0.021, "k2": -0.013, "k3": 0, "k4": 0, "p1": 0.0007, "p2": -0.0004,
  "is_fisheye": false, "cx": 4.1, "cy": 2.9, "w": 8, "h": 6, "aabb_scale": 32,
  "frames": [%s]
}"""
NGP_FRAME = '{"file_path": "./images/%04d.jpg", "sharpness": %.1f, "transform_matrix": %s}'


@pytest.mark.parametrize("tool", ["ns-process-data", "colmap2nerf"])
def test_the_json_of_nerfstudio_and_instant_ngp_tools_reads_as_written(tmp_path, tool):
    """transforms.json exactly as ``ns-process-data`` and Instant-NGP's ``colmap2nerf.py`` write
    them (key sets and layouts copied from their output, values made up): every frame reads,
    with the lens and, for colmap2nerf, the scene box of aabb_scale 32."""
    (tmp_path / "images").mkdir()
    frames = []
    for k in range(9):
        matrix = json.dumps(pose(0.3 * k, (4.0 * math.cos(k), 4.0 * math.sin(k), 1.0)))
        if tool == "ns-process-data":
            name = tmp_path / "images" / f"frame_{k + 1:05d}.png"
            frames.append(NS_FRAME % (k + 1, matrix, k + 1))
        else:
            name = tmp_path / "images" / f"{k + 1:04d}.jpg"
            frames.append(NGP_FRAME % (k + 1, 150.0 + k, matrix))
        iio.imwrite(name, rand_image(k, h=6, w=8, c=3))
    text = (NS_PROCESS_DATA if tool == "ns-process-data" else COLMAP2NERF) % ", ".join(frames)
    (tmp_path / "transforms.json").write_text(text)
    train, test = load_cameras(tmp_path, "train"), load_cameras(tmp_path, "test")
    assert len(train) + len(test) == 9 and len(test) == 2
    lens = train.cameras.lens
    torch.testing.assert_close(lens.coeffs[0], torch.tensor([0.021, -0.013, 0.0, 0.0, 0.0007, -0.0004]))
    assert not lens.fisheye.any()
    torch.testing.assert_close(train.cameras.fy, torch.full((7,), 7.25))
    if tool == "colmap2nerf":
        torch.testing.assert_close(train.aabb, torch.tensor([-48.0] * 3 + [48.0] * 3))  # 1.5 * 32
    else:
        assert train.meta["applied_transform"][2] == [0.0, 0.0, -1.0, 0.0]
    assert load_scene(tmp_path, "train").images.shape == (7, 6, 8, 3)


# ---------------------------------------------------------------------------- random scenes


def test_random_layouts_are_seeded_inside_the_box_and_apart():
    from radfield.data.synthetic import DEFAULT_LAYOUT, random_layout

    layouts = [random_layout(seed) for seed in range(30)]
    assert random_layout(7) == layouts[7] and len(set(layouts)) == 30 and DEFAULT_LAYOUT not in layouts
    for lay in layouts:
        half = [(h - l) / 2 for l, h in zip(lay.box.lo, lay.box.hi)]
        box_centre = [(l + h) / 2 for l, h in zip(lay.box.lo, lay.box.hi)]
        bounds = [(lay.textured.centre, lay.textured.radius), (lay.glossy.centre, lay.glossy.radius),
                  (box_centre, math.sqrt(sum(h * h for h in half)))]
        for centre, r in bounds[:2]:
            assert all(abs(c) + r <= 0.95 + 1e-9 for c in centre)
        assert all(-0.95 - 1e-9 <= v <= 0.95 + 1e-9 for v in (*lay.box.lo, *lay.box.hi))
        for i in range(3):
            for j in range(i + 1, 3):
                assert math.dist(bounds[i][0], bounds[j][0]) > bounds[i][1] + bounds[j][1] + 0.05


def test_a_random_scene_renders_its_own_objects(tmp_path):
    """A ray aimed at each sphere's centre hits something no farther than that sphere's near
    surface (|eye - c| - r, by hand); the signed distance is -radius at the spheres' centres; a
    folder of scenes holds each scene's layout and differs from scene to scene."""
    from radfield.data.synthetic import make_scenes, random_layout, signed_distance, trace

    lay = random_layout(3)
    eye = torch.tensor([0.0, 0.0, 4.0])
    for centre in (lay.textured.centre, lay.glossy.centre):
        c = torch.tensor(centre, dtype=torch.float32)
        d = torch.nn.functional.normalize(c - eye, dim=0)
        _, alpha, t = trace(eye[None], d[None], layout=lay)
        r = lay.textured.radius if centre == lay.textured.centre else lay.glossy.radius
        assert alpha.item() == 1.0 and t.item() <= (c - eye).norm().item() - r + 1e-4  # nearest hit
    sd = signed_distance(torch.tensor([lay.textured.centre, lay.glossy.centre], dtype=torch.float32), lay)
    torch.testing.assert_close(sd, -torch.tensor([lay.textured.radius, lay.glossy.radius]), atol=1e-5, rtol=0)
    scenes = make_scenes(tmp_path, 2, first_seed=3, n_train=2, n_val=0, n_test=0, size=16)
    assert [p.name for p in scenes] == ["scene_0003", "scene_0004"]
    saved = json.loads((scenes[0] / "layout.json").read_text())
    assert saved["glossy"]["radius"] == lay.glossy.radius
    a = load_scene(scenes[0], "train").images
    b = load_scene(scenes[1], "train").images
    assert not torch.equal(a, b)


def test_a_scene_rendered_by_worker_processes_is_the_same_files(tmp_path):
    """``workers=2`` splits each split's views over two processes: every PNG is byte for byte
    the one process's, the transforms are the same; ``depth=False`` writes no depth maps and
    names none."""
    from radfield.data.synthetic import _VIEWS_PER_BATCH

    n = _VIEWS_PER_BATCH + 3  # more than one batch: the pool path
    one = make_scene(tmp_path / "one", n_train=n, n_val=0, n_test=2, size=12)
    two = make_scene(tmp_path / "two", n_train=n, n_val=0, n_test=2, size=12, depth=False, workers=2)
    for split, count in (("train", n), ("test", 2)):
        for k in range(count):
            assert (one / split / f"r_{k}.png").read_bytes() == (two / split / f"r_{k}.png").read_bytes()
        assert not list((two / split).glob("*.npy"))
        a = json.loads((one / f"transforms_{split}.json").read_text())
        b = json.loads((two / f"transforms_{split}.json").read_text())
        assert all("depth_file_path" not in f for f in b["frames"])
        for f in a["frames"]:
            del f["depth_file_path"]
        assert a == b
