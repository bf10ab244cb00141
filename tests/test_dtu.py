"""The DTU reader (IDR / NeuS / VolSDF layout), checked against the cameras it was written from.

Ground truth: each test folder is written from known intrinsics ``K``, world-to-camera rotations
``R``, camera centres ``C`` and a known ``scale_mat`` (centre ``c``, radius ``s``), with each
``world_mat = lambda K [R | -R C]`` scaled by an arbitrary ``lambda`` (negative ones included).
Known world points are projected by the raw ``world_mat`` and by radfield's decomposed cameras
(:func:`radfield.cameras.project`, after the documented half-pixel shift); masks and splits are
compared with what was written; every bad input must give one line naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import assert_one_line_naming, make_config

from radfield.cameras import project
from radfield.cli import main
from radfield.data import load_cameras, load_scene
from radfield.data.dtu import PIXEL_CENTRE, decompose_projection, dtu_cameras, load_dtu
from radfield.data.files import downscale_image
from radfield.errors import RadfieldError
from radfield.evaluation.evaluate import evaluate_run, format_table
from radfield.export.mesh import to_world
from radfield.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

CENTER, RADIUS = np.array([10.0, -5.0, 20.0]), 2.5  # the scale_mat: x_world = RADIUS x + CENTER
LAMBDAS = (1.0, -0.7, 3.0)  # world_mat_k is defined up to a factor, of either sign


def rotation_to(forward: np.ndarray, roll: float) -> np.ndarray:
    """World-to-camera rotation (OpenCV: rows x right, y down, z forward) looking along
    ``forward``, rolled by ``roll`` radians about it."""
    z = forward / np.linalg.norm(forward)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll), math.sin(roll)
    return np.stack([c * x + s * y, -s * x + c * y, z])


def known_cameras(n: int, width: int, height: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(K, R, C)`` of ``n`` cameras around the object (world frame), DTU-like intrinsics."""
    cams = []
    for k in range(n):
        az, el = 2 * math.pi * k / n, math.radians(25 + 5 * (k % 3))
        centre = CENTER + 3.5 * RADIUS * np.array([math.cos(el) * math.cos(az),
                                                   math.cos(el) * math.sin(az), math.sin(el)])
        intr = np.array([[1.81 * width + k, 0.0, 0.514 * width],
                         [0.0, 1.80 * width, 0.516 * height], [0.0, 0.0, 1.0]])
        cams.append((intr, rotation_to(CENTER - centre, 0.1 * k), centre))
    return cams


def world_mat(intr: np.ndarray, rot: np.ndarray, centre: np.ndarray, lam: float) -> np.ndarray:
    m = np.eye(4)
    m[:3] = lam * intr @ np.concatenate([rot, -(rot @ centre)[:, None]], axis=1)
    return m


def scale_mat() -> np.ndarray:
    m = np.diag([RADIUS, RADIUS, RADIUS, 1.0])
    m[:3, 3] = CENTER
    return m


