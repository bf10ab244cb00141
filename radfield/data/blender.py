"""Reader for Blender / NeRF-synthetic and Instant-NGP ``transforms*.json`` datasets.

Two layouts are read:

* **Blender / NeRF-synthetic**: ``PATH/transforms_{split}.json`` per split.
* **Instant-NGP**: one ``PATH/transforms.json`` holding every frame (used when
  ``transforms_{split}.json`` is absent). Frames are sorted by ``file_path`` (plain string
  order); frame ``k`` of that order belongs to split ``"test"`` and ``"val"`` when ``k % 8 == 0``
  and to ``"train"`` otherwise (the LLFF / mip-NeRF hold-out rule).

``PATH`` may also be a json file: a file named ``transforms_<split>.json`` is read whole (the
``split`` argument is not used); any other json file is read as an Instant-NGP file.

Conventions (those of :mod:`radfield.cameras`):

* ``transform_matrix`` is a 4x4 camera-to-world matrix, OpenGL axes (x right, y up, looking down
  -z); its top 3x4 becomes ``Cameras.c2w``. It must be rigid: finite, rotation orthonormal
  within 1e-2, determinant +1 within 1e-2, last row ``0 0 0 1``.
* Intrinsics, each frame's keys overriding the top-level ones:
  ``fx = fl_x`` or else ``0.5 * w / tan(0.5 * camera_angle_x)``;
  ``fy = fl_y`` or else ``0.5 * h / tan(0.5 * camera_angle_y)`` or else ``fx``;
  ``cx = w / 2``, ``cy = h / 2`` unless given. ``w, h`` default to the image size and must
  match it when given. Distortion (``k1 k2 p1 p2``) is ignored with a warning; when nonzero it
  is kept, one dict per image, in ``meta["distortion"]``.
* ``file_path`` is relative to the json's folder (``./`` allowed); ``.png`` is appended when it
  has no suffix. Images are RGB or RGBA (PNG or JPEG), kept as uint8; 16-bit images are mapped
  to 8 bits by ``round(x / 257)``. If any image of the split has alpha, all get 4 channels
  (RGB images get alpha 255).
* ``depth_file_path`` (optional): float32 ``.npy`` (H, W) planar camera z, 0 = no depth. Frames
  without one get an all-zero map when others have one.
* ``time`` (optional, dynamic scenes): if any frame has one, all must.
* Scene box: ``aabb = [[xmin, ymin, zmin], [xmax, ymax, zmax]]`` from the json if given, else a
  cube of half-size ``bound`` if a top-level ``bound`` is given, else ``[-1.5, 1.5]^3``.
  Instant-NGP's ``aabb_scale`` does not change the box; it is kept in ``meta["aabb_scale"]``.
* ``downscale = f``: images are cropped at the bottom / right to a multiple of ``f`` and
  area-averaged over ``f x f`` blocks (see :func:`downscale_image`); depths average their
  nonzero values per block (see :func:`downscale_depth`); cameras use ``Cameras.downscaled``.

Bad input raises :class:`radfield.errors.RadfieldError` with one line naming the file.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras
from radfield.data.scene import SceneData
from radfield.errors import MissingSplitError, RadfieldError

DEFAULT_HALF_SIZE = 1.5
NGP_HOLDOUT_EVERY = 8
_DISTORTION_KEYS = ("k1", "k2", "p1", "p2")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------- files and json


def find_transforms(path: Path, split: str) -> tuple[Path, bool]:
    """The json file to read for ``split`` and whether it is a single all-frames (NGP) file."""
    if path.is_file():
        return path, not (path.name.startswith("transforms_") and path.suffix == ".json")
    per_split = path / f"transforms_{split}.json"
    if per_split.is_file():
        return per_split, False
    single = path / "transforms.json"
    if single.is_file():
        return single, True
    raise MissingSplitError(f"{path}: no transforms_{split}.json or transforms.json")


def read_json(file: Path) -> dict:
    """Parse a json object, turning every failure into a one-line :class:`RadfieldError`."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RadfieldError(f"{file}: cannot read ({_one_line(e)})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RadfieldError(f"{file}: invalid JSON (line {e.lineno})") from None
    if not isinstance(data, dict):
        raise RadfieldError(f"{file}: invalid JSON (top level is not an object)")
    return data


