"""The viewer: pose conventions, keyframe camera paths, the render loop, and the viewer itself
in a real browser (Debian's headless Chromium driven by selenium).

Ground truth used here, independent of the code under test:

* poses: matrices and quaternions computed by hand, and viser's own ``SO3`` (a separate
  implementation of the quaternion maths);
* camera paths: slerp mid-way worked by hand (45 degrees half-way to 90), keyframes hit
  exactly, equally spaced collinear keyframes giving uniform motion, Catmull-Rom's velocity
  ``(p_{k+1} - p_{k-1}) / 2`` by finite differences;
* the browser: the screenshot of the canvas against a direct ``render_image`` of the browser's
  camera as the server's client handle reports it (and, as a control, against a render from
  another camera); the scene box drawn by the browser itself (three.js, from its own camera)
  where radfield's projection of the box puts it, which checks the OpenCV -> OpenGL conversion
  and the field-of-view convention end to end.

A missing browser fails these tests; it does not skip them.
"""

from __future__ import annotations

import io
import json
import math
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_config, read_video
from radfield.cameras import image_rays, look_at, project
from radfield.cli import main
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.export.camera_path import (Keyframe, KeyframePath, catmull_rom, interpolate_poses,
                                         keyframe_cameras, load_camera_path, path_parameters,
                                         save_camera_path)
from radfield.io import to_uint8
from radfield.rendering.backgrounds import background_color
from radfield.rendering.images import render_image
from radfield.rotations import matrix_to_quaternion, quaternion_to_matrix, slerp
from radfield.training.checkpoint import load_run
from radfield.training.trainer import Trainer
from radfield.viewer.poses import opencv_from_opengl_c2w, opengl_c2w_from_opencv, view_camera
from radfield.viewer.render_loop import (RenderLoop, RenderSettings, View, frame_size, full_size,
                                         preview_size, render_view, row_band)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
WINDOW = (1000, 700)
F64 = torch.float64


def rot_z(deg: float) -> torch.Tensor:
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=F64)


# ---------------------------------------------------------------------------- poses


def test_opencv_to_opengl_by_hand():
    # Identity viser pose: looks down world +z, image up = world -y.
    c2w = opengl_c2w_from_opencv([1, 0, 0, 0], [1, 2, 3])
    assert torch.allclose(c2w, torch.tensor([[1, 0, 0, 1], [0, -1, 0, 2], [0, 0, -1, 3]], dtype=F64))
    # 90 degrees about x: R_cv = [[1,0,0],[0,0,-1],[0,1,0]]; R_gl = R_cv diag(1,-1,-1).
    h = math.sqrt(0.5)
    c2w = opengl_c2w_from_opencv([h, h, 0, 0], [0, 0, 0])
    assert torch.allclose(c2w[:, :3], torch.tensor([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=F64), atol=1e-12)
    # radfield's look_at from (4, 0, 0) to the origin, world z up: OpenCV right = (0, 1, 0),
    # down = (0, 0, -1), forward = (-1, 0, 0); that matrix's quaternion by hand is
    # w = sqrt(1 + trace) / 2 = 0.5, x = (r21 - r12) / 4w = -0.5, y = (r02 - r20) / 4w = -0.5,
    # z = (r10 - r01) / 4w = 0.5.
    gl = look_at(torch.tensor([4.0, 0, 0], dtype=F64), torch.zeros(3, dtype=F64))
    wxyz, position = opencv_from_opengl_c2w(gl)
    assert np.allclose(wxyz, [0.5, -0.5, -0.5, 0.5]) and np.allclose(position, [4, 0, 0])
    assert torch.allclose(opengl_c2w_from_opencv(wxyz, position), gl, atol=1e-12)


def test_view_camera_rays_follow_viser_axes():
    """Rays of the pinhole made from a viser pose and vertical fov: the centre pixel looks along
    OpenCV +z, the top edge (v = 0) is tan(fov / 2) towards OpenCV -y, the right edge towards +x."""
    rot_cv = quaternion_to_matrix(torch.tensor([0.3, -0.2, 0.9, 0.1], dtype=F64))
    wxyz = matrix_to_quaternion(rot_cv).numpy()
    cams = view_camera(opengl_c2w_from_opencv(wxyz, [0.5, 0, 1]), math.radians(90), 64, 32)
    assert float(cams.fy[0]) == pytest.approx(16.0) and float(cams.cx[0]) == 32 and float(cams.cy[0]) == 16
    from radfield.cameras import generate_rays
    u = torch.tensor([32.0, 32.0, 64.0])
    v = torch.tensor([16.0, 0.0, 16.0])
    rays = generate_rays(cams, torch.zeros(3, dtype=torch.long), u, v)
    right, down, forward = (rot_cv[:, k].float() for k in range(3))
    expect = torch.stack([forward, forward - down, forward + 2 * right])  # fx = 16: 32 px = 2 units
    expect = expect / expect.norm(dim=-1, keepdim=True)
    assert torch.allclose(rays.directions, expect, atol=1e-5)
    assert torch.allclose(rays.origins, torch.tensor([0.5, 0, 1]).expand(3, 3))


def test_view_time_reaches_every_ray():
    """The time slider's value rides on the view camera to every ray (``times``, as dynamic
    models read it); a static view carries none."""
    c2w = look_at(torch.tensor([3.0, 0, 1], dtype=F64), torch.zeros(3, dtype=F64))
    rays = image_rays(view_camera(c2w, 0.8, 6, 4, time=0.3), 0)
    assert torch.equal(rays.get("times"), torch.full((24,), 0.3))
    assert image_rays(view_camera(c2w, 0.8, 6, 4), 0).get("times") is None


def test_quaternions_against_viser_so3():
    from viser.transforms import SO3

    q = torch.randn(200, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    q = q / q.norm(dim=-1, keepdim=True)
    rot = quaternion_to_matrix(q)
    for i in range(0, 200, 7):
        assert np.allclose(rot[i].numpy(), SO3(q[i].numpy()).as_matrix(), atol=1e-12)
        theirs = SO3.from_matrix(rot[i].numpy()).wxyz
        ours = matrix_to_quaternion(rot[i]).numpy()
        assert np.allclose(ours, theirs * np.sign(theirs[0]), atol=1e-9)
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(rot)), rot, atol=1e-12)
    # near-180-degree rotations (trace -1: the w pivot is useless there)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    assert torch.allclose(quaternion_to_matrix(matrix_to_quaternion(flip)), flip, atol=1e-12)