def mask_image(seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """``(RGB mask file content, used pixels)``: white where used, some used pixels only faintly
    blue (any nonzero channel counts), black elsewhere."""
    used = np.random.default_rng(100 + seed).random((height, width)) < 0.6
    img = np.where(used[..., None], np.uint8(255), np.uint8(0)).repeat(3, axis=-1)
    img[used & (np.arange(width)[None] % 3 == 0)] = (0, 0, 7)
    return img, used


def write_dtu(root: Path, n: int = 10, width: int = 16, height: int = 12, masks: bool = True,
              zeros: bool = False, camera_name: str = "cameras.npz") -> Path:
    """A DTU folder: ``image/000000.png ...``, ``mask/000.png ...`` (IDR's names) and the camera
    file, from :func:`known_cameras`. ``zeros``: black images (fast to write at full size)."""
    (root / "image").mkdir(parents=True)
    arrays = {}
    for k, (intr, rot, centre) in enumerate(known_cameras(n, width, height)):
        arrays[f"world_mat_{k}"] = world_mat(intr, rot, centre, LAMBDAS[k % 3])
        arrays[f"scale_mat_{k}"] = scale_mat()
        arrays[f"camera_mat_{k}"] = np.eye(4)  # other arrays are ignored
        img = (np.zeros((height, width, 3), np.uint8) if zeros else
               np.random.default_rng(k).integers(0, 256, (height, width, 3), dtype=np.uint8))
        iio.imwrite(root / "image" / f"{k:06d}.png", img)
        if masks:
            (root / "mask").mkdir(exist_ok=True)
            iio.imwrite(root / "mask" / f"{k:03d}.png", mask_image(k, height, width)[0])
    np.savez(root / camera_name, **arrays)
    return root


def edit_cameras(root: Path, **changes) -> Path:
    file = root / "cameras.npz"
    with np.load(file) as npz:
        arrays = {key: npz[key] for key in npz.files}
    arrays.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del arrays[key]
    np.savez(file, **arrays)
    return file


# ---------------------------------------------------------------------------- cameras


def test_decompose_projection_example_and_sign():
    p = 2 * np.array([[100.0, 0, 50, 250], [0, 100, 40, 200], [0, 0, 1, 5]])
    k, r, c = decompose_projection(p)
    np.testing.assert_allclose(k, [[100, 0, 50], [0, 100, 40], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(r, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(c, [0, 0, -5], atol=1e-12)
    for lam in LAMBDAS:
        for intr, rot, centre in known_cameras(3, 1600, 1200):
            k, r, c = decompose_projection(world_mat(intr, rot, centre, lam)[:3])
            np.testing.assert_allclose(k, intr, rtol=1e-10, atol=1e-8)
            np.testing.assert_allclose(r, rot, atol=1e-10)
            np.testing.assert_allclose(c, centre, atol=1e-9)


def test_cameras_reproject_like_the_world_mats(tmp_path, no_image_decoding):
    """DTU-sized cameras: known world points projected by radfield's decomposed cameras (in the
    unit-sphere frame) land where the raw world_mat puts them, plus the half-pixel shift."""
    n, width, height = 6, 1600, 1200
    root = write_dtu(tmp_path / "scan", n=n, width=width, height=height, masks=False, zeros=True)
    scene = dtu_cameras(root, "all")
    cams = scene.cameras
    assert (cams.width, cams.height) == (width, height) and len(cams) == n
    rng = np.random.default_rng(7)
    world = CENTER + RADIUS * rng.uniform(-0.6, 0.6, (50, 3))
    norm = scene.meta["normalization"]
    local = (torch.from_numpy(world) - torch.tensor(norm["center"], dtype=torch.float64)) * norm["scale"]
    for k, (intr, rot, centre) in enumerate(known_cameras(n, width, height)):
        assert cams.fx[k].item() == pytest.approx(intr[0, 0], rel=1e-6)
        assert cams.fy[k].item() == pytest.approx(intr[1, 1], rel=1e-6)
        assert cams.cx[k].item() == pytest.approx(intr[0, 2] + 0.5, abs=1e-4)
        assert cams.cy[k].item() == pytest.approx(intr[1, 2] + 0.5, abs=1e-4)
        raw = world_mat(intr, rot, centre, LAMBDAS[k % 3])
        h = np.concatenate([world, np.ones((50, 1))], axis=1) @ raw[:3].T
        uv_raw = h[:, :2] / h[:, 2:]
        uv, z = project(cams, k, local.float())
        np.testing.assert_allclose(uv.double().numpy(), uv_raw + PIXEL_CENTRE, atol=1e-3)
        depth_world = (world - centre) @ rot[2]  # planar depth along the optical axis
        np.testing.assert_allclose(z.double().numpy(), depth_world / RADIUS, rtol=1e-5)
        assert (z > 0).all()


def test_normalisation_round_trips_world_points(tmp_path, no_image_decoding):
    scene = dtu_cameras(write_dtu(tmp_path / "scan", n=4, masks=False), "all")
    norm = scene.meta["normalization"]
    assert norm["center"] == pytest.approx(CENTER.tolist()) and norm["scale"] == pytest.approx(1 / RADIUS)
    world = torch.from_numpy(CENTER + RADIUS * np.random.default_rng(3).normal(size=(20, 3)))
    local = (world - torch.tensor(norm["center"], dtype=torch.float64)) * norm["scale"]
    torch.testing.assert_close(to_world(local, norm), world, rtol=0, atol=1e-12)
    centres = torch.tensor(np.stack([c for _, _, c in known_cameras(4, 16, 12)]))
    torch.testing.assert_close(to_world(scene.cameras.centers.double(), norm), centres,
                               rtol=0, atol=1e-5)
    assert torch.equal(scene.aabb, torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    assert scene.meta["near"] == pytest.approx(3.5 - 1) and scene.meta["far"] == pytest.approx(3.5 + 1)


# ---------------------------------------------------------------------------- pixels, masks, splits


def test_load_dtu_images_masks_and_hold_out(tmp_path):
    root = write_dtu(tmp_path / "scan", n=10)
    data = load_scene(root, "all")
    assert data.meta["format"] == "dtu"
    assert [Path(name).name for name in data.names] == [f"{k:06d}.png" for k in range(10)]
    for k in range(10):
        assert torch.equal(data.images[k], torch.from_numpy(iio.imread(root / "image" / f"{k:06d}.png")))
        assert torch.equal(data.masks[k], torch.from_numpy(mask_image(k, 12, 16)[1]))
    test, train = load_dtu(root, "test"), load_dtu(root, "train")
    assert [Path(n).stem for n in test.names] == ["000000", "000008"]
    assert [Path(n).stem for n in train.names] == [f"{k:06d}" for k in range(10) if k % 8]
    assert torch.equal(train.masks, data.masks[[k for k in range(10) if k % 8]])
    torch.testing.assert_close(train.cameras.c2w, data.cameras.c2w[[k for k in range(10) if k % 8]])
    assert load_dtu(root, "val").names == test.names
    assert load_dtu(root, "test", holdout_every=5).names == [data.names[0], data.names[5]]


def test_downscale_averages_images_and_keeps_whole_blocks_of_masks(tmp_path):
    root = write_dtu(tmp_path / "scan", n=3, width=17, height=13)  # odd sizes: cropped
    full, half = load_dtu(root, "all"), load_dtu(root, "all", downscale=2)
    assert half.images.shape == (3, 6, 8, 3) and half.masks.shape == (3, 6, 8)
    for k in range(3):
        assert torch.equal(half.images[k], torch.from_numpy(downscale_image(full.images[k].numpy(), 2)))
        used = full.masks[k]
        for r in range(6):
            for c in range(8):
                assert bool(half.masks[k, r, c]) == bool(used[2 * r:2 * r + 2, 2 * c:2 * c + 2].all())
    for key in ("fx", "fy", "cx", "cy"):
        torch.testing.assert_close(getattr(half.cameras, key), getattr(full.cameras, key) / 2)


@pytest.mark.parametrize("split,downscale", [("train", 1), ("test", 2)])
def test_load_cameras_equals_load_scene_without_decoding(tmp_path, split, downscale,
                                                         assert_same_cameras, request):
    root = write_dtu(tmp_path / "scan", n=10)
    data = load_scene(root, split, downscale)
    request.getfixturevalue("no_image_decoding")
    assert_same_cameras(load_cameras(root, split, downscale), data)


def test_without_mask_folder_every_pixel_is_used_and_neus_file_name(tmp_path):
    root = write_dtu(tmp_path / "scan", n=3, masks=False, camera_name="cameras_sphere.npz")
    data = load_scene(root, "all")
    assert data.masks is None and data.meta["cameras_file"].endswith("cameras_sphere.npz")


# ---------------------------------------------------------------------------- bad input


def _singular(root):
    m = np.eye(4)
    m[:3, :3] = [[1, 2, 3], [2, 4, 6], [0, 0, 1]]  # rank 2
    return edit_cameras(root, world_mat_2=m), r"cameras.npz: world_mat_2: is not a projection \(its 3x3 part is singular\)"


def _wrong_shape(root):
    return edit_cameras(root, world_mat_1=np.eye(3)), r"world_mat_1: is not a 3x4 or 4x4 projection matrix \(shape \(3, 3\)\)"


def _not_finite(root):
    m = np.eye(4)
    m[0, 3] = np.nan
    return edit_cameras(root, world_mat_1=m), "world_mat_1: is not finite"


def _missing_scale_mat(root):
    return edit_cameras(root, scale_mat_3=None), "cameras.npz: no scale_mat_3"


def _anisotropic_scale_mat(root):
    return edit_cameras(root, scale_mat_0=np.diag([1.0, 2.0, 1.0, 1.0])), \
        "scale_mat_0: is not a uniform scale and translation"


def _scale_mats_differ(root):
    m = scale_mat()
    m[0, 3] += 1.0
    return edit_cameras(root, scale_mat_2=m), "scale_mat_2 differs from scale_mat_0"


def _image_missing(root):
    (root / "image" / "000003.png").unlink()
    return root, r"image: 3 images but cameras.npz has 4 cameras"


def _no_images(root):
    for f in (root / "image").iterdir():
        f.unlink()
    return root, r"image: no images"


def _mask_missing(root):
    (root / "mask" / "002.png").unlink()
    return root, r"mask: 3 masks for 4 images"


def _mask_size(root):
    iio.imwrite(root / "mask" / "001.png", np.zeros((12, 15, 3), np.uint8))
    return root, r"mask/001.png: mask size 15x12 differs from 16x12 of its image .*000001.png"


def _numbering_gap(root):
    return edit_cameras(root, world_mat_1=None), r"cameras.npz: world_mat_k are not numbered"


def _unreadable_npz(root):
    (root / "cameras.npz").write_bytes(b"not an npz")
    return root, r"cameras.npz: cannot read"


BAD_INPUTS = [_singular, _wrong_shape, _not_finite, _missing_scale_mat, _anisotropic_scale_mat,
              _scale_mats_differ, _image_missing, _no_images, _mask_missing, _mask_size,
              _numbering_gap, _unreadable_npz]


@pytest.mark.parametrize("make_bad", BAD_INPUTS, ids=[f.__name__[1:] for f in BAD_INPUTS])
def test_bad_input_raises_one_line_error(make_bad, tmp_path):
    root = write_dtu(tmp_path / "scan", n=4)
    _, pattern = make_bad(root)
    with pytest.raises(RadfieldError, match=pattern) as info:
        load_dtu(root, "all")
    assert_one_line_naming(info.value, tmp_path)


def test_cli_bad_dtu_is_one_line_exit_2(tmp_path, capsys):
    root = write_dtu(tmp_path / "scan", n=4)
    _singular(root)
    capsys.readouterr()
    rc = main(["train", str(root), "--out", str(tmp_path / "run"), "--max-steps", "1",
               "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("radfield: error: ") and "world_mat_2" in err
    assert_one_line_naming(err.rstrip("\n"), root)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- masked training and evaluation


def test_masked_training_and_evaluation(tmp_path):
    """A few training steps on a masked DTU folder, then ``eval``: the scores are masked, and
    the masked PSNR(uint8) recomputed by hand from the written render and image agrees."""
    root = write_dtu(tmp_path / "scan", n=9, width=16, height=12)
    run = tmp_path / "run"
    Trainer(make_config(root, "tiny", steps=2), run, progress=False, log_tensorboard=False).train()
    metrics = evaluate_run(run, "test", progress=False)
    assert metrics["masked"] is True and "unmasked pixels only" in format_table(metrics)
    assert json.loads((run / "metrics.json").read_text())["masked"] is True
    for row, k in zip(metrics["per_image"], (0, 8)):
        render = iio.imread(run / "renders" / "test" / f"{k:06d}_rgb.png").astype(np.float64)
        image = iio.imread(root / "image" / f"{k:06d}.png").astype(np.float64)
        used = mask_image(k, 12, 16)[1]
        mse = ((render - image) ** 2)[used].mean() / 255**2
        assert row["psnr_uint8"] == pytest.approx(-10 * math.log10(mse), abs=1e-6)
