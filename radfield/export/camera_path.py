"""Camera paths for videos: an orbit around the scene, the test cameras in order, or a path
through keyframes (the viewer's camera-path editor writes them as JSON).

**Keyframe paths.** ``K`` keyframes, each a camera-to-world matrix (OpenGL axes, as everywhere
in radfield), a vertical field of view and, for a dynamic scene, a time. Frame ``f`` of ``N``
sits at the path parameter ``u = f (K - 1) / (N - 1)`` in ``[0, K - 1]``; keyframe ``k`` is at
``u = k``, so the first and last frames are the first and last keyframes, and keyframe ``k`` is a
frame whenever ``k (N - 1) / (K - 1)`` is an integer. Between keyframes ``k`` and ``k + 1``
(``t = u - k``):

* positions follow the uniform Catmull-Rom spline through the keyframe positions ``p_k``
  (:func:`catmull_rom`), which passes through every ``p_k`` with a continuous velocity; the
  missing neighbours at the ends are reflections, ``p_-1 = 2 p_0 - p_1``;
* rotations are slerped from keyframe ``k`` to ``k + 1`` (:func:`radfield.rotations.slerp`);
* field of view and time are linear in ``u``.

The JSON file (``save_camera_path`` / ``load_camera_path``)::

    {"format": "radfield-camera-path-v1", "width": 256, "height": 256, "fps": 30, "n_frames": 120,
     "keyframes": [{"c2w": [[r00, r01, r02, x], [r10, r11, r12, y], [r20, r21, r22, z]],
                    "fov_y_deg": 50.0, "time": null}, ...]}

``c2w`` is 3 x 4 (or 4 x 4 with the last row ``0 0 0 1``), rows of the camera-to-world matrix
whose columns are the camera's right, up and backward axes and its centre. A video frame is
``width x height`` with square pixels and the principal point at the centre:
``fy = fx = (height / 2) / tan(fov_y / 2)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras, look_at, pinhole_from_fov
from radfield.data import SceneData
from radfield.errors import RadfieldError
from radfield.io import atomic_write
from radfield.rotations import matrix_to_quaternion, quaternion_to_matrix, slerp

PATH_FORMAT = "radfield-camera-path-v1"


def orbit_path(train: SceneData, n_frames: int = 120) -> Cameras:
    """A circle of cameras looking at the scene-box centre, with the training cameras' intrinsics
    (those of camera 0). The circle's axis is the training cameras' mean up vector (world z for
    Blender scenes, whatever structure-from-motion chose for captures); its radius and height
    above the centre are the training cameras' mean ones, so the orbit stays where the captured
    views were, which is what an unbounded scene can be rendered from. When the training cameras
    carry ``times`` (a dynamic scene), the path carries times too, sweeping their range, so the
    video plays the scene's motion while it orbits."""
    cams = train.cameras
    centre = (train.aabb[:3] + train.aabb[3:]) / 2
    up = cams.c2w[:, :3, 1].mean(0)
    up = up / up.norm()
    offsets = cams.centers - centre
    height = (offsets @ up).mean()
    radial = offsets - (offsets @ up)[:, None] * up
    radius = radial.norm(dim=-1).mean()
    e1 = radial[0] / radial[0].norm().clamp(min=1e-9)
    e2 = torch.linalg.cross(up, e1)
    c2w = []
    for k in range(n_frames):
        a = 2 * math.pi * k / n_frames
        eye = centre + height * up + radius * (math.cos(a) * e1 + math.sin(a) * e2)
        c2w.append(look_at(eye, centre, up))
    ones = torch.ones(n_frames)
    path = Cameras(torch.stack(c2w), cams.fx[0] * ones, cams.fy[0] * ones, cams.cx[0] * ones,
                   cams.cy[0] * ones, cams.width, cams.height)
    times = cams.attrs.get("times")
    if times is not None:  # a dynamic scene: the orbit sweeps its time range once
        path = path.with_attrs(times=torch.linspace(float(times.min()), float(times.max()), n_frames))
    return path


# ---------------------------------------------------------------------------- keyframe paths


