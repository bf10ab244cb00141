"""Reader for COLMAP sparse reconstructions (``PATH/images`` + ``PATH/sparse``).

Layout: ``PATH/sparse/N/{cameras,images,points3D}.{bin,txt}`` (one folder per model, as COLMAP's
mapper writes them) or ``PATH/sparse/{cameras,...}`` directly (model name ``"."``). When a
model folder holds both formats the binary files are read. Both formats are parsed here with
``struct`` / numpy; pycolmap is not needed. With several models the one with the most registered
images is read (ties: the smaller name), unless ``model`` names one; ``meta["colmap_model"]``
records the choice.

Conventions:

* COLMAP stores world-to-camera ``x_cam = R(q) x_world + t`` with ``q = (qw, qx, qy, qz)`` and
  OpenCV camera axes (x right, y down, z forward). The camera centre is ``C = -R^T t`` and the
  OpenGL camera-to-world matrix radfield uses is ``[R^T e_x, -R^T e_y, -R^T e_z, C]`` (the y and
  z camera axes flipped).
* Pixel ``(i, j)``'s centre is ``(i + 0.5, j + 0.5)`` in COLMAP as in radfield; no shift.
* Camera models: SIMPLE_PINHOLE ``f cx cy``, PINHOLE ``fx fy cx cy``, SIMPLE_RADIAL
  ``f cx cy k``, RADIAL ``f cx cy k1 k2``, OPENCV ``fx fy cx cy k1 k2 p1 p2``, OPENCV_FISHEYE
  ``fx fy cx cy k1 k2 k3 k4``. Distorted models become the cameras' ``lens``
  (:mod:`radfield.lens`, shared with the transforms.json reader): rays are generated through
  the distortion and the images are used as taken (no resampling). A lens that cannot be
  inverted over its image is an error.
* Images are sorted by name; image ``k`` of that order is in split ``"test"`` (and ``"val"``, the
  same images: mip-NeRF 360 protocol) when ``k % holdout_every == 0``, in ``"train"`` otherwise;
  ``"all"`` is every image.
* ``downscale = f``: ``PATH/images_f`` is read when it exists (its sizes must be within 1 px of
  ``W / f, H / f``; intrinsics are scaled by the actual size ratio), else the full images are
  area-averaged over ``f x f`` blocks
  (:func:`radfield.data.files.downscale_image`) and the intrinsics divided by ``f``.
  :func:`colmap_cameras` gives the cameras without decoding an image (the sizes come from the
  COLMAP cameras, or from the headers of the ``images_f`` files).
* Scene normalisation ``x_scene = (x_world - center) * scale`` (:func:`normalization_from_cameras`
  by default, or :func:`normalization_from_points`) is computed from ALL registered images / all
  points, so every split shares it; it is applied to the camera centres (rotations unchanged) and
  stored in ``meta["normalization"] = {"center": [x, y, z], "scale": s}``.
* ``aabb``: per-axis 2nd..98th percentile box of the normalised sparse points, scaled by 1.1
  about its centre (half-sizes at least 0.01); ``[-1, 1]^3`` when there are no points.
  ``meta["unbounded"] = True``: the box is a region of interest, the scene extends beyond it.
* ``meta["near"] = 0.5 * p5``, ``meta["far"] = 2 * p99`` where ``p5, p99`` are percentiles of the
  planar depths (normalised units) of every (image, observed point) pair; without observations,
  of every point in front of every camera; without points, ``0.01`` and ``100``. Hints only.

Bad input raises :class:`radfield.errors.RadfieldError` with one line naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras
from radfield.lens import COEFFICIENTS, Lens, check_invertible
from radfield.data.files import (HOLDOUT_EVERY, check_options, check_prescaled_size,
                                 check_same_size, downscale_image, downscale_intrinsics,
                                 holdout_split, image_folder, one_line, read_image,
                                 read_image_size)
from radfield.data.scene import SceneCameras, SceneData
from radfield.errors import RadfieldError, check_choice

# COLMAP model id -> (name, number of parameters); every model so that any file can be parsed.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_PARAM_COUNT = {name: n for name, n in CAMERA_MODELS.values()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")
_FILES = ("cameras", "images", "points3D")
NORMALIZE_METHODS = ("cameras", "points")
NO_POINTS_NEAR_FAR = (0.01, 100.0)


# ---------------------------------------------------------------------------- parsed model


@dataclass
class ColmapCamera:
    """One COLMAP camera: ``params`` in COLMAP's order for ``model`` (see module doc)."""

    camera_id: int
    model: str
    width: int
    height: int
    params: np.ndarray


