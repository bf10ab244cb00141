"""Reader for DTU scenes in the IDR / NeuS / VolSDF layout (``PATH/cameras.npz``,
``PATH/image/``, ``PATH/mask/``).

Layout: ``PATH/cameras.npz`` (NeuS names it ``cameras_sphere.npz``; either is read, in that
order) holds per image ``k = 0 .. n-1`` a ``world_mat_k`` and a ``scale_mat_k``; other arrays
(``camera_mat_k``, the ``*_inv_k`` inverses) are not used. ``PATH/image/`` holds the images and
``PATH/mask/`` (optional) the object masks, both ``.png / .jpg / .jpeg`` files sorted by name:
image ``k`` of that order has ``world_mat_k`` and mask ``k`` (their names may differ, e.g. IDR's
``000000.png`` and ``000.png``); the counts must agree.

Conventions:

* ``world_mat_k`` (``4 x 4`` or ``3 x 4``; the top three rows are used) is a projection
  ``P = lambda K [R | t]`` from DTU's world frame to pixels, OpenCV camera axes (x right, y
  down, z forward), defined up to a factor ``lambda`` (any sign). Its pixel ``(i, j)`` has its
  centre at ``(i, j)``, the points through which IDR, NeuS and VolSDF cast their rays; radfield
  puts it at ``(i + 0.5, j + 0.5)``, so ``cx = K[0, 2] + 0.5``, ``cy = K[1, 2] + 0.5``.
* ``scale_mat_k`` maps the scene's unit sphere, which holds the object, into the world:
  ``x_world = s x_scene + c`` (``[[s, 0, 0, cx], [0, s, 0, cy], [0, 0, s, cz], [0, 0, 0, 1]]``,
  ``s > 0``), the same for every image. Hence ``meta["normalization"] = {"center": c,
  "scale": 1 / s}``: ``x_scene = (x_world - center) * scale`` and
  ``x_world = x_scene / scale + center`` (:func:`radfield.export.mesh.to_world`) as for the
  COLMAP and LLFF readers.
* The scene camera is ``P = world_mat_k @ scale_mat_k`` (top three rows), decomposed by
  :func:`decompose_projection` into ``K`` (upper triangular, positive diagonal, ``K[2, 2] = 1``),
  the rotation ``R`` and the camera centre ``C``; the OpenGL camera-to-world matrix is
  ``[R^T e_x, -R^T e_y, -R^T e_z, C]`` (:func:`opencv_to_c2w`). ``fx = K[0, 0]``,
  ``fy = K[1, 1]``; a skew ``K[0, 1]`` is ignored (radfield's cameras have none), with a warning
  when it moves the top image row by more than ``SKEW_TOLERANCE`` px (``|skew| cy / fy``).
* Masks: a pixel is used (trained and scored) where any colour channel of its mask is nonzero
  (the object), :func:`radfield.data.files.read_mask`; they become ``SceneData.masks``, so
  evaluation reports masked PSNR. Without ``mask/`` every pixel is used.
* Scene box: the cube ``[-1, 1]^3`` around the unit sphere. ``meta["near"]``,
  ``meta["far"]``: the nearest and farthest distance from any camera to the unit sphere
  (``max(min |C| - 1, 0.01)``, ``max |C| + 1``); hints only.
* Hold-out: image ``k`` is in "test" and "val" (the same images) when
  ``k % holdout_every == 0``, in "train" otherwise; "all" is every image (IDR and NeuS train on
  all 49 or 64 views and score the training views).
* ``downscale = f``: images are area-averaged over ``f x f`` blocks, masks keep a block only if
  all its pixels are kept (:func:`radfield.data.files.downscale_mask`), intrinsics are divided
  by ``f``. :func:`dtu_cameras` gives the cameras without decoding an image (sizes from the
  image headers).

Bad input raises :class:`radfield.errors.RadfieldError` with one line naming the file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import torch

from radfield.cameras import Cameras
from radfield.data.files import (HOLDOUT_EVERY, check_options, check_same_size, downscale_image,
                                 downscale_intrinsics, downscale_mask, holdout_split, one_line,
                                 read_image, read_image_size, read_mask)
from radfield.data.llff import IMAGE_SUFFIXES
from radfield.data.scene import SceneCameras, SceneData
from radfield.errors import RadfieldError

__all__ = ["load_dtu", "dtu_cameras", "camera_file", "decompose_projection", "opencv_to_c2w",
           "CAMERA_FILES", "HALF_SIZE", "PIXEL_CENTRE", "SKEW_TOLERANCE"]

CAMERA_FILES = ("cameras.npz", "cameras_sphere.npz")
HALF_SIZE = 1.0
"""The scene box is ``[-HALF_SIZE, HALF_SIZE]^3``, the cube around the unit sphere."""
PIXEL_CENTRE = 0.5
"""Added to DTU's principal point: its pixel centres are at integers, radfield's at ``i + 0.5``."""
SKEW_TOLERANCE = 0.01
"""Pixels of shift at the top image row above which an ignored skew is warned about."""


def camera_file(path: Path) -> Path | None:
    """The camera file of the DTU folder ``path`` (the first of :data:`CAMERA_FILES` there), or
    None when it has none."""
    return next((path / name for name in CAMERA_FILES if (path / name).is_file()), None)


# ---------------------------------------------------------------------------- cameras


def decompose_projection(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(K, R, C)`` of a ``3 x 4`` projection ``P = lambda K [R | -R C]`` (float64):
    ``K`` upper triangular with a positive diagonal and ``K[2, 2] = 1``, ``R`` a rotation
    (``det R = +1``), ``C`` the camera centre (``P [C; 1] = 0``).

    RQ decomposition of ``M = P[:, :3]`` from a QR one: with ``J`` the row-reversing
    permutation, ``(J M)^T = Q U`` gives ``M = (J U^T J) (J Q^T)``, upper triangular times
    orthogonal; the signs are then moved so that ``K``'s diagonal is positive. ``P`` and ``-P``
    project alike, so ``P`` is negated first when ``det M < 0`` (making ``det R = +1``: points
    in front of the camera have positive depth). ``C = -M^{-1} P[:, 3]``.

    Example: ``P = 2 [[100, 0, 50, 250], [0, 100, 40, 200], [0, 0, 1, 5]]`` (``= 2 K [I | t]``,
    ``t = (0, 0, 5)``) gives ``K = [[100, 0, 50], [0, 100, 40], [0, 0, 1]]``, ``R = I`` and
    ``C = -t = (0, 0, -5)``.
    """
    p = np.asarray(p, dtype=np.float64)
    if np.linalg.det(p[:, :3]) < 0:
        p = -p
    m = p[:, :3]
    j = np.eye(3)[::-1]
    q, u = np.linalg.qr((j @ m).T)
    k, r = j @ u.T @ j, j @ q.T
    d = np.diag(np.sign(np.diag(k)))
    k, r = k @ d, d @ r
    return k / k[2, 2], r, -np.linalg.solve(m, p[:, 3])


