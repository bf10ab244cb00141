"""Tests of the COLMAP and LLFF readers.

Fixtures are written here: tiny COLMAP projects in text and binary form (writers below, from
the COLMAP file-format spec), with cameras looking at known 3D points, and LLFF
``poses_bounds.npy`` files built from known OpenGL camera-to-world matrices. Ground truth:
projections computed directly with the OpenCV pinhole formula ``u = fx x / z + cx`` in numpy,
numpy means / medians / percentiles, hand-chosen hold-out indices, and a linear-gradient image
pattern distorted by numerically inverting the lens model.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from radfield.cameras import image_rays, project
from radfield.data import load_cameras, load_scene
from radfield.data.colmap import (load_colmap, normalization_from_cameras,
                                  normalization_from_points, qvec_to_rotation)
from radfield.data.llff import load_llff
from radfield.errors import RadfieldError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4,
             "OPENCV_FISHEYE": 5, "FOV": 7}
W, H = 16, 12
PINHOLE = ("PINHOLE", W, H, [18.0, 17.0, 8.3, 5.9])


# ---------------------------------------------------------------------------- fixture writers


def look_at_w2c(eye: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``(R, t)`` in OpenCV axes (rows: right, down, forward), world z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    return rot, -rot @ eye


def rotation_to_qvec(rot: np.ndarray) -> np.ndarray:
    """``(w, x, y, z)`` of a rotation matrix (largest-component branch)."""
    m = rot
    tr = np.trace(m)
    if tr > 0:
        s = 2 * np.sqrt(1 + tr)
        q = [s / 4, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * np.sqrt(1 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = s / 4
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    return q if q[0] >= 0 else -q


def opencv_project(rot, t, params, pts):
    """Direct OpenCV pinhole projection: ``(n, 2)`` pixels and ``(n,)`` depths."""
    fx, fy, cx, cy = params
    p = pts @ rot.T + t
    return np.stack([fx * p[:, 0] / p[:, 2] + cx, fy * p[:, 1] / p[:, 2] + cy], -1), p[:, 2]


def write_model(folder: Path, fmt: str, cameras, images, points) -> None:
    """Write a COLMAP model. ``cameras``: ``(id, model, w, h, params)``; ``images``: ``(id,
    qvec, tvec, camera_id, name, [(x, y, point_id)])``; ``points``: ``(id, xyz, rgb, error,
    [(image_id, point2d_idx)])``."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        b = struct.pack("<Q", len(cameras))
        for cid, model, w, h, params in cameras:
            b += struct.pack("<IiQQ", cid, MODEL_IDS[model], w, h)
            b += struct.pack(f"<{len(params)}d", *params)
        (folder / "cameras.bin").write_bytes(b)
        b = struct.pack("<Q", len(images))
        for iid, q, t, cid, name, obs in images:
            b += struct.pack("<I4d3dI", iid, *q, *t, cid) + name.encode() + b"\0"
            b += struct.pack("<Q", len(obs)) + b"".join(struct.pack("<ddq", *o) for o in obs)
        (folder / "images.bin").write_bytes(b)
        b = struct.pack("<Q", len(points))
        for pid, xyz, rgb, err, track in points:
            b += struct.pack("<Q3d3BdQ", pid, *xyz, *rgb, err, len(track))
            b += b"".join(struct.pack("<II", *e) for e in track)
        (folder / "points3D.bin").write_bytes(b)
        return
    lines = ["# Camera list with one line of data per camera:"]
    lines += [f"{cid} {model} {w} {h} " + " ".join(repr(float(p)) for p in params)
              for cid, model, w, h, params in cameras]
    (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:", "#   POINTS2D[] as (X, Y, ID)"]
    for iid, q, t, cid, name, obs in images:
        lines.append(f"{iid} " + " ".join(repr(float(v)) for v in [*q, *t]) + f" {cid} {name}")
        lines.append(" ".join(f"{x!r} {y!r} {p}" for x, y, p in obs))
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# 3D point list with one line of data per point:"]
    for pid, xyz, rgb, err, track in points:
        lines.append(f"{pid} " + " ".join(repr(float(v)) for v in xyz) + " "
                     + " ".join(str(int(c)) for c in rgb) + f" {err} "
                     + " ".join(f"{i} {k}" for i, k in track))
    (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


def make_project(root: Path, n_cams: int = 4, fmt: str = "bin", model: str = "0",
                 camera=PINHOLE, seed: int = 0, n_points: int = 12,
                 write_images: bool = True) -> dict:
    """A COLMAP project with ``n_cams`` cameras on a circle of radius 4 looking at the origin,
    ``n_points`` random points in ``[-0.5, 0.5]^3``, random images; returns the ground truth.
    Image ids run backwards relative to the names so that name sorting matters."""
    rng = np.random.default_rng(seed)
    model_name, w, h, params = camera
    points = rng.uniform(-0.5, 0.5, (n_points, 3))
    rots, ts, eyes, names, imgs, image_entries = [], [], [], [], [], []
    for k in range(n_cams):
        az = 2 * np.pi * k / n_cams + 0.3
        eye = np.array([4 * np.cos(az), 4 * np.sin(az), 1.5 + 0.2 * k])
        rot, t = look_at_w2c(eye, np.zeros(3))
        name = f"img_{k:03d}.png"
        pinhole = params[:4] if model_name in ("PINHOLE", "OPENCV", "OPENCV_FISHEYE") \
            else (params[0], params[0], params[1], params[2])
        uv, z = opencv_project(rot, t, pinhole, points)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h) & (z > 0)
        obs = [(float(uv[p, 0]), float(uv[p, 1]), 100 + p) for p in np.flatnonzero(inside)]
        obs.append((1.0, 1.0, -1))  # an unmatched keypoint
        image_entries.append((n_cams - k, rotation_to_qvec(rot), t, 7, name, obs))
        rots.append(rot), ts.append(t), eyes.append(eye), names.append(name)
        imgs.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    tracks = {100 + p: [] for p in range(n_points)}
    for iid, _, _, _, _, obs in image_entries:
        for idx, (_, _, pid) in enumerate(obs):
            if pid >= 0:
                tracks[pid].append((iid, idx))
    point_entries = [(100 + p, points[p], rng.integers(0, 256, 3), 0.5, tracks[100 + p])
                     for p in range(n_points)]
    write_model(root / "sparse" / model, fmt, [(7, model_name, w, h, params)], image_entries,
                point_entries)
    if write_images:
        (root / "images").mkdir(parents=True, exist_ok=True)
        for name, img in zip(names, imgs):
            iio.imwrite(root / "images" / name, img)
    return {"rots": rots, "ts": ts, "eyes": np.array(eyes), "names": names, "images": imgs,
            "points": points, "params": params, "obs": [e[5] for e in image_entries]}


def one_line_error(excinfo, *parts: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


# ---------------------------------------------------------------------------- COLMAP


def test_text_and_binary_readers_agree(tmp_path):
    make_project(tmp_path / "b", fmt="bin")
    make_project(tmp_path / "t", fmt="txt")
    b = load_colmap(tmp_path / "b", "all")
    t = load_colmap(tmp_path / "t", "all")
    assert torch.equal(b.images, t.images)
    assert torch.allclose(b.cameras.c2w, t.cameras.c2w, atol=1e-6)
    for key in ("fx", "fy", "cx", "cy"):
        assert torch.allclose(getattr(b.cameras, key), getattr(t.cameras, key))
    assert [Path(n).name for n in b.names] == [Path(n).name for n in t.names]
    assert torch.allclose(b.aabb, t.aabb) and torch.allclose(b.meta["points"], t.meta["points"])
    assert torch.equal(b.meta["point_colors"], t.meta["point_colors"])
    for key in ("near", "far"):
        assert b.meta[key] == pytest.approx(t.meta[key], rel=1e-9)


def test_poses_round_trip_through_projection(tmp_path):
    gt = make_project(tmp_path, n_cams=4)
    data = load_colmap(tmp_path, "all")
    assert [Path(n).name for n in data.names] == sorted(gt["names"])
    assert data.images.shape == (4, H, W, 3)
    norm = data.meta["normalization"]
    center = gt["eyes"].mean(axis=0)
    scale = 1 / np.linalg.norm(gt["eyes"] - center, axis=1).max()
    assert np.allclose(norm["center"], center) and norm["scale"] == pytest.approx(scale)
    assert data.cameras.centers.norm(dim=-1).max() == pytest.approx(1.0, abs=1e-5)
    pts_scene = torch.tensor((gt["points"] - center) * scale, dtype=torch.float32)
    for k in range(4):  # names are img_000.. in camera order, so sorted index k = camera k
        assert np.array_equal(data.images[k].numpy(), gt["images"][k])
        uv, z = project(data.cameras, k, pts_scene)
        uv_gt, z_gt = opencv_project(gt["rots"][k], gt["ts"][k], gt["params"], gt["points"])
        assert np.allclose(uv.numpy(), uv_gt, atol=1e-3)
        assert np.allclose(z.numpy() / scale, z_gt, atol=1e-4)


def test_quaternion_convention():
    # 90 degrees about z maps e_x to e_y (hand-computed).
    q = torch.tensor([[np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)]], dtype=torch.float64)
    expected = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(qvec_to_rotation(q)[0].float(), expected, atol=1e-7)


def test_normalisation_near_far_aabb(tmp_path):
    gt = make_project(tmp_path, n_cams=4, n_points=40)
    cams = load_colmap(tmp_path, "all")
    center = gt["eyes"].mean(axis=0)
    scale = 1 / np.linalg.norm(gt["eyes"] - center, axis=1).max()
    pts = (gt["points"] - center) * scale
    lo, hi = np.percentile(pts, 2, axis=0), np.percentile(pts, 98, axis=0)
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * 1.1
    assert np.allclose(cams.aabb.numpy(), np.concatenate([mid - half, mid + half]), atol=1e-5)
    depths = np.concatenate([
        (gt["points"][[p - 100 for _, _, p in obs if p >= 0]] @ r.T + t)[:, 2]
        for r, t, obs in zip(gt["rots"], gt["ts"], gt["obs"])]) * scale
    assert cams.meta["near"] == pytest.approx(0.5 * np.percentile(depths, 5))
    assert cams.meta["far"] == pytest.approx(2 * np.percentile(depths, 99))
    assert cams.meta["unbounded"] is True

    by_points = load_colmap(tmp_path, "all", normalize="points")
    med = np.median(gt["points"], axis=0)
    s = 1 / np.percentile(np.linalg.norm(gt["points"] - med, axis=1), 95)
    assert np.allclose(by_points.meta["normalization"]["center"], med)
    assert by_points.meta["normalization"]["scale"] == pytest.approx(s)
    assert np.allclose(by_points.cameras.centers.numpy(), (gt["eyes"] - med) * s, atol=1e-5)


def test_normalization_functions_hand_examples():
    n = normalization_from_cameras(torch.tensor([[0.0, 0, 0], [4.0, 0, 0]]))
    assert n["center"] == [2.0, 0.0, 0.0] and n["scale"] == pytest.approx(0.5)
    n = normalization_from_points(torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [3.0, 0, 0]]))
    assert n["center"] == [1.0, 0.0, 0.0] and n["scale"] == pytest.approx(1 / 1.9)


