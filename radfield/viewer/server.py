"""The viewer: a viser server showing a radiance field, its training cameras and its training.

What a browser gets (every browser its own camera and render thread, :mod:`.render_loop`):

* the field rendered from the browser's camera as the scene's background image (RGB, depth or
  opacity; a time slider when the model's scene has a time range);
* the training cameras as frusta with thumbnails of their images, and the scene box;
* while training (:meth:`Viewer.for_trainer`): step, training PSNR and samples/s, a
  pause / resume button, and the view re-rendered with the newest parameters every
  ``refresh_s`` seconds;
* a camera-path editor: keyframes from the current view, saved as JSON for
  ``radfield render RUN_DIR --path FILE.json`` (:mod:`radfield.export.camera_path`).

It binds to ``127.0.0.1`` unless told otherwise: the viewer has no authentication, and anyone
who can reach it sees the scene and can pause training.
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.config import RunConfig
from radfield.data import SceneData, load_scene_groups
from radfield.errors import RadfieldError
from radfield.export.camera_path import (Keyframe, KeyframePath, interpolate_poses, path_parameters,
                                         save_camera_path)
from radfield.rendering.backgrounds import background_color
from radfield.training.checkpoint import load_run
from radfield.viewer.poses import opencv_from_opengl_c2w, opengl_c2w_from_opencv
from radfield.viewer.render_loop import Frame, RenderLoop, RenderSettings, View, render_modes

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ViewerOptions:
    """Attributes:
        host, port: where to listen (port 0: any free port).
        render: frame sizes and budgets (:class:`RenderSettings`).
        thumbnail_size: longest side of the training-image thumbnails on the frusta.
        refresh_s: while training, seconds between re-renders with the newest parameters.
        progress_s: while training, seconds between updates of the progress panel.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    render: RenderSettings = field(default_factory=RenderSettings)
    thumbnail_size: int = 64
    refresh_s: float = 1.0
    progress_s: float = 0.5


