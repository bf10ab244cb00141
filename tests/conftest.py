"""Shared fixtures and helpers of the test suite: one torch thread for small batches, short run
configs, forbidding image decoding, comparing cameras (reader tests) and reading videos back."""

from __future__ import annotations

import os

# Triton kernels run on the CPU under Triton's interpreter (test_triton.py); the variable must be
# set before anything imports triton (its own library functions are decorated at import).
# RADFIELD_TEST_DEVICE=cuda runs test_triton.py compiled on a GPU instead (bench/gpu_check.sh).
if os.environ.get("RADFIELD_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import imageio.v2 as imageio  # noqa: E402
import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import PIL.ImageFile  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (the README's `-n 2`) each of the two workers owns one core: one torch
# thread each, since two workers with two threads apiece would fight over the same two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from radfield.config import PRESETS, RunConfig, apply_overrides  # noqa: E402
from radfield.data import SceneCameras, SceneData, blender, colmap, dtu, files, llff  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on 2 shared, busy cores intra-op threading only slows small batches
    down (measured 67 s vs 11 s for 40 NGP steps). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(scene, preset: str, overrides: dict | None = None, steps: int = 5) -> RunConfig:
    """A short run of ``preset`` on ``scene``: ``steps`` steps, no mid-run validation, one
    validation image, 64 rays in the first step, then ``overrides``."""
    config = apply_overrides(RunConfig(), PRESETS[preset])
    config.data.path = str(scene)
    config.train.max_steps = steps
    config.train.eval_every = 1e9
    config.train.val_images = 1
    config.train.init_rays = 64  # the first step would otherwise carry 1024 rays
    return apply_overrides(config, overrides or {})


def assert_one_line_naming(error: BaseException | str, path: Path) -> None:
    """A bad-input error's message: one line, under 300 characters, naming the offending file
    (a path under ``path``)."""
    message = str(error)
    assert "\n" not in message and len(message) < 300, message
    assert str(path) in message, message


@pytest.fixture
def no_image_decoding(monkeypatch):
    """From here on, decoding the pixels of any image file raises: Pillow's ``ImageFile.load``,
    imageio's ``imread`` and radfield's ``read_image`` (in every reader module). Reading an image
    header (``Image.open(f).size``) and writing images stay possible."""

    def decode(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(PIL.ImageFile.ImageFile, "load", decode)
    monkeypatch.setattr(iio, "imread", decode)
    for module in (files, blender, colmap, llff, dtu):
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
        assert (a.lens is None) == (b.lens is None)
        if a.lens is not None:
            assert torch.equal(a.lens.coeffs, b.lens.coeffs) and torch.equal(a.lens.fisheye, b.lens.fisheye)
        assert cams.names == scene.names
        assert torch.equal(cams.aabb, scene.aabb)
        assert _same_value(cams.times, scene.times)
        assert cams.meta.keys() == scene.meta.keys()
        for key in cams.meta:
            assert _same_value(cams.meta[key], scene.meta[key]), key

    return check


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of the video at ``path`` (through imageio's ffmpeg reader)."""
    reader = imageio.get_reader(path, format="FFMPEG")
    try:
        return [np.asarray(frame) for frame in reader]
    finally:
        reader.close()
