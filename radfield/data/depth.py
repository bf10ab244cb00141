"""Where the depth of a split's pixels comes from: dense depth maps, sparse structure-from-motion
points, or monocular depth maps aligned to those points.

Every source gives the same thing, so training and evaluation read one layout:
``SceneData.depths`` ``(n_images, H, W)`` planar camera z (0 = no depth) and, optionally,
``SceneData.depth_uncertainty`` ``(n_images, H, W)``, the relative uncertainty of each depth
(it multiplies ``train.depth.eps``; None = 1). ``meta["depth_source"]`` records the source.

Sources (``data.depth_source``, :data:`DEPTH_SOURCES`):

* ``maps``: the dataset's own depth maps (``depth_file_path`` of Blender / Instant-NGP files).
* ``sparse``: each image's observed SfM points (COLMAP: ``meta["points"]``,
  ``meta["observations"]``, ``meta["point_errors"]``) projected into it through its camera
  (lens included): the pixel that contains the projection gets the point's planar depth, the
  nearest point when several land in one pixel; all other pixels have none. The uncertainty is
  the point's reprojection error relative to the mean error of the split's observations,
  clamped to [0.25, 4] (DS-NeRF takes the reprojection error as the uncertainty; scaling the
  configured ``eps`` by it keeps ``eps`` the uncertainty of an average point); 1 when every error
  is 0.
* ``mono``: one monocular depth map per image, ``FOLDER/<image stem>.npy`` (float, the image's
  size or an integer multiple of it, block-averaged), known up to scale and shift: per image,
  ``D = a d + b`` is fitted by least squares to the sparse depths of that image's pixels
  (:func:`align_scale_shift`) and applied to every pixel. Inverse depth (disparity, as some
  networks predict) must be inverted first: a fit with ``a <= 0`` is an error.
* ``auto``: ``maps`` when the dataset has depth maps, else ``sparse`` when it has observed SfM
  points, else no depth.

Bad input (a missing or mis-sized monocular file, an image too few points to align, a source the
dataset cannot give) is a one-line :class:`radfield.errors.RadfieldError` naming the file or the
option.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras, image_rays, project
from radfield.data.scene import SceneData, over_background
from radfield.errors import RadfieldError, check_choice

DEPTH_SOURCES = ("auto", "maps", "sparse", "mono")
UNCERTAINTY_RANGE = (0.25, 4.0)


def relative_uncertainty(errors: Tensor) -> Tensor:
    """``clamp(e / mean(e), 0.25, 4)`` of reprojection errors ``(n,)``; ones when the mean is 0.

    Example: errors ``(0.5, 1.0, 1.5, 9.0)``, mean 3: ``(0.25, 0.3333, 0.5, 3.0)``."""
    mean = errors.double().mean() if errors.numel() else torch.zeros((), dtype=torch.float64)
    if not mean > 0:
        return torch.ones_like(errors, dtype=torch.float32)
    return (errors.double() / mean).clamp(*UNCERTAINTY_RANGE).float()


def has_sparse_points(data: SceneData) -> bool:
    """Whether ``data.meta`` holds SfM points with per-image observations."""
    obs = data.meta.get("observations")
    return data.meta.get("points") is not None and obs is not None and len(obs) > 0


def sparse_depth_maps(cameras: Cameras, points: Tensor, observations: Tensor,
                      errors: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sparse depth maps of observed points (see the module doc).

    Args:
        cameras: the ``n_images`` cameras.
        points: ``(n_points, 3)`` world points (in the cameras' frame).
        observations: ``(n_obs, 2)`` long, ``(image index, point row)`` pairs.
        errors: optional ``(n_points,)`` reprojection errors (pixels); None = all equal.

    Returns ``(depths, uncertainty)``, each ``(n_images, H, W)`` float32: the planar depth of the
    nearest observed point projecting into each pixel (0 for none), and its relative
    uncertainty (:func:`relative_uncertainty` over the observations; 1 where there is no depth).
    Points behind the camera or projecting outside the image are dropped.

    Example: a pinhole at the origin looking down -z, ``f = 10``, ``cx = cy = 2`` (4 x 4): the
    point ``(0.1, 0, -1)`` projects to ``u = 3, v = 2``, pixel (column 3, row 2), depth 1.
    """
    n, h, w = len(cameras), cameras.height, cameras.width
    depths = torch.zeros(n, h, w)
    uncertainty = torch.ones(n, h, w)
    obs = observations.long()
    rel = (relative_uncertainty(errors[obs[:, 1]]) if errors is not None
           else torch.ones(len(obs)))
    for k in range(n):
        sel = obs[:, 0] == k
        if not bool(sel.any()):
            continue
        uv, z = project(cameras, k, points[obs[sel, 1]].to(cameras.c2w.dtype))
        col, row = torch.floor(uv[:, 0]), torch.floor(uv[:, 1])
        ok = (z > 0) & torch.isfinite(uv).all(-1) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
        flat = (row[ok] * w + col[ok]).long().numpy()
        zk, rk = z[ok].detach().numpy(), rel[sel][ok].numpy()
        order = np.lexsort((zk, flat))  # by pixel, then nearest first
        _, first = np.unique(flat[order], return_index=True)
        keep = order[first]
        depths[k].view(-1)[torch.from_numpy(flat[keep])] = torch.from_numpy(zk[keep]).float()
        uncertainty[k].view(-1)[torch.from_numpy(flat[keep])] = torch.from_numpy(rk[keep]).float()
    return depths, uncertainty