def test_slerp_by_hand():
    identity = torch.tensor([1.0, 0, 0, 0], dtype=F64)
    z90 = torch.tensor([math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)], dtype=F64)
    half = torch.tensor([math.cos(math.pi / 8), 0, 0, math.sin(math.pi / 8)], dtype=F64)  # 45 deg about z
    assert torch.allclose(slerp(identity, z90, 0.5), half, atol=1e-12)
    assert torch.allclose(slerp(identity, -z90, 0.5), half, atol=1e-12)  # the shorter arc
    assert torch.allclose(quaternion_to_matrix(slerp(identity, z90, 1 / 3)), rot_z(30), atol=1e-12)
    assert torch.allclose(slerp(z90, z90, 0.7), z90)  # the same rotation: no 0 / 0


# ---------------------------------------------------------------------------- camera paths


def _keyframes() -> torch.Tensor:
    eyes = [(4.0, 0, 1), (0, 4.0, 2), (-3.0, -1, 0.5), (1.0, -4, 1.5)]
    return torch.stack([look_at(torch.tensor(e, dtype=F64), torch.zeros(3, dtype=F64)) for e in eyes])


def test_path_hits_keyframes_exactly():
    keys = _keyframes()
    u = path_parameters(4, 13)  # 13 = 1 + 4 * 3: frames 0, 4, 8, 12 are the keyframes
    poses = interpolate_poses(keys, u)
    for k in range(4):
        assert float(u[4 * k]) == k
        assert torch.allclose(poses[4 * k], keys[k], atol=1e-12)
    rot = poses[:, :, :3]
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=F64).expand(13, 3, 3), atol=1e-12)


def test_path_slerp_midway_and_linear_motion():
    base = look_at(torch.tensor([0.0, -4, 0], dtype=F64), torch.zeros(3, dtype=F64))[:, :3]
    keys = torch.stack([torch.cat([rot_z(a) @ base, torch.tensor([[float(k)], [0], [0]], dtype=F64)], 1)
                        for k, a in enumerate([0, 90, 180, 270])])
    u = path_parameters(4, 7)  # half-way points at frames 1, 3, 5
    poses = interpolate_poses(keys, u)
    for frame, deg in [(1, 45), (3, 135), (5, 225)]:
        assert torch.allclose(poses[frame, :, :3], rot_z(deg) @ base, atol=1e-12)
    # equally spaced collinear positions: the reflected ends keep the motion uniform
    u = path_parameters(4, 31)
    positions = interpolate_poses(keys, u)[:, :, 3]
    assert torch.allclose(positions, torch.stack([u, 0 * u, 0 * u], 1), atol=1e-12)