@dataclass
class Keyframe:
    """One keyframe: ``c2w`` ``(3, 4)`` camera-to-world (OpenGL axes), the vertical field of view
    in degrees, and the scene time (dynamic scenes) or None."""

    c2w: Tensor
    fov_y_deg: float
    time: float | None = None


@dataclass
class KeyframePath:
    """Keyframes and the video they make: ``n_frames`` frames of ``width x height`` at ``fps``."""

    keyframes: list[Keyframe]
    width: int
    height: int
    n_frames: int
    fps: float


def catmull_rom(points: Tensor, u: Tensor) -> Tensor:
    """The uniform Catmull-Rom spline through ``points`` ``(K, D)`` at parameters ``u`` ``(N,)``
    in ``[0, K - 1]`` -> ``(N, D)``; ``u = k`` gives ``points[k]``.

    On segment ``k`` with ``t = u - k`` and neighbours ``P0..P3 = p_{k-1}..p_{k+2}``:
    ``p(t) = 0.5 (2 P1 + (P2 - P0) t + (2 P0 - 5 P1 + 4 P2 - P3) t^2 + (3 P1 - P0 - 3 P2 + P3) t^3)``,
    so ``p(0) = P1``, ``p(1) = P2`` and the velocity at ``p_k`` is ``(p_{k+1} - p_{k-1}) / 2``.
    The ends are reflected (``p_-1 = 2 p_0 - p_1``), which makes equally spaced points on a
    line come out linear in ``u``. One point: constant.
    """
    k = points.shape[0]
    if k == 1:
        return points.expand(u.shape[0], -1).clone()
    ext = torch.cat([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    seg = u.floor().long().clamp(0, k - 2)
    t = (u - seg.to(u.dtype))[:, None]
    p0, p1, p2, p3 = ext[seg], ext[seg + 1], ext[seg + 2], ext[seg + 3]
    return 0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                  + (3 * p1 - p0 - 3 * p2 + p3) * t ** 3)


def interpolate_poses(c2w: Tensor, u: Tensor) -> Tensor:
    """``(N, 3, 4)`` poses at path parameters ``u`` ``(N,)`` through keyframe poses ``c2w``
    ``(K, 3, 4)``: Catmull-Rom positions, rotations slerped between neighbouring keyframes."""
    k = c2w.shape[0]
    positions = catmull_rom(c2w[:, :3, 3], u)
    quats = matrix_to_quaternion(c2w[:, :3, :3])
    seg = u.floor().long().clamp(0, max(k - 2, 0))
    nxt = (seg + 1).clamp(max=k - 1)
    rot = quaternion_to_matrix(slerp(quats[seg], quats[nxt], u - seg.to(u.dtype)))
    return torch.cat([rot, positions[:, :, None]], dim=-1)


def path_parameters(n_keyframes: int, n_frames: int) -> Tensor:
    """``(n_frames,)`` float64 ``u = f (K - 1) / (N - 1)``: exact (integer) at every frame that
    lands on a keyframe. One frame: ``u = 0``."""
    f = torch.arange(n_frames, dtype=torch.float64)
    return f * (n_keyframes - 1) / max(n_frames - 1, 1)


def keyframe_cameras(path: KeyframePath) -> Cameras:
    """The path's ``n_frames`` cameras (float32), carrying ``times`` when the keyframes have
    times. Interpolation runs in float64."""
    keys = path.keyframes
    u = path_parameters(len(keys), path.n_frames)
    c2w = interpolate_poses(torch.stack([kf.c2w.double() for kf in keys]), u)
    fov = torch.tensor([kf.fov_y_deg for kf in keys], dtype=torch.float64)
    fov_u = _linear(fov, u)
    cams = pinhole_from_fov(c2w.float(), torch.deg2rad(fov_u).float(), path.width, path.height)
    if keys[0].time is not None:
        times = torch.tensor([kf.time for kf in keys], dtype=torch.float64)
        cams = cams.with_attrs(times=_linear(times, u).float())
    return cams


def _linear(values: Tensor, u: Tensor) -> Tensor:
    """Piecewise-linear interpolation of ``values`` ``(K,)`` at ``u`` ``(N,)`` in ``[0, K - 1]``."""
    if values.shape[0] == 1:
        return values.expand(u.shape[0]).clone()
    seg = u.floor().long().clamp(0, values.shape[0] - 2)
    t = u - seg.to(u.dtype)
    return values[seg] * (1 - t) + values[seg + 1] * t


def camera_path_to_dict(path: KeyframePath) -> dict:
    return {"format": PATH_FORMAT, "width": path.width, "height": path.height, "fps": path.fps,
            "n_frames": path.n_frames,
            "keyframes": [{"c2w": [[float(v) for v in row] for row in kf.c2w[:3, :4].tolist()],
                           "fov_y_deg": float(kf.fov_y_deg), "time": kf.time} for kf in path.keyframes]}


def save_camera_path(file: str | Path, path: KeyframePath) -> None:
    """Write ``path`` as JSON (atomically) to ``file``."""
    if not path.keyframes:
        raise RadfieldError(f"{file}: a camera path needs at least one keyframe")
    Path(file).parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(file) as tmp:
        tmp.write_text(json.dumps(camera_path_to_dict(path), indent=1))


def load_camera_path(file: str | Path) -> KeyframePath:
    """Read a camera-path JSON file; anything malformed is a one-line RadfieldError naming the
    file (and the keyframe)."""
    file = Path(file)
    if not file.is_file():
        raise RadfieldError(f"{file}: no such camera path file")
    try:
        d = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RadfieldError(f"{file}: unreadable ({exc})") from None
    except json.JSONDecodeError as exc:
        raise RadfieldError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(d, dict):
        raise RadfieldError(f"{file}: expected a JSON object with keyframes")
    if d.get("format", PATH_FORMAT) != PATH_FORMAT:
        raise RadfieldError(f"{file}: format {d.get('format')!r} is not {PATH_FORMAT!r}")
    sizes = {key: _positive_int(d, key, file) for key in ("width", "height", "n_frames")}
    fps = d.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < 1e4:
        raise RadfieldError(f"{file}: fps must be a positive number, got {fps!r}")
    raw = d.get("keyframes")
    if not isinstance(raw, list) or not raw:
        raise RadfieldError(f"{file}: no keyframes")
    keys = [_keyframe(item, f"{file}: keyframe {k}") for k, item in enumerate(raw)]
    if len({kf.time is None for kf in keys}) > 1:
        raise RadfieldError(f"{file}: either every keyframe has a time or none has")
    return KeyframePath(keys, sizes["width"], sizes["height"], sizes["n_frames"], float(fps))


def _positive_int(d: dict, key: str, file: Path) -> int:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RadfieldError(f"{file}: {key} must be a positive integer, got {value!r}")
    return value


def _keyframe(item, where: str) -> Keyframe:
    if not isinstance(item, dict):
        raise RadfieldError(f"{where}: expected an object with c2w and fov_y_deg")
    try:
        m = np.asarray(item.get("c2w"), dtype=np.float64)
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: c2w is not a matrix of numbers") from None
    if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
        raise RadfieldError(f"{where}: c2w must be a finite 3x4 or 4x4 matrix (got shape {m.shape})")
    rot = m[:3, :3]
    if not (np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) and abs(np.linalg.det(rot) - 1) < 1e-3
            and (m.shape == (3, 4) or np.allclose(m[3], [0, 0, 0, 1], atol=1e-6))):
        raise RadfieldError(f"{where}: c2w is not a rigid transform")
    fov = item.get("fov_y_deg")
    if isinstance(fov, bool) or not isinstance(fov, (int, float)) or not 0 < fov < 180:
        raise RadfieldError(f"{where}: fov_y_deg must be a number in (0, 180), got {fov!r}")
    time = item.get("time")
    if time is not None and (isinstance(time, bool) or not isinstance(time, (int, float))
                             or not math.isfinite(time)):
        raise RadfieldError(f"{where}: time must be a number or null, got {time!r}")
    return Keyframe(torch.tensor(m[:3, :4]), float(fov), None if time is None else float(time))
