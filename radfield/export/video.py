"""H.264 MP4 export of rendered frames.

Frames are ``(H, W, 3)`` ``uint8`` numpy arrays, all the same size. They are streamed to
ffmpeg (imageio-ffmpeg backend) one at a time, so a long fly-through never sits in memory,
and the file is written atomically (:func:`radfield.io.atomic_write`).

H.264 with the widely playable ``yuv420p`` pixel format needs even width and height, so an
odd-sized frame is padded by repeating its last row / column (a ``31x23`` frame becomes
``32x24``); imageio's own resizing is switched off (``macro_block_size=1``).
"""

from __future__ import annotations

import itertools
import os
from typing import Iterable

import numpy as np

from radfield.io import atomic_write

__all__ = ["write_video"]


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Edge-pad ``(H, W, 3)`` to ``(H + H % 2, W + W % 2, 3)``."""
    h, w, _ = frame.shape
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames: Iterable[np.ndarray], out_path: str | os.PathLike, fps: float = 30,
                quality: float = 8) -> int:
    """Stream ``frames`` into an H.264 MP4 at ``out_path``; return the number of frames written.

    ``quality`` is imageio's 0-10 scale (8 is visually near-lossless for renders). Raises
    ``ValueError`` for no frames, a frame that is not ``(H, W, 3)`` uint8, or a size change;
    the old ``out_path`` (if any) is then left untouched.
    """
    import imageio.v2 as imageio

    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError("write_video: no frames")
    shape = np.shape(first)
    count = 0
    with atomic_write(out_path) as tmp:
        writer = imageio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    quality=quality, pixelformat="yuv420p", macro_block_size=1,
                                    ffmpeg_log_level="error")
        try:  # not `with writer:`, whose __exit__ skips close() on error and leaves ffmpeg running
            for frame in itertools.chain([first], iterator):
                frame = np.asarray(frame)
                if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
                    raise ValueError(f"write_video: frame {count} must be (H, W, 3) uint8, got "
                                     f"{frame.shape} {frame.dtype}")
                if frame.shape != shape:
                    raise ValueError(f"write_video: frame {count} is {frame.shape}, "
                                     f"frame 0 was {shape}")
                writer.append_data(_pad_even(frame))
                count += 1
        finally:
            writer.close()  # waits for ffmpeg to exit, so the temp file can then be removed
    return count