def opencv_to_c2w(rot: np.ndarray, center: np.ndarray) -> np.ndarray:
    """``(n, 3, 4)`` OpenGL camera-to-world matrices of world-to-camera rotations ``rot``
    ``(n, 3, 3)`` (OpenCV axes) and camera centres ``center`` ``(n, 3)``:
    ``[R^T e_x, -R^T e_y, -R^T e_z, C]``. Example: ``R = I``, ``C = 0`` ->
    ``[[1, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 0]]``."""
    return np.concatenate([rot.transpose(0, 2, 1) * np.array([1.0, -1.0, -1.0]),
                           center[:, :, None]], axis=-1)


def _projection(matrix: object, where: str) -> np.ndarray:
    """``(3, 4)`` float64 top rows of a ``world_mat``, else RadfieldError: a ``4 x 4`` or
    ``3 x 4`` finite matrix whose ``3 x 3`` part is invertible."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: is not a matrix of numbers") from None
    if m.shape not in ((4, 4), (3, 4)):
        raise RadfieldError(f"{where}: is not a 3x4 or 4x4 projection matrix (shape {m.shape})")
    if not np.isfinite(m).all():
        raise RadfieldError(f"{where}: is not finite")
    if np.linalg.cond(m[:3, :3]) > 1e12:
        raise RadfieldError(f"{where}: is not a projection (its 3x3 part is singular)")
    return m[:3]


def _scale_mat(matrix: object, where: str) -> np.ndarray:
    """``(4, 4)`` float64 ``scale_mat``, else RadfieldError: ``[[s I, c], [0, 1]]``, ``s > 0``."""
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise RadfieldError(f"{where}: is not a matrix of numbers") from None
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise RadfieldError(f"{where}: is not a finite 4x4 matrix (shape {m.shape})")
    s = m[0, 0]
    expected = np.eye(4) * np.array([s, s, s, 1.0])
    expected[:3, 3] = m[:3, 3]
    if not (s > 0 and np.allclose(m, expected, rtol=0, atol=1e-9 * max(s, 1.0))):
        raise RadfieldError(f"{where}: is not a uniform scale and translation "
                            "[[s, 0, 0, cx], [0, s, 0, cy], [0, 0, s, cz], [0, 0, 0, 1]]")
    return m


def _read_npz(file: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(file, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except Exception as e:  # any reader failure is a bad-input error at this boundary
        raise RadfieldError(f"{file}: cannot read ({one_line(e)[:120]})") from None


def _listed(folder: Path, what: str) -> list[Path]:
    """The name-sorted image files of ``folder``; RadfieldError when there is none."""
    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) \
        if folder.is_dir() else []
    if not files:
        raise RadfieldError(f"{folder}: no {what} (.png, .jpg or .jpeg files)")
    return files


def _read_views(path: str | Path, split: str, downscale: int, holdout_every: int
                ) -> tuple[SceneCameras, list[tuple[int, int]], list[Path] | None]:
    """The split's cameras, the ``(width, height)`` of each of its images (from the headers) and
    its mask files (None without ``mask/``). Decodes no image."""
    path = Path(path)
    check_options(downscale, holdout_every)
    file = camera_file(path)
    if file is None:
        raise RadfieldError(f"{path / CAMERA_FILES[0]}: not found (DTU layout: PATH/cameras.npz, "
                            "PATH/image/, PATH/mask/)")
    arrays = _read_npz(file)
    images = _listed(path / "image", "images")
    ids = sorted(int(m.group(1)) for key in arrays if (m := re.fullmatch(r"world_mat_(\d+)", key)))
    if ids != list(range(len(ids))):
        raise RadfieldError(f"{file}: world_mat_k are not numbered 0 .. n-1 (found {len(ids)})")
    if len(ids) != len(images):
        raise RadfieldError(f"{path / 'image'}: {len(images)} images but {file.name} has "
                            f"{len(ids)} cameras (world_mat_k)")
    masks = _listed(path / "mask", "masks") if (path / "mask").exists() else None
    if masks is not None and len(masks) != len(images):
        raise RadfieldError(f"{path / 'mask'}: {len(masks)} masks for {len(images)} images "
                            f"in {path / 'image'}")

    # One normalisation for every image; the scene cameras P = world_mat @ scale_mat.
    scale_mat = None
    for k in ids:
        key = f"scale_mat_{k}"
        if key not in arrays:
            raise RadfieldError(f"{file}: no {key} (every world_mat_k needs its scale_mat_k)")
        m = _scale_mat(arrays[key], f"{file}: {key}")
        scale_mat = m if scale_mat is None else scale_mat
        if not np.allclose(m, scale_mat, rtol=1e-6, atol=0):
            raise RadfieldError(f"{file}: {key} differs from scale_mat_0 (one normalisation "
                                "for every image is needed)")
    parts = [decompose_projection(_projection(arrays[f"world_mat_{k}"], f"{file}: world_mat_{k}")
                                  @ scale_mat) for k in ids]
    intr = np.stack([kk for kk, _, _ in parts])
    centres = np.stack([c for _, _, c in parts])
    c2w = torch.from_numpy(opencv_to_c2w(np.stack([r for _, r, _ in parts]), centres))
    skew_shift = np.abs(intr[:, 0, 1]) * intr[:, 1, 2] / intr[:, 1, 1]
    if skew_shift.max() > SKEW_TOLERANCE:
        warnings.warn(f"{file}: camera skew is ignored (up to {skew_shift.max():.3f} px at the "
                      "top image row)", stacklevel=3)
    distance = np.linalg.norm(centres, axis=-1)

    chosen = holdout_split(len(images), split, holdout_every, str(file))
    sizes = []
    for k in chosen:
        sizes.append(check_same_size(read_image_size(images[k]), images[k], sizes[0] if sizes else None))
    out_size = (sizes[0][0] // downscale, sizes[0][1] // downscale)
    k = torch.tensor([downscale_intrinsics((intr[n, 0, 0], intr[n, 1, 1], intr[n, 0, 2] + PIXEL_CENTRE,
                                            intr[n, 1, 2] + PIXEL_CENTRE), downscale)
                      for n in chosen], dtype=torch.float32)
    cameras = Cameras(c2w[chosen].float(), k[:, 0], k[:, 1], k[:, 2], k[:, 3],
                      out_size[0], out_size[1])
    s = float(scale_mat[0, 0])
    meta = {
        "format": "dtu", "cameras_file": str(file),
        "normalization": {"center": scale_mat[:3, 3].tolist(), "scale": 1.0 / s},
        "near": max(float(distance.min()) - 1.0, 0.01), "far": float(distance.max()) + 1.0,
        "holdout_every": holdout_every,
    }
    scene = SceneCameras(cameras=cameras, names=[str(images[n]) for n in chosen],
                         aabb=torch.tensor([-HALF_SIZE] * 3 + [HALF_SIZE] * 3), meta=meta)
    return scene, sizes, None if masks is None else [masks[n] for n in chosen]


def dtu_cameras(path: str | Path, split: str = "train", downscale: int = 1,
                holdout_every: int = HOLDOUT_EVERY) -> SceneCameras:
    """The cameras of one split of a DTU scene, without decoding an image: exactly the
    ``cameras``, ``names``, ``aabb`` and ``meta`` of :func:`load_dtu` (image sizes from the file
    headers)."""
    return _read_views(path, split, downscale, holdout_every)[0]


# ---------------------------------------------------------------------------- the loader


def load_dtu(path: str | Path, split: str = "train", downscale: int = 1,
             holdout_every: int = HOLDOUT_EVERY) -> SceneData:
    """Read one split of a DTU scene in the IDR / NeuS layout (see module doc):
    :func:`dtu_cameras` plus the pixels and masks.

    Returns a :class:`SceneData`: ``images (n, H/f, W/f, 3 or 4)`` uint8, ``masks (n, H/f,
    W/f)`` bool (None without ``mask/``), ``cameras`` (pinhole, ``c2w (n, 3, 4)`` OpenGL axes,
    in the unit-sphere frame), ``names`` (image paths), ``aabb (6,)`` ``[-1, 1]^3`` and ``meta``
    with ``format``, ``cameras_file``, ``normalization``, ``near``, ``far`` and
    ``holdout_every``.
    """
    scene, sizes, mask_files = _read_views(path, split, downscale, holdout_every)
    images, masks = [], []
    for n, (name, size) in enumerate(zip(scene.names, sizes)):
        img = read_image(Path(name))
        height, width = img.shape[:2]
        if (width, height) != size:
            raise RadfieldError(f"{name}: size {width}x{height} differs from its header's "
                                f"{size[0]}x{size[1]}")
        images.append(downscale_image(img, downscale))
        if mask_files is not None:
            masks.append(downscale_mask(read_mask(mask_files[n], Path(name), height, width),
                                        downscale))
    return scene.with_images(images, masks=masks if mask_files is not None else None)
