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
    """No-grad render of a ray batch in chunks: ``(rgb (n, 3), ray depth (n,), opacity (n,))``."""
    rgbs, depths, opacities = [], [], []
    for i in range(0, len(rays), chunk):
        r = rays[i:i + chunk]
        s = model.sample(r, training=False)
        sigma, rgb = model.field.activate(model.field.raw(s.positions(r), s.directions(r)).float())
        out = render(sigma, rgb, s.t_starts, s.t_ends, s.ray_indices, len(r), background)
        rgbs.append(out.rgb)
        depths.append(out.depth)
        opacities.append(out.opacity)
    return torch.cat(rgbs), torch.cat(depths), torch.cat(opacities)


def render_image(model, cameras: Cameras, index: int, background: Tensor,
                 chunk: int = 1 << 13) -> ImageRender:
    rays = image_rays(cameras, index)
    rgb, ray_depth, opacity = render_rays(model, rays, background, chunk)
    planar = torch.where(opacity > 1e-3, ray_depth / opacity.clamp(min=1e-3) * rays.z_per_t,
                         torch.zeros_like(ray_depth))
    shape = (cameras.height, cameras.width)
    return ImageRender(rgb.reshape(*shape, 3).clamp(0, 1).cpu(), planar.reshape(shape).cpu(),
                       opacity.reshape(shape).cpu())