def test_split_is_shared_normalisation(tmp_path):
    make_project(tmp_path, n_cams=20, fmt="txt", n_points=6)
    names = [f"img_{k:03d}.png" for k in range(20)]
    test = load_colmap(tmp_path, "test")
    assert [Path(n).name for n in test.names] == [names[0], names[8], names[16]]
    assert [Path(n).name for n in load_colmap(tmp_path, "val").names] == [names[0], names[8],
                                                                          names[16]]
    train = load_colmap(tmp_path, "train")
    assert [Path(n).name for n in train.names] == [n for k, n in enumerate(names) if k % 8]
    every5 = load_colmap(tmp_path, "test", holdout_every=5)
    assert [Path(n).name for n in every5.names] == [names[k] for k in (0, 5, 10, 15)]
    everything = load_colmap(tmp_path, "all")
    assert len(everything) == 20
    assert test.meta["normalization"] == train.meta["normalization"]
    assert torch.equal(everything.cameras.c2w[[0, 8, 16]], test.cameras.c2w)


def test_multiple_models(tmp_path):
    make_project(tmp_path, n_cams=2, fmt="txt", model="0", seed=1, write_images=False)
    make_project(tmp_path, n_cams=4, fmt="bin", model="1", seed=2)
    data = load_colmap(tmp_path, "all")
    assert data.meta["colmap_model"] == "1" and len(data) == 4
    data0 = load_colmap(tmp_path, "all", model="0")
    assert data0.meta["colmap_model"] == "0" and len(data0) == 2
    # the 2-image model's cameras differ from the 4-image one's
    assert not torch.allclose(data0.cameras.c2w, data.cameras.c2w[:2])
    assert load_scene(tmp_path, "all", colmap_model="0").meta["colmap_model"] == "0"
    assert load_scene(tmp_path, "test").meta["colmap_model"] == "1"
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path, model="5")
    one_line_error(e, "sparse", "'5'")