def select_ngp_split(frames: list[dict], split: str, file: Path) -> list[dict]:
    """Frames of ``split`` from an all-frames file: sorted by ``file_path``, every 8th
    (index 0, 8, 16, ...) is "test" / "val", the rest "train"."""
    if split not in ("train", "val", "test"):
        raise RadfieldError(f"{file}: unknown split '{split}' (expected train, val or test)")
    ordered = sorted(frames, key=lambda f: str(f.get("file_path", "")))
    held_out = split != "train"
    return [f for k, f in enumerate(ordered) if (k % NGP_HOLDOUT_EVERY == 0) == held_out]


# ---------------------------------------------------------------------------- images and depths


def read_image(file: Path) -> np.ndarray:
    """``(H, W, 3 or 4)`` uint8 image read with Pillow (PNG, JPEG, ...). 16-bit RGB(A) PNGs come
    out of Pillow as 8-bit already; other 16-bit input becomes ``round(x / 257)``."""
    try:
        img = np.asarray(iio.imread(file, plugin="pillow"))
    except Exception as e:  # any decoder failure is a bad-input error at this boundary
        reason = "file not found" if isinstance(e, FileNotFoundError) else _one_line(e)[:120]
        raise RadfieldError(f"{file}: cannot read image ({reason})") from None
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (1, 2)):
        raise RadfieldError(f"{file}: grayscale image (RGB or RGBA needed)")
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise RadfieldError(f"{file}: cannot read image (unsupported shape {img.shape})")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    if img.dtype != np.uint8:
        raise RadfieldError(f"{file}: cannot read image (unsupported pixel type {img.dtype})")
    return img


def read_depth(file: Path, height: int, width: int) -> np.ndarray:
    """``(H, W)`` float32 planar depth from a ``.npy`` file."""
    try:
        depth = np.load(file)
    except FileNotFoundError:
        raise RadfieldError(f"{file}: depth file not found") from None
    except Exception as e:
        raise RadfieldError(f"{file}: cannot read depth ({_one_line(e)})") from None
    if depth.shape != (height, width):
        raise RadfieldError(f"{file}: depth shape {depth.shape} differs from image "
                            f"{height}x{width}")
    return depth.astype(np.float32)


def downscale_image(img: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``(H, W, C)`` uint8 over ``factor x factor`` blocks (bottom / right cropped).

    RGB: ``c' = mean(c)``. RGBA (straight alpha) is averaged premultiplied:
    ``a' = mean(a)``, ``c' = sum(c * a) / sum(a)`` (0 where the block is fully transparent),
    so transparent pixels' colour does not bleed in. Results are rounded to uint8.
    Example: RGBA block ``(200, a=255), (0, a=0), (0, a=0), (0, a=0)`` -> ``(200, a=64)``.
    """
    if factor == 1:
        return img
    h, w, c = img.shape[0] // factor, img.shape[1] // factor, img.shape[2]
    x = img[: h * factor, : w * factor].astype(np.float64).reshape(h, factor, w, factor, c)
    if c == 3:
        out = x.mean(axis=(1, 3))
    else:
        alpha_sum = x[..., 3].sum(axis=(1, 3))
        weighted = (x[..., :3] * x[..., 3:]).sum(axis=(1, 3))
        rgb = weighted / np.maximum(alpha_sum, 1e-12)[..., None]
        out = np.concatenate([rgb, (alpha_sum / factor**2)[..., None]], axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def downscale_depth(depth: np.ndarray, factor: int) -> np.ndarray:
    """Mean of the nonzero (valid) depths of each ``factor x factor`` block; 0 if none."""
    if factor == 1:
        return depth
    h, w = depth.shape[0] // factor, depth.shape[1] // factor
    d = depth[: h * factor, : w * factor].reshape(h, factor, w, factor)
    valid = d > 0
    count = valid.sum(axis=(1, 3))
    total = np.where(valid, d, 0.0).sum(axis=(1, 3))
    return np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)


# ---------------------------------------------------------------------------- poses and intrinsics


def check_rigid(matrix, where: str) -> np.ndarray:
    """``(4, 4)`` float64 array of a rigid camera-to-world transform, else RadfieldError."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: transform_matrix is not a 4x4 matrix of numbers") from None
    if m.shape != (4, 4):
        raise RadfieldError(f"{where}: transform_matrix is not a 4x4 matrix (shape {m.shape})")
    if not np.isfinite(m).all():
        raise RadfieldError(f"{where}: transform_matrix is not finite")
    rot = m[:3, :3]
    rigid = (
        np.allclose(rot.T @ rot, np.eye(3), atol=1e-2)
        and abs(np.linalg.det(rot) - 1.0) < 1e-2
        and np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6)
    )
    if not rigid:
        raise RadfieldError(f"{where}: transform_matrix is not a rigid transform")
    return m


