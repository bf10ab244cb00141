"""What every dataset reader does with files: JSON, images, depth maps, downscaling, hold-out.

Vocabulary:

* an *image* is an ``(H, W, C)`` uint8 array, ``C = 3`` (RGB) or ``4`` (RGBA, straight alpha);
  a *depth map* an ``(H, W)`` float32 array of planar camera z, 0 = no depth; a *mask* an
  ``(H, W)`` bool array, True = the pixel is used (trained and scored), False = ignored.
* *downscale* ``f``: a positive integer; an image is cropped at the bottom / right to a multiple
  of ``f`` and area-averaged over ``f x f`` blocks, giving ``(H // f, W // f)``. A dataset may
  hold prescaled images in ``PATH/images_f`` (COLMAP and LLFF layouts).
* *hold-out*: of ``n`` images in a fixed order, image ``k`` belongs to "test" and "val" when
  ``k % holdout_every == 0`` and to "train" otherwise (the LLFF / mip-NeRF rule, 1 in 8).

Every failure on bad input is a :class:`radfield.errors.RadfieldError` whose message is one line
starting with the offending file's path.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image

from radfield.errors import MissingSplitError, RadfieldError

__all__ = ["HOLDOUT_EVERY", "one_line", "resolve", "image_file", "read_json", "read_image",
           "read_image_size", "read_depth", "clean_depth", "read_mask", "downscale_image", "downscale_depth",
           "downscale_mask",
           "downscale_intrinsics", "check_rigid", "check_options", "holdout_split",
           "image_folder", "check_prescaled_size", "check_same_size", "channels_alike"]

HOLDOUT_EVERY = 8
"""Every 8th image (index 0, 8, 16, ...) is held out for test / val by default."""


def one_line(text: object) -> str:
    """``str(text)`` with every run of whitespace (newlines included) made one space, for error
    messages that must fit on one line. Example: ``"a\\n  b"`` -> ``"a b"``."""
    return " ".join(str(text).split())


# ---------------------------------------------------------------------------- paths and json


def resolve(folder: Path, relative: str) -> Path:
    """``folder / relative`` normalised (``./`` and ``..`` removed), e.g. ``a / "./b/../c.npy"``
    -> ``a/c.npy``."""
    return Path(os.path.normpath(folder / relative))


def image_file(folder: Path, file_path: str) -> Path:
    """A Blender-json ``file_path`` resolved against the json's ``folder``, ``.png`` appended when
    it has no suffix: ``("d", "./train/r_0") -> d/train/r_0.png``."""
    p = resolve(folder, file_path)
    return p if p.suffix else p.with_name(p.name + ".png")


def read_json(file: Path) -> dict:
    """Parse a json object, turning every failure into a one-line :class:`RadfieldError`."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RadfieldError(f"{file}: cannot read ({one_line(e)})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise RadfieldError(f"{file}: invalid JSON (line {e.lineno})") from None
    if not isinstance(data, dict):
        raise RadfieldError(f"{file}: invalid JSON (top level is not an object)")
    return data


# ---------------------------------------------------------------------------- images and depths


def _unreadable(file: Path, e: Exception) -> RadfieldError:
    reason = "file not found" if isinstance(e, FileNotFoundError) else one_line(e)[:120]
    return RadfieldError(f"{file}: cannot read image ({reason})")


def read_image(file: Path) -> np.ndarray:
    """``(H, W, 3 or 4)`` uint8 image read with Pillow (PNG, JPEG, ...). 16-bit RGB(A) PNGs come
    out of Pillow as 8-bit already; other 16-bit input becomes ``round(x / 257)``."""
    try:
        img = np.asarray(iio.imread(file, plugin="pillow"))
    except Exception as e:  # any decoder failure is a bad-input error at this boundary
        raise _unreadable(file, e) from None
    if img.ndim == 2 or (img.ndim == 3 and img.shape[-1] in (1, 2)):
        raise RadfieldError(f"{file}: grayscale image (RGB or RGBA needed)")
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise RadfieldError(f"{file}: cannot read image (unsupported shape {img.shape})")
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    if img.dtype != np.uint8:
        raise RadfieldError(f"{file}: cannot read image (unsupported pixel type {img.dtype})")
    return img