def test_model_directly_in_sparse(tmp_path):
    make_project(tmp_path, n_cams=3, fmt="txt", model=".")
    data = load_colmap(tmp_path, "all")
    assert data.meta["colmap_model"] == "." and len(data) == 3


def test_downscale(tmp_path):
    gt = make_project(tmp_path, n_cams=3)
    half = load_colmap(tmp_path, "all", downscale=2)
    fx, fy, cx, cy = gt["params"]
    assert half.images.shape == (3, H // 2, W // 2, 3)
    assert torch.allclose(half.cameras.fx, torch.tensor(fx / 2)) and \
        torch.allclose(half.cameras.cy, torch.tensor(cy / 2))
    block = gt["images"][0][:2, :2].astype(float).mean(axis=(0, 1))
    assert np.allclose(half.images[0, 0, 0].numpy(), np.round(block))
    # images_2 holds pre-scaled images: read as they are
    (tmp_path / "images_2").mkdir()
    small = [np.full((H // 2, W // 2, 3), 10 * k, np.uint8) for k in range(3)]
    for name, img in zip(gt["names"], small):
        iio.imwrite(tmp_path / "images_2" / name, img)
    pre = load_colmap(tmp_path, "all", downscale=2)
    assert np.array_equal(pre.images.numpy(), np.stack(small))
    assert torch.allclose(pre.cameras.fx, torch.tensor(fx / 2))
    iio.imwrite(tmp_path / "images_2" / gt["names"][1], np.zeros((3, 3, 3), np.uint8))
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path, "all", downscale=2)
    one_line_error(e, gt["names"][1], "does not match")


def inverse_distort(model, params, xd, yd):
    """Undistorted normalised coordinates by fixed-point iteration of the lens equations."""
    x, y = xd.copy(), yd.copy()
    for _ in range(200):
        r2 = x * x + y * y
        if model == "SIMPLE_RADIAL":
            radial, tx, ty = 1 + params[3] * r2, 0, 0
        elif model == "RADIAL":
            radial, tx, ty = 1 + params[3] * r2 + params[4] * r2 ** 2, 0, 0
        else:
            k1, k2, p1, p2 = params[4:]
            radial = 1 + k1 * r2 + k2 * r2 ** 2
            tx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
            ty = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x, y = (xd - tx) / radial, (yd - ty) / radial
    return x, y


@pytest.mark.parametrize("camera", [
    ("SIMPLE_RADIAL", 80, 60, [60.0, 40.0, 30.0, 0.15]),
    ("RADIAL", 80, 60, [60.0, 40.0, 30.0, 0.05, 0.25]),
    ("OPENCV", 80, 60, [62.0, 58.0, 40.5, 29.5, 0.1, 0.03, 0.02, -0.025]),
])
def test_rays_go_through_the_lens(tmp_path, camera):
    """Each pixel's ray, back in the camera's OpenCV frame, is the undistorted point that a
    plain fixed-point iteration of COLMAP's lens equations finds; the images are read as taken."""
    model, w, h, params = camera
    fx, fy, cx, cy = (params[0], params[0], params[1], params[2]) if model != "OPENCV" \
        else params[:4]
    gt = make_project(tmp_path, n_cams=2, fmt="txt", camera=camera)
    data = load_colmap(tmp_path, "all")
    assert data.meta["camera_model"] == model and data.cameras.lens is not None
    assert np.array_equal(data.images[0].numpy(), gt["images"][0])  # no resampling
    rays = image_rays(data.cameras, 0)
    rot = data.cameras.c2w[0, :, :3].double()
    d = rays.directions.double() @ rot  # R^T d: OpenGL camera axes
    d_cv = torch.stack([d[:, 0], -d[:, 1], -d[:, 2]], -1)
    vd, ud = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    x, y = inverse_distort(model, params, ((ud - cx) / fx).reshape(-1), ((vd - cy) / fy).reshape(-1))
    expected = torch.nn.functional.normalize(torch.from_numpy(np.stack([x, y, np.ones_like(x)], -1)), dim=-1)
    torch.testing.assert_close(d_cv, expected, rtol=0, atol=2e-5)
    pinhole = np.stack([(ud.reshape(-1) - cx) / fx, (vd.reshape(-1) - cy) / fy, np.ones(w * h)], -1)
    pinhole = torch.nn.functional.normalize(torch.from_numpy(pinhole), dim=-1)
    assert float((expected - pinhole).abs().max()) > 0.01  # the lens matters here
    # through the lens and back: projecting points on the rays lands on the pixel centres
    uv, _ = project(data.cameras, 0, rays.origins + 2.5 * rays.directions)
    centres = torch.from_numpy(np.stack([ud.reshape(-1), vd.reshape(-1)], -1)).float()
    torch.testing.assert_close(uv, centres, rtol=0, atol=2e-3)


def test_a_lens_that_folds_back_is_one_line(tmp_path):
    # k1 = -0.5 at f = 30 px: the distorted radius peaks before the corners of an 80 x 60 image
    make_project(tmp_path, n_cams=2, fmt="txt", camera=("SIMPLE_RADIAL", 80, 60, [30.0, 40.0, 30.0, -0.5]))
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path, "all")
    one_line_error(e, "cameras.txt", "not invertible")


def test_no_points_fallbacks(tmp_path):
    make_project(tmp_path, n_cams=2, fmt="bin", n_points=0)
    data = load_colmap(tmp_path, "all")
    assert data.aabb.tolist() == [-1, -1, -1, 1, 1, 1]
    assert (data.meta["near"], data.meta["far"]) == (0.01, 100.0)
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path, "all", normalize="points")
    one_line_error(e, "points3D.bin")


def test_bad_input(tmp_path):
    (tmp_path / "nosparse" / "images").mkdir(parents=True)
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "nosparse")
    one_line_error(e, "sparse")
    with pytest.raises(RadfieldError) as e:
        load_scene(tmp_path / "nosparse")
    one_line_error(e, "unrecognised dataset format", "poses_bounds.npy")

    (tmp_path / "empty" / "sparse" / "0").mkdir(parents=True)
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "empty")
    one_line_error(e, "sparse", "no COLMAP model")

    gt = make_project(tmp_path / "missing", n_cams=4)
    (tmp_path / "missing" / "images" / gt["names"][2]).unlink()
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "missing")
    one_line_error(e, "images.bin", "1 of 4", gt["names"][2])

    write_model(tmp_path / "zero" / "sparse" / "0", "txt", [(1, *PINHOLE)], [], [])
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "zero")
    one_line_error(e, "images.txt", "no registered images")

    make_project(tmp_path / "fov", n_cams=2, camera=("FOV", W, H, [18.0, 17.0, 8.0, 6.0, 0.1]))
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "fov")
    one_line_error(e, "cameras.bin", "FOV")

    make_project(tmp_path / "cut", n_cams=2)
    images_bin = tmp_path / "cut" / "sparse" / "0" / "images.bin"
    images_bin.write_bytes(images_bin.read_bytes()[:-5])
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "cut")
    one_line_error(e, "images.bin", "truncated")

    make_project(tmp_path / "badsplit", n_cams=2)
    with pytest.raises(RadfieldError) as e:
        load_colmap(tmp_path / "badsplit", "evaluation")
    one_line_error(e, "evaluation")