@dataclass
class ColmapImage:
    """One registered image: world-to-camera ``qvec (4,)`` (w, x, y, z), ``tvec (3,)``, and the
    ids of the 3D points it observes, ``point3d_ids (n_obs,)`` int64 (-1 entries removed)."""

    image_id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    point3d_ids: np.ndarray


@dataclass
class ColmapModel:
    """A parsed sparse model: ``points (n, 3)`` float64 world xyz, ``colors (n, 3)`` uint8,
    ``point_ids (n,)`` int64, ``errors (n,)`` float64 mean reprojection errors in pixels."""

    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: np.ndarray
    colors: np.ndarray
    point_ids: np.ndarray
    errors: np.ndarray
    files: dict[str, Path] = field(default_factory=dict)


class _Bytes:
    """A cursor over a binary file whose every short read is a one-line RadfieldError."""

    def __init__(self, file: Path):
        self.file = file
        try:
            self.data = file.read_bytes()
        except OSError as e:
            raise RadfieldError(f"{file}: cannot read ({one_line(e)})") from None
        self.pos = 0

    def corrupt(self, why: str) -> RadfieldError:
        return RadfieldError(f"{self.file}: truncated or corrupt COLMAP binary file ({why} "
                             f"at byte {self.pos})")

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise self.corrupt("unexpected end of file")
        out = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.pos + size > len(self.data):
            raise self.corrupt(f"{count} records do not fit")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += size
        return out

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise self.corrupt("unterminated image name")
        raw, self.pos = self.data[self.pos:end], end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt("image name is not UTF-8") from None

    def done(self) -> None:
        if self.pos != len(self.data):
            raise self.corrupt(f"{len(self.data) - self.pos} trailing bytes")


def read_cameras_bin(file: Path) -> dict[int, ColmapCamera]:
    """``cameras.bin``: uint64 count, then per camera ``uint32 id, int32 model, uint64 width,
    uint64 height, float64 params[n(model)]``."""
    b = _Bytes(file)
    cameras = {}
    for _ in range(b.unpack("<Q")[0]):
        camera_id, model_id, width, height = b.unpack("<IiQQ")
        if model_id not in CAMERA_MODELS:
            raise b.corrupt(f"unknown camera model id {model_id}")
        name, n_params = CAMERA_MODELS[model_id]
        params = b.array(np.dtype("<f8"), n_params).astype(np.float64)
        cameras[camera_id] = ColmapCamera(camera_id, name, int(width), int(height), params)
    b.done()
    return cameras


_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_images_bin(file: Path) -> dict[int, ColmapImage]:
    """``images.bin``: uint64 count, then per image ``uint32 id, float64 qvec[4], float64
    tvec[3], uint32 camera_id, name\\0, uint64 n, (float64 x, float64 y, int64 point3D_id)[n]``."""
    b = _Bytes(file)
    images = {}
    for _ in range(b.unpack("<Q")[0]):
        values = b.unpack("<I7dI")
        name = b.string()
        obs = b.array(_POINT2D, b.unpack("<Q")[0])["id"]
        images[values[0]] = ColmapImage(values[0], np.array(values[1:5]), np.array(values[5:8]),
                                        values[8], name, obs[obs >= 0].astype(np.int64))
    b.done()
    return images