def read_image_size(file: Path) -> tuple[int, int]:
    """``(width, height)`` of an image from its header, without decoding the pixels (Pillow's
    ``Image.open`` is lazy). The pixels may still be unreadable: :func:`read_image` says."""
    try:
        with Image.open(file) as im:
            width, height = im.size
    except Exception as e:
        raise _unreadable(file, e) from None
    return int(width), int(height)


def read_depth(file: Path, height: int, width: int, integer_scale: float | None = None) -> np.ndarray:
    """``(H, W)`` float32 planar depth from a ``.npy`` file, or from a one-channel integer
    (16-bit PNG) image times ``integer_scale`` (Instant-NGP's ``integer_depth_scale``)."""
    npy = file.suffix.lower() == ".npy"
    if not npy and integer_scale is None:
        raise RadfieldError(f"{file}: an integer depth image needs integer_depth_scale in the json")
    try:
        depth = np.load(file) if npy else iio.imread(file)
    except FileNotFoundError:
        raise RadfieldError(f"{file}: depth file not found") from None
    except Exception as e:
        raise RadfieldError(f"{file}: cannot read depth ({one_line(e)})") from None
    if not npy:
        if depth.ndim != 2 or depth.dtype.kind not in "ui":
            raise RadfieldError(f"{file}: a depth image must have one channel of integers, "
                                f"got {depth.dtype} {depth.shape}")
        depth = depth.astype(np.float64) * integer_scale
    if depth.shape != (height, width):
        raise RadfieldError(f"{file}: depth shape {depth.shape} differs from image "
                            f"{height}x{width}")
    return depth.astype(np.float32)


def clean_depth(depth: np.ndarray) -> tuple[np.ndarray, int]:
    """``(depth, n_bad)``: NaN, infinite and negative depths set to 0 (no depth, so ignored per
    pixel) and how many there were. Example: ``[1, nan, -2, 0]`` -> ``[1, 0, 0, 0]``, 2."""
    bad = ~np.isfinite(depth) | (depth < 0)
    n_bad = int(bad.sum())
    return (np.where(bad, 0.0, depth).astype(np.float32) if n_bad else depth), n_bad