def test_garden_colmap():
    root = SHARED_DATA / "garden-colmap"
    if not root.is_dir():
        pytest.skip(f"shared dataset not found: {root}")
    start = time.perf_counter()
    train = load_colmap(root, "train")
    seconds = time.perf_counter() - start
    test = load_colmap(root, "test")
    assert train.meta["colmap_model"] == "1" and test.meta["colmap_model"] == "1"
    assert len(train) + len(test) == 75 and len(test) == 10
    assert [Path(n).name for n in test.names] == [f"frame_{k:03d}.png" for k in range(0, 75, 8)]
    assert (train.cameras.width, train.cameras.height) == (300, 300)
    assert train.meta["camera_model"] == "SIMPLE_RADIAL"
    centers = torch.cat([train.cameras.centers, test.cameras.centers])
    assert float(centers.norm(dim=-1).max()) == pytest.approx(1.0, abs=1e-5)
    assert seconds < 10, f"loading took {seconds:.1f} s"


# ---------------------------------------------------------------------------- cameras only


@pytest.mark.parametrize("camera", [PINHOLE, ("SIMPLE_RADIAL", W, H, [18.0, 8.1, 6.2, 0.05])])
@pytest.mark.parametrize("split,downscale", [("all", 1), ("test", 1), ("train", 2)])
def test_colmap_load_cameras_equals_load_scene(tmp_path, camera, split, downscale,
                                               no_image_decoding, monkeypatch,
                                               assert_same_cameras):
    make_project(tmp_path, n_cams=9, camera=camera, fmt="txt")
    cams = load_cameras(tmp_path, split, downscale)
    with pytest.raises(Exception):  # the patch does forbid decoding
        load_scene(tmp_path, split, downscale)
    monkeypatch.undo()
    scene = load_scene(tmp_path, split, downscale)
    assert_same_cameras(cams, scene)
    assert (cams.cameras.width, cams.cameras.height) == (W // downscale, H // downscale)
    torch.testing.assert_close(cams.cameras.fx, torch.full((len(cams),), 18.0 / downscale))


def test_colmap_load_cameras_needs_no_images(tmp_path, assert_same_cameras):
    gt = make_project(tmp_path, n_cams=4)
    scene = load_scene(tmp_path, "train", colmap_model="0")
    for name in gt["names"]:
        (tmp_path / "images" / name).unlink()
    assert_same_cameras(load_cameras(tmp_path, "train", colmap_model="0"), scene)
    with pytest.raises(RadfieldError) as e:
        load_scene(tmp_path, "train")
    one_line_error(e, "4 of 4", "missing")


def test_colmap_load_cameras_prescaled_reads_headers_only(tmp_path, no_image_decoding,
                                                          monkeypatch, assert_same_cameras):
    gt = make_project(tmp_path, n_cams=3)
    (tmp_path / "images_2").mkdir()
    for name in gt["names"]:  # 9 x 6 is within 1 px of 16 / 2 x 12 / 2: intrinsics scale by 9/16
        iio.imwrite(tmp_path / "images_2" / name, np.zeros((6, 9, 3), np.uint8))
    cams = load_cameras(tmp_path, "all", 2)
    fx, fy, cx, cy = gt["params"]
    assert (cams.cameras.width, cams.cameras.height) == (9, 6)
    torch.testing.assert_close(cams.cameras.fx, torch.full((3,), fx * 9 / 16))
    torch.testing.assert_close(cams.cameras.cy, torch.full((3,), cy * 6 / 12))
    monkeypatch.undo()
    assert_same_cameras(cams, load_scene(tmp_path, "all", 2))


# ---------------------------------------------------------------------------- LLFF


def look_at_c2w_gl(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    back = (eye - target) / np.linalg.norm(eye - target)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    return np.stack([right, up, back, eye], axis=1)


def make_llff(root: Path, n: int = 5, w: int = 20, h: int = 16, focal: float = 18.0) -> dict:
    rng = np.random.default_rng(3)
    c2ws = [look_at_c2w_gl(np.array([0.4 * k - 0.8, -5.0, 0.3 * (k % 2)]),
                           np.array([0.0, 0.0, 0.0])) for k in range(n)]
    rows = []
    for c2w in c2ws:  # LLFF columns: down, right, back, t, hwf
        m = np.stack([-c2w[:, 1], c2w[:, 0], c2w[:, 2], c2w[:, 3], [h, w, focal]], axis=1)
        rows.append(np.concatenate([m.reshape(-1), [2.0 + 0.1 * len(rows), 9.0]]))
    np.save(root / "poses_bounds.npy", np.array(rows))
    (root / "images").mkdir()
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]
    for k, img in enumerate(imgs):
        iio.imwrite(root / "images" / f"{k:04d}.png", img)
    return {"c2w": np.array(c2ws), "images": imgs, "w": w, "h": h, "focal": focal}


def test_llff_poses_and_projection(tmp_path):
    gt = make_llff(tmp_path)
    data = load_scene(tmp_path, "all")
    assert data.meta["format"] == "llff" and len(data) == 5
    eyes = gt["c2w"][:, :, 3]
    center = eyes.mean(axis=0)
    scale = 1 / np.linalg.norm(eyes - center, axis=1).max()
    c2w = data.cameras.c2w.numpy()
    assert np.allclose(c2w[:, :, :3], gt["c2w"][:, :, :3], atol=1e-6)
    assert np.allclose(c2w[:, :, 3], (eyes - center) * scale, atol=1e-6)
    assert data.meta["near"] == pytest.approx(2.0 * scale)
    assert data.meta["far"] == pytest.approx(9.0 * scale)
    point = np.array([[0.3, 0.2, -0.1]])
    for k in range(5):
        # OpenCV axes from the LLFF columns: x = right, y = down, z = forward = -back
        rot_cv = np.stack([gt["c2w"][k][:, 0], -gt["c2w"][k][:, 1], -gt["c2w"][k][:, 2]])
        uv_gt, _ = opencv_project(rot_cv, -rot_cv @ eyes[k],
                                  (gt["focal"], gt["focal"], gt["w"] / 2, gt["h"] / 2), point)
        uv, _ = project(data.cameras, k,
                        torch.tensor((point - center) * scale, dtype=torch.float32))
        assert np.allclose(uv.numpy(), uv_gt, atol=1e-3)
        assert np.array_equal(data.images[k].numpy(), gt["images"][k])
    assert [Path(n).name for n in load_llff(tmp_path, "test", holdout_every=2).names] == \
        ["0000.png", "0002.png", "0004.png"]


def test_llff_downscale_and_errors(tmp_path):
    gt = make_llff(tmp_path)
    half = load_llff(tmp_path, "all", downscale=2)
    assert half.images.shape == (5, 8, 10, 3)
    assert torch.allclose(half.cameras.fx, torch.tensor(gt["focal"] / 2))
    assert torch.allclose(half.cameras.cx, torch.tensor(5.0))
    (tmp_path / "images" / "0003.png").unlink()
    with pytest.raises(RadfieldError) as e:
        load_llff(tmp_path)
    one_line_error(e, "images", "4 images", "5 poses")
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 15)))
    with pytest.raises(RadfieldError) as e:
        load_llff(tmp_path)
    one_line_error(e, "poses_bounds.npy", "N x 17")