def read_points3d_bin(file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``points3D.bin``: uint64 count, then per point ``uint64 id, float64 xyz[3], uint8 rgb[3],
    float64 error, uint64 n, (uint32 image_id, uint32 point2D_idx)[n]``.
    Returns ``(xyz (n, 3) float64, rgb (n, 3) uint8, ids (n,) int64, errors (n,) float64)``."""
    b = _Bytes(file)
    n = b.unpack("<Q")[0]
    if n * 51 > len(b.data):
        raise b.corrupt(f"{n} points do not fit")
    xyz, rgb, ids, errors = np.zeros((n, 3)), np.zeros((n, 3), np.uint8), np.zeros(n, np.int64), np.zeros(n)
    for k in range(n):
        values = b.unpack("<Q3d3BdQ")
        ids[k], xyz[k], rgb[k], errors[k] = values[0], values[1:4], values[4:7], values[7]
        b.array(np.dtype("<u4"), 2 * values[8])  # the track, not needed here
    b.done()
    return xyz, rgb, ids, errors


def _text_lines(file: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of a COLMAP text file, comments dropped, blank lines kept."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RadfieldError(f"{file}: cannot read ({one_line(e)})") from None
    return [(n + 1, line.strip()) for n, line in enumerate(text.splitlines())
            if not line.lstrip().startswith("#")]


def read_cameras_txt(file: Path) -> dict[int, ColmapCamera]:
    """``cameras.txt``: one line per camera, ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]``."""
    cameras = {}
    for n, line in _text_lines(file):
        if not line:
            continue
        f = line.split()
        try:
            model = f[1]
            if model not in _PARAM_COUNT:
                raise RadfieldError(f"{file}: line {n}: unknown camera model {model}")
            params = np.array([float(x) for x in f[4:]])
            if len(params) != _PARAM_COUNT[model]:
                raise RadfieldError(f"{file}: line {n}: {model} needs {_PARAM_COUNT[model]} "
                                    f"parameters, got {len(params)}")
            cameras[int(f[0])] = ColmapCamera(int(f[0]), model, int(f[2]), int(f[3]), params)
        except (IndexError, ValueError):
            raise RadfieldError(f"{file}: line {n}: malformed camera line") from None
    return cameras


def read_images_txt(file: Path) -> dict[int, ColmapImage]:
    """``images.txt``: two lines per image, ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``
    then ``X Y POINT3D_ID`` triples (the second line may be empty)."""
    lines = _text_lines(file)
    images, k = {}, 0
    while k < len(lines):
        n, line = lines[k]
        if not line:
            k += 1
            continue
        points_line = lines[k + 1][1] if k + 1 < len(lines) else ""
        k += 2
        f = line.split(maxsplit=9)
        try:
            if len(f) != 10:
                raise ValueError
            obs = np.array([int(x) for x in points_line.split()[2::3]], dtype=np.int64)
            if len(points_line.split()) % 3:
                raise ValueError
            images[int(f[0])] = ColmapImage(int(f[0]), np.array([float(x) for x in f[1:5]]),
                                            np.array([float(x) for x in f[5:8]]), int(f[8]),
                                            f[9], obs[obs >= 0])
        except ValueError:
            raise RadfieldError(f"{file}: line {n}: malformed image entry") from None
    return images


def read_points3d_txt(file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]`` per line."""
    xyz, rgb, ids, errors = [], [], [], []
    for n, line in _text_lines(file):
        if not line:
            continue
        f = line.split()
        try:
            ids.append(int(f[0]))
            xyz.append([float(x) for x in f[1:4]])
            rgb.append([int(x) for x in f[4:7]])
            errors.append(float(f[7]))
            if len(xyz[-1]) != 3 or len(rgb[-1]) != 3:
                raise ValueError
        except (IndexError, ValueError):
            raise RadfieldError(f"{file}: line {n}: malformed point line") from None
    return (np.array(xyz, np.float64).reshape(-1, 3), np.array(rgb, np.uint8).reshape(-1, 3),
            np.array(ids, np.int64), np.array(errors, np.float64))


def _model_files(folder: Path) -> dict[str, Path] | None:
    """The three files of the model in ``folder`` (binary preferred), None if it has none."""
    for ext in ("bin", "txt"):
        if (folder / f"cameras.{ext}").is_file():
            files = {name: folder / f"{name}.{ext}" for name in _FILES}
            for file in files.values():
                if not file.is_file():
                    raise RadfieldError(f"{file}: missing (the model has {folder}/cameras.{ext})")
            return files
    return None


def read_model(folder: Path) -> ColmapModel:
    """Parse the sparse model in ``folder`` (``cameras``, ``images``, ``points3D``)."""
    files = _model_files(folder)
    if files is None:
        raise RadfieldError(f"{folder}: no COLMAP model (cameras.bin or cameras.txt)")
    binary = files["cameras"].suffix == ".bin"
    cameras = (read_cameras_bin if binary else read_cameras_txt)(files["cameras"])
    images = (read_images_bin if binary else read_images_txt)(files["images"])
    xyz, rgb, ids, errors = (read_points3d_bin if binary else read_points3d_txt)(files["points3D"])
    return ColmapModel(cameras, images, xyz, rgb, ids, errors, files)


