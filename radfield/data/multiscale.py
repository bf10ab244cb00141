"""The multi-scale Blender dataset of mip-NeRF: every view at full size and shrunk by 2, 4, 8.

Vocabulary: a *scale* ``f`` is a positive integer shrink factor; the scale-``f`` image of a
``W x H`` view is ``W // f x H // f`` and each of its pixels is the area average of one
``f x f`` block of full-resolution pixels.

Layout written by :func:`make_multiscale` (each ``x{f}`` is a complete Blender dataset that
:func:`radfield.data.blender.load_blender` reads on its own)::

    out/multiscale.json                  {"scales": [1, 2, 4, 8], "source": "<src>"}
    out/x{f}/transforms_{split}.json     splits missing from the source are skipped
    out/x{f}/<image path of the source, as .png>
    out/x{f}/<depth path of the source>  when frames have ``depth_file_path``
    out/x{f}/<mask path of the source, as .png>  when frames have ``mask_path``

Choices:

* **Premultiplied averaging.** RGBA pixels (straight alpha, as the PNGs store them) are averaged
  as ``a' = mean(a)``, ``c' = sum(c * a) / sum(a)`` (0 where the block is fully transparent),
  i.e. premultiplied colour and alpha are averaged and the colour un-premultiplied again; this
  is :func:`radfield.data.files.downscale_image`. Composited over a background ``b`` this is
  exactly the block mean of the composited full-resolution pixels,
  ``c' a' + b (1 - a') = mean(c a + b (1 - a))``. mip-NeRF's ``convert_blender_data.py``
  instead averages straight RGBA (``down2``: plain mean of r, g, b, a), which darkens
  silhouettes: a block of one opaque white pixel and three transparent black ones becomes
  ``(0.25, a=0.25)``, composited on white ``0.81`` instead of ``1.0``. (It also stores
  ``uint8(x * 255)``, truncating; we round.) RGB images are plain block means.
* **Cropping.** Scale ``f`` crops the full image at the bottom / right to a multiple of ``f``
  (as :func:`downscale_image` does); the crop keeps the pixel grid's origin, so the intrinsics
  are exactly ``fl_x / f, fl_y / f, cx / f, cy / f`` with ``w = W // f``, ``h = H // f``.
* **Each scale from the full image.** Every scale is averaged directly from the source pixels,
  not from the rounded uint8 image of the previous scale, so rounding does not accumulate.
* **Intrinsics in each json.** The per-scale json writes ``fl_x fl_y cx cy w h`` explicitly (per
  frame where a frame's own intrinsics differ from frame 0's) and keeps the source's
  ``camera_angle_x`` (the field of view of the uncropped image; ``fl_x`` takes precedence in
  the reader, and the two agree whenever ``W`` is divisible by ``f``). Depths
  (``depth_file_path``) are averaged over the nonzero values of each block
  (:func:`radfield.data.files.downscale_depth`); masks (``mask_path``) keep a block only if all
  its pixels are kept (:func:`radfield.data.files.downscale_mask`) and are written as 0 / 255
  grayscale PNGs. Every other frame key is kept unchanged.

:func:`make_multiscale` writes into a hidden folder beside ``out`` and renames it onto ``out``
at the end, so a failed or interrupted run leaves no ``out`` that looks complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radfield.data.blender import INTRINSIC_KEYS, blender_cameras, frame_intrinsics, load_blender
from radfield.data.files import (check_rigid, downscale_depth, downscale_image, downscale_mask,
                                 image_file, read_depth, read_image, read_json, read_mask,
                                 resolve)
from radfield.data.scene import SceneCameras, SceneData
from radfield.errors import RadfieldError
from radfield.io import save_png

__all__ = ["make_multiscale", "is_multiscale", "load_multiscale", "multiscale_cameras",
           "loss_multipliers"]

MANIFEST = "multiscale.json"
DEFAULT_SCALES = (1, 2, 4, 8)
SPLITS = ("train", "val", "test")


def check_scales(scales, where: str = "scales") -> tuple[int, ...]:
    """``scales`` as a tuple of distinct positive ints (order kept), else RadfieldError."""
    ok = (isinstance(scales, Sequence) and not isinstance(scales, str) and len(scales) > 0
          and all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in scales)
          and len(set(scales)) == len(scales))
    if not ok:
        raise RadfieldError(f"{where}: scales must be distinct positive integers, got {scales!r}")
    return tuple(scales)


def loss_multipliers(scales: Sequence[int]) -> dict[int, float]:
    """Per-pixel loss weight of each scale: ``w_f = f^2`` (mip-NeRF's ``lossmult = 4^level``).

    A scale-``f`` image has ``1 / f^2`` as many pixels as the full image, so with rays drawn
    uniformly from all pixels of all scales, an image at scale ``f`` gets ``1 / f^2`` as many
    rays. Weighting each pixel's loss by the area ratio ``f^2`` (and normalising by the sum of
    weights, ``sum(w * err) / sum(w)``) makes every image count equally whatever its scale:
    ``(H / f)(W / f) * f^2 = H W``. Example: scales ``(1, 2, 4, 8)`` ->
    ``{1: 1.0, 2: 4.0, 4: 16.0, 8: 64.0}``.
    """
    return {f: float(f * f) for f in check_scales(scales)}


# ---------------------------------------------------------------------------- writing


def make_multiscale(src: str | Path, out: str | Path, scales: Sequence[int] = DEFAULT_SCALES,
                    progress: bool = True, overwrite: bool = False) -> Path:
    """Write the multi-scale version of the Blender dataset ``src`` to ``out``; returns ``out``.

    ``src`` holds ``transforms_{train,val,test}.json`` (train required, the others optional)
    and their images. See the module doc for the layout and the averaging. ``out`` must not
    exist or be empty, unless ``overwrite`` (then it is replaced once the new one is complete).
    """
    scales = check_scales(scales)
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise RadfieldError(f"{src}: no such dataset folder")
    if not (src / "transforms_train.json").is_file():
        raise RadfieldError(f"{src}: no transforms_train.json (the train split is required)")
    if out.exists():
        if not out.is_dir():
            raise RadfieldError(f"{out}: exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise RadfieldError(f"{out}: exists and is not empty (use overwrite to replace it)")
    src_abs, out_abs = src.resolve(), out.resolve()
    if out_abs == src_abs or out_abs in src_abs.parents:
        raise RadfieldError(f"{out}: output would replace the source dataset {src}")

    splits = {s: _read_split(src / f"transforms_{s}.json") for s in SPLITS
              if (src / f"transforms_{s}.json").is_file()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=sum(len(m["frames"]) for m in splits.values()),
                       desc=f"multiscale {src.name}", unit="img", file=sys.stderr)
        written: dict[Path, Path] = {}
        for split, meta in splits.items():
            _convert_split(src, split, meta, tmp, scales, written, bar)
        if bar is not None:
            bar.close()
        manifest = {"scales": list(scales), "source": str(src)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _read_split(file: Path) -> dict:
    meta = read_json(file)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise RadfieldError(f"{file}: no frames")
    for n, frame in enumerate(frames):
        if not isinstance(frame, dict):
            raise RadfieldError(f"{file}: frame {n} is not a JSON object")
        for key in ("file_path", "transform_matrix"):
            if key not in frame:
                raise RadfieldError(f"{file}: frame {n}: missing {key}")
        check_rigid(frame["transform_matrix"], f"{file}: frame {n} ({frame['file_path']})")
    return meta


def _output_path(src: Path, file: Path, split: str, suffix: str) -> Path:
    """Path of ``file``'s copy relative to a scale folder: its path inside ``src``, or
    ``split/<name>`` when it lies outside; with ``suffix``."""
    rel = Path(os.path.relpath(file, src))
    if rel.is_absolute() or rel.parts[0] == "..":
        rel = Path(split) / file.name
    return rel.with_suffix(suffix)


def _claim(written: dict[Path, Path], rel: Path, source: Path) -> None:
    """Two different source files must not land on one output file."""
    if written.setdefault(rel, source) != source:
        raise RadfieldError(f"{source}: would be written to {rel}, as {written[rel]} already is")


def _json_file_path(rel: Path) -> str:
    """``./a/b`` for ``a/b.png`` (the reader appends ``.png``), unless the stem has a dot."""
    stem = rel.with_suffix("")
    return "./" + (stem if not stem.suffix else rel).as_posix()


def _convert_split(src: Path, split: str, meta: dict, tmp: Path, scales: tuple[int, ...],
                   written: dict[Path, Path], bar) -> None:
    file = src / f"transforms_{split}.json"
    top = {k: v for k, v in meta.items() if k != "frames" and k not in INTRINSIC_KEYS}
    frames = {f: [] for f in scales}
    first = None  # (width, height, intrinsics, image file) of frame 0
    for n, frame in enumerate(meta["frames"]):
        where = f"{file}: frame {n} ({frame['file_path']})"
        img_path = image_file(src, str(frame["file_path"]))
        img = read_image(img_path)
        height, width = img.shape[:2]
        intr = frame_intrinsics(meta, frame, width, height, where)
        if first is None:
            first = (width, height, intr, img_path)
            for f in scales:
                if width // f == 0 or height // f == 0:
                    raise RadfieldError(f"{img_path}: {width}x{height} image is smaller than "
                                        f"scale {f}")
        elif (width, height) != first[:2]:
            raise RadfieldError(f"{img_path}: size {width}x{height} differs from "
                                f"{first[0]}x{first[1]} of {first[3]}")
        image_rel = _output_path(src, img_path, split, ".png")
        _claim(written, image_rel, img_path)
        depth, depth_rel = None, None
        if "depth_file_path" in frame:
            depth_file = resolve(src, str(frame["depth_file_path"]))
            depth = read_depth(depth_file, height, width)
            depth_rel = _output_path(src, depth_file, split, ".npy")
            _claim(written, depth_rel, depth_file)
        mask, mask_rel = None, None
        if "mask_path" in frame:
            mask_file = resolve(src, str(frame["mask_path"]))
            mask = read_mask(mask_file, img_path, height, width)
            mask_rel = _output_path(src, mask_file, split, ".png")
            _claim(written, mask_rel, mask_file)

        kept = {k: v for k, v in frame.items() if k not in INTRINSIC_KEYS}
        for f in scales:
            save_png(tmp / f"x{f}" / image_rel, downscale_image(img, f))
            entry = {**kept, "file_path": _json_file_path(image_rel)}
            if depth is not None:
                (tmp / f"x{f}" / depth_rel).parent.mkdir(parents=True, exist_ok=True)
                with open(tmp / f"x{f}" / depth_rel, "wb") as fh:
                    np.save(fh, downscale_depth(depth, f))
                entry["depth_file_path"] = "./" + depth_rel.as_posix()
            if mask is not None:
                save_png(tmp / f"x{f}" / mask_rel, downscale_mask(mask, f).astype(np.uint8) * 255)
                entry["mask_path"] = "./" + mask_rel.as_posix()
            if intr != first[2]:
                entry.update(_scaled_intrinsics(intr, f))
            frames[f].append(entry)
        if bar is not None:
            bar.update(1)

    width, height, intr, _ = first
    try:
        angle = float(meta["camera_angle_x"])
    except (KeyError, TypeError, ValueError):  # none (or unusable): that of fl_x
        angle = 2.0 * float(np.arctan(0.5 * width / intr[0]))
    for f in scales:
        doc = {**top, "camera_angle_x": angle, **_scaled_intrinsics(intr, f),
               "w": width // f, "h": height // f, "frames": frames[f]}
        (tmp / f"x{f}" / f"transforms_{split}.json").write_text(json.dumps(doc, indent=1),
                                                               encoding="utf-8")


def _scaled_intrinsics(intr: tuple[float, float, float, float], f: int) -> dict[str, float]:
    fx, fy, cx, cy = intr
    return {"fl_x": fx / f, "fl_y": fy / f, "cx": cx / f, "cy": cy / f}


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` onto ``out``; an existing ``out`` is moved aside first and
    deleted only after the rename succeeded (put back if it failed)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------- reading


def is_multiscale(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`make_multiscale` (or its manifest)."""
    p = Path(path)
    return (p / MANIFEST).is_file() if p.is_dir() else (p.name == MANIFEST and p.is_file())