def align_scale_shift(mono: Tensor, target: Tensor) -> tuple[float, float, int]:
    """Least-squares ``(a, b, n)`` with ``a mono + b ~= target`` over the ``n`` pixels where
    ``target > 0`` and ``mono`` is finite (both ``(H, W)``): the normal equations of
    ``min sum (a d_k + b - D_k)^2``, in float64. ``a = b = nan`` when ``n < 2`` or the ``d_k``
    are all equal.

    Example: ``d = (1, 2, 3)`` against ``D = (3, 5, 7)``: ``a = 2, b = 1``."""
    use = (target > 0) & torch.isfinite(mono)
    d, t = mono[use].double(), target[use].double()
    n = int(use.sum())
    if n < 2 or float(d.var(unbiased=False)) <= 0:
        return float("nan"), float("nan"), n
    d_mean, t_mean = d.mean(), t.mean()
    a = float(((d - d_mean) * (t - t_mean)).sum() / ((d - d_mean) ** 2).sum())
    return a, float(t_mean - a * d_mean), n


def read_mono_depth(file: Path, height: int, width: int) -> tuple[np.ndarray, int]:
    """``(depth (H, W) float32, n_bad)`` of a monocular ``.npy`` file: the image's size, or an
    integer multiple of it (block means over the finite values); NaN / infinite values become
    NaN (no depth) and are counted."""
    try:
        d = np.load(file).astype(np.float64)
    except FileNotFoundError:
        raise RadfieldError(f"{file}: monocular depth file not found") from None
    except Exception as e:  # any decoder failure is a bad-input error at this boundary
        raise RadfieldError(f"{file}: cannot read monocular depth ({type(e).__name__})") from None
    if d.ndim != 2:
        raise RadfieldError(f"{file}: monocular depth must be (H, W), got shape {d.shape}")
    f = d.shape[0] // height if height else 0
    if d.shape != (height, width) and not (f >= 2 and d.shape == (height * f, width * f)):
        raise RadfieldError(f"{file}: monocular depth {d.shape[1]}x{d.shape[0]} does not match its "
                            f"image {width}x{height} (or an integer multiple of it)")
    bad = ~np.isfinite(d)
    d[bad] = np.nan
    if d.shape != (height, width):
        with warnings.catch_warnings():  # an all-NaN block stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            d = np.nanmean(d.reshape(height, f, width, f), axis=(1, 3))
    return d.astype(np.float32), int(bad.sum())


def _mono_depths(data: SceneData, folder: Path, sparse: Tensor) -> Tensor:
    """Monocular maps of every image, aligned to its sparse depths (see the module doc)."""
    h, w = data.cameras.height, data.cameras.width
    out, n_bad = torch.zeros(len(data), h, w), 0
    for k, name in enumerate(data.names):
        file = folder / f"{Path(name).stem}.npy"
        mono, bad = read_mono_depth(file, h, w)
        n_bad += bad
        d = torch.from_numpy(mono)
        a, b, n = align_scale_shift(d, sparse[k])
        if not np.isfinite(a):
            raise RadfieldError(f"{file}: cannot align it: {n} pixels with sparse depth and "
                                "distinct monocular values (2 needed)")
        if a <= 0:
            raise RadfieldError(f"{file}: aligned scale a = {a:.4g} is not positive (inverse depth "
                                "must be inverted first)")
        aligned = a * d + b
        out[k] = torch.where(torch.isfinite(aligned) & (aligned > 0), aligned, 0.0)
    if n_bad:
        warnings.warn(f"{folder}: {n_bad} monocular depth pixels are NaN or infinite; they are "
                      "ignored (no depth)", stacklevel=3)
    return out


def with_depth(data: SceneData, source: str, where: str, mono_folder: str | Path | None = None
               ) -> SceneData:
    """``data`` with the depths of ``source`` (see the module doc); ``where`` (the dataset path)
    names the data in errors. ``auto`` without any depth returns ``data`` without depths; an
    explicit source the data cannot give is a RadfieldError."""
    check_choice("data.depth_source", source, DEPTH_SOURCES, "depth source")
    if source == "auto":
        source = "maps" if data.depths is not None else "sparse" if has_sparse_points(data) else None
        if source is None:
            return data
    if source == "maps":
        if data.depths is None:
            raise RadfieldError(f"{where}: data.depth_source maps: the dataset has no depth maps "
                                "(depth_file_path)")
        return dataclasses.replace(data, meta={**data.meta, "depth_source": "maps"})
    if not has_sparse_points(data):
        raise RadfieldError(f"{where}: data.depth_source {source}: the dataset has no observed "
                            "SfM points (a COLMAP sparse model)")
    depths, uncertainty = sparse_depth_maps(data.cameras, data.meta["points"], data.meta["observations"],
                                            data.meta.get("point_errors"))
    if source == "sparse":
        return dataclasses.replace(data, depths=depths, depth_uncertainty=uncertainty,
                                   meta={**data.meta, "depth_source": "sparse"})
    if mono_folder is None:
        raise RadfieldError(f"{where}: data.depth_source mono needs data.mono_depth (the folder of "
                            "monocular depth .npy files)")
    folder = Path(mono_folder)
    if not folder.is_dir():
        raise RadfieldError(f"{folder}: data.mono_depth: no such folder")
    return dataclasses.replace(data, depths=_mono_depths(data, folder, depths), depth_uncertainty=None,
                               meta={**data.meta, "depth_source": "mono"})