def read_mask(file: Path, image: Path, height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool mask from an image file: a pixel is used (True) where any of its colour
    channels is nonzero (alpha ignored), so 8- or 16-bit grayscale, RGB and RGBA masks all read
    as "0 = ignore, nonzero = use". It must have the size ``height x width`` of ``image``.
    Example: an RGB mask pixel ``(0, 0, 1)`` is used, ``(0, 0, 0)`` is not."""
    try:
        m = np.asarray(iio.imread(file, plugin="pillow"))
    except Exception as e:  # any decoder failure is a bad-input error at this boundary
        reason = "file not found" if isinstance(e, FileNotFoundError) else one_line(e)[:120]
        raise RadfieldError(f"{file}: cannot read mask ({reason})") from None
    if m.ndim == 3:  # any colour channel; alpha (the 2nd of LA, the 4th of RGBA) is ignored
        colour = {2: 1, 4: 3}.get(m.shape[-1], m.shape[-1])
        m = m[..., :colour].max(axis=-1)
    if m.ndim != 2:
        raise RadfieldError(f"{file}: cannot read mask (unsupported shape {m.shape})")
    if m.shape != (height, width):
        raise RadfieldError(f"{file}: mask size {m.shape[1]}x{m.shape[0]} differs from "
                            f"{width}x{height} of its image {image}")
    return m != 0


def channels_alike(images: list[np.ndarray]) -> list[np.ndarray]:
    """The images with one channel count: 4 if any image has alpha (RGB ones get alpha 255),
    else 3. Example: an RGB and an RGBA image -> both RGBA, the first with ``a = 255``."""
    channels = 4 if any(im.shape[-1] == 4 for im in images) else 3
    return [im if im.shape[-1] == channels else
            np.concatenate([im, np.full(im.shape[:2] + (1,), 255, np.uint8)], axis=-1)
            for im in images]


# ---------------------------------------------------------------------------- downscaling


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


def downscale_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """``(H // f, W // f)`` bool: a ``factor x factor`` block is used only if all its pixels are
    (an averaged pixel must not mix in ignored ones). Example: blocks ``[T, T, T, F]`` -> F,
    ``[T, T, T, T]`` -> T."""
    if factor == 1:
        return mask
    h, w = mask.shape[0] // factor, mask.shape[1] // factor
    return mask[: h * factor, : w * factor].reshape(h, factor, w, factor).all(axis=(1, 3))


def downscale_intrinsics(intrinsics: tuple[float, float, float, float], factor: int
                         ) -> tuple[float, float, float, float]:
    """``(fx, fy, cx, cy) / factor``: the pinhole camera of an image area-averaged by ``factor``
    (the crop keeps the pixel grid's origin). Example: ``(18, 17, 8.3, 5.9)``, 2 ->
    ``(9, 8.5, 4.15, 2.95)``."""
    return tuple(v / factor for v in intrinsics)  # type: ignore[return-value]


# ---------------------------------------------------------------------------- poses and options


def check_rigid(matrix, where: str) -> np.ndarray:
    """``(4, 4)`` float64 array of a rigid camera-to-world transform, else RadfieldError: finite,
    rotation orthonormal within 1e-2, determinant +1 within 1e-2, last row ``0 0 0 1``."""
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


def check_options(downscale: int, holdout_every: int) -> None:
    """Both must be positive integers (not bools), else RadfieldError."""
    if not isinstance(downscale, int) or isinstance(downscale, bool) or downscale < 1:
        raise RadfieldError(f"downscale: must be a positive integer, got {downscale!r}")
    if not isinstance(holdout_every, int) or isinstance(holdout_every, bool) or holdout_every < 1:
        raise RadfieldError(f"holdout_every: must be a positive integer, got {holdout_every!r}")


def holdout_split(n: int, split: str, holdout_every: int, where: str) -> list[int]:
    """Indices (into the name-sorted images) of ``split``: "test" / "val" are ``k % every ==
    0``, "train" the rest, "all" everything. Example: ``n = 10, every = 8``: test ``[0, 8]``."""
    if split not in ("train", "val", "test", "all"):
        raise RadfieldError(f"{where}: unknown split '{split}' (expected train, val, test or all)")
    if split == "all":
        return list(range(n))
    held_out = split != "train"
    chosen = [k for k in range(n) if (k % holdout_every == 0) == held_out]
    if not chosen:
        raise MissingSplitError(f"{where}: split '{split}' is empty ({n} images, every "
                                f"{holdout_every}th is held out for test/val)")
    return chosen


# ---------------------------------------------------------------------------- image folders


def image_folder(path: Path, downscale: int) -> tuple[Path, bool]:
    """``(folder, prescaled)``: ``PATH/images_f`` when it exists for ``downscale = f > 1``, else
    ``PATH/images``."""
    if downscale > 1 and (path / f"images_{downscale}").is_dir():
        return path / f"images_{downscale}", True
    return path / "images", False


def check_prescaled_size(file: Path, width: int, height: int, full_w: int, full_h: int,
                         factor: int) -> None:
    """An ``images_f`` image must be within 1 px of ``(full_w / f, full_h / f)``."""
    if abs(width - full_w / factor) > 1 or abs(height - full_h / factor) > 1:
        raise RadfieldError(f"{file}: size {width}x{height} does not match {full_w}x{full_h} "
                            f"/ {factor}")


def check_same_size(size: tuple[int, int], file: Path, common: tuple[int, int] | None
                    ) -> tuple[int, int]:
    """The common ``(width, height)`` of a split's images; a clear error for one whose ``size``
    differs from ``common`` (None: ``size`` is the first)."""
    if common is not None and size != common:
        raise RadfieldError(f"{file}: size {size[0]}x{size[1]} differs from "
                            f"{common[0]}x{common[1]} of the other images")
    return size
