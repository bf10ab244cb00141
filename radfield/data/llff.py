"""Reader for LLFF datasets (``PATH/poses_bounds.npy`` + ``PATH/images``).

Conventions:

* ``poses_bounds.npy`` is ``(N, 17)`` float: row ``k`` is a ``3 x 5`` matrix (row-major)
  ``[R | t | hwf]`` followed by ``near, far``. ``R``'s columns are the camera axes in world
  space in LLFF's (down, right, back) order, ``t`` the camera centre, ``hwf = (height, width,
  focal)`` in pixels of the full-resolution images. The OpenGL camera-to-world matrix
  (x right, y up, z back) is ``[col1, -col0, col2, t]`` (see :func:`llff_to_c2w`).
* Images: the ``.png / .jpg / .jpeg`` files of ``PATH/images`` (or ``PATH/images_f`` for
  ``downscale = f`` when that folder exists; its sizes must be within 1 px of ``w / f, h / f``),
  sorted by name; image ``k`` of that order has pose row ``k``, and their counts must agree.
* Intrinsics for an image of size ``W x H`` as read: ``fx = focal * W / w``,
  ``fy = focal * H / h``, ``cx = W / 2``, ``cy = H / 2`` (LLFF assumes a centred principal
  point). Without ``images_f``, ``downscale = f`` area-averages ``f x f`` blocks and divides the
  intrinsics by ``f``. :func:`llff_cameras` takes ``W x H`` from the image file headers (the
  files under ``images/`` need not have the size of ``hwf``), so it decodes no image.
* Hold-out: name-sorted image ``k`` is in "test" and "val" (the same images) when
  ``k % holdout_every == 0``, in "train" otherwise; "all" is every image.
* Normalisation as for COLMAP (:func:`radfield.data.colmap.normalization_from_cameras`, from all
  N cameras): ``x_scene = (x_world - center) * scale``, stored in ``meta["normalization"]``.
  ``meta["near"] = scale * min(near)``, ``meta["far"] = scale * max(far)`` over all rows.
* ``aabb``: the box of the normalised camera centres enlarged on every side by
  ``margin = max(median(near) * scale, 0.5)``, the distance at which the scene content begins;
  ``meta["unbounded"] = True`` (the box is a region of interest, not the scene's extent).

Bad input raises :class:`radfield.errors.RadfieldError` with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras
from radfield.data.colmap import apply_normalization, normalization_from_cameras
from radfield.data.files import (HOLDOUT_EVERY, check_options, check_prescaled_size,
                                 check_same_size, downscale_image, downscale_intrinsics,
                                 holdout_split, image_folder, one_line, read_image,
                                 read_image_size)
from radfield.data.scene import SceneCameras, SceneData
from radfield.errors import RadfieldError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MIN_MARGIN = 0.5


def llff_to_c2w(poses: Tensor) -> Tensor:
    """``(n, 3, 4)`` OpenGL camera-to-world of LLFF ``(n, 3, 5)`` poses ``[down, right, back,
    t, hwf]``: ``[right, -down, back, t]`` = ``[col1, -col0, col2, col3]``.

    Example: LLFF columns ``down = (0, -1, 0), right = (1, 0, 0), back = (0, 0, 1)`` give the
    identity rotation (x right, y up, z back).
    """
    return torch.stack([poses[:, :, 1], -poses[:, :, 0], poses[:, :, 2], poses[:, :, 3]], dim=-1)


def read_poses_bounds(file: Path) -> np.ndarray:
    """``(N, 17)`` float64 contents of ``poses_bounds.npy``, checked."""
    try:
        data = np.load(file)
    except Exception as e:  # any reader failure is a bad-input error at this boundary
        raise RadfieldError(f"{file}: cannot read ({one_line(e)[:120]})") from None
    if data.ndim != 2 or data.shape[1] != 17 or data.shape[0] == 0:
        raise RadfieldError(f"{file}: expected an N x 17 array, got shape {data.shape}")
    try:
        data = data.astype(np.float64)
    except (TypeError, ValueError):
        raise RadfieldError(f"{file}: not an array of numbers") from None
    if not np.isfinite(data).all():
        raise RadfieldError(f"{file}: values are not finite")
    hwf = data[:, :15].reshape(-1, 3, 5)[:, :, 4]
    if (hwf <= 0).any():
        raise RadfieldError(f"{file}: height, width and focal (column 5) must be positive")
    return data


def _read_views(path: str | Path, split: str, downscale: int, holdout_every: int
                ) -> tuple[SceneCameras, list[tuple[int, int]], bool]:
    """The split's cameras, the ``(width, height)`` of each of its files as read (from the
    headers) and whether they are prescaled (``images_f``). Decodes no image."""
    path = Path(path)
    check_options(downscale, holdout_every)
    file = path / "poses_bounds.npy"
    if not file.is_file():
        raise RadfieldError(f"{file}: not found (LLFF layout: PATH/poses_bounds.npy, PATH/images)")
    data = read_poses_bounds(file)
    poses = torch.from_numpy(data[:, :15].reshape(-1, 3, 5))
    bounds = data[:, 15:]

    folder, prescaled = image_folder(path, downscale)
    if not folder.is_dir():
        raise RadfieldError(f"{folder}: no such folder (LLFF images)")
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) != len(data):
        raise RadfieldError(f"{folder}: {len(files)} images but {file} has {len(data)} poses")

    norm = normalization_from_cameras(poses[:, :, 3])
    c2w_all = apply_normalization(llff_to_c2w(poses), norm)
    scale = norm["scale"]
    centers = c2w_all[:, :, 3]
    margin = max(float(np.median(bounds[:, 0])) * scale, MIN_MARGIN)
    aabb = torch.cat([centers.min(dim=0).values - margin, centers.max(dim=0).values + margin])

    chosen = holdout_split(len(files), split, holdout_every, str(file))
    sizes, intrinsics, out_size = [], [], None
    for k in chosen:
        width, height = read_image_size(files[k])
        h, w, focal = (float(x) for x in poses[k, :, 4])
        if prescaled:
            check_prescaled_size(files[k], width, height, round(w), round(h), downscale)
        intr = (focal * width / w, focal * height / h, width / 2, height / 2)
        if prescaled:
            out = (width, height)
        else:
            intr, out = downscale_intrinsics(intr, downscale), (width // downscale,
                                                                height // downscale)
        out_size = check_same_size(out, files[k], out_size)
        sizes.append((width, height))
        intrinsics.append(intr)

    k = torch.tensor(intrinsics, dtype=torch.float32)
    cameras = Cameras(c2w_all[chosen].float(), k[:, 0], k[:, 1], k[:, 2], k[:, 3],
                      out_size[0], out_size[1])
    meta = {
        "format": "llff", "normalization": norm, "unbounded": True,
        "near": float(bounds[:, 0].min()) * scale, "far": float(bounds[:, 1].max()) * scale,
        "holdout_every": holdout_every,
    }
    scene = SceneCameras(cameras=cameras, names=[str(files[k]) for k in chosen],
                         aabb=aabb.float(), meta=meta)
    return scene, sizes, prescaled


def llff_cameras(path: str | Path, split: str = "train", downscale: int = 1,
                 holdout_every: int = HOLDOUT_EVERY) -> SceneCameras:
    """The cameras of one split of an LLFF dataset, without decoding an image: exactly the
    ``cameras``, ``names``, ``aabb`` and ``meta`` of :func:`load_llff` (image sizes from the
    file headers)."""
    return _read_views(path, split, downscale, holdout_every)[0]


def load_llff(path: str | Path, split: str = "train", downscale: int = 1,
              holdout_every: int = HOLDOUT_EVERY) -> SceneData:
    """Read one split of an LLFF dataset (see module doc): :func:`llff_cameras` plus the pixels.

    Returns a :class:`SceneData`: ``images (n, H, W, 3 or 4)`` uint8, ``cameras`` (``c2w (n, 3,
    4)`` OpenGL axes, normalised), ``names`` (image paths), ``aabb (6,)`` and ``meta`` with
    ``format``, ``normalization``, ``unbounded``, ``near``, ``far``, ``holdout_every``.
    """
    scene, sizes, prescaled = _read_views(path, split, downscale, holdout_every)
    images = []
    for name, size in zip(scene.names, sizes):
        img = read_image(Path(name))
        if (img.shape[1], img.shape[0]) != size:
            raise RadfieldError(f"{name}: size {img.shape[1]}x{img.shape[0]} differs from its "
                                f"header's {size[0]}x{size[1]}")
        images.append(img if prescaled else downscale_image(img, downscale))
    return scene.with_images(images)
