"""Pixel masks end to end: read (``mask_path``), downscaled, drawn from by the training sampler.

Ground truth: the mask images written by the tests, block rules checked pixel by pixel, and a
brute-force list of the pixels and patch corners a sampler may use. (Masked metrics are tested
in ``test_metrics.py``, the DTU masks in ``test_dtu.py``.)
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from radfield.cameras import Cameras
from radfield.data import SceneData, load_scene
from radfield.data.blender import load_blender
from radfield.data.files import downscale_mask, read_mask
from radfield.data.multiscale import load_multiscale, make_multiscale
from radfield.errors import RadfieldError
from radfield.training.trainer import ImageGroup, draw_pixels

pytestmark = pytest.mark.usefixtures("one_thread")


def scene_with_masks(masks: np.ndarray) -> SceneData:
    """Random RGB images with the given ``(n, H, W)`` masks and identity cameras."""
    n, h, w = masks.shape
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8))
    c2w = torch.eye(4)[:3].expand(n, 3, 4).clone()
    ones = torch.ones(n)
    cams = Cameras(c2w, ones * 10, ones * 10, ones * w / 2, ones * h / 2, w, h)
    return SceneData(images, cams, [f"/data/im{k}.png" for k in range(n)],
                     torch.tensor([-1.0, -1, -1, 1, 1, 1]), masks=torch.from_numpy(masks))


# ---------------------------------------------------------------------------- the sampler


def test_image_group_docstring_example():
    data = scene_with_masks(np.array([[[True, True, False], [True, True, True]]]))
    assert ImageGroup.from_data(data, data.cameras, None, torch.device("cpu")).starts.tolist() == [0, 1, 3, 4, 5]
    assert ImageGroup.from_data(data, data.cameras, 2, torch.device("cpu")).starts.tolist() == [0]


def test_sampler_draws_only_unmasked_pixels_uniformly():
    masks = np.random.default_rng(1).random((3, 5, 6)) < 0.5
    data = scene_with_masks(masks)
    group = ImageGroup.from_data(data, data.cameras, None, torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    flat, cam, col, row = draw_pixels(group, 30_000, None, gen)
    assert masks[cam.numpy(), row.numpy(), col.numpy()].all()  # never a masked pixel
    assert torch.equal(group.pixels[flat], data.images[cam, row, col])
    counts = np.zeros(masks.shape, np.int64)
    np.add.at(counts, (cam.numpy(), row.numpy(), col.numpy()), 1)
    expected = 30_000 / masks.sum()
    assert (counts[masks] > 0.75 * expected).all() and (counts[masks] < 1.25 * expected).all()


def test_sampler_draws_only_patches_without_masked_pixels():
    masks = np.random.default_rng(2).random((2, 7, 8)) < 0.8
    data = scene_with_masks(masks)
    group = ImageGroup.from_data(data, data.cameras, 3, torch.device("cpu"))
    allowed = {(k, r, c) for k in range(2) for r in range(5) for c in range(6)
               if masks[k, r:r + 3, c:c + 3].all()}  # brute force: whole 3 x 3 blocks
    assert allowed, "the test needs some whole patches"
    assert sorted(group.starts.tolist()) == sorted(k * 56 + r * 8 + c for k, r, c in allowed)
    flat, cam, col, row = draw_pixels(group, 9 * 4000, 3, torch.Generator().manual_seed(1))
    assert len(flat) == 9 * 4000
    assert masks[cam.numpy(), row.numpy(), col.numpy()].all()
    corners = set(zip(cam[::9].tolist(), row[::9].tolist(), col[::9].tolist()))
    assert corners == allowed  # every allowed patch is drawn, and nothing else
    # row-major within a patch
    assert (row.reshape(-1, 9) - row[::9, None]).tolist()[0] == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_sampler_without_masks_is_unchanged():
    """No masks: the draws of the unmasked sampler (the generator is used exactly as before)."""
    data = scene_with_masks(np.ones((2, 4, 5), bool))
    data.masks = None
    group = ImageGroup.from_data(data, data.cameras, None, torch.device("cpu"))
    assert group.starts is None
    flat, cam, col, row = draw_pixels(group, 50, None, torch.Generator().manual_seed(3))
    assert torch.equal(flat, torch.randint(0, 40, (50,), generator=torch.Generator().manual_seed(3)))


def test_masks_that_leave_nothing_are_an_error():
    masks = np.ones((1, 4, 4), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = False  # every 3 x 3 patch holds a masked pixel
    data = scene_with_masks(masks)
    with pytest.raises(RadfieldError, match=r"/data/im0.png: .* leave no 3 x 3 patch"):
        ImageGroup.from_data(data, data.cameras, 3, torch.device("cpu"))


# ---------------------------------------------------------------------------- mask_path


def write_masked_blender(root: Path, size: tuple[int, int] = (6, 4)) -> tuple[Path, list]:
    """A Blender dataset of three frames; frames 0 and 2 have a ``mask_path`` (an 8-bit
    grayscale and an RGB mask), frame 1 none. Returns the root and the masks (None for 1)."""
    w, h = size
    (root / "train").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(4)
    frames, expected = [], []
    for k in range(3):
        iio.imwrite(root / "train" / f"r_{k}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        frame = {"file_path": f"./train/r_{k}", "transform_matrix": np.eye(4).tolist()}
        if k != 1:
            used = rng.random((h, w)) < 0.7
            img = np.where(used, np.uint8(255), np.uint8(0))
            if k == 2:  # RGB, one used pixel with only its green channel set
                img = np.stack([img, img, img], axis=-1)
                img[used.nonzero()[0][0], used.nonzero()[1][0]] = (0, 3, 0)
            iio.imwrite(root / "masks" / f"m_{k}.png", img)
            frame["mask_path"] = f"masks/m_{k}.png"
        expected.append(used if k != 1 else None)
        frames.append(frame)
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    return root, expected


def test_mask_path_is_read_and_downscaled(tmp_path):
    root, expected = write_masked_blender(tmp_path / "scene", size=(6, 4))
    data = load_scene(root)
    assert data.masks.dtype == torch.bool and data.masks.shape == (3, 4, 6)
    assert torch.equal(data.masks[0], torch.from_numpy(expected[0]))
    assert bool(data.masks[1].all())  # a frame without mask_path uses every pixel
    assert torch.equal(data.masks[2], torch.from_numpy(expected[2]))
    half = load_blender(root, downscale=2)
    for k in range(3):
        for r in range(2):
            for c in range(3):
                block = data.masks[k, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
                assert bool(half.masks[k, r, c]) == bool(block.all())


def test_no_mask_path_no_masks(tmp_path):
    root, _ = write_masked_blender(tmp_path / "scene")
    meta = json.loads((root / "transforms_train.json").read_text())
    for frame in meta["frames"]:
        frame.pop("mask_path", None)
    (root / "transforms_train.json").write_text(json.dumps(meta))
    assert load_scene(root).masks is None


def test_read_mask_channels_and_size(tmp_path):
    la = np.zeros((2, 3, 2), np.uint8)
    la[0, 0] = (9, 0)  # used: L nonzero
    la[1, 2] = (0, 255)  # not used: only alpha
    iio.imwrite(tmp_path / "la.png", la)
    assert read_mask(tmp_path / "la.png", tmp_path / "im.png", 2, 3).tolist() == \
        [[True, False, False], [False, False, False]]
    with pytest.raises(RadfieldError, match=r"la.png: mask size 3x2 differs from 4x2 of its image .*im.png"):
        read_mask(tmp_path / "la.png", tmp_path / "im.png", 2, 4)
    with pytest.raises(RadfieldError, match=r"nope.png: cannot read mask \(file not found\)"):
        read_mask(tmp_path / "nope.png", tmp_path / "im.png", 2, 4)


def test_downscale_mask_docstring_example():
    mask = np.array([[True, True, True, True], [True, False, True, True]])
    assert downscale_mask(mask, 2).tolist() == [[False, True]]


def test_multiscale_carries_masks(tmp_path):
    root, _ = write_masked_blender(tmp_path / "scene", size=(8, 4))
    full = load_blender(root)
    make_multiscale(root, tmp_path / "ms", scales=(1, 2), progress=False)
    scales = load_multiscale(tmp_path / "ms")
    assert torch.equal(scales[0].masks, full.masks)
    assert torch.equal(scales[1].masks, torch.from_numpy(np.stack([downscale_mask(m, 2) for m in full.masks.numpy()])))
