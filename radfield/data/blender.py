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
  ``cx = w / 2``, ``cy = h / 2`` unless given. ``w, h`` default to the size of the split's first
  image (read from its header: :func:`blender_cameras` decodes no image) and must match every
  image's size when given.
* Lens (each frame's keys overriding the top-level ones): ``camera_model`` ``PINHOLE`` /
  ``SIMPLE_PINHOLE`` (no distortion), ``OPENCV`` (``k1 k2 p1 p2``, optional ``k3 k4``: the
  polynomial of :mod:`radfield.lens`) or ``OPENCV_FISHEYE`` (``k1 k2 k3 k4``; Instant-NGP's
  ``is_fisheye: true`` is the same); without ``camera_model``, nonzero coefficients mean
  ``OPENCV``. Rays are generated through the lens (the images are used as taken), shared with
  the COLMAP reader; coefficients must be finite numbers and the lens invertible over the image.
* ``file_path`` is relative to the json's folder (``./`` allowed); ``.png`` is appended when it
  has no suffix. Images are RGB or RGBA (PNG or JPEG), kept as uint8; 16-bit images are mapped
  to 8 bits by ``round(x / 257)``. If any image of the split has alpha, all get 4 channels
  (RGB images get alpha 255).
* ``depth_file_path`` (optional): float32 ``.npy`` (H, W) planar camera z, 0 = no depth. Frames
  without one get an all-zero map when others have one. NaN, infinite and negative depths are
  set to 0 (ignored per pixel) and counted in one warning line per split.
* ``mask_path`` (optional, nerfstudio's key): an image relative to the json's folder, 0 =
  ignore the pixel, nonzero = use it (any colour channel; :func:`radfield.data.files.read_mask`),
  of its image's size; it becomes ``SceneData.masks`` (masked pixels are neither trained nor
  scored). Frames without one use every pixel when others have one.
* ``time`` (optional, dynamic scenes): if any frame has one, all must.
* Scene box: ``aabb = [[xmin, ymin, zmin], [xmax, ymax, zmax]]`` from the json if given, else a
  cube of half-size ``bound`` if a top-level ``bound`` is given, else Instant-NGP's: its unit
  cube is ``x_ngp = scale * x + offset in [0, 1]^3`` (``scale`` default 1/3, ``offset`` default
  0.5; radfield keeps the json's world coordinates), i.e. centre ``(0.5 - offset) / scale`` and
  half-size ``0.5 / scale`` (1.5 by default), grown ``aabb_scale`` times about its centre (the
  object stays in the unit cube, the background fills the rest; ``meta["aabb_scale"]`` tells the
  occupancy grid to cascade).
* Frames as Instant-NGP treats them: in an all-frames file or where frames carry ``sharpness``,
  frames whose image file is missing are skipped, and so are frames whose ``sharpness`` is below
  ``BLUR_RATIO`` (0.3) times the median of their ``BLUR_WINDOW`` (10) neighbours in file order;
  one warning line says how many and why.
* ``depth_file_path`` (or Instant-NGP's ``depth_path``): a float32 ``.npy`` as above, or a 16-bit
  PNG scaled by the top-level ``integer_depth_scale`` (Instant-NGP's; world units per step).
* nerfstudio's ``applied_transform`` (3x4 or 4x4) and ``applied_scale``: the transform
  ``ns-process-data`` applied to the source capture's coordinates to give the json's; checked and
  kept in ``meta`` (the json's coordinates are the world frame of exports).
* ``downscale = f``: images are cropped at the bottom / right to a multiple of ``f`` and
  area-averaged over ``f x f`` blocks (see :func:`radfield.data.files.downscale_image`); depths
  average their nonzero values per block (:func:`radfield.data.files.downscale_depth`); a mask
  keeps a block only if all its pixels are kept (:func:`radfield.data.files.downscale_mask`);
  cameras use ``Cameras.downscaled``.

Bad input raises :class:`radfield.errors.RadfieldError` with one line naming the file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras
from radfield.data.files import (HOLDOUT_EVERY, check_rigid, clean_depth, downscale_depth, downscale_image,
                                 downscale_mask, image_file, read_depth, read_image,
                                 read_image_size, read_json, read_mask, resolve)
from radfield.data.scene import SceneCameras, SceneData
from radfield.errors import MissingSplitError, RadfieldError
from radfield.lens import COEFFICIENTS, Lens, check_invertible

__all__ = ["load_blender", "blender_cameras", "find_transforms", "select_ngp_split",
           "frame_intrinsics", "scene_aabb", "INTRINSIC_KEYS", "DEFAULT_HALF_SIZE"]

DEFAULT_HALF_SIZE = 1.5
INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y")
"""The json keys of a camera's intrinsics; a frame's own keys override the top-level ones."""


# ---------------------------------------------------------------------------- json layout


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


def select_ngp_split(frames: list[dict], split: str, file: Path) -> list[dict]:
    """Frames of ``split`` from an all-frames file: sorted by ``file_path``, every 8th
    (index 0, 8, 16, ...) is "test" / "val", the rest "train"."""
    if split not in ("train", "val", "test"):
        raise RadfieldError(f"{file}: unknown split '{split}' (expected train, val or test)")
    ordered = sorted(frames, key=lambda f: str(f.get("file_path", "")))
    held_out = split != "train"
    return [f for k, f in enumerate(ordered) if (k % HOLDOUT_EVERY == 0) == held_out]


# ---------------------------------------------------------------------------- poses and intrinsics


def frame_intrinsics(top: dict, frame: dict, width: int, height: int,
                     where: str) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy)`` in pixels; frame keys override top-level keys (see module doc)."""
    k = {key: top[key] for key in INTRINSIC_KEYS if key in top}
    k.update({key: frame[key] for key in INTRINSIC_KEYS if key in frame})
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


def _number(value, what: str, where: str, positive: bool = False) -> float:
    """``value`` as a finite float (positive if asked), else a one-line RadfieldError."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: {what} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (positive and x <= 0):
        raise RadfieldError(f"{where}: {what} must be {'positive' if positive else 'finite'}, got {value!r}")
    return x


def scene_aabb(meta: dict, file: Path) -> Tensor:
    """``(6,)`` box: json ``aabb``, else a cube of half-size ``bound``, else Instant-NGP's unit
    cube from ``scale`` / ``offset``, grown ``aabb_scale`` times (see module doc)."""
    try:
        if "aabb" in meta:
            box = torch.tensor(meta["aabb"], dtype=torch.float32)
            if box.shape != (2, 3) or not bool((box[1] > box[0]).all()):
                raise ValueError
            return box.reshape(6)
        if "bound" in meta:
            half = float(meta["bound"])
            if not half > 0:
                raise ValueError
            return torch.tensor([-half] * 3 + [half] * 3, dtype=torch.float32)
    except (TypeError, ValueError):
        raise RadfieldError(f"{file}: aabb must be [[xmin, ymin, zmin], [xmax, ymax, zmax]] "
                            "with min < max, bound a positive number") from None
    scale = _number(meta.get("scale", 1 / 3), "scale", str(file), positive=True)
    offset = meta.get("offset", 0.5)
    if isinstance(offset, list) and len(offset) != 3:
        raise RadfieldError(f"{file}: offset must be a number or [x, y, z], got {offset!r}")
    offsets = offset if isinstance(offset, list) else [offset] * 3
    centre = torch.tensor([(0.5 - _number(o, "offset", str(file))) / scale for o in offsets])
    half = 0.5 / scale * aabb_scale(meta, file)
    return torch.cat([centre - half, centre + half]).float()


def aabb_scale(meta: dict, file: Path) -> float:
    """Instant-NGP's ``aabb_scale`` (1 when absent); a positive number."""
    return _number(meta.get("aabb_scale", 1), "aabb_scale", str(file), positive=True)


CAMERA_MODELS = {"PINHOLE": "opencv", "SIMPLE_PINHOLE": "opencv", "OPENCV": "opencv",
                 "OPENCV_FISHEYE": "fisheye"}


def frame_lens(top: dict, frame: dict, where: str) -> tuple[str, dict[str, float]]:
    """``(model, coefficients)`` of a frame's lens (frame keys override top-level ones)."""
    def get(key, default=None):
        return frame.get(key, top.get(key, default))

    name = get("camera_model")
    if name is None:
        model = "fisheye" if get("is_fisheye", False) is True else "opencv"
    elif name in CAMERA_MODELS:
        model = CAMERA_MODELS[name]
    else:
        raise RadfieldError(f"{where}: unsupported camera_model {name!r} "
                            f"(supported: {', '.join(CAMERA_MODELS)})")
    if name in ("PINHOLE", "SIMPLE_PINHOLE"):
        return model, {}
    keys = ("k1", "k2", "k3", "k4") if model == "fisheye" else COEFFICIENTS
    return model, {k: _number(get(k), k, where) for k in keys if get(k) is not None}


BLUR_RATIO = 0.3
BLUR_WINDOW = 10


def usable_frames(numbered: list[tuple[int, dict]], folder: Path, file: Path,
                  skip_missing: bool) -> list[tuple[int, dict]]:
    """The frames Instant-NGP would train on (see module doc); warns once about the others."""
    missing = {n for n, f in numbered if skip_missing and "file_path" in f
               and not image_file(folder, str(f["file_path"])).is_file()}
    order = [n for n, f in numbered if "sharpness" in f]
    values = np.array([_number(f["sharpness"], "sharpness", f"{file}: frame {n}")
                       for n, f in numbered if "sharpness" in f])
    blurry = set()
    for k, n in enumerate(order):
        lo = max(0, min(k - BLUR_WINDOW // 2, len(order) - BLUR_WINDOW - 1))
        neighbours = np.delete(values[lo:lo + BLUR_WINDOW + 1], k - lo)
        if len(neighbours) and values[k] < BLUR_RATIO * np.median(neighbours) and n not in missing:
            blurry.add(n)
    kept = [(n, f) for n, f in numbered if n not in missing and n not in blurry]
    if len(kept) < len(numbered):
        why = " and ".join([f"{len(missing)} with no image file"] * bool(missing)
                           + [f"{len(blurry)} much blurrier than their neighbours (sharpness)"] * bool(blurry))
        if not kept:
            raise RadfieldError(f"{file}: no usable frame ({why})")
        warnings.warn(f"{file}: skipped {len(numbered) - len(kept)} of {len(numbered)} frames: {why}",
                      stacklevel=4)
    return kept


def applied_transform(meta: dict, file: Path) -> dict:
    """nerfstudio's ``applied_transform`` / ``applied_scale``, checked (see module doc)."""
    out = {}
    if "applied_transform" in meta:
        try:
            m = np.asarray(meta["applied_transform"], dtype=np.float64)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all() or abs(np.linalg.det(m[:3, :3])) < 1e-9:
            raise RadfieldError(f"{file}: applied_transform must be an invertible 3x4 or 4x4 matrix of numbers")
        out["applied_transform"] = m[:3].tolist()
    if "applied_scale" in meta:
        out["applied_scale"] = _number(meta["applied_scale"], "applied_scale", str(file), positive=True)
    return out


# ---------------------------------------------------------------------------- cameras


@dataclass
class _Frame:
    """One frame of the split as its camera was read: where its pixels are, how big they are."""

    index: int
    """The frame's index in the json's ``frames``."""
    entry: dict
    where: str
    image: Path
    json_size: tuple[int, int] | None
    """``(w, h)`` from the json (the frame's keys, else the top level), or None."""


def _json_size(top: dict, frame: dict, where: str) -> tuple[int, int] | None:
    """``(w, h)`` of a frame from the json, None when ``w`` or ``h`` is absent."""
    if not all(key in frame or key in top for key in ("w", "h")):
        return None
    try:
        return int(frame.get("w", top.get("w"))), int(frame.get("h", top.get("h")))
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: intrinsics are not numbers") from None


def _read_transforms(path: str | Path, split: str, downscale: int
                     ) -> tuple[SceneCameras, list[_Frame], tuple[int, int]]:
    """The split's cameras, its frames and the full-resolution image size ``(W, H)``; decodes
    no image (see :func:`blender_cameras`)."""
    if not isinstance(downscale, int) or isinstance(downscale, bool) or downscale < 1:
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
                                f"every {HOLDOUT_EVERY}th is held out for test/val)")

    folder = file.parent
    numbered = usable_frames(numbered, folder, file, skip_missing=single or any("sharpness" in f for f in frames))
    has_time = any("time" in f for _, f in numbered)
    parsed, c2ws, times, lenses = [], [], [], []
    for n, frame in numbered:
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise RadfieldError(f"{file}: frame {n}: missing {key}")
        where = f"{file}: frame {n} ({frame['file_path']})"
        c2ws.append(check_rigid(frame["transform_matrix"], where)[:3])
        if has_time:
            if "time" not in frame:
                raise RadfieldError(f"{where}: missing time (other frames have one)")
            times.append(float(frame["time"]))
        parsed.append(_Frame(n, frame, where, image_file(folder, str(frame["file_path"])),
                             _json_size(meta, frame, where)))
        lenses.append(frame_lens(meta, frame, where))

    # One image size for the split: the json's w / h, else the first image's (its header only).
    first = parsed[0]
    header = None
    size = first.json_size
    intrinsics = []
    for f in parsed:
        if f.json_size is not None:
            width, height = f.json_size
        else:
            header = header or read_image_size(first.image)
            width, height = header
        size = size or (width, height)
        if (width, height) != size:
            raise RadfieldError(f"{f.where}: image size {width}x{height} differs from "
                                f"{size[0]}x{size[1]} of frame {first.index}")
        intrinsics.append(frame_intrinsics(meta, f.entry, width, height, f.where))
        model, coeffs = lenses[len(intrinsics) - 1]
        if model == "fisheye" or any(coeffs.values()):
            why = check_invertible(torch.tensor([coeffs.get(c, 0.0) for c in COEFFICIENTS]), model == "fisheye",
                                   *intrinsics[-1], width, height)
            if why:
                raise RadfieldError(f"{f.where}: lens {model} {coeffs}: {why}")

    k = torch.tensor(intrinsics, dtype=torch.float32)
    cameras = Cameras(torch.tensor(np.stack(c2ws), dtype=torch.float32),
                      k[:, 0], k[:, 1], k[:, 2], k[:, 3], size[0], size[1], lens=Lens.from_dicts(lenses))
    extra = {"format": "ngp" if single else "blender", "json": str(file), **applied_transform(meta, file)}
    if aabb_scale(meta, file) != 1:
        extra["aabb_scale"] = aabb_scale(meta, file)
    if cameras.lens is not None:
        extra["camera_model"] = sorted({m for m, c in lenses if m == "fisheye" or any(c.values())})
    scene = SceneCameras(
        cameras=cameras.downscaled(downscale),
        names=[str(f.image) for f in parsed],
        aabb=scene_aabb(meta, file),
        meta=extra,
        times=torch.tensor(times, dtype=torch.float32) if has_time else None,
    )
    return scene, parsed, size


def blender_cameras(path: str | Path, split: str = "train", downscale: int = 1) -> SceneCameras:
    """The cameras of one split of a Blender / Instant-NGP dataset, without decoding an image.

    Exactly the ``cameras``, ``names``, ``aabb``, ``times`` and ``meta`` of
    :func:`load_blender`. The image size is the json's ``w`` / ``h``; frames without them get the
    size of the split's first image, read from its header only.
    """
    return _read_transforms(path, split, downscale)[0]


# ---------------------------------------------------------------------------- the loader


def load_blender(path: str | Path, split: str = "train", downscale: int = 1) -> SceneData:
    """Read one split of a Blender / NeRF-synthetic or Instant-NGP dataset (see module doc):
    :func:`blender_cameras` plus the pixels, which must have the cameras' size.

    Returns a :class:`SceneData` with ``images (n, H/f, W/f, 3 or 4)`` uint8, ``cameras``
    (``c2w (n, 3, 4)`` OpenGL axes), ``names`` (image paths), ``depths (n, H/f, W/f)`` or None,
    ``masks (n, H/f, W/f)`` bool or None, ``times (n,)`` or None, ``aabb (6,)`` and ``meta``
    (``format``, ``json``, and ``aabb_scale`` / ``distortion`` when present).
    """
    scene, frames, size = _read_transforms(path, split, downscale)
    folder = Path(scene.meta["json"]).parent
    has_depth = any("depth_file_path" in f.entry or "depth_path" in f.entry for f in frames)
    has_mask = any("mask_path" in f.entry for f in frames)
    top = read_json(Path(scene.meta["json"]))
    depth_scale = (_number(top["integer_depth_scale"], "integer_depth_scale", scene.meta["json"], positive=True)
                   if "integer_depth_scale" in top else None)
    images, depths, masks = [], [], []
    bad_depths, bad_files = 0, 0
    for f in frames:
        img = read_image(f.image)
        height, width = img.shape[:2]
        if (width, height) != size:  # the cameras' size: from the json, else the first image
            source = (f"w x h in {scene.meta['json']}" if frames[0].json_size is not None
                      else f"of {frames[0].image}")
            raise RadfieldError(f"{f.image}: size {width}x{height} differs from "
                                f"{size[0]}x{size[1]} {source}")
        if has_depth:
            key = "depth_file_path" if "depth_file_path" in f.entry else "depth_path"
            depth = (read_depth(resolve(folder, str(f.entry[key])), height, width, depth_scale)
                     if key in f.entry else np.zeros((height, width), np.float32))
            depth, n_bad = clean_depth(depth)
            bad_depths, bad_files = bad_depths + n_bad, bad_files + (n_bad > 0)
            depths.append(downscale_depth(depth, downscale))
        if has_mask:
            mask = (read_mask(resolve(folder, str(f.entry["mask_path"])), f.image, height, width)
                    if "mask_path" in f.entry else np.ones((height, width), bool))
            masks.append(downscale_mask(mask, downscale))
        images.append(downscale_image(img, downscale))
    if bad_depths:
        warnings.warn(f"{scene.meta['json']}: {bad_depths} depth pixels in {bad_files} depth "
                      "files are NaN, infinite or negative; they are ignored (no depth)", stacklevel=2)
    return scene.with_images(images, torch.from_numpy(np.stack(depths)) if has_depth else None,
                             masks if has_mask else None)
