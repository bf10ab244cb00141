"""``radfield render``: a camera-path video of a trained run, one image (chunked) at a time."""

from __future__ import annotations

import sys
from pathlib import Path

from radfield.data import load_cameras
from radfield.errors import RadfieldError
from radfield.export.camera_path import orbit_path
from radfield.export.video import write_video
from radfield.io import to_uint8
from radfield.rendering.images import render_image
from radfield.rendering.backgrounds import background_color
from radfield.training.checkpoint import load_run

PATHS = ("orbit", "test")


def render_video(run_dir: str | Path, out: str | Path, path: str = "orbit", n_frames: int = 120,
                 fps: int = 30, device: str = "cpu", progress: bool = True) -> int:
    if path not in PATHS:
        raise RadfieldError(f"unknown camera path {path!r} (choose from: {', '.join(PATHS)})")
    config, model = load_run(run_dir, device)
    data = config.data
    # Cameras only: no image of the dataset is decoded to place the path.
    if path == "orbit":
        cams = orbit_path(load_cameras(data.path, "train", data.downscale, colmap_model=data.colmap_model),
                          n_frames)
    else:
        cams = load_cameras(data.path, "test", data.downscale, colmap_model=data.colmap_model).cameras
    cams = cams.to(device)
    bg = background_color(config.data.eval_background, device)
    indices = range(len(cams))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=f"render {path}", unit="frame", file=sys.stderr)
    frames = (to_uint8(render_image(model, cams, i, bg).rgb) for i in indices)
    return write_video(frames, out, fps=fps)