def _scale_folders(path: str | Path) -> list[tuple[int, Path]]:
    """``(f, folder of scale f)`` in the order of ``multiscale.json``'s scales, checked."""
    p = Path(path)
    folder = p.parent if p.is_file() else p
    if not is_multiscale(p):
        raise RadfieldError(f"{p}: not a multi-scale dataset (no {MANIFEST})")
    manifest = folder / MANIFEST
    scales = check_scales(read_json(manifest).get("scales"), str(manifest))
    for f in scales:
        if not (folder / f"x{f}").is_dir():
            raise RadfieldError(f"{folder / f'x{f}'}: missing (listed in {manifest})")
    return [(f, folder / f"x{f}") for f in scales]


def load_multiscale(path: str | Path, split: str = "train") -> list[SceneData]:
    """One :class:`SceneData` per scale (``load_blender(path / "x{f}", split)``), in the order
    of ``multiscale.json``'s scales, each with ``meta["scale"] = f``."""
    scenes = []
    for f, folder in _scale_folders(path):
        data = load_blender(folder, split)
        data.meta["scale"] = f
        scenes.append(data)
    return scenes


def multiscale_cameras(path: str | Path, split: str = "train") -> SceneCameras:
    """The cameras of the full-resolution scale (the smallest ``f``, 1 for the default scales),
    without decoding an image: those of ``load_multiscale(path, split)`` at that scale, with
    ``meta["scale"] = f``."""
    f, folder = min(_scale_folders(path))
    cams = blender_cameras(folder, split)
    cams.meta["scale"] = f
    return cams
