"""Write a COLMAP project as one Instant-NGP / nerfstudio ``transforms.json`` (``radfield process
--format transforms``), so a capture goes to those tools too, and back to radfield.

The json (one file, every frame; what ``colmap2nerf.py`` and ``ns-process-data`` write):

* intrinsics ``fl_x fl_y cx cy w h`` and the lens ``camera_model`` (``PINHOLE``, ``OPENCV`` with
  ``k1 k2 p1 p2``, ``OPENCV_FISHEYE`` with ``k1..k4``), top-level for one camera, per frame for
  several;
* frames ``file_path`` (``images/NAME``, relative to the json) and ``transform_matrix``
  (camera-to-world, OpenGL axes), sorted by name;
* the world frame Instant-NGP expects: centred on the point the cameras look at (the
  least-squares closest point to every optical axis), z up (the cameras' mean up), and scaled so
  the cameras are on average 4 units away (Instant-NGP's "NeRF-sized" scenes: the object in its
  unit cube, ``aabb_scale`` the room around it);
* ``applied_transform`` (3x4 ``[R | t]``) and ``applied_scale`` ``s``: ``x_json = s (R x + t)``
  for a point ``x`` of the COLMAP model, as nerfstudio records them;
* ``ply_file_path``: ``sparse_pc.ply``, the sparse points in the json's frame, with colours.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from radfield.data.colmap import choose_model, colmap_to_c2w, read_model
from radfield.errors import RadfieldError
from radfield.io import atomic_write

MEAN_CAMERA_DISTANCE = 4.0

_LENS_KEYS = {"SIMPLE_RADIAL": ("OPENCV", {"k1": 3}), "RADIAL": ("OPENCV", {"k1": 3, "k2": 4}),
              "OPENCV": ("OPENCV", {"k1": 4, "k2": 5, "p1": 6, "p2": 7}),
              "OPENCV_FISHEYE": ("OPENCV_FISHEYE", {"k1": 4, "k2": 5, "k3": 6, "k4": 7}),
              "SIMPLE_PINHOLE": ("PINHOLE", {}), "PINHOLE": ("PINHOLE", {})}


def camera_entry(model: str, width: int, height: int, params: np.ndarray) -> dict:
    """The json keys of one COLMAP camera: intrinsics and lens."""
    if model not in _LENS_KEYS:
        raise RadfieldError(f"camera model {model} cannot be written to transforms.json "
                            f"(supported: {', '.join(_LENS_KEYS)})")
    p = [float(v) for v in params]
    single_focal = model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if single_focal else p[:4]
    name, keys = _LENS_KEYS[model]
    return {"camera_model": name, "fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": width, "h": height,
            **{k: p[i] for k, i in keys.items()}}


def look_at_point(centers: np.ndarray, forwards: np.ndarray) -> np.ndarray:
    """The point closest, in least squares, to the lines ``centers + s forwards``:
    ``sum_i (I - f_i f_i^T) (p - c_i) = 0``. Falls back to the mean centre when the axes are
    (nearly) parallel."""
    f = forwards / np.linalg.norm(forwards, axis=1, keepdims=True)
    proj = np.eye(3)[None] - f[:, :, None] * f[:, None, :]
    a, b = proj.sum(0), np.einsum("nij,nj->i", proj, centers)
    if np.linalg.cond(a) > 1e6:
        return centers.mean(0)
    return np.linalg.solve(a, b)


def rotation_to_z(up: np.ndarray) -> np.ndarray:
    """The rotation taking unit ``up`` to ``+z`` (Rodrigues; a half turn about x for ``-z``)."""
    up = up / np.linalg.norm(up)
    z = np.array([0.0, 0.0, 1.0])
    v, c = np.cross(up, z), float(up @ z)
    if c < -1 + 1e-9:
        return np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def write_transforms(dataset: str | Path, aabb_scale: int = 16, model: str | None = None) -> Path:
    """Write ``DATASET/transforms.json`` (and ``DATASET/sparse_pc.ply``) from the COLMAP project
    in ``DATASET`` (``images/``, ``sparse/N``); returns the json's path. See module doc."""
    import trimesh

    dataset = Path(dataset)
    _, folder = choose_model(dataset, model)
    sfm = read_model(folder)
    if not sfm.images:
        raise RadfieldError(f"{sfm.files['images']}: no registered images")
    ordered = sorted(sfm.images.values(), key=lambda im: im.name)
    c2w = colmap_to_c2w(torch.tensor(np.stack([im.qvec for im in ordered])),
                        torch.tensor(np.stack([im.tvec for im in ordered]))).double().numpy()
    centers, forwards, ups = c2w[:, :, 3], -c2w[:, :, 2], c2w[:, :, 1]
    rot = rotation_to_z(ups.mean(0))
    t = -rot @ look_at_point(centers, forwards)
    moved = centers @ rot.T + t
    scale = MEAN_CAMERA_DISTANCE / max(float(np.linalg.norm(moved, axis=1).mean()), 1e-12)

    cameras = {im.camera_id for im in ordered}
    entries = {cid: camera_entry(sfm.cameras[cid].model, sfm.cameras[cid].width, sfm.cameras[cid].height,
                                 sfm.cameras[cid].params) for cid in cameras}
    frames = []
    for im, m in zip(ordered, c2w):
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = rot @ m[:, :3], scale * (rot @ m[:, 3] + t)
        frame = {"file_path": f"images/{im.name}", "transform_matrix": pose.tolist()}
        if len(cameras) > 1:
            frame.update(entries[im.camera_id])
        frames.append(frame)
    top = entries[ordered[0].camera_id] if len(cameras) == 1 else {}
    points = scale * (sfm.points @ rot.T + t)
    meta = {**top, "aabb_scale": aabb_scale, "frames": frames,
            "applied_transform": np.concatenate([rot, t[:, None]], 1).tolist(), "applied_scale": scale,
            "ply_file_path": "sparse_pc.ply"}
    with atomic_write(dataset / "sparse_pc.ply") as tmp:
        trimesh.PointCloud(points, colors=sfm.colors).export(tmp, file_type="ply")
    out = dataset / "transforms.json"
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(meta, indent=2))
    return out