@pytest.mark.parametrize("split,downscale", [("all", 1), ("test", 1), ("train", 2)])
def test_llff_load_cameras_equals_load_scene(tmp_path, split, downscale, no_image_decoding,
                                             monkeypatch, assert_same_cameras):
    gt = make_llff(tmp_path)
    cams = load_cameras(tmp_path, split, downscale)
    with pytest.raises(Exception):  # the patch does forbid decoding
        load_scene(tmp_path, split, downscale)
    monkeypatch.undo()
    assert_same_cameras(cams, load_scene(tmp_path, split, downscale))
    assert cams.meta["format"] == "llff"
    assert (cams.cameras.width, cams.cameras.height) == (gt["w"] // downscale,
                                                         gt["h"] // downscale)
    torch.testing.assert_close(cams.cameras.fx, torch.full((len(cams),), gt["focal"] / downscale))


def test_process_colmap_writes_a_transforms_json_that_reads_back(tmp_path, capsys):
    """``radfield process colmap DATASET --format transforms``: the json's frame is the COLMAP
    frame moved by the recorded applied_transform / applied_scale; the fixture's cameras look at
    the origin, so that point becomes the centre and the cameras end up 4 units away on average;
    every sparse point projects to the same pixel through the COLMAP cameras and through the
    transforms.json cameras (intrinsics, lens and pose all carried over)."""
    import json

    import trimesh

    from radfield.cli import main

    camera = ("OPENCV", 80, 60, [62.0, 58.0, 40.5, 29.5, 0.1, 0.03, 0.002, -0.0025])
    gt = make_project(tmp_path, n_cams=6, fmt="bin", camera=camera, n_points=30)
    assert main(["process", "colmap", str(tmp_path), "--format", "transforms", "--aabb-scale", "4"]) == 0
    assert "transforms.json" in capsys.readouterr().out
    meta = json.loads((tmp_path / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and meta["aabb_scale"] == 4
    assert (meta["k1"], meta["k2"], meta["p1"], meta["p2"]) == (0.1, 0.03, 0.002, -0.0025)
    applied = np.array(meta["applied_transform"])
    rot, t, s = applied[:, :3], applied[:, 3], meta["applied_scale"]
    np.testing.assert_allclose(t, 0.0, atol=1e-9)  # the look-at point is the COLMAP origin
    frames = sorted(meta["frames"], key=lambda f: f["file_path"])
    centres = np.array([np.array(f["transform_matrix"])[:3, 3] for f in frames])
    np.testing.assert_allclose(centres, s * (gt["eyes"] @ rot.T + t), atol=1e-9)
    assert np.linalg.norm(centres, axis=1).mean() == pytest.approx(4.0)
    ups = np.array([np.array(f["transform_matrix"])[:3, 1] for f in frames])
    up = ups.mean(0) / np.linalg.norm(ups.mean(0))
    np.testing.assert_allclose(up, [0.0, 0.0, 1.0], atol=1e-9)
    cloud = trimesh.load(tmp_path / "sparse_pc.ply")
    np.testing.assert_allclose(np.sort(np.asarray(cloud.vertices), 0), np.sort(s * (gt["points"] @ rot.T + t), 0),
                               atol=1e-5)

    colmap = load_colmap(tmp_path, "all").cameras
    json_points = torch.from_numpy(s * (gt["points"] @ rot.T + t)).float()
    norm = load_colmap(tmp_path, "all").meta["normalization"]
    colmap_points = (torch.from_numpy(gt["points"]).float() - torch.tensor(norm["center"]).float()) * norm["scale"]
    for split in ("train", "test"):
        cams = load_cameras(tmp_path / "transforms.json", split)
        for k, name in enumerate(cams.names):
            j = gt["names"].index(Path(name).name)
            a, za = project(cams.cameras, k, json_points)
            b, zb = project(colmap, j, colmap_points)
            front = (za > 0) & (zb > 0)
            assert front.sum() > 10
            torch.testing.assert_close(a[front], b[front], rtol=0, atol=2e-3)


def test_process_colmap_needs_the_transforms_format(tmp_path, capsys):
    from radfield.cli import main

    make_project(tmp_path, n_cams=2)
    assert main(["process", "colmap", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--format transforms" in err and "\n" not in err
