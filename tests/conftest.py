"""Fixtures shared by the reader tests: forbidding image decoding, comparing cameras."""

from __future__ import annotations

import imageio.v3 as iio
import PIL.ImageFile
import pytest
import torch

from radfield.data import SceneCameras, SceneData, blender, colmap, files, llff


@pytest.fixture
def no_image_decoding(monkeypatch):
    """From here on, decoding the pixels of any image file raises: Pillow's ``ImageFile.load``,
    imageio's ``imread`` and radfield's ``read_image`` (in every reader module). Reading an image
    header (``Image.open(f).size``) and writing images stay possible."""

    def decode(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", decode)
    monkeypatch.setattr(iio, "imread", decode)
    for module in (files, blender, colmap, llff):
        monkeypatch.setattr(module, "read_image", decode)


def _same_value(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


@pytest.fixture
def assert_same_cameras():
    """``check(cams, scene)``: a :class:`SceneCameras` holds exactly the cameras, names, box,
    times and meta of a :class:`SceneData` (bit for bit)."""

    def check(cams: SceneCameras, scene: SceneData) -> None:
        assert isinstance(cams, SceneCameras) and len(cams) == len(scene)
        a, b = cams.cameras, scene.cameras
        assert (a.width, a.height) == (b.width, b.height)
        assert (a.width, a.height) == (scene.images.shape[2], scene.images.shape[1])
        for key in ("c2w", "fx", "fy", "cx", "cy"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
        assert cams.names == scene.names
        assert torch.equal(cams.aabb, scene.aabb)
        assert _same_value(cams.times, scene.times)
        assert cams.meta.keys() == scene.meta.keys()
        for key in cams.meta:
            assert _same_value(cams.meta[key], scene.meta[key]), key

    return check