def _count_images(files: dict[str, Path]) -> int:
    file = files["images"]
    if file.suffix == ".bin":
        return _Bytes(file).unpack("<Q")[0]
    return len(read_images_txt(file))


def choose_model(path: Path, model: str | None) -> tuple[str, Path]:
    """``(name, folder)`` of the sparse model to read: ``model`` if given, else the one with the
    most registered images. ``PATH/sparse`` itself is the model named ``"."``."""
    sparse = path / "sparse"
    if not sparse.is_dir():
        raise RadfieldError(f"{sparse}: no sparse/ folder (COLMAP layout: "
                            "PATH/sparse/0/cameras.bin, images.bin, points3D.bin)")
    candidates = {".": sparse} if _model_files(sparse) else {}
    candidates.update({d.name: d for d in sorted(sparse.iterdir())
                       if d.is_dir() and _model_files(d) is not None})
    if not candidates:
        raise RadfieldError(f"{sparse}: no COLMAP model (no cameras.bin or cameras.txt in it "
                            "or in a subfolder)")
    if model is not None:
        if str(model) not in candidates:
            raise RadfieldError(f"{sparse}: no model '{model}' (found: "
                                f"{', '.join(candidates)})")
        return str(model), candidates[str(model)]
    counts = {name: _count_images(_model_files(d)) for name, d in candidates.items()}
    best = max(sorted(counts), key=counts.__getitem__)  # ties: the first name
    return best, candidates[best]


# ---------------------------------------------------------------------------- poses