def frame_intrinsics(top: dict, frame: dict, width: int, height: int,
                     where: str) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` in pixels; frame keys override top-level keys (see module doc)."""
    k = {key: top[key] for key in _INTRINSIC_KEYS if key in top}
    k.update({key: frame[key] for key in _INTRINSIC_KEYS if key in frame})
    try:
        w, h = int(k.get("w", width)), int(k.get("h", height))
        if (w, h) != (width, height):
            raise RadfieldError(f"{where}: w x h = {w}x{h} in json differs from image "
                                f"{width}x{height}")
        if "fl_x" in k:
            fx = float(k["fl_x"])
        elif "camera_angle_x" in k:
            fx = 0.5 * w / math.tan(0.5 * float(k["camera_angle_x"]))
        else:
            raise RadfieldError(f"{where}: no focal length (fl_x or camera_angle_x)")
        if "fl_y" in k:
            fy = float(k["fl_y"])
        elif "camera_angle_y" in k:
            fy = 0.5 * h / math.tan(0.5 * float(k["camera_angle_y"]))
        else:
            fy = fx
        cx, cy = float(k.get("cx", w / 2)), float(k.get("cy", h / 2))
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: intrinsics are not numbers") from None
    if not all(math.isfinite(x) for x in (fx, fy, cx, cy)) or fx <= 0 or fy <= 0:
        raise RadfieldError(f"{where}: focal length must be finite and positive")
    return fx, fy, cx, cy


def scene_aabb(meta: dict, file: Path) -> Tensor:
    """``(6,)`` box: json ``aabb``, else a cube of half-size ``bound``, else half-size 1.5."""
    try:
        if "aabb" in meta:
            box = torch.tensor(meta["aabb"], dtype=torch.float32)
            if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
                raise ValueError
            return box.reshape(6)
        half = float(meta.get("bound", DEFAULT_HALF_SIZE))
        if not half > 0:
            raise ValueError
    except (TypeError, ValueError):
        raise RadfieldError(f"{file}: aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] "
                            "with min < max, bound a positive number") from None
    return torch.tensor([-half] * 3 + [half] * 3, dtype=torch.float32)


def _distortion(top: dict, frame: dict) -> dict[str, float]:
    return {key: float(frame.get(key, top.get(key, 0.0))) for key in _DISTORTION_KEYS}


def _image_file(folder: Path, file_path: str) -> Path:
    p = Path(os.path.normpath(folder / file_path))
    return p if p.suffix else p.with_name(p.name + ".png")


# ---------------------------------------------------------------------------- the loader


def load_blender(path: str | Path, split: str = "train", downscale: int = 1) -> SceneData:
    """Read one split of a Blender / NeRF-synthetic or Instant-NGP dataset (see module doc).

    Returns a :class:`SceneData` with ``images (n, H/f, W/f, 3 or 4)`` uint8, ``cameras``
    (``c2w (n, 3, 4)`` OpenGL axes), ``names`` (image paths), ``depths (n, H/f, W/f)`` or None,
    ``times (n,)`` or None, ``aabb (6,)`` and ``meta`` (``format``, ``json``, and
    ``aabb_scale`` / ``distortion`` when present).
    """
    if not isinstance(downscale, int) or downscale < 1:
        raise RadfieldError(f"downscale: must be a positive integer, got {downscale!r}")
    file, single = find_transforms(Path(path), split)
    meta = read_json(file)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise RadfieldError(f"{file}: no frames")
    if not all(isinstance(f, dict) for f in frames):
        raise RadfieldError(f"{file}: frames must be JSON objects")
    numbered = list(enumerate(frames))
    if single:  # in the sorted order of select_ngp_split, with the frames' json indices
        index_of = {id(f): n for n, f in numbered}
        numbered = [(index_of[id(f)], f) for f in select_ngp_split(frames, split, file)]
        if not numbered:
            raise RadfieldError(f"{file}: split '{split}' is empty ({len(frames)} frames, "
                                f"every {NGP_HOLDOUT_EVERY}th is held out for test/val)")

    folder = file.parent
    images, c2ws, intrinsics, names, depths, times, distortions = [], [], [], [], [], [], []
    has_depth = any("depth_file_path" in f for _, f in numbered)
    has_time = any("time" in f for _, f in numbered)
    first_size, first_name = None, None
    for n, frame in numbered:
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise RadfieldError(f"{file}: frame {n}: missing {key}")
        where = f"{file}: frame {n} ({frame['file_path']})"
        c2w = check_rigid(frame["transform_matrix"], where)
        image_file = _image_file(folder, str(frame["file_path"]))
        img = read_image(image_file)
        height, width = img.shape[:2]
        if first_size is None:
            first_size, first_name = (width, height), image_file
        elif (width, height) != first_size:
            raise RadfieldError(f"{image_file}: size {width}x{height} differs from "
                                f"{first_size[0]}x{first_size[1]} of {first_name}")
        intrinsics.append(frame_intrinsics(meta, frame, width, height, where))
        if has_depth:
            depth = (read_depth(_depth_file(folder, frame), height, width)
                     if "depth_file_path" in frame else np.zeros((height, width), np.float32))
            depths.append(downscale_depth(depth, downscale))
        if has_time:
            if "time" not in frame:
                raise RadfieldError(f"{where}: missing time (other frames have one)")
            times.append(float(frame["time"]))
        images.append(downscale_image(img, downscale))
        c2ws.append(c2w[:3])
        names.append(str(image_file))
        distortions.append(_distortion(meta, frame))

    channels = 4 if any(im.shape[-1] == 4 for im in images) else 3
    images = [im if im.shape[-1] == channels else
              np.concatenate([im, np.full(im.shape[:2] + (1,), 255, np.uint8)], axis=-1)
              for im in images]
    k = torch.tensor(intrinsics, dtype=torch.float32)
    cameras = Cameras(torch.tensor(np.stack(c2ws), dtype=torch.float32),
                      k[:, 0], k[:, 1], k[:, 2], k[:, 3], first_size[0], first_size[1])
    extra = {"format": "ngp" if single else "blender", "json": str(file)}
    if "aabb_scale" in meta:
        extra["aabb_scale"] = meta["aabb_scale"]
    if any(v != 0.0 for d in distortions for v in d.values()):
        warnings.warn(f"{file}: lens distortion (k1 k2 p1 p2) is ignored", stacklevel=2)
        extra["distortion"] = distortions
    return SceneData(
        images=torch.from_numpy(np.stack(images)),
        cameras=cameras.downscaled(downscale),
        names=names,
        aabb=scene_aabb(meta, file),
        depths=torch.from_numpy(np.stack(depths)) if has_depth else None,
        times=torch.tensor(times, dtype=torch.float32) if has_time else None,
        meta=extra,
    )


def _depth_file(folder: Path, frame: dict) -> Path:
    return Path(os.path.normpath(folder / str(frame["depth_file_path"])))
