"""Rendering whole images from a model, in chunks of rays so any resolution fits in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from radfield.cameras import Cameras, Rays, image_rays
from radfield.native import keep_freed_memory
from radfield.rendering.backgrounds import ray_background
from radfield.rendering.pipeline import render_samples_in_rounds


@dataclass
class ImageRender:
    """``rgb (H, W, 3)``, ``depth (H, W)`` planar camera z of the expected termination point
    (0 where the opacity is below 1e-3), ``opacity (H, W)``, and for models with surfaces
    ``normal (H, W, 3)`` (world space, ``sum_i w_i n_i``); all float32 on the CPU."""

    rgb: Tensor
    depth: Tensor
    opacity: Tensor
    normal: Tensor | None = None


def planar_depth(ray_depth: Tensor, opacity: Tensor, z_per_t: Tensor) -> Tensor:
    """``(n,)`` planar camera z of the expected termination point: ``sum_i w_i t_i`` (``ray_depth``)
    over the opacity, times ``z_per_t``; 0 where the opacity is below 1e-3 (nothing there).
    Example: ray depth 1.5 at opacity 0.5 on a ray with ``z_per_t = 0.8`` -> ``3 * 0.8 = 2.4``."""
    return torch.where(opacity > 1e-3, ray_depth / opacity.clamp(min=1e-3) * z_per_t,
                       torch.zeros_like(ray_depth))


@torch.no_grad()
def render_rays(model, rays: Rays, background: Tensor | None, chunk: int = 1 << 13,
                normals: bool = False):
    """No-grad render of a ray batch in chunks: ``(rgb (n, 3), ray depth (n,), opacity (n,))``,
    and with ``normals=True`` a fourth ``(n, 3)`` of weighted normals (None when the model has
    no surface normals).

    ``background`` ``(3,)`` is what the rays see behind the last sample unless the model has its
    own (:func:`~radfield.rendering.backgrounds.ray_background`). Rays terminate early, in
    rounds (:func:`~radfield.rendering.pipeline.render_samples_in_rounds`)."""
    rgbs, depths, opacities, normal_maps = [], [], [], []
    for r in rays.chunks(chunk):
        samples = model.sample(r, training=False, early_stop=False)
        out, n = render_samples_in_rounds(model, r, samples, ray_background(model, r, background),
                                          normals=normals)
        rgbs.append(out.rgb)
        depths.append(out.depth)
        opacities.append(out.opacity)
        if n is not None:
            normal_maps.append(n)
    result = (torch.cat(rgbs), torch.cat(depths), torch.cat(opacities))
    if normals:
        return result + (torch.cat(normal_maps) if normal_maps else None,)
    return result


def render_image(model, cameras: Cameras, index: int, background: Tensor | None,
                 chunk: int = 1 << 13, appearance_index: int | None = None,
                 appearance_code: Tensor | None = None) -> ImageRender:
    """Render camera ``index``; its rays carry the camera's attributes (e.g. its time).

    For models with per-image state (appearance embeddings): ``appearance_index``, the training
    image whose state to use (the rays' ``train_index``), or ``appearance_code`` ``(k,)``, a code
    of one's own; neither = the model's default for other views (the mean embedding)."""
    keep_freed_memory()  # rounds of samples reuse freed blocks, not fresh pages
    rays = image_rays(cameras, index)
    if appearance_index is not None:
        rays = rays.with_attrs(train_index=torch.full_like(rays.get("camera_index"), appearance_index))
    if appearance_code is not None:
        rays = rays.with_attrs(appearance=appearance_code.detach().expand(len(rays), -1))
    rgb, ray_depth, opacity, normal = render_rays(model, rays, background, chunk, normals=True)
    planar = planar_depth(ray_depth, opacity, rays.z_per_t)
    shape = (cameras.height, cameras.width)
    return ImageRender(rgb.reshape(*shape, 3).clamp(0, 1).cpu(), planar.reshape(shape).cpu(),
                       opacity.reshape(shape).cpu(),
                       None if normal is None else normal.reshape(*shape, 3).cpu())