def test_catmull_rom_velocity_is_continuous():
    p = torch.tensor([[0.0, 0, 0], [1, 2, 0], [3, 1, 1], [4, 4, 0]], dtype=F64)
    h = 1e-6
    at = lambda u: catmull_rom(p, torch.tensor([u], dtype=F64))  # noqa: E731
    for k in (1, 2):
        left, right = (at(k) - at(k - h)) / h, (at(k + h) - at(k)) / h
        expect = (p[k + 1] - p[k - 1]) / 2
        assert torch.allclose(left[0], expect, atol=1e-4) and torch.allclose(right[0], expect, atol=1e-4)


def _path(n_frames: int = 5, times: bool = False) -> KeyframePath:
    keys = _keyframes()[:3]
    return KeyframePath([Keyframe(keys[k], 40.0 + 10 * k, 0.5 * k if times else None) for k in range(3)],
                        width=24, height=16, n_frames=n_frames, fps=10)


def test_camera_path_json_round_trip(tmp_path):
    path = _path(n_frames=9, times=True)
    save_camera_path(tmp_path / "p.json", path)
    raw = json.loads((tmp_path / "p.json").read_text())
    assert raw["n_frames"] == 9 and len(raw["keyframes"]) == 3 and len(raw["keyframes"][0]["c2w"]) == 3
    back = load_camera_path(tmp_path / "p.json")
    assert (back.width, back.height, back.n_frames, back.fps) == (24, 16, 9, 10.0)
    for a, b in zip(path.keyframes, back.keyframes):
        assert torch.equal(a.c2w, b.c2w) and a.fov_y_deg == b.fov_y_deg and a.time == b.time
    cams = keyframe_cameras(back)
    assert len(cams) == 9 and cams.width == 24 and cams.height == 16
    # fov and time are linear in the path parameter: frame 2 is half-way between keyframes 0 and 1
    assert float(cams.fy[2]) == pytest.approx(8 / math.tan(math.radians(45) / 2), rel=1e-5)
    assert torch.allclose(cams.attrs["times"], torch.linspace(0, 1, 9))
    # a 4x4 c2w is accepted
    raw["keyframes"][0]["c2w"].append([0, 0, 0, 1])
    (tmp_path / "q.json").write_text(json.dumps(raw))
    assert torch.equal(load_camera_path(tmp_path / "q.json").keyframes[0].c2w, back.keyframes[0].c2w)


