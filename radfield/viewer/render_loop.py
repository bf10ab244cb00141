"""Rendering one browser's view in a background thread, in bounded time per frame.

A :class:`RenderLoop` owns one thread. The browser's camera arrives as a :class:`View`
(:meth:`RenderLoop.set_view`, from viser's camera callback); the model may change under it
(:meth:`RenderLoop.refresh`, after training steps). The thread renders, newest view first:

* **preview frames** while the camera moves (a new view less than ``still_after_s`` ago): the
  resolution is chosen so the frame takes about ``frame_budget_s``, from the measured seconds
  per pixel of earlier frames (``pixels = budget / seconds_per_pixel``, longest side clamped to
  ``[min_size, full size]``); views that arrive during a frame are skipped to the newest;
* a **full frame** once the camera is still (and after ``refresh``): longest side
  ``min(max_size, canvas)``. It is rendered in bands of rows (a band is a camera of its own
  whose principal point is shifted up, so every pixel gets exactly the ray of the full
  camera), and abandoned between bands as soon as the camera moves again, so a move never waits
  for more than one band.

With ``dynamic = False`` every frame is a full frame and none is abandoned.

Each band is rendered holding ``lock`` (a trainer's step lock while training, so a band sees
one step's parameters, and training steps interleave with the bands). Frames go to ``publish``
as :class:`Frame` s with ``(H, W, 3)`` uint8 images.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras, Rays
from radfield.evaluation.plots import colorize_depth
from radfield.io import to_uint8
from radfield.rendering.images import render_image
from radfield.samplers.samples import Samples
from radfield.viewer.poses import view_camera

RENDER_MODES = ("rgb", "depth", "opacity", "normal")
"""``normal`` only for models with surface normals (:func:`render_modes`)."""


def render_modes(model) -> tuple[str, ...]:
    """The render modes ``model`` offers: ``normal`` when its ``normals`` hook gives normals."""
    empty = torch.zeros(0, 3)
    probe = model.normals(Rays(empty, empty, torch.zeros(0)), Samples(torch.zeros(0), torch.zeros(0),
                                                                     torch.zeros(0, dtype=torch.long), 0))
    return RENDER_MODES if probe is not None else tuple(m for m in RENDER_MODES if m != "normal")


@dataclass(frozen=True)
class View:
    """What one browser looks at.

    Attributes:
        c2w: ``(3, 4)`` float64 camera-to-world, OpenGL axes.
        fov_y: vertical field of view in radians.
        canvas_width, canvas_height: the browser canvas in pixels (its aspect is the frame's).
        mode: one of :data:`RENDER_MODES`.
        time: the scene time of a dynamic scene, else None.
    """

    c2w: Tensor
    fov_y: float
    canvas_width: int
    canvas_height: int
    mode: str = "rgb"
    time: float | None = None

    @property
    def aspect(self) -> float:
        return self.canvas_width / max(self.canvas_height, 1)


@dataclass(frozen=True)
class RenderSettings:
    """How frames are sized.

    Attributes:
        max_size: longest side of a full frame in pixels (at most the canvas's).
        dynamic: lower the resolution while the camera moves (else only full frames).
        frame_budget_s: seconds a preview frame should take.
        still_after_s: the camera counts as still this long after its last move.
        min_size: smallest longest side of a preview frame.
        band_rays: rays per band of a full frame (the unit of abandoning it).
    """

    max_size: int = 512
    dynamic: bool = True
    frame_budget_s: float = 0.1
    still_after_s: float = 0.2
    min_size: int = 32
    band_rays: int = 8192


@dataclass
class Frame:
    """A rendered frame: ``image`` ``(H, W, 3)`` uint8 of ``view`` in its render mode, ``index``
    counting from 1 per loop, ``full`` (else a preview) and the seconds it took."""

    index: int
    image: np.ndarray
    view: View
    full: bool
    seconds: float

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def height(self) -> int:
        return self.image.shape[0]


def frame_size(aspect: float, longest: int) -> tuple[int, int]:
    """``(width, height)`` of a frame of ``aspect`` (width / height) whose longest side is
    ``longest``. Example: aspect 2, longest 64 -> ``(64, 32)``."""
    if aspect >= 1:
        return longest, max(1, round(longest / aspect))
    return max(1, round(longest * aspect)), longest


def full_size(view: View, settings: RenderSettings) -> tuple[int, int]:
    """The full frame's ``(width, height)``: the canvas's aspect, longest side
    ``min(max_size, canvas longest side)``."""
    longest = min(settings.max_size, max(view.canvas_width, view.canvas_height))
    return frame_size(view.aspect, max(longest, 1))


def preview_size(view: View, settings: RenderSettings, seconds_per_pixel: float | None) -> tuple[int, int]:
    """A preview frame's ``(width, height)``: about ``frame_budget_s / seconds_per_pixel`` pixels
    (``w h = P`` at aspect ``a`` gives longest side ``sqrt(P max(a, 1/a))``), longest side in
    ``[min_size, full]``; ``2 min_size`` before anything was measured."""
    full = max(full_size(view, settings))
    if seconds_per_pixel is None:
        longest = 2 * settings.min_size
    else:
        pixels = settings.frame_budget_s / max(seconds_per_pixel, 1e-12)
        longest = int(math.sqrt(pixels * max(view.aspect, 1 / view.aspect)))
    return frame_size(view.aspect, int(min(max(longest, settings.min_size), full)))


def row_band(cameras: Cameras, top: int, rows: int) -> Cameras:
    """Rows ``[top, top + rows)`` of every camera's image as cameras of their own: the same
    pose and focal lengths, the principal point moved up by ``top`` (``cy - top``), so row ``j``
    of the band is row ``top + j`` of the full image, ray for ray."""
    return Cameras(cameras.c2w, cameras.fx, cameras.fy, cameras.cx, cameras.cy - top, cameras.width,
                   rows, dict(cameras.attrs))


def colour_image(mode: str, rgb: Tensor, depth: Tensor, opacity: Tensor,
                 normal: Tensor | None = None) -> np.ndarray:
    """``(H, W, 3)`` uint8 picture of a render in ``mode``: the colours, the planar depth through
    the turbo map (near blue, far red, this frame's range; black where nothing was hit), the
    opacity as grey, or world-space normals as ``(n + 1) / 2``."""
    if mode == "normal" and normal is not None:
        image = ((normal + 1) / 2).clamp(0, 1)
    elif mode == "rgb":
        image = rgb
    elif mode == "depth":
        image = colorize_depth(depth, opacity=opacity)
    elif mode == "opacity":
        image = opacity[..., None].expand(*opacity.shape, 3)
    else:
        raise ValueError(f"unknown render mode {mode!r} (choose from: {', '.join(RENDER_MODES)})")
    return to_uint8(image)


def render_view(model, view: View, width: int, height: int, background: Tensor | None,
                device: torch.device, lock: AbstractContextManager, band_rays: int,
                abandon: Callable[[], bool]) -> np.ndarray | None:
    """``(height, width, 3)`` uint8 render of ``view``, in bands of about ``band_rays`` rays,
    each under ``lock``; None when ``abandon()`` turned true between two bands."""
    cams = view_camera(view.c2w, view.fov_y, width, height, view.time).to(device)
    rows = max(1, band_rays // width)
    parts = []
    for top in range(0, height, rows):
        if abandon():
            return None
        with lock:
            parts.append(render_image(model, row_band(cams, top, min(rows, height - top)), 0, background))
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    normal = cat("normal") if parts and parts[0].normal is not None else None
    return colour_image(view.mode, cat("rgb"), cat("depth"), cat("opacity"), normal)


class RenderLoop:
    """The background thread rendering one browser's view (see the module docstring).

    ``RenderLoop(model, background, device, lock, publish, settings)``; :meth:`start`,
    :meth:`set_view` on every camera change, :meth:`refresh` when the model changed,
    :meth:`stop`. ``settings`` may be replaced at any time (then call :meth:`refresh`).
    """

    def __init__(self, model, background: Tensor | None, device: torch.device,
                 lock: AbstractContextManager, publish: Callable[[Frame], None],
                 settings: RenderSettings):
        self.model, self.background, self.device, self.lock = model, background, device, lock
        self.publish = publish
        self.settings = settings
        self.seconds_per_pixel: float | None = None
        self.frames = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._view: View | None = None
        self._view_version = 0
        self._model_version = 0
        self._moved_at = 0.0
        self._done_preview: tuple[int, int] | None = None
        self._done_full: tuple[int, int] | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="radfield-viewer-render", daemon=True)

    def start(self) -> "RenderLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def view(self) -> View | None:
        return self._view

    def set_view(self, view: View) -> None:
        """A new view (the camera moved, or the mode or time changed)."""
        with self._cond:
            self._view = view
            self._view_version += 1
            self._moved_at = time.monotonic()
            self._cond.notify_all()

    def refresh(self) -> None:
        """Render the current view again at full resolution (the model or settings changed)."""
        with self._cond:
            self._model_version += 1
            self._cond.notify_all()

    def _next_job(self) -> tuple[View, tuple[int, int], bool] | None:
        """Wait for work: ``(view, its version key, full?)``, or None once stopped."""
        with self._cond:
            while not self._stopped:
                key = (self._view_version, self._model_version)
                if self._view is None or key == self._done_full:
                    self._cond.wait()
                    continue
                settle = self._moved_at + self.settings.still_after_s - time.monotonic()
                if self.settings.dynamic and settle > 0:
                    if key != self._done_preview:
                        return self._view, key, False
                    self._cond.wait(settle)
                    continue
                return self._view, key, True
        return None

    def _run(self) -> None:
        while (job := self._next_job()) is not None:
            view, key, full = job
            try:
                self._render(view, key, full)
            except Exception:  # a failed frame must not end the loop silently
                self.error = traceback.format_exc()
                print(f"radfield: viewer: render failed:\n{self.error}", file=sys.stderr)
                with self._cond:
                    self._done_preview = self._done_full = key
                    self._cond.notify_all()

    def _render(self, view: View, key: tuple[int, int], full: bool) -> None:
        s = self.settings
        width, height = full_size(view, s) if full else preview_size(view, s, self.seconds_per_pixel)
        moved = full and s.dynamic  # a full frame gives way to a moving camera
        abandon = lambda: self._stopped or (moved and self._view_version != key[0])  # noqa: E731
        t0 = time.perf_counter()
        image = render_view(self.model, view, width, height, self.background, self.device, self.lock,
                            s.band_rays, abandon)
        seconds = time.perf_counter() - t0
        if image is None:
            return
        rate = seconds / (width * height)
        self.seconds_per_pixel = rate if self.seconds_per_pixel is None else 0.5 * (self.seconds_per_pixel + rate)
        with self._cond:
            self._done_preview = key
            if full:
                self._done_full = key
            self.frames += 1
            frame = Frame(self.frames, image, view, full, seconds)
        self.publish(frame)
