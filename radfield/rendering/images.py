"""Rendering whole images from a model, in chunks of rays so any resolution fits in memory."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from radfield.cameras import Cameras, Rays, image_rays
from radfield.rendering.volume import render


@dataclass
class ImageRender:
    """``rgb (H, W, 3)``, ``depth (H, W)`` planar camera z of the expected termination point
    (0 where the opacity is below 1e-3), ``opacity (H, W)``; all float32 on the CPU."""

    rgb: Tensor
    depth: Tensor
    opacity: Tensor


@torch.no_grad()
def render_rays(model, rays: Rays, background: Tensor, chunk: int = 1 << 13) -> tuple[Tensor, Tensor, Tensor]:
    """No-grad render of a ray batch in chunks: ``(rgb (n, 3), ray depth (n,), opacity (n,))``.

    ``background`` ``(3,)`` is used unless the model has a learned background (or renders the
    last sample opaque)."""
    rgbs, depths, opacities = [], [], []
    for i in range(0, len(rays), chunk):
        r = rays[i:i + chunk]
        s = model.sample(r, training=False)
        sigma, rgb = model.field.activate(model.field.raw(*model.field_inputs(r, s)).float())
        bg = background if model.background is None else model.background(r.directions)
        out = render(sigma, rgb, s.t_starts, s.t_ends, s.ray_indices, len(r), bg, model.opaque_last)
        rgbs.append(out.rgb)
        depths.append(out.depth)
        opacities.append(out.opacity)
    return torch.cat(rgbs), torch.cat(depths), torch.cat(opacities)


def render_image(model, cameras: Cameras, index: int, background: Tensor,
                 chunk: int = 1 << 13, appearance_index: int | None = None,
                 appearance_code: Tensor | None = None) -> ImageRender:
    """Render camera ``index``. For models with appearance embeddings: ``appearance_index``, the
    training image whose embedding to use, or ``appearance_code`` ``(k,)``, a code of one's own;
    neither = the mean embedding (held-out views)."""
    rays = image_rays(cameras, index)
    rays.camera_indices = None if appearance_index is None else torch.full_like(
        rays.camera_indices, appearance_index)
    if appearance_code is not None:
        rays.appearance = appearance_code.detach().expand(len(rays), -1)
    rgb, ray_depth, opacity = render_rays(model, rays, background, chunk)
    planar = torch.where(opacity > 1e-3, ray_depth / opacity.clamp(min=1e-3) * rays.z_per_t,
                         torch.zeros_like(ray_depth))
    shape = (cameras.height, cameras.width)
    return ImageRender(rgb.reshape(*shape, 3).clamp(0, 1).cpu(), planar.reshape(shape).cpu(),
                       opacity.reshape(shape).cpu())