@dataclass
class BrowserView:
    """One connected browser: its viser client, render loop, status line and frame log
    (``connected_at`` and ``first_frame_at`` in ``time.monotonic()`` seconds)."""

    client: object
    loop: RenderLoop
    status: object
    connected_at: float
    first_frame_at: float | None = None
    last_frame: Frame | None = None


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def check_port_free(host: str, port: int) -> None:
    """RadfieldError unless ``host:port`` can be listened on (port 0 always can). viser would
    silently move to the next free port instead."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind((host, port))
        except socket.gaierror as exc:
            raise RadfieldError(f"--host {host}: not an address to listen on ({exc.strerror})") from None
        except OSError as exc:
            raise RadfieldError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


def host_warning(host: str) -> str | None:
    """The warning printed for a non-loopback ``--host``, else None."""
    if is_loopback(host):
        return None
    return (f"radfield: warning: --host {host}: the viewer is reachable from other machines, without "
            "authentication (anyone who can reach it sees the scene and can pause training)")


def thumbnails(data: SceneData, background: Tensor, size: int) -> list[np.ndarray]:
    """``(h, w, 3)`` uint8 thumbnails of the training images, composited over ``background``
    and shrunk by an integer factor (area average) to a longest side of at most ``size``."""
    factor = max(1, math.ceil(max(data.cameras.width, data.cameras.height) / size))
    out = []
    for i in range(len(data)):
        img = data.composited(i, background.cpu()).permute(2, 0, 1)[None]
        small = torch.nn.functional.avg_pool2d(img, factor, ceil_mode=True)[0].permute(1, 2, 0)
        out.append((small.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    return out


def box_edges(aabb: Tensor) -> np.ndarray:
    """``(12, 2, 3)`` end points of the edges of the box ``aabb`` ``(6,)``."""
    lo, hi = aabb[:3].tolist(), aabb[3:].tolist()
    corner = lambda i: [hi[k] if (i >> k) & 1 else lo[k] for k in range(3)]  # noqa: E731
    edges = [(i, i | (1 << k)) for i in range(8) for k in range(3) if not (i >> k) & 1]
    return np.array([[corner(a), corner(b)] for a, b in edges], dtype=np.float32)


def serve_until_interrupted(viewer: "Viewer", message: str | None = None) -> None:
    """Print ``message``, then keep the process (and so the viewer) alive until Ctrl-C, then close
    the viewer. The message is printed inside the Ctrl-C handler's reach: a Ctrl-C sent as soon
    as it is read still ends the process cleanly."""
    try:
        if message:
            print(message, flush=True)
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()


class Viewer:
    """A running viewer. ``Viewer.from_run(run_dir, device, options)`` for a trained run,
    ``Viewer.for_trainer(trainer, options)`` to watch training; :attr:`url`, :meth:`close`.

    Args:
        model: the field to render (eval-only use: no gradients, nothing written).
        config: the run's configuration (evaluation background).
        run_dir: where camera paths are saved by default.
        train: the training split (frusta, thumbnails, the initial view), or None.
        device: the model's device.
        options: :class:`ViewerOptions`.
        trainer: a :class:`radfield.training.trainer.Trainer` to show and pause, or None.
    """

    def __init__(self, model, config: RunConfig, run_dir: Path, train: SceneData | None,
                 device: torch.device, options: ViewerOptions, trainer=None):
        try:
            import viser
        except ImportError:
            raise RadfieldError("the viewer needs viser: pip install 'radfield[viewer]'") from None
        check_port_free(options.host, options.port)
        self.model, self.config, self.run_dir, self.train = model, config, Path(run_dir), train
        self.device, self.options, self.trainer = torch.device(device), options, trainer
        self.background = background_color(config.data.eval_background, self.device)
        self.lock = trainer.lock if trainer is not None else threading.Lock()
        self.settings = options.render
        self.keyframes: list[Keyframe] = []
        self._path_handles: list = []
        self.browsers: dict[int, BrowserView] = {}
        self._loops: list[RenderLoop] = []  # every loop started, joined by close()
        self._browsers_lock = threading.Lock()
        with contextlib.redirect_stdout(io.StringIO()):  # viser's own banner; we print the URL
            self.server = viser.ViserServer(host=options.host, port=options.port, verbose=False)
        if options.port != 0 and self.server.get_port() != options.port:  # lost a race for the port
            self.server.stop()
            raise RadfieldError(f"--port {options.port}: cannot listen on {options.host}:{options.port} (in use)")
        self.server.gui.configure_theme(show_share_button=False, dark_mode=False)
        self._setup_scene()
        self._setup_gui()
        self._progress_at = self._refresh_at = 0.0
        self._window = [0, 0.0]  # samples and seconds since the last progress update
        if trainer is not None:
            trainer.callbacks.append(self._on_step)
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_run(cls, run_dir: str | Path, device: str, options: ViewerOptions) -> "Viewer":
        """The viewer of a trained run (its training split is read for the frusta when the
        dataset is still where the run's config says; otherwise there are none, with a note)."""
        config, model = load_run(run_dir, device)
        data = config.data
        try:
            train = load_scene_groups(data.path, "train", data.downscale, colmap_model=data.colmap_model)[0]
        except RadfieldError as exc:
            print(f"radfield: note: no training cameras shown ({exc})", file=sys.stderr)
            train = None
        return cls(model, config, Path(run_dir), train, torch.device(device), options)

    @classmethod
    def for_trainer(cls, trainer, options: ViewerOptions) -> "Viewer":
        """A viewer of ``trainer``'s model while it trains (in another thread)."""
        return cls(trainer.model, trainer.config, trainer.run_dir, trainer.data, trainer.device, options,
                   trainer=trainer)

    @property
    def url(self) -> str:
        host = self.options.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.server.get_port()}"

    def _world_up(self) -> np.ndarray:
        if self.train is None:
            return np.array([0.0, 0.0, 1.0])
        up = self.train.cameras.c2w[:, :3, 1].double().mean(0)
        return (up / up.norm()).numpy()

    def _setup_scene(self) -> None:
        scene = self.server.scene
        up = self._world_up()
        scene.set_up_direction(up)
        aabb = self.model.scene.aabb.float().cpu()
        self.box_handle = scene.add_line_segments("/scene_box", box_edges(aabb), colors=(255, 150, 0),
                                                  thickness=2.0, thickness_units="screen")
        self.frusta = []
        if self.train is None:
            return
        cams = self.train.cameras
        centre = ((aabb[:3] + aabb[3:]) / 2).double()
        distance = (cams.centers.double() - centre).norm(dim=-1)
        scale = 0.08 * float(distance.median())
        thumbs = thumbnails(self.train, self.background, self.options.thumbnail_size)
        for i in range(len(cams)):
            wxyz, position = opencv_from_opengl_c2w(cams.c2w[i])
            fov_y = 2 * math.atan(cams.height / 2 / float(cams.fy[i]))
            self.frusta.append(scene.add_camera_frustum(
                f"/training_cameras/{i}", fov=fov_y, aspect=cams.width / cams.height, scale=scale,
                thickness=1.5, thickness_units="screen", color=(60, 60, 200), image=thumbs[i],
                format="jpeg", wxyz=wxyz, position=position))
        # Browsers start behind training camera 0 (a quarter of its depth back, so its frustum
        # is in view rather than its thumbnail filling the screen), looking at the box centre's
        # depth along its axis.
        c2w = cams.c2w[0].double()
        eye, forward = c2w[:, 3], -c2w[:, 2]
        depth = float(((centre - eye) @ forward).clamp(min=1e-3))
        initial = self.server.initial_camera
        initial.position = (eye - 0.25 * depth * forward).numpy()
        initial.look_at = (eye + depth * forward).numpy()
        initial.up = up
        initial.fov = 2 * math.atan(cams.height / 2 / float(cams.fy[0]))

    def _setup_gui(self) -> None:
        gui = self.server.gui
        with gui.add_folder("View"):
            self.mode = gui.add_dropdown("Render mode", render_modes(self.model), initial_value="rgb")
            time_range = self.model.scene.time_range
            self.time = None
            if time_range is not None:
                lo, hi = float(time_range[0]), float(time_range[1])
                self.time = gui.add_slider("Time", min=lo, max=max(hi, lo + 1e-6),
                                           step=max(hi - lo, 1e-6) / 100, initial_value=lo)
            self.max_size = gui.add_slider("Max resolution", min=16, max=2048, step=16,
                                           initial_value=self.settings.max_size)
            self.dynamic = gui.add_checkbox("Lower resolution while moving", self.settings.dynamic)
            self.show_cameras = gui.add_checkbox("Training cameras", True)
            self.show_box = gui.add_checkbox("Scene box", True)
        for handle in [self.mode, self.time]:
            if handle is not None:
                handle.on_update(lambda _: self._views_changed())
        self.max_size.on_update(lambda _: self._settings_changed())
        self.dynamic.on_update(lambda _: self._settings_changed())
        self.show_cameras.on_update(lambda _: self._set_visible(self.frusta, self.show_cameras.value))
        self.show_box.on_update(lambda _: self._set_visible([self.box_handle], self.show_box.value))
        if self.trainer is not None:
            with gui.add_folder("Training"):
                self.progress = gui.add_markdown(self._progress_text())
                self.pause = gui.add_button("Pause training")
            self.pause.on_click(lambda _: self.set_paused(not self.trainer.paused.is_set()))
        with gui.add_folder("Camera path"):
            self.path_status = gui.add_markdown("0 keyframes")
            add = gui.add_button("Add keyframe (current view)")
            clear = gui.add_button("Clear keyframes")
            width, height = (self.train.cameras.width, self.train.cameras.height) if self.train else (640, 480)
            self.path_frames = gui.add_number("Frames", 120, min=1, step=1)
            self.path_fps = gui.add_number("FPS", 30, min=1, step=1)
            self.path_width = gui.add_number("Width", width, min=16, step=2)
            self.path_height = gui.add_number("Height", height, min=16, step=2)
            self.path_file = gui.add_text("Save to", "camera_path.json", hint=f"a .json file in {self.run_dir}")
            save = gui.add_button("Save camera path")
        add.on_click(lambda event: self.add_keyframe(self._event_client(event)))
        clear.on_click(lambda _: self.clear_keyframes())
        save.on_click(lambda event: self._save_clicked(self._event_client(event)))

    def _event_client(self, event):
        """The browser that clicked (the first connected one for a click made server-side)."""
        if event.client is not None:
            return event.client
        browsers = list(self.browsers.values())
        if not browsers:
            raise RadfieldError("no browser is connected")
        return browsers[0].client

    # ------------------------------------------------------------------ browsers
    def _connect(self, client) -> None:
        status = client.gui.add_markdown("Frame 0", order=-1.0)
        loop = RenderLoop(self.model, self.background, self.device, self.lock,
                          lambda frame: self._publish(client.client_id, frame), self.settings)
        browser = BrowserView(client, loop, status, time.monotonic())
        with self._browsers_lock:
            self.browsers[client.client_id] = browser
            self._loops.append(loop)
        client.camera.on_update(lambda camera: loop.set_view(self._view(camera)))
        loop.start()
        loop.set_view(self._view(client.camera))

    def _disconnect(self, client) -> None:
        with self._browsers_lock:
            browser = self.browsers.pop(client.client_id, None)
        if browser is not None:
            browser.loop.stop(timeout=0)

    def _view(self, camera) -> View:
        """The :class:`View` of a viser camera with the current render mode and time."""
        return View(opengl_c2w_from_opencv(camera.wxyz, camera.position), float(camera.fov),
                    int(camera.image_width), int(camera.image_height), self.mode.value,
                    None if self.time is None else float(self.time.value))

    def _publish(self, client_id: int, frame: Frame) -> None:
        browser = self.browsers.get(client_id)
        if browser is None:
            return
        client = browser.client
        kind = "" if frame.full else " (moving)"
        with client.atomic():
            client.scene.set_background_image(frame.image, format="jpeg", jpeg_quality=90)
            browser.status.content = (f"Frame {frame.index} · {frame.width} × {frame.height}{kind} · "
                                      f"{frame.seconds * 1000:.0f} ms")
        client.flush()
        browser.last_frame = frame
        if browser.first_frame_at is None:
            browser.first_frame_at = time.monotonic()

    def _views_changed(self) -> None:
        for browser in list(self.browsers.values()):
            browser.loop.set_view(self._view(browser.client.camera))

    def _settings_changed(self) -> None:
        self.settings = RenderSettings(**{**self.settings.__dict__, "max_size": int(self.max_size.value),
                                          "dynamic": bool(self.dynamic.value)})
        for browser in list(self.browsers.values()):
            browser.loop.settings = self.settings
            browser.loop.refresh()

    @staticmethod
    def _set_visible(handles, visible: bool) -> None:
        for handle in handles:
            handle.visible = visible

    # ------------------------------------------------------------------ training
    def _progress_text(self, result=None) -> str:
        step = self.trainer.state.step
        state = "paused" if self.trainer.paused.is_set() else "training"
        text = f"**{state}** · step {step}"
        if result is not None:
            samples, seconds = self._window
            psnr = -10 * math.log10(max(result.mse, 1e-10))
            text += f" · PSNR {psnr:.2f} dB (batch) · {samples / max(seconds, 1e-9):,.0f} samples/s"
        return text

    def _on_step(self, trainer, result, seconds: float) -> None:
        """Trainer callback (main thread, after every step)."""
        self._window[0] += result.n_samples
        self._window[1] += seconds
        now = time.monotonic()
        if now - self._progress_at >= self.options.progress_s:
            self.progress.content = self._progress_text(result)
            self._progress_at, self._window = now, [0, 0.0]
        if now - self._refresh_at >= self.options.refresh_s:
            self._refresh_at = now
            for browser in list(self.browsers.values()):
                browser.loop.refresh()

    def set_paused(self, paused: bool) -> None:
        """Pause (the training loop waits before its next step) or resume training."""
        if paused:
            self.trainer.paused.set()
        else:
            self.trainer.paused.clear()
        self.pause.label = "Resume training" if paused else "Pause training"
        self.progress.content = self._progress_text()

    def training_finished(self) -> None:
        """Show that training ended, and render the final parameters."""
        self.progress.content = f"**finished** · {self.trainer.state.step} steps"
        self.pause.disabled = True
        for browser in list(self.browsers.values()):
            browser.loop.refresh()

    # ------------------------------------------------------------------ camera path
    def add_keyframe(self, client) -> Keyframe:
        """Append the current view of ``client`` (a viser client) as a keyframe."""
        camera = client.camera
        time_value = None if self.time is None else float(self.time.value)
        keyframe = Keyframe(opengl_c2w_from_opencv(camera.wxyz, camera.position),
                            math.degrees(float(camera.fov)), time_value)
        self.keyframes.append(keyframe)
        self._draw_path()
        return keyframe

    def clear_keyframes(self) -> None:
        self.keyframes = []
        self._draw_path()

    def camera_path(self) -> KeyframePath:
        """The keyframes with the editor's frame count, rate and size."""
        return KeyframePath(list(self.keyframes), int(self.path_width.value), int(self.path_height.value),
                            int(self.path_frames.value), float(self.path_fps.value))

    def save_camera_path(self, file: str | Path) -> Path:
        """Write the camera path as JSON (see :mod:`radfield.export.camera_path`) to ``file``,
        relative to the run directory, which it must stay inside: whoever reaches the viewer
        types this name, and must not be able to overwrite files elsewhere."""
        target = (self.run_dir / file).resolve()
        if target.suffix != ".json" or not target.is_relative_to(self.run_dir.resolve()):
            raise RadfieldError(f"{file}: camera paths are saved as .json files inside {self.run_dir}")
        save_camera_path(target, self.camera_path())
        return target

    def _save_clicked(self, client) -> None:
        try:
            file = self.save_camera_path(self.path_file.value)
        except (RadfieldError, OSError) as exc:
            client.add_notification("Camera path not saved", str(exc), auto_close_seconds=8, color="red")
            return
        command = f"radfield render {self.run_dir} --path {file}"
        print(f"radfield: viewer: saved {file} ({len(self.keyframes)} keyframes); render it with: {command}")
        client.add_notification("Camera path saved", f"{file} — render it with: {command}", auto_close_seconds=8)

    def _draw_path(self) -> None:
        scene = self.server.scene
        for handle in self._path_handles:
            handle.remove()
        self._path_handles = []
        self.path_status.content = f"{len(self.keyframes)} keyframe{'s' if len(self.keyframes) != 1 else ''}"
        if not self.keyframes:
            return
        aspect = float(self.path_width.value) / float(self.path_height.value)
        for i, kf in enumerate(self.keyframes):
            wxyz, position = opencv_from_opengl_c2w(kf.c2w)
            self._path_handles.append(scene.add_camera_frustum(
                f"/camera_path/keyframe_{i}", fov=math.radians(kf.fov_y_deg), aspect=aspect, scale=0.1,
                thickness=2.0, thickness_units="screen", color=(255, 80, 0), wxyz=wxyz, position=position))
        if len(self.keyframes) > 1:  # the path the video will take, 20 points per keyframe
            c2w = torch.stack([kf.c2w.double() for kf in self.keyframes])
            u = path_parameters(len(self.keyframes), 20 * len(self.keyframes))
            points = interpolate_poses(c2w, u)[:, :, 3]
            segments = torch.stack([points[:-1], points[1:]], dim=1).float().numpy()
            self._path_handles.append(scene.add_line_segments(
                "/camera_path/curve", segments, colors=(255, 80, 0), thickness=2.0, thickness_units="screen"))

    # ------------------------------------------------------------------ lifetime
    def close(self, wait: bool = False) -> None:
        """Stop every render thread and the server. viser's stop waits up to 6 s for browsers
        that were connected to finish closing their websockets; the server is stopped in a
        daemon thread, so this returns at once unless ``wait``."""
        if self.trainer is not None and self._on_step in self.trainer.callbacks:
            self.trainer.callbacks.remove(self._on_step)
        with self._browsers_lock:
            loops, self.browsers, self._loops = self._loops, {}, []
        for loop in loops:  # render threads end before the process does (a thread killed inside
            loop.stop()     # a torch kernel at interpreter exit aborts the process)
        stopper = threading.Thread(target=self.server.stop, name="radfield-viewer-stop", daemon=True)
        stopper.start()
        if wait:
            stopper.join()