BAD_PATHS = {
    "missing": (None, "no such camera path file"),
    "syntax": ("{not json", "not valid JSON"),
    "no_keyframes": ({"width": 8, "height": 8, "fps": 30, "n_frames": 3, "keyframes": []}, "no keyframes"),
    "not_rigid": ({"width": 8, "height": 8, "fps": 30, "n_frames": 3,
                   "keyframes": [{"c2w": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "fov_y_deg": 40}]},
                  "keyframe 0: c2w is not a rigid transform"),
    "fov": ({"width": 8, "height": 8, "fps": 30, "n_frames": 3,
             "keyframes": [{"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "fov_y_deg": 180}]},
            "fov_y_deg must be"),
    "frames": ({"width": 8, "height": 8, "fps": 30, "n_frames": 0,
                "keyframes": [{"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "fov_y_deg": 40}]},
               "n_frames must be a positive integer"),
    "mixed_times": ({"width": 8, "height": 8, "fps": 30, "n_frames": 3,
                     "keyframes": [{"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "fov_y_deg": 40, "time": 0},
                                   {"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], "fov_y_deg": 40}]},
                    "either every keyframe has a time or none"),
}


@pytest.mark.parametrize("case", list(BAD_PATHS))
def test_bad_camera_path_files(case, tmp_path):
    content, message = BAD_PATHS[case]
    file = tmp_path / f"{case}.json"
    if content is not None:
        file.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(RadfieldError, match=re.escape(message)) as exc:
        load_camera_path(file)
    assert str(file) in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=8, n_val=1, n_test=1, size=32)


@pytest.fixture(scope="module")
def run(scene, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("viewer") / "run"
    Trainer(make_config(scene, "ngp-small", steps=30), run_dir, progress=False, log_tensorboard=False).train()
    return run_dir


@pytest.fixture(scope="module")
def loaded(run):
    config, model = load_run(run, "cpu")
    return model, background_color(config.data.eval_background, "cpu")


def _view(c2w=None, width=40, height=30, mode="rgb") -> View:
    c2w = look_at(torch.tensor([3.0, -2.5, 2.0], dtype=F64), torch.zeros(3, dtype=F64)) if c2w is None else c2w
    return View(c2w, math.radians(45), width, height, mode)


def test_frame_sizes():
    assert frame_size(2.0, 64) == (64, 32) and frame_size(0.5, 64) == (32, 64)
    view = _view(width=800, height=400)
    assert full_size(view, RenderSettings(max_size=256)) == (256, 128)
    assert full_size(_view(width=100, height=50), RenderSettings(max_size=256)) == (100, 50)
    # budget 0.1 s at 1e-5 s per pixel: 10^4 pixels, w h = 10^4 at aspect 2 -> 141 x 71
    w, h = preview_size(view, RenderSettings(max_size=1024, frame_budget_s=0.1), 1e-5)
    assert (w, h) == (141, 70) or (w, h) == (141, 71)
    assert preview_size(view, RenderSettings(max_size=1024, min_size=32), 1.0) == (32, 16)  # slow: the floor
    assert preview_size(view, RenderSettings(max_size=128), 1e-12) == (128, 64)  # fast: the full size
    assert preview_size(view, RenderSettings(min_size=32), None) == (64, 32)  # nothing measured yet


def test_row_bands_are_the_full_image_rays():
    cams = view_camera(_view().c2w, math.radians(50), 10, 7)
    full = image_rays(cams, 0)
    bands = [image_rays(row_band(cams, top, min(3, 7 - top)), 0) for top in range(0, 7, 3)]
    assert torch.allclose(torch.cat([b.directions for b in bands]), full.directions, atol=1e-6)
    assert torch.allclose(torch.cat([b.z_per_t for b in bands]), full.z_per_t, atol=1e-6)
    assert torch.allclose(torch.cat([b.get("radii") for b in bands]), full.get("radii"))


class CountingLock:
    """A lock stand-in that counts how often it was taken (one per band)."""

    def __init__(self):
        self.count = 0

    def __enter__(self):
        self.count += 1

    def __exit__(self, *exc):
        return False


def test_render_view_bands_match_render_image_and_abandon(loaded):
    model, bg = loaded
    view = _view()
    lock = CountingLock()
    image = render_view(model, view, 20, 14, bg, torch.device("cpu"), lock, band_rays=60, abandon=lambda: False)
    direct = to_uint8(render_image(model, view_camera(view.c2w, view.fov_y, 20, 14), 0, bg).rgb)
    assert lock.count == 5  # 60 rays = 3 rows of 20: bands at rows 0, 3, 6, 9, 12
    assert np.abs(image.astype(int) - direct.astype(int)).max() <= 1
    assert image.std() > 5  # the scene, not a blank frame
    lock = CountingLock()
    calls = iter([False, True])
    assert render_view(model, view, 20, 14, bg, torch.device("cpu"), lock, 60, lambda: next(calls)) is None
    assert lock.count == 1  # abandoned after the first band
    for mode in ("depth", "opacity"):
        out = render_view(model, _view(mode=mode), 20, 14, bg, torch.device("cpu"), nullcontext(), 1 << 13,
                          lambda: False)
        assert out.shape == (14, 20, 3) and out.dtype == np.uint8
    opacity = render_image(model, view_camera(view.c2w, view.fov_y, 20, 14), 0, bg).opacity
    assert np.abs(out[..., 0].astype(int) - to_uint8(opacity).astype(int)).max() <= 1


def _collect(loop_settings, loaded, n, timeout=30.0):
    model, bg = loaded
    frames, done = [], threading.Event()

    def publish(frame):
        frames.append(frame)
        if len(frames) >= n:
            done.set()

    loop = RenderLoop(model, bg, torch.device("cpu"), threading.Lock(), publish, loop_settings).start()
    try:
        loop.set_view(_view(width=160, height=120))
        assert done.wait(timeout), f"{len(frames)} frames in {timeout} s"
    finally:
        loop.stop()
    assert loop.error is None
    return frames


def test_render_loop_preview_then_full(loaded):
    frames = _collect(RenderSettings(max_size=48, still_after_s=0.5), loaded, 2)
    assert not frames[0].full and frames[0].width <= 48
    assert frames[1].full and (frames[1].width, frames[1].height) == (48, 36)
    assert [f.index for f in frames] == [1, 2]
    frames = _collect(RenderSettings(max_size=40, dynamic=False), loaded, 1)
    assert frames[0].full and (frames[0].width, frames[0].height) == (40, 30)


# ---------------------------------------------------------------------------- render --path FILE.json


def test_render_camera_path_json(run, loaded, tmp_path, capsys):
    path = _path(n_frames=5)
    save_camera_path(tmp_path / "path.json", path)
    out = tmp_path / "path.mp4"
    argv = ["render", str(run), "--path", str(tmp_path / "path.json"), "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    frames = read_video(out)
    assert len(frames) == 5 and frames[0].shape == (16, 24, 3)
    model, bg = loaded
    first = render_image(model, keyframe_cameras(path), 0, bg).rgb.numpy() * 255
    assert np.abs(frames[0].astype(float) - first).mean() < 8.0  # H.264 loses a little
    assert main(["render", str(run), "--path", str(tmp_path / "path.json"), "--frames", "3", "--out",
                 str(out), "--device", "cpu"]) == 0
    assert len(read_video(out)) == 3
    capsys.readouterr()
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["render", str(run), "--path", str(bad), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"radfield: error: {bad}: not valid JSON") and err.count("\n") == 1
    assert not (run / "bad.mp4").exists()


# ---------------------------------------------------------------------------- command-line errors


@pytest.mark.parametrize("argv, options", [(["view"], ["run_dir", "--host", "--port", "--device"]),
                                           (["train"], ["--viewer", "--viewer-port", "--host"])])
def test_help_lists_viewer_options(argv, options, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv + ["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and all(option in out for option in options)


def test_view_errors(run, tmp_path, capsys):
    capsys.readouterr()
    assert main(["view", str(tmp_path / "nothing"), "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("radfield: error: ")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["view", str(run), "--port", str(port), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"radfield: error: --port {port}: cannot listen") and err.count("\n") == 1
        out = tmp_path / "never"
        assert main(["train", str(run), "--out", str(out), "--viewer", "--viewer-port", str(port)]) == 2
        assert not out.exists()  # refused before the run directory was written
    assert main(["train", str(run), "--out", str(out), "--host", "0.0.0.0"]) == 2
    assert "--host and --viewer-port are options of --viewer" in capsys.readouterr().err


def _lines(stream) -> "queue.Queue[str]":
    """The stream's lines, read by a thread (``q.reader``, which ends at the end of the stream)."""
    q: queue.Queue[str] = queue.Queue()
    q.reader = threading.Thread(target=lambda: [q.put(line) for line in stream], daemon=True)
    q.reader.start()
    return q


def _wait_line(q: "queue.Queue[str]", pattern: str, timeout: float, seen: list[str]) -> re.Match:
    for line in seen:  # already read
        if m := re.search(pattern, line):
            return m
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            line = q.get(timeout=max(end - time.monotonic(), 0.01))
        except queue.Empty:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m
    pytest.fail(f"no line matching {pattern!r} in {timeout} s; got: {''.join(seen)}")


def _serve_and_interrupt(argv: list[str], ready: str) -> tuple[str, str, str]:
    """Run ``python -m radfield ARGV``, wait for its URL and for ``ready``, fetch the page,
    Ctrl-C it; returns (url, stdout, stderr) and checks exit code 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}  # SIGABRT dumps every thread's stack
    # A runner started in the background (`cmd &` in a script) hands its children SIGINT ignored,
    # and Python then installs no Ctrl-C handler: the child gets the default disposition back.
    proc = subprocess.Popen([sys.executable, "-m", "radfield", *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        out, err = _lines(proc.stdout), _lines(proc.stderr)  # both drained: a full pipe blocks the child
        seen: list[str] = []
        url = _wait_line(out, r"radfield viewer: (http://\S+)", 90, seen).group(1)
        _wait_line(out, ready, 90, seen)
        with urllib.request.urlopen(url, timeout=10) as page:  # the viewer's page, from this machine
            assert page.status == 200 and b"<html" in page.read().lower()
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:  # where does it hang? the stacks go to stderr
            code = None
            proc.send_signal(signal.SIGABRT)
            proc.wait(timeout=30)
        errors = []
        out.reader.join(10)
        err.reader.join(10)
        while not err.empty():
            errors.append(err.get())
        assert code == 0, f"exit code {code} after Ctrl-C; stderr ends: {''.join(errors)[-6000:]}"
        while not out.empty():
            seen.append(out.get())
        return url, "".join(seen), "".join(errors)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_view_on_all_interfaces_warns(run):
    url, _, err = _serve_and_interrupt(["view", str(run), "--host", "0.0.0.0", "--port", "0", "--device", "cpu"],
                                       r"Ctrl-C to stop")
    assert url.startswith("http://127.0.0.1:")
    assert "radfield: warning: --host 0.0.0.0: the viewer is reachable from other machines" in err


def test_train_with_viewer_cli(scene, tmp_path):
    run_dir = tmp_path / "run"
    url, out, err = _serve_and_interrupt(
        ["train", str(scene), "--out", str(run_dir), "--max-steps", "3", "--preset", "ngp-small", "--no-progress",
         "--device", "cpu", "--viewer", "--viewer-port", "0", "--set", "train.eval_every=1e9",
         "--set", "train.val_images=1"],
        r"the viewer stays open")
    assert url.startswith("http://127.0.0.1:") and "warning" not in err
    assert "trained 3 steps" in out and (run_dir / "checkpoint.pt").is_file()


# ---------------------------------------------------------------------------- in a real browser


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through selenium and chromedriver (both from apt: `.ci/run`).
    No driver or browser is downloaded: missing ones fail the test."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.fail("headless Chromium not found (apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed (pip install -e '.[test]')")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium manager: never fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
                "--disable-extensions", "--no-first-run"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def shown_number(driver, label: str) -> int | None:
    """The number after ``label`` in the page's text (e.g. the status line's "Frame 12")."""
    m = re.search(re.escape(label) + r" (\d+)", driver.execute_script("return document.body.innerText"))
    return int(m.group(1)) if m else None


CANVAS_JS = """
let best = null;
for (const c of document.querySelectorAll('canvas')) {
  const r = c.getBoundingClientRect();
  if (!best || r.width * r.height > best.width * best.height) best = r;
}
return best ? [best.left, best.top, best.width, best.height] : null;
"""


HIDE_NOTIFICATIONS_JS = """
const style = document.createElement('style');
style.textContent = '[class*="mantine-Notification"] { display: none !important; }';
document.head.appendChild(style);
"""


def open_viewer(driver, url: str) -> None:
    """Load the viewer's page, with viser's notifications hidden (in headless Chromium it warns
    of software WebGL, in an orange box over the canvas)."""
    driver.get(url)
    driver.execute_script(HIDE_NOTIFICATIONS_JS)


def canvas_screenshot(driver) -> np.ndarray:
    """``(H, W, 3)`` uint8 screenshot of the viewer's 3D canvas."""
    left, top, width, height = (int(round(v)) for v in driver.execute_script(CANVAS_JS))
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
    return shot[top:top + height, left:left + width]


def visible_part(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """The left half of a canvas screenshot (the control panel floats over the right side),
    box-filtered to the left half of a ``width x height`` frame, float in [0, 1]."""
    half = image[:, : image.shape[1] // 2]
    return np.asarray(Image.fromarray(half).resize((width // 2, height), Image.BOX)) / 255.0


def direct_render(model, bg, camera, width: int, height: int, mode: str = "rgb") -> np.ndarray:
    """``(H, W, 3)`` float render of the browser camera as the server's client handle reports it."""
    cams = view_camera(opengl_c2w_from_opencv(camera.wxyz, camera.position), float(camera.fov), width, height)
    r = render_image(model, cams, 0, bg)
    return (r.rgb if mode == "rgb" else r.opacity[..., None].expand(-1, -1, 3)).numpy()


def start_viewer(model_source, **render):
    from radfield.viewer.server import Viewer, ViewerOptions

    options = ViewerOptions(port=0, render=RenderSettings(**render), refresh_s=0.5, progress_s=0.2)
    if isinstance(model_source, Trainer):
        return Viewer.for_trainer(model_source, options)
    return Viewer.from_run(model_source, "cpu", options)


def full_frame_shown(viewer, driver, after: int = 0):
    """Wait until the browser shows a full frame (index > ``after``) of its current camera, and
    it stays the last one for 0.5 s (the image is drawn a little after its message, and the
    browser may still settle its camera); returns ``(browser view, that frame)``."""
    def ready():
        browsers = list(viewer.browsers.values())
        if not browsers or browsers[0].last_frame is None:
            return None
        b = browsers[0]
        frame = b.last_frame
        current = opengl_c2w_from_opencv(b.client.camera.wxyz, b.client.camera.position)
        if not (frame.full and frame.index > after and torch.allclose(frame.view.c2w, current, atol=1e-6)
                and shown_number(driver, "Frame") == frame.index):
            return None
        time.sleep(0.5)
        return (b, frame) if b.last_frame is frame else None
    return wait_for(ready, 60, "a full frame of the current camera in the browser")


def screenshot_matching(driver, expect: np.ndarray, frame, tolerance: float, timeout: float = 10.0):
    """``(seen, mean abs error)``: the visible part of the canvas compared with ``expect``
    (the left half of a ``frame``-sized render), retried until within ``tolerance`` (the image
    is decoded and drawn a little after its message) or ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        seen = visible_part(canvas_screenshot(driver), frame.width, frame.height)
        err = float(np.abs(seen - expect).mean())
        if err < tolerance or time.monotonic() > end:
            return seen, err
        time.sleep(0.2)


def box_line_hits(shot: np.ndarray, camera, edges: torch.Tensor, fov_scale: float = 1.0) -> tuple[int, list]:
    """Project points of the box edges ``(12, 2, 3)`` into the screenshot through radfield's
    pinhole of the browser camera (its fov times ``fov_scale``); ``(points checked, points with
    no orange line pixel within 3 px)``, over the visible (left) half of the canvas."""
    h, w = shot.shape[:2]
    c2w = opengl_c2w_from_opencv(camera.wxyz, camera.position)
    cams = view_camera(c2w, float(camera.fov) * fov_scale, w, h)
    checked, missed = 0, []
    for a, c in edges:
        for s in (0.3, 0.5, 0.7):
            uv, z = project(cams, 0, (a + s * (c - a))[None])
            u, v = (int(x) for x in uv[0])
            if z[0] <= 0 or not (3 <= u < w // 2 - 3 and 3 <= v < h - 3):
                continue
            patch = shot[v - 3:v + 4, u - 3:u + 4].astype(int)
            orange = (patch[..., 0] > 150) & (patch[..., 0] - patch[..., 2] > 100)  # grey has r = b
            checked += 1
            if not orange.any():
                missed.append((u, v))
    return checked, missed


def test_browser_shows_the_field_and_follows_the_camera(run, loaded, browser):
    model, bg = loaded
    viewer = start_viewer(run, max_size=48)
    try:
        viewer.show_cameras.value = False  # frusta and box would cover parts of the render
        viewer.show_box.value = False
        t0 = time.monotonic()
        open_viewer(browser, viewer.url)
        b, frame = full_frame_shown(viewer, browser)
        assert b.first_frame_at is not None and b.first_frame_at - t0 < 60
        assert max(frame.width, frame.height) == 48
        assert frame.width / frame.height == pytest.approx(b.client.camera.aspect, abs=0.02)
        shot = canvas_screenshot(browser)
        assert shot.shape[1] / shot.shape[0] == pytest.approx(frame.width / frame.height, abs=0.02)
        expect = direct_render(model, bg, b.client.camera, frame.width, frame.height)[:, : frame.width // 2]
        assert expect.std() > 0.05, "the scene is not in view: the comparison would test nothing"
        seen, err = screenshot_matching(browser, expect, frame, 0.03)
        assert err < 0.03, err  # measured about 0.01 (JPEG, the browser's up-sampling)
        # control: a render from a camera 25 degrees further round is far from the screenshot
        moved = opengl_c2w_from_opencv(b.client.camera.wxyz, b.client.camera.position)
        moved = torch.cat([rot_z(25) @ moved[:, :3], rot_z(25) @ moved[:, 3:]], 1)
        other = render_image(model, view_camera(moved, float(b.client.camera.fov), frame.width, frame.height),
                             0, bg)
        assert np.abs(seen - other.rgb.numpy()[:, : frame.width // 2]).mean() > 3 * err

        # The box as the browser draws it (three.js, its own camera) lies where radfield's
        # projection through the converted pose and fov puts it: opacity mode has no orange.
        viewer.show_box.value = True
        viewer.mode.value = "opacity"
        b, frame = full_frame_shown(viewer, browser, after=frame.index)
        from radfield.viewer.server import box_edges
        edges = torch.tensor(box_edges(model.aabb.cpu()), dtype=torch.float32)
        camera = b.client.camera
        for _ in range(50):  # the browser draws the box and the image a little after their messages
            shot = canvas_screenshot(browser)
            checked, missed = box_line_hits(shot, camera, edges)
            if not missed:
                break
            time.sleep(0.2)
        assert checked >= 6 and not missed, f"no box line drawn at {missed} ({checked} points checked)"
        # control: with a 15% wider field of view most of the points miss the lines
        checked_wide, missed_wide = box_line_hits(shot, camera, edges, fov_scale=1.15)
        assert len(missed_wide) > checked_wide / 2, (checked_wide, missed_wide)
        viewer.mode.value = "rgb"
        viewer.show_box.value = False
        b, previous = full_frame_shown(viewer, browser, after=frame.index)

        # Move the camera through the client handle: the browser moves, reports back, and a new
        # frame of the new view arrives.
        camera = b.client.camera
        camera.position = camera.position + np.array([0.6, -0.4, 0.3])
        camera.look_at = np.zeros(3)
        b, frame = full_frame_shown(viewer, browser, after=previous.index)
        assert not torch.allclose(frame.view.c2w, previous.view.c2w, atol=1e-3)
        expect = direct_render(model, bg, b.client.camera, frame.width, frame.height)[:, : frame.width // 2]
        assert screenshot_matching(browser, expect, frame, 0.03)[1] < 0.03
    finally:
        close(viewer, browser)


def close(viewer, driver) -> None:
    """Leave the page, then stop the viewer."""
    driver.get("about:blank")
    viewer.close()


def steady_pose(camera) -> torch.Tensor:
    """The OpenGL pose of a viser camera once it has stayed put for 0.4 s."""
    def steady():
        before = opengl_c2w_from_opencv(camera.wxyz, camera.position)
        time.sleep(0.4)
        now = opengl_c2w_from_opencv(camera.wxyz, camera.position)
        return (now,) if torch.equal(before, now) else None
    return wait_for(steady, 30, "the browser's camera to settle")[0]


def click(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    button = driver.find_element(By.XPATH, f"//button[contains(normalize-space(.), '{label}')]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", button)
    button.click()


def test_camera_path_editor_in_browser(run, browser, tmp_path, capsys):
    viewer = start_viewer(run, max_size=48)
    try:
        open_viewer(browser, viewer.url)
        b = wait_for(lambda: next(iter(viewer.browsers.values()), None), 60, "the browser to connect")
        viewer.path_file.value = "paths/cams.json"  # inside the run directory
        viewer.path_frames.value = 4
        viewer.path_width.value, viewer.path_height.value = 16, 12
        start = np.asarray(viewer.server.initial_camera.position)  # where the browser is put
        wait_for(lambda: np.allclose(b.client.camera.position, start, atol=1e-4), 30, "the initial camera")
        first = steady_pose(b.client.camera)
        click(browser, "Add keyframe")
        wait_for(lambda: len(viewer.keyframes) == 1, 20, "the first keyframe")
        b.client.camera.position = b.client.camera.position + np.array([0.0, 0.8, 0.2])
        b.client.camera.look_at = np.zeros(3)
        wait_for(lambda: not torch.allclose(opengl_c2w_from_opencv(b.client.camera.wxyz, b.client.camera.position),
                                            first, atol=1e-4), 20, "the browser's camera to move")
        click(browser, "Add keyframe")
        wait_for(lambda: len(viewer.keyframes) == 2, 20, "the second keyframe")
        wait_for(lambda: "2 keyframes" in browser.execute_script("return document.body.innerText"), 20,
                 "the keyframe count")
        click(browser, "Save camera path")
        file = run / "paths" / "cams.json"
        wait_for(lambda: file.is_file(), 20, "the saved camera path")
        saved = load_camera_path(file)
        assert len(saved.keyframes) == 2 and (saved.n_frames, saved.width, saved.height) == (4, 16, 12)
        assert torch.allclose(saved.keyframes[0].c2w, first, atol=1e-9)
        assert saved.keyframes[0].fov_y_deg == pytest.approx(math.degrees(b.client.camera.fov))
        # whoever reaches the viewer names the file: it stays a .json inside the run directory
        for outside in ["../escape.json", str(tmp_path / "abs.json"), "paths/cams.txt"]:
            with pytest.raises(RadfieldError, match="inside"):
                viewer.save_camera_path(outside)
        assert not (run.parent / "escape.json").exists() and not (tmp_path / "abs.json").exists()
    finally:
        close(viewer, browser)
    out = tmp_path / "cams.mp4"
    assert main(["render", str(run), "--path", str(file), "--out", str(out), "--device", "cpu"]) == 0
    assert len(read_video(out)) == 4


def test_live_training_progress_and_pause(scene, browser, tmp_path):
    trainer = Trainer(make_config(scene, "ngp-small", steps=100_000), tmp_path / "live", progress=False,
                      log_tensorboard=False)
    viewer = start_viewer(trainer, max_size=48)
    stop = threading.Event()
    thread = threading.Thread(target=trainer.train, kwargs={"stop": lambda step: stop.is_set()}, daemon=True)
    try:
        open_viewer(browser, viewer.url)
        b, _ = full_frame_shown(viewer, browser)
        thread.start()
        wait_for(lambda: (shown_number(browser, "step") or 0) >= 3, 60, "training progress in the browser")
        text = browser.execute_script("return document.body.innerText")
        assert re.search(r"PSNR [\d.]+ dB", text) and re.search(r"[\d,]+ samples/s", text)
        before = b.last_frame.index
        wait_for(lambda: b.last_frame.index > before, 30, "a re-render with newer parameters")
        click(browser, "Pause training")
        wait_for(lambda: trainer.paused.is_set(), 20, "the pause")
        wait_for(lambda: "paused" in browser.execute_script("return document.body.innerText"), 20,
                 "'paused' shown")
        step = trainer.state.step
        time.sleep(1.0)
        assert trainer.state.step <= step + 1  # at most the step under way finishes
        click(browser, "Resume training")
        wait_for(lambda: trainer.state.step > step + 3, 30, "training to resume")
    finally:
        stop.set()
        trainer.paused.clear()
        thread.join(60)
        close(viewer, browser)
    assert not thread.is_alive()