def qvec_to_rotation(qvec: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation of unit quaternions ``(..., 4)`` = ``(w, x, y, z)`` (normalised
    first), the Hamilton convention COLMAP uses.

    Example: ``q = (cos 45°, 0, 0, sin 45°)`` (90° about z) maps ``e_x`` to ``e_y``:
    ``R = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]``.
    """
    w, x, y, z = (qvec / qvec.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)


def colmap_to_c2w(qvec: Tensor, tvec: Tensor) -> Tensor:
    """``(n, 3, 4)`` OpenGL camera-to-world of COLMAP world-to-camera ``qvec (n, 4)``,
    ``tvec (n, 3)`` (OpenCV axes): ``[R^T e_x, -R^T e_y, -R^T e_z, -R^T t]``.

    Example: ``q = (1, 0, 0, 0), t = (0, 0, 2)`` (identity rotation, world origin 2 in front):
    centre ``(0, 0, -2)``, ``c2w = [[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, -2]]``.
    """
    rot_t = qvec_to_rotation(qvec).transpose(-1, -2)  # camera-to-world rotation, OpenCV axes
    center = -(rot_t @ tvec.unsqueeze(-1))
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=rot_t.dtype)
    return torch.cat([rot_t * flip, center], dim=-1)


# ---------------------------------------------------------------------------- normalisation


def normalization_from_cameras(centers: Tensor) -> dict:
    """``{"center": [x, y, z], "scale": s}`` with ``center`` the mean of the camera centres
    ``(n_cams, 3)`` and ``s = 1 / max |c - center|`` (1 for a single camera), so that
    ``x_scene = (x_world - center) * s`` puts every camera within the unit sphere, the farthest
    on it. Example: centres ``(0, 0, 0), (4, 0, 0)`` -> center ``(2, 0, 0)``, scale ``0.5``.
    """
    c = centers.double()
    center = c.mean(dim=0)
    radius = float((c - center).norm(dim=-1).max())
    return {"center": center.tolist(), "scale": 1.0 / radius if radius > 0 else 1.0}


def normalization_from_points(points: Tensor) -> dict:
    """``{"center": [x, y, z], "scale": s}`` with ``center`` the per-axis median of the points
    ``(n_points, 3)`` and ``s = 1 / p95(|p - center|)`` (95th percentile, linear interpolation;
    1 if that is 0). Example: points ``(0,0,0), (1,0,0), (3,0,0)`` -> center ``(1, 0, 0)``,
    distances ``1, 0, 2``, p95 = ``1.9``, scale ``1 / 1.9``.
    """
    p = points.double()
    center = torch.quantile(p, 0.5, dim=0)
    radius = float(np.percentile((p - center).norm(dim=-1).numpy(), 95))
    return {"center": center.tolist(), "scale": 1.0 / radius if radius > 0 else 1.0}


def apply_normalization(c2w: Tensor, normalization: dict) -> Tensor:
    """``(n, 3, 4)`` poses with centres mapped by ``(c - center) * scale``; rotations kept."""
    center = torch.tensor(normalization["center"], dtype=c2w.dtype)
    out = c2w.clone()
    out[:, :, 3] = (c2w[:, :, 3] - center) * normalization["scale"]
    return out


def points_aabb(points: Tensor) -> Tensor:
    """``(6,)`` region of interest of normalised points ``(n_points, 3)``: the per-axis 2nd..98th
    percentile box scaled by 1.1 about its centre, half-sizes at least 0.01; ``[-1, 1]^3`` for no
    points. Example: x values 0..100 (101 points) -> percentiles 2 and 98 -> box ``[1.6, 98.4]``.
    """
    if points.shape[0] == 0:
        return torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    p = points.double().numpy()
    lo, hi = np.percentile(p, 2, axis=0), np.percentile(p, 98, axis=0)
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2 * 1.1, 0.01)
    return torch.tensor(np.concatenate([mid - half, mid + half]), dtype=torch.float32)


def near_far_from_depths(depths: Tensor) -> tuple[float, float]:
    """``(0.5 * p5, 2 * p99)`` of positive depths ``(n,)``; ``(0.01, 100)`` when there are none.
    Example: depths 1..100 -> p5 = 5.95, p99 = 99.01 -> ``(2.975, 198.02)``."""
    d = depths[depths > 0].double().numpy()
    if d.size == 0:
        return NO_POINTS_NEAR_FAR
    return 0.5 * float(np.percentile(d, 5)), 2.0 * float(np.percentile(d, 99))


def observed_rows(model: ColmapModel, image_ids: list[int]) -> list[np.ndarray]:
    """Per image of ``image_ids``, the rows of ``model.points`` it observes (int64; ids that
    are not in ``points3D`` are dropped)."""
    row_of = {int(i): k for k, i in enumerate(model.point_ids)}
    return [np.array([row_of[i] for i in model.images[n].point3d_ids.tolist() if i in row_of],
                     dtype=np.int64) for n in image_ids]


def _point_depths(model: ColmapModel, image_ids: list[int], rot: np.ndarray) -> np.ndarray:
    """World-unit planar depths of the observed points of every image (all points in front
    of every camera when no image lists observations)."""
    observed = observed_rows(model, image_ids)
    use_all = not any(len(o) for o in observed)
    depths = []
    for k, n in enumerate(image_ids):
        pts = model.points if use_all else model.points[observed[k]]
        z = pts @ rot[k][2] + model.images[n].tvec[2]
        depths.append(z[z > 0] if use_all else z)
    return np.concatenate(depths) if depths else np.zeros(0)


# ---------------------------------------------------------------------------- lenses


def colmap_lens(camera: ColmapCamera) -> tuple[str, dict[str, float]]:
    """The camera's lens as ``(model, coefficients)`` for :class:`radfield.lens.Lens`."""
    p = [float(v) for v in camera.params]
    if camera.model == "SIMPLE_RADIAL":
        return "opencv", {"k1": p[3]}
    if camera.model == "RADIAL":
        return "opencv", {"k1": p[3], "k2": p[4]}
    if camera.model == "OPENCV":
        return "opencv", dict(zip(("k1", "k2", "p1", "p2"), p[4:8]))
    if camera.model == "OPENCV_FISHEYE":
        return "fisheye", dict(zip(("k1", "k2", "k3", "k4"), p[4:8]))
    return "opencv", {}  # SIMPLE_PINHOLE, PINHOLE


def _pinhole(camera: ColmapCamera) -> tuple[float, float, float, float]:
    p = camera.params
    if camera.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        return float(p[0]), float(p[0]), float(p[1]), float(p[2])
    return float(p[0]), float(p[1]), float(p[2]), float(p[3])


# ---------------------------------------------------------------------------- cameras


@dataclass
class _View:
    """One image of the split as its camera was read: where its pixels are and how to map them
    onto the camera (the COLMAP camera, the pinhole intrinsics at the size the file is read)."""

    file: Path
    camera: ColmapCamera
    intrinsics: tuple[float, float, float, float]
    size: tuple[int, int]
    """``(width, height)`` of the file as read (before any in-memory downscale)."""


