"""Pixel masks: read (``mask_path``) and downscaled.

Ground truth: the mask images written by the tests and block rules checked pixel by pixel.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from radfield.data import load_scene
from radfield.data.blender import load_blender
from radfield.data.files import downscale_mask, read_mask
from radfield.data.multiscale import load_multiscale, make_multiscale
from radfield.errors import RadfieldError

pytestmark = pytest.mark.usefixtures("one_thread")


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
