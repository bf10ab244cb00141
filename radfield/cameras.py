"""Pinhole cameras and ray generation.

Conventions (the NeRF-synthetic / Blender ones, used everywhere in radfield):

* ``c2w`` is camera-to-world, ``(n_cams, 3, 4)``, **OpenGL axes**: x right, y up, the camera
  looks down -z.
* Pixel ``(i, j)`` (column ``i``, row ``j``) covers ``[i, i+1) x [j, j+1)``; its centre is
  ``(i + 0.5, j + 0.5)``.
* A camera-space direction through image point ``(u, v)`` is
  ``d_cam = ((u - cx) / fx, -(v - cy) / fy, -1)``; the world direction is ``R @ d_cam``
  normalised to unit length, so ``t`` along a ray is a Euclidean distance.
* Depth maps are *planar* camera-space z: ``z = t / |d_cam|``. :class:`Rays` carries
  ``z_per_t = 1 / |d_cam|`` so renderers can convert ray distance to planar depth.

Everything here is plain differentiable torch: gradients flow from rays to ``c2w`` and to the
intrinsics, which is what pose refinement and pose-distribution learning need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A set of pinhole cameras sharing one image size.

    Attributes:
        c2w: ``(n_cams, 3, 4)`` camera-to-world matrices, OpenGL axes.
        fx, fy, cx, cy: ``(n_cams,)`` intrinsics in pixels.
        width, height: image size in pixels.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(
            self.c2w.to(device), self.fx.to(device), self.fy.to(device), self.cx.to(device),
            self.cy.to(device), self.width, self.height,
        )

    def __getitem__(self, idx) -> "Cameras":
        idx = torch.as_tensor(idx).reshape(-1)
        return Cameras(self.c2w[idx], self.fx[idx], self.fy[idx], self.cx[idx], self.cy[idx],
                       self.width, self.height)

    def downscaled(self, factor: int) -> "Cameras":
        """Cameras for images shrunk by an integer ``factor`` (pixel areas averaged)."""
        if factor == 1:
            return self
        return Cameras(self.c2w, self.fx / factor, self.fy / factor, self.cx / factor,
                       self.cy / factor, self.width // factor, self.height // factor)

    @property
    def centers(self) -> Tensor:
        """``(n_cams, 3)`` camera centres in world space."""
        return self.c2w[:, :3, 3]


@dataclass
class Rays:
    """A batch of rays.

    Attributes:
        origins: ``(n_rays, 3)``.
        directions: ``(n_rays, 3)``, unit length.
        z_per_t: ``(n_rays,)``, planar camera depth per unit of ray distance.
        radii: optional ``(n_rays,)`` cone radius per unit of ray distance: the pixel footprint
            (mip-NeRF's ``2 / sqrt(12)`` times the pixel pitch) at distance ``t`` is ``t * radii``.
        camera_indices: optional ``(n_rays,)`` long, the camera (image) each ray comes from, for
            per-image appearance embeddings; ``-1`` for a camera outside the training set.
        appearance: optional ``(n_rays, k)`` appearance code that replaces the camera's learned
            embedding (evaluation protocols that fit a code to a held-out image).
    """

    origins: Tensor
    directions: Tensor
    z_per_t: Tensor
    radii: Tensor | None = None
    camera_indices: Tensor | None = None
    appearance: Tensor | None = None

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, sl) -> "Rays":
        pick = lambda x: None if x is None else x[sl]  # noqa: E731
        return Rays(self.origins[sl], self.directions[sl], self.z_per_t[sl], pick(self.radii),
                    pick(self.camera_indices), pick(self.appearance))


def generate_rays(cameras: Cameras, cam_idx: Tensor, u: Tensor, v: Tensor) -> Rays:
    """Rays through image points ``(u, v)`` (continuous pixel coordinates) of cameras ``cam_idx``.

    Args:
        cameras: the camera set.
        cam_idx: ``(n_rays,)`` long, which camera each ray belongs to.
        u, v: ``(n_rays,)`` float image coordinates; pixel ``(i, j)``'s centre is
            ``(i + 0.5, j + 0.5)``.

    Example: a camera at the origin looking down -z with ``fx = fy = 100, cx = cy = 50``; the
    ray through ``u = 150, v = 50`` has ``d_cam = (1, 0, -1)``, unit direction
    ``(0.7071, 0, -0.7071)`` and ``z_per_t = 0.7071``.
    """
    d_cam = torch.stack(
        [
            (u - cameras.cx[cam_idx]) / cameras.fx[cam_idx],
            -(v - cameras.cy[cam_idx]) / cameras.fy[cam_idx],
            -torch.ones_like(u),
        ],
        dim=-1,
    )
    c2w = cameras.c2w[cam_idx]
    d_world = (c2w[:, :3, :3] @ d_cam.unsqueeze(-1)).squeeze(-1)
    norm = d_world.norm(dim=-1, keepdim=True)
    z_per_t = 1.0 / d_cam.norm(dim=-1)
    # Pixel footprint: pitch 1 / f on the z = 1 plane, times mip-NeRF's 2 / sqrt(12) (the radius
    # of the disc with the pixel's variance), per unit of planar depth -> per unit ray distance.
    f = torch.sqrt(cameras.fx[cam_idx] * cameras.fy[cam_idx])
    radii = z_per_t / f * (2.0 / 12 ** 0.5)
    return Rays(c2w[:, :3, 3], d_world / norm, z_per_t, radii, cam_idx)


def pixel_rays(cameras: Cameras, cam_idx: Tensor, i: Tensor, j: Tensor) -> Rays:
    """Rays through the centres of integer pixels ``(i, j)`` (column, row)."""
    return generate_rays(cameras, cam_idx, i.float() + 0.5, j.float() + 0.5)


def image_rays(cameras: Cameras, index: int) -> Rays:
    """All ``height * width`` pixel-centre rays of one camera, in row-major order."""
    dev = cameras.device
    j, i = torch.meshgrid(torch.arange(cameras.height, device=dev),
                          torch.arange(cameras.width, device=dev), indexing="ij")
    idx = torch.full((i.numel(),), index, dtype=torch.long, device=dev)
    return pixel_rays(cameras, idx, i.reshape(-1), j.reshape(-1))


def project(cameras: Cameras, index: int, points: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points into camera ``index``.

    Returns ``(uv, z)``: ``(n, 2)`` continuous pixel coordinates and ``(n,)`` planar depth
    (positive in front of the camera).
    """
    c2w = cameras.c2w[index]
    rot, center = c2w[:3, :3], c2w[:3, 3]
    p_cam = (points - center) @ rot  # R^T (p - c), row-vector form
    z = -p_cam[:, 2]
    u = cameras.fx[index] * p_cam[:, 0] / z + cameras.cx[index]
    v = -cameras.fy[index] * p_cam[:, 1] / z + cameras.cy[index]
    return torch.stack([u, v], dim=-1), z


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """``(3, 4)`` camera-to-world matrix (OpenGL axes) of a camera at ``eye`` looking at
    ``target``. Differentiable in ``eye`` and ``target``."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    back = eye - target
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    return torch.stack([right, true_up, back, eye], dim=-1)


def orbit_poses(n: int, radius: float, elevation_deg: float = 30.0,
                target: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> Tensor:
    """``(n, 3, 4)`` cameras on a circle around ``target`` (world z up), looking at it."""
    tgt = torch.tensor(target, dtype=torch.float32)
    elev = torch.deg2rad(torch.tensor(elevation_deg))
    poses = []
    for k in range(n):
        az = 2 * torch.pi * k / n
        eye = tgt + radius * torch.stack([torch.cos(elev) * torch.cos(torch.tensor(az)),
                                          torch.cos(elev) * torch.sin(torch.tensor(az)),
                                          torch.sin(elev)])
        poses.append(look_at(eye, tgt))
    return torch.stack(poses)