def colour_disagreement(data: SceneData, neighbours: int = 4, depth_tolerance: float = 0.02) -> Tensor:
    """``(n_images, H, W)`` float32: how much the colour of each pixel's depth point differs
    between its image and the ``neighbours`` views with the nearest camera centres that see it;
    NaN where fewer than two of them see it, or the pixel has no depth.

    Each pixel with depth ``z`` is lifted to its world point (``z`` along the pixel-centre ray,
    lens included) and projected into the neighbour views; a view sees the point when it lands in
    the image and the view's own depth at that pixel (nearest) is within ``depth_tolerance`` of the
    point's depth there, relative. The disagreement is the median over those views of the mean
    absolute RGB difference (bilinear colour in the neighbour, RGBA composited over black) in
    [0, 1]. A diffuse surface scores near 0 from every view; a mirror or glass, whose colour is
    the scene behind or around it, scores high: depth there forbids the density behind the
    surface that the colour needs.

    Example: views of a plane painted red at the left and blue at the right, each seeing all of
    it: every pixel's point has its colour in every other view, so every pixel scores 0 (tested
    with a mirror disc added, which scores over 0.1).
    """
    if data.depths is None:
        raise ValueError("colour_disagreement needs depths")
    cams, n, h, w = data.cameras, len(data), data.cameras.height, data.cameras.width
    out = torch.full((n, h, w), float("nan"))
    if n < 3:
        return out
    centres = cams.c2w[:, :3, 3].double()
    order = torch.cdist(centres, centres).argsort(dim=1)[:, 1:neighbours + 1]
    colours = torch.stack([over_background(data.rgba_float(k), 0.0) for k in range(n)])  # (n, H, W, 3)
    for i in range(n):
        depth = data.depths[i].reshape(-1)
        has = torch.nonzero(depth > 0).squeeze(1)
        if len(has) == 0:
            continue
        rays = image_rays(cams, i)
        t = depth[has].double() / rays.z_per_t[has].double()
        points = rays.origins[has].double() + rays.directions[has].double() * t[:, None]
        diffs = torch.full((len(order[i]), len(has)), float("nan"), dtype=torch.float64)
        for m, j in enumerate(order[i].tolist()):
            uv, z = project(cams, j, points.to(cams.c2w.dtype))
            col, row = torch.floor(uv[:, 0]), torch.floor(uv[:, 1])
            inside = (z > 0) & torch.isfinite(uv).all(-1) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
            seen_depth = torch.zeros_like(z)
            seen_depth[inside] = data.depths[j][row[inside].long(), col[inside].long()].to(z.dtype)
            seen = inside & ((seen_depth - z).abs() <= depth_tolerance * z)
            if not bool(seen.any()):
                continue
            there = _bilinear(colours[j], uv[seen])
            here = colours[i].reshape(-1, 3)[has[seen]]
            diffs[m, seen] = (there - here).abs().mean(-1).double()
        count = (~diffs.isnan()).sum(0)
        score = diffs.nanmedian(dim=0).values
        score[count < 2] = float("nan")
        out[i].view(-1)[has] = score.float()
    return out


def drop_inconsistent_depth(data: SceneData, tolerance: float, neighbours: int = 4) -> tuple[SceneData, float]:
    """``data`` without the depth of pixels whose :func:`colour_disagreement` exceeds
    ``tolerance`` (mean absolute RGB difference in [0, 1]), and the share of depth pixels dropped.
    Pixels that fewer than two views see keep their depth (no evidence against it)."""
    score = colour_disagreement(data, neighbours)
    drop = score > tolerance  # NaN compares False
    with_depth = int((data.depths > 0).sum())
    depths = torch.where(drop, torch.zeros_like(data.depths), data.depths)
    return dataclasses.replace(data, depths=depths), float(drop.sum()) / max(with_depth, 1)


def _bilinear(image: Tensor, uv: Tensor) -> Tensor:
    """``(n, 3)`` colours of ``image`` ``(H, W, 3)`` at continuous pixel coordinates ``uv``
    ``(n, 2)`` (pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``), edges clamped."""
    h, w = image.shape[:2]
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1).float().view(1, 1, -1, 2)
    sampled = torch.nn.functional.grid_sample(image.permute(2, 0, 1)[None], grid, mode="bilinear",
                                              padding_mode="border", align_corners=False)
    return sampled[0, :, 0].T
