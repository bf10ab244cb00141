"""Tests of the multi-scale (mip-NeRF) Blender dataset.

Ground truth: intrinsics from ``camera_angle_x`` by hand, numpy block means of the source PNGs
(premultiplied alpha), a hand-made 2x2 image, rays of the full-resolution cameras through block
centres, and pixel counts for the loss weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from radfield.cameras import generate_rays, pixel_rays
from radfield.data import load_cameras, load_scene_groups, multiscale
from radfield.data.blender import load_blender
from radfield.data.multiscale import (is_multiscale, load_multiscale, loss_multipliers,
                                      make_multiscale)
from radfield.data.synthetic import CAMERA_ANGLE_X, make_scene
from radfield.errors import RadfieldError

SCALES = (1, 2, 4, 8)


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("src"), n_train=4, n_val=1, n_test=2, size=32)


@pytest.fixture(scope="module")
def ms(src, tmp_path_factory) -> Path:
    return make_multiscale(src, tmp_path_factory.mktemp("ms") / "out", progress=False)


@pytest.fixture(scope="module")
def cropped(tmp_path_factory) -> tuple[Path, Path]:
    """A 30 x 30 train-only source (30 is not a multiple of 4 or 8) and its multi-scale copy."""
    root = tmp_path_factory.mktemp("cropped")
    src = make_scene(root / "src", n_train=2, n_val=0, n_test=0, size=30)
    return src, make_multiscale(src, root / "out", progress=False)


def block_mean_premultiplied(img: np.ndarray, f: int) -> np.ndarray:
    """Float ``(H // f, W // f, 4)`` block means: alpha mean, colour = sum(c a) / sum(a)."""
    h, w = img.shape[0] // f, img.shape[1] // f
    x = img[: h * f, : w * f].astype(np.float64)
    out = np.zeros((h, w, 4))
    for r in range(h):
        for c in range(w):
            block = x[r * f:(r + 1) * f, c * f:(c + 1) * f].reshape(-1, 4)
            a = block[:, 3]
            out[r, c, 3] = a.mean()
            if a.sum() > 0:
                out[r, c, :3] = (block[:, :3] * a[:, None]).sum(0) / a.sum()
    return out


def write_dataset(folder: Path, image: np.ndarray, **top) -> Path:
    """A one-frame Blender dataset with an identity pose."""
    (folder / "train").mkdir(parents=True)
    iio.imwrite(folder / "train" / "a.png", image)
    pose = np.eye(4).tolist()
    doc = {"camera_angle_x": 0.7, **top, "frames": [{"file_path": "./train/a",
                                                     "transform_matrix": pose}]}
    (folder / "transforms_train.json").write_text(json.dumps(doc))
    return folder


# ---------------------------------------------------------------------------- (a) sizes, intrinsics


def test_sizes_and_intrinsics_scaled(src, ms):
    focal = 0.5 * 32 / math.tan(0.5 * CAMERA_ANGLE_X)  # by hand, not from the json
    assert json.loads((ms / "multiscale.json").read_text()) == {"scales": list(SCALES),
                                                                "source": str(src)}
    for split, n in (("train", 4), ("val", 1), ("test", 2)):
        for f in SCALES:
            doc = json.loads((ms / f"x{f}" / f"transforms_{split}.json").read_text())
            assert doc["w"] == doc["h"] == 32 // f
            assert doc["fl_x"] == pytest.approx(focal / f, rel=1e-12)
            assert doc["fl_y"] == pytest.approx(focal / f, rel=1e-12)
            assert doc["cx"] == doc["cy"] == 16 / f
            assert doc["camera_angle_x"] == pytest.approx(CAMERA_ANGLE_X, rel=1e-12)
            data = load_blender(ms / f"x{f}", split)
            assert data.images.shape == (n, 32 // f, 32 // f, 4)
            assert data.depths.shape == (n, 32 // f, 32 // f)
            assert (data.cameras.width, data.cameras.height) == (32 // f, 32 // f)
            torch.testing.assert_close(data.cameras.fx, torch.full((n,), focal / f))
            torch.testing.assert_close(data.cameras.cy, torch.full((n,), 16.0 / f))
            assert data.names[0].endswith(f"x{f}/{split}/r_0.png")


def test_crop_keeps_pixel_origin(cropped):
    """30 px at scale 4 -> 7 px (28 kept); cx = 15 / 4 = 3.75, not 7 / 2."""
    src, ms = cropped
    assert is_multiscale(ms) and not (ms / "x1" / "transforms_val.json").exists()
    for f, size in ((1, 30), (2, 15), (4, 7), (8, 3)):
        doc = json.loads((ms / f"x{f}" / "transforms_train.json").read_text())
        assert (doc["w"], doc["h"], doc["cx"], doc["cy"]) == (size, size, 15 / f, 15 / f)
        assert load_blender(ms / f"x{f}").images.shape == (2, size, size, 4)


# ---------------------------------------------------------------------------- (b) pixel values


def test_pixels_are_premultiplied_block_means(src, ms):
    straight_differs = 0
    for split, n in (("train", 4), ("test", 2)):
        for k in range(n):
            full = iio.imread(src / split / f"r_{k}.png")
            for f in SCALES:
                got = iio.imread(ms / f"x{f}" / split / f"r_{k}.png").astype(np.float64)
                want = block_mean_premultiplied(full, f)
                assert got.shape == want.shape
                assert np.abs(got - want).max() <= 0.5 + 1e-9  # equal up to rounding to uint8
                straight = full.reshape(32 // f, f, 32 // f, f, 4).mean(axis=(1, 3))
                straight_differs += int((np.abs(got - straight)[..., :3] > 2).sum())
    assert straight_differs > 0  # the images have soft edges where the two averagings differ


def test_hand_example_half_covered_block(tmp_path):
    """Block (200, 100, 50, a=255), three (90, 90, 90, a=0) -> (200, 100, 50, a=64)."""
    img = np.array([[[200, 100, 50, 255], [90, 90, 90, 0]],
                    [[90, 90, 90, 0], [90, 90, 90, 0]]], np.uint8)
    src = write_dataset(tmp_path / "src", img)
    out = make_multiscale(src, tmp_path / "out", scales=(2, 1), progress=False)
    assert iio.imread(out / "x2" / "train" / "a.png").tolist() == [[[200, 100, 50, 64]]]
    assert np.array_equal(iio.imread(out / "x1" / "train" / "a.png"), img)
    assert [d.meta["scale"] for d in load_multiscale(out)] == [2, 1]


def test_x1_and_depths_match_loader_downscale(src, ms):
    for f in SCALES:
        a, b = load_blender(ms / f"x{f}", "test"), load_blender(src, "test", downscale=f)
        assert torch.equal(a.images, b.images)
        torch.testing.assert_close(a.depths, b.depths)
        assert torch.equal(a.cameras.c2w, b.cameras.c2w)


# ---------------------------------------------------------------------------- (c) rays


@pytest.mark.parametrize("which", ["ms", "cropped"])
def test_scaled_pixel_ray_is_full_res_block_centre_ray(which, src, ms, cropped):
    src, ms = (src, ms) if which == "ms" else cropped
    full = load_blender(src, "train").cameras
    for f in SCALES:
        cams = load_blender(ms / f"x{f}", "train").cameras
        idx, j, i = torch.meshgrid(torch.arange(len(cams)), torch.arange(cams.height),
                                   torch.arange(cams.width), indexing="ij")
        idx, i, j = idx.reshape(-1), i.reshape(-1), j.reshape(-1)
        got = pixel_rays(cams, idx, i, j)
        want = generate_rays(full, idx, f * i + f / 2, f * j + f / 2)
        torch.testing.assert_close(got.origins, want.origins)
        torch.testing.assert_close(got.directions, want.directions, atol=1e-6, rtol=0)
        torch.testing.assert_close(got.z_per_t, want.z_per_t, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- (d) loading


def test_load_multiscale(src, ms):
    assert is_multiscale(ms) and is_multiscale(ms / "multiscale.json") and not is_multiscale(src)
    scenes = load_multiscale(ms)
    assert [s.meta["scale"] for s in scenes] == list(SCALES)
    assert [tuple(s.images.shape) for s in scenes] == [(4, 32 // f, 32 // f, 4) for f in SCALES]
    assert [len(s) for s in load_multiscale(ms, split="test")] == [2, 2, 2, 2]
    with pytest.raises(RadfieldError, match="not a multi-scale dataset"):
        load_multiscale(src)


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_cameras_is_the_full_scale_without_decoding(src, ms, split, no_image_decoding,
                                                         monkeypatch, assert_same_cameras):
    cams = load_cameras(ms, split)
    with pytest.raises(RadfieldError, match="not downscaled again"):
        load_cameras(ms, split, downscale=2)
    monkeypatch.undo()
    full = load_scene_groups(ms, split)[0]
    assert full.meta["scale"] == 1 and cams.meta["scale"] == 1
    assert_same_cameras(cams, full)
    # the full scale's cameras are the source's (written back as fl_x ... w h: equal in float32)
    source = load_cameras(src, split)
    assert (cams.cameras.width, cams.cameras.height) == (32, 32)
    for key in ("c2w", "fx", "fy", "cx", "cy"):
        assert torch.equal(getattr(cams.cameras, key), getattr(source.cameras, key)), key


def test_loss_multipliers_equalise_images():
    w = loss_multipliers(SCALES)
    assert w == {1: 1.0, 2: 4.0, 4: 16.0, 8: 64.0}
    assert {(32 // f) ** 2 * w[f] for f in SCALES} == {32.0 * 32.0}  # same total per image
    for bad in ((), (0, 1), (2, 2), (1.5,), (True,)):
        with pytest.raises(RadfieldError, match="scales"):
            loss_multipliers(bad)


# ---------------------------------------------------------------------------- (e) bad input


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(RadfieldError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_bad_input(src, tmp_path):
    missing = tmp_path / "nope"
    assert one_line_error(make_multiscale, missing, tmp_path / "o1").startswith(str(missing))
    (tmp_path / "no_train").mkdir()
    assert "transforms_train.json" in one_line_error(make_multiscale, tmp_path / "no_train",
                                                     tmp_path / "o2")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    msg = one_line_error(make_multiscale, src, busy, progress=False)
    assert msg.startswith(str(busy)) and "not empty" in msg
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert "scales" in one_line_error(make_multiscale, src, tmp_path / "o3", scales=(1, 0))
    assert "scale 64" in one_line_error(make_multiscale, src, tmp_path / "o4", scales=(1, 64),
                                        progress=False)
    assert "source" in one_line_error(make_multiscale, src, src, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "no_train"]


def test_overwrite_replaces_and_empty_output_is_fine(src, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    make_multiscale(src, out, scales=(4,), progress=False)  # empty folder: allowed
    (out / "stale.txt").write_text("old")
    make_multiscale(src, out, scales=(2, 8), progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["multiscale.json", "x2", "x8"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp or backup folder left


# ---------------------------------------------------------------------------- (f) failed write


def test_failed_write_leaves_nothing(src, tmp_path, monkeypatch):
    calls = []
    real = multiscale.save_png

    def flaky(path, image):
        calls.append(path)
        if len(calls) == 10:
            raise OSError("disk full")
        real(path, image)

    monkeypatch.setattr(multiscale, "save_png", flaky)
    with pytest.raises(OSError, match="disk full"):
        make_multiscale(src, tmp_path / "out", progress=False)
    assert len(calls) == 10 and list(tmp_path.iterdir()) == []

    old = tmp_path / "old"  # overwrite: a failure keeps the old output as it was
    make_multiscale(src, old, scales=(8,), progress=False)
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        make_multiscale(src, old, progress=False, overwrite=True)
    assert sorted(p.name for p in old.iterdir()) == ["multiscale.json", "x8"]
    assert [p.name for p in tmp_path.iterdir()] == ["old"]