def _check_images_present(sfm: ColmapModel, ordered: list[int], folder: Path) -> None:
    missing = [sfm.images[i].name for i in ordered if not (folder / sfm.images[i].name).is_file()]
    if missing:
        raise RadfieldError(f"{sfm.files['images']}: {len(missing)} of {len(ordered)} listed "
                            f"images missing from {folder} (first: {missing[0]})")


def _read_views(path: str | Path, split: str, downscale: int, model: str | None,
                holdout_every: int, normalize: str, need_images: bool
                ) -> tuple[SceneCameras, list[_View], bool]:
    """The split's cameras, its views and whether the images are prescaled (``images_f``).
    Decodes no image; reads image headers only for ``images_f`` (whose sizes set the
    intrinsics). ``need_images``: fail unless every registered image is on disk."""
    path = Path(path)
    check_options(downscale, holdout_every)
    check_choice("normalize", normalize, NORMALIZE_METHODS, "method")
    name, folder = choose_model(path, model)
    sfm = read_model(folder)
    images_file = sfm.files["images"]
    if not sfm.images:
        raise RadfieldError(f"{images_file}: no registered images")
    ordered = sorted(sfm.images, key=lambda i: sfm.images[i].name)
    used = {sfm.images[i].camera_id for i in ordered}
    for cid in sorted(used):
        if cid not in sfm.cameras:
            raise RadfieldError(f"{images_file}: camera {cid} is not in {sfm.files['cameras']}")
        if sfm.cameras[cid].model not in SUPPORTED_MODELS:
            raise RadfieldError(f"{sfm.files['cameras']}: unsupported camera model "
                                f"{sfm.cameras[cid].model} (camera {cid}; supported: "
                                f"{', '.join(SUPPORTED_MODELS)})")
    sizes = {(sfm.cameras[c].width, sfm.cameras[c].height) for c in used}
    if len(sizes) > 1:
        raise RadfieldError(f"{sfm.files['cameras']}: cameras have different image sizes "
                            f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes))}); one size needed")
    full_w, full_h = sizes.pop()
    folder_images, prescaled = image_folder(path, downscale)
    if need_images or prescaled:
        _check_images_present(sfm, ordered, folder_images)

    # Poses and normalisation, from all registered images.
    qvec = torch.tensor(np.stack([sfm.images[i].qvec for i in ordered]), dtype=torch.float64)
    tvec = torch.tensor(np.stack([sfm.images[i].tvec for i in ordered]), dtype=torch.float64)
    c2w_world = colmap_to_c2w(qvec, tvec)
    points_world = torch.from_numpy(sfm.points)
    if normalize == "points":
        if sfm.points.shape[0] == 0:
            raise RadfieldError(f"{sfm.files['points3D']}: no points for normalize='points'")
        norm = normalization_from_points(points_world)
    else:
        norm = normalization_from_cameras(c2w_world[:, :, 3])
    c2w_all = apply_normalization(c2w_world, norm)
    points = (points_world - torch.tensor(norm["center"], dtype=torch.float64)) * norm["scale"]
    rot = qvec_to_rotation(qvec).numpy()
    depths = torch.from_numpy(_point_depths(sfm, ordered, rot) * norm["scale"])
    near, far = near_far_from_depths(depths)

    # Intrinsics and sizes: of the images_f file as it is, else of the camera divided by f.
    chosen = holdout_split(len(ordered), split, holdout_every, str(images_file))
    views, intrinsics, out_size = [], [], None
    for k in chosen:
        entry = sfm.images[ordered[k]]
        camera = sfm.cameras[entry.camera_id]
        file = folder_images / entry.name
        fx, fy, cx, cy = _pinhole(camera)
        if prescaled:
            width, height = read_image_size(file)
            check_prescaled_size(file, width, height, full_w, full_h, downscale)
            sx, sy = width / full_w, height / full_h
            fx, fy, cx, cy = fx * sx, fy * sy, cx * sx, cy * sy
            out = (width, height)
        else:
            width, height = full_w, full_h
            out = (width // downscale, height // downscale)
        views.append(_View(file, camera, (fx, fy, cx, cy), (width, height)))
        intrinsics.append((fx, fy, cx, cy) if prescaled else
                          downscale_intrinsics((fx, fy, cx, cy), downscale))
        out_size = check_same_size(out, file, out_size)

    k = torch.tensor(intrinsics, dtype=torch.float32)
    lens = Lens.from_dicts([colmap_lens(v.camera) for v in views])
    for v, (fx, fy, cx, cy) in zip(views, intrinsics):
        model, coeffs = colmap_lens(v.camera)
        if coeffs:
            why = check_invertible(torch.tensor([coeffs.get(c, 0.0) for c in COEFFICIENTS]), model == "fisheye",
                                   fx, fy, cx, cy, *out_size)
            if why:
                raise RadfieldError(f"{sfm.files['cameras']}: camera {v.camera.camera_id} "
                                    f"({v.camera.model}): {why}")
    cameras = Cameras(c2w_all[chosen].float(), k[:, 0], k[:, 1], k[:, 2], k[:, 3],
                      out_size[0], out_size[1], lens=lens)
    rows = observed_rows(sfm, [ordered[c] for c in chosen])  # (image of the split, point row) pairs
    observations = torch.from_numpy(np.stack(
        [np.repeat(np.arange(len(rows)), [len(r) for r in rows]), np.concatenate(rows)], axis=-1))
    models = sorted({sfm.cameras[c].model for c in used})
    meta = {
        "format": "colmap", "colmap_model": name, "sparse": str(folder),
        "camera_model": models[0] if len(models) == 1 else models,
        "normalization": norm, "unbounded": True, "near": near, "far": far,
        "holdout_every": holdout_every, "points": points.float(),
        "point_colors": torch.from_numpy(sfm.colors.copy()),
        "point_errors": torch.from_numpy(sfm.errors).float(), "observations": observations,
    }
    scene = SceneCameras(cameras=cameras, names=[str(v.file) for v in views],
                         aabb=points_aabb(points), meta=meta)
    return scene, views, prescaled


def colmap_cameras(path: str | Path, split: str = "train", downscale: int = 1,
                   model: str | None = None, holdout_every: int = HOLDOUT_EVERY,
                   normalize: str = "cameras") -> SceneCameras:
    """The cameras of one split of a COLMAP project, without decoding an image: exactly the
    ``cameras``, ``names``, ``aabb`` and ``meta`` of :func:`load_colmap` (same arguments).
    Image sizes come from the COLMAP cameras, or from the file headers of ``images_f``."""
    return _read_views(path, split, downscale, model, holdout_every, normalize,
                       need_images=False)[0]


# ---------------------------------------------------------------------------- the loader


def load_colmap(path: str | Path, split: str = "train", downscale: int = 1,
                model: str | None = None, holdout_every: int = HOLDOUT_EVERY,
                normalize: str = "cameras") -> SceneData:
    """Read one split of a COLMAP project (see module doc): :func:`colmap_cameras` plus the
    pixels, downscaled.

    Args:
        path: the project folder holding ``images/`` and ``sparse/``.
        split: "train", "val" (= "test"), "test" or "all".
        downscale: integer factor ``f``; ``images_f/`` is used when present.
        model: name of the model folder under ``sparse/`` (e.g. "1"); default: most images.
        holdout_every: every ``holdout_every``-th name-sorted image is a test image.
        normalize: "cameras" (:func:`normalization_from_cameras`) or "points"
            (:func:`normalization_from_points`).

    Returns a :class:`SceneData`: ``images (n, H/f, W/f, 3 or 4)`` uint8 (as taken),
    ``cameras`` (``c2w (n, 3, 4)`` OpenGL axes, normalised; ``lens`` for distorted models), ``names`` (image paths),
    ``aabb (6,)``, and ``meta`` with ``format``, ``colmap_model``, ``sparse``, ``camera_model``,
    ``normalization``, ``unbounded``, ``near``, ``far``, ``points (n_points, 3)`` float32
    (normalised), ``point_colors (n_points, 3)`` uint8, ``point_errors (n_points,)`` float32
    (mean reprojection error in pixels) and ``observations (n_obs, 2)`` int64: the
    ``(image index in the split, row of points)`` pairs of the points each image observes
    (sparse depth, :func:`radfield.data.depth.sparse_depth_maps`).
    """
    scene, views, prescaled = _read_views(path, split, downscale, model, holdout_every,
                                          normalize, need_images=True)
    images = []
    for view in views:
        img = read_image(view.file)
        height, width = img.shape[:2]
        if (width, height) != view.size:
            what = "its header" if prescaled else "the COLMAP camera's"
            raise RadfieldError(f"{view.file}: size {width}x{height} differs from {what} "
                                f"{view.size[0]}x{view.size[1]}")
        images.append(img if prescaled else downscale_image(img, downscale))
    return scene.with_images(images)
