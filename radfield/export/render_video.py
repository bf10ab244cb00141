"""``radfield render``: a camera-path video of a trained run, one image (chunked) at a time.

The path is ``orbit`` (around the scene, :func:`~radfield.export.camera_path.orbit_path`),
``test`` (the test cameras in order) or a keyframe JSON file written by the viewer's camera-path
editor (format in :mod:`radfield.export.camera_path`)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from radfield.cameras import Cameras
from radfield.data import load_cameras
from radfield.errors import RadfieldError
from radfield.export.camera_path import keyframe_cameras, load_camera_path, orbit_path
from radfield.export.video import write_video
from radfield.io import to_uint8
from radfield.rendering.images import render_image
from radfield.rendering.backgrounds import background_color
from radfield.training.checkpoint import load_run

PATHS = ("orbit", "test", "time")
DEFAULT_FRAMES, DEFAULT_FPS = 120, 30


def is_path_file(path: str) -> bool:
    """Whether ``path`` names a camera-path file rather than one of :data:`PATHS`."""
    return path not in PATHS


def render_video(run_dir: str | Path, out: str | Path, path: str = "orbit", n_frames: int | None = None,
                 fps: float | None = None, device: str = "cpu", progress: bool = True) -> int:
    """Render ``path`` (``orbit``, ``test``, ``time`` or a camera-path ``.json`` file) of the run
    to an MP4; returns the number of frames. ``time`` holds the first test camera still and plays
    a dynamic scene's time range. ``n_frames`` (orbit and time: 120, JSON: the file's
    ``n_frames``; the test path has one frame per test camera) and ``fps`` (30, JSON: the
    file's) override."""
    if is_path_file(path) and not (path.endswith(".json") or Path(path).is_file()):
        raise RadfieldError(f"--path: unknown camera path {path!r} (choose from: {', '.join(PATHS)}, "
                            "or a camera-path .json file)")
    keyframes = load_camera_path(path) if is_path_file(path) else None  # bad files fail first
    config, model = load_run(run_dir, device)
    data = config.data
    if keyframes is not None:
        if n_frames is not None:
            keyframes.n_frames = n_frames
        cams = keyframe_cameras(keyframes)
        fps = keyframes.fps if fps is None else fps
    elif path == "orbit":
        # Cameras only: no image of the dataset is decoded to place the path.
        train = load_cameras(data.path, "train", data.downscale, colmap_model=data.colmap_model)
        cams = orbit_path(train, DEFAULT_FRAMES if n_frames is None else n_frames)
    elif path == "time":
        if model.scene.time_range is None:
            raise RadfieldError(f"--path time: {run_dir} is not a dynamic scene (its frames have no time)")
        cams = fixed_camera_over_time(
            load_cameras(data.path, "test", data.downscale, colmap_model=data.colmap_model).cameras,
            model.scene.time_range, DEFAULT_FRAMES if n_frames is None else n_frames)
    else:
        cams = load_cameras(data.path, "test", data.downscale, colmap_model=data.colmap_model).cameras
    name = Path(path).stem if keyframes is not None else path
    return _write(model, cams.to(device), background_color(config.data.eval_background, device), out,
                  DEFAULT_FPS if fps is None else fps, name, progress)


def fixed_camera_over_time(cameras: Cameras, time_range: tuple[float, float], n_frames: int) -> Cameras:
    """Camera 0 of ``cameras`` repeated ``n_frames`` times, with ``times`` sweeping
    ``time_range`` (a dynamic scene played from one viewpoint)."""
    still = cameras[[0] * n_frames]
    return still.with_attrs(times=torch.linspace(float(time_range[0]), float(time_range[1]), n_frames))


def _write(model, cams: Cameras, bg, out: str | Path, fps: float, name: str, progress: bool) -> int:
    indices = range(len(cams))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=f"render {name}", unit="frame", file=sys.stderr)
    frames = (to_uint8(render_image(model, cams, i, bg).rgb) for i in indices)
    return write_video(frames, out, fps=fps)
