"""Cameras (pinhole, optionally with lens distortion) and ray generation.

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
* Cameras with a ``lens`` (:mod:`radfield.lens`) take ``((u - cx) / fx, (v - cy) / fy)`` as
  *distorted* coordinates: ``d_cam`` is the undistorted direction (for a fisheye, the unit
  vector at angle ``theta`` from the axis, so ``z_per_t = cos theta``).

Everything here is plain differentiable torch: gradients flow from rays to ``c2w`` and to the
intrinsics, which is what pose refinement and pose-distribution learning need.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from radfield.lens import Lens, distort, undistorted_directions


@dataclass
class Cameras:
    """A set of pinhole cameras sharing one image size.

    Attributes:
        c2w: ``(n_cams, 3, 4)`` camera-to-world matrices, OpenGL axes.
        fx, fy, cx, cy: ``(n_cams,)`` intrinsics in pixels.
        width, height: image size in pixels.
        attrs: optional per-camera tensors, each ``(n_cams, ...)`` (e.g. ``times`` of a dynamic
            scene); every ray of a camera carries its camera's values (:func:`generate_rays`).
        lens: per-camera lens distortion (:class:`radfield.lens.Lens`), or None (pinholes).
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int
    attrs: dict[str, Tensor] = field(default_factory=dict)
    lens: Lens | None = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def _replace(self, fn, width: int | None = None, height: int | None = None) -> "Cameras":
        """Every per-camera tensor mapped by ``fn`` (intrinsics, poses and attributes alike)."""
        return Cameras(fn(self.c2w), fn(self.fx), fn(self.fy), fn(self.cx), fn(self.cy),
                       width or self.width, height or self.height,
                       {k: fn(v) for k, v in self.attrs.items()},
                       None if self.lens is None else self.lens.map(fn))

    def to(self, device: torch.device | str) -> "Cameras":
        return self._replace(lambda x: x.to(device))

    def __getitem__(self, idx) -> "Cameras":
        idx = torch.as_tensor(idx).reshape(-1)
        return self._replace(lambda x: x[idx.to(x.device)])

    def with_attrs(self, **attrs: Tensor | None) -> "Cameras":
        """A copy with per-camera attributes added or replaced (``None`` removes one)."""
        merged = {**self.attrs, **attrs}
        return replace(self, attrs={k: v for k, v in merged.items() if v is not None})

    def downscaled(self, factor: int) -> "Cameras":
        """Cameras for images shrunk by an integer ``factor`` (pixel areas averaged; the lens,
        which acts on normalised coordinates, is unchanged)."""
        if factor == 1:
            return self
        return Cameras(self.c2w, self.fx / factor, self.fy / factor, self.cx / factor,
                       self.cy / factor, self.width // factor, self.height // factor, dict(self.attrs),
                       self.lens)

    @property
    def centers(self) -> Tensor:
        """``(n_cams, 3)`` camera centres in world space."""
        return self.c2w[:, :3, 3]


@dataclass
class Rays:
    """A batch of rays, with any number of optional per-ray attributes.

    Attributes:
        origins: ``(n_rays, 3)``.
        directions: ``(n_rays, 3)``, unit length.
        z_per_t: ``(n_rays,)``, planar camera depth per unit of ray distance.
        attrs: optional per-ray tensors, each ``(n_rays, ...)``. Selection (``rays[idx]``),
            :meth:`cat`, chunking and :meth:`to` carry all of them without naming them.
            The ones radfield itself writes and reads:

            * ``radii`` ``(n_rays,)``: cone radius per unit of ray distance; the pixel footprint
              (mip-NeRF's ``2 / sqrt(12)`` times the pixel pitch) at distance ``t`` is
              ``t * radii`` (:func:`generate_rays`);
            * ``camera_index`` ``(n_rays,)`` long: the ray's camera in its camera set
              (:func:`generate_rays`);
            * ``train_index`` ``(n_rays,)`` long: the training image a ray comes from (training
              batches; per-image state such as appearance embeddings); absent for other views,
              which then get the model's default (e.g. the mean embedding);
            * ``times`` ``(n_rays,)``: the time of a dynamic scene (from the camera's ``times``);
            * ``appearance`` ``(n_rays, k)``: an appearance code that replaces the embedding of
              ``train_index`` (evaluation protocols that fit a code to a held-out image).
    """

    origins: Tensor
    directions: Tensor
    z_per_t: Tensor
    attrs: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        # Contiguous origins and directions: samples gather them per sample (Samples.positions),
        # and a gather from a strided view (a column of the poses) is ~10x slower.
        self.origins, self.directions = self.origins.contiguous(), self.directions.contiguous()

    def __len__(self) -> int:
        return self.origins.shape[0]

    def get(self, name: str) -> Tensor | None:
        """The per-ray attribute ``name``, or None when the rays do not carry it."""
        return self.attrs.get(name)

    def with_attrs(self, **attrs: Tensor | None) -> "Rays":
        """A copy with attributes added or replaced (``None`` removes one)."""
        merged = {**self.attrs, **attrs}
        return Rays(self.origins, self.directions, self.z_per_t,
                    {k: v for k, v in merged.items() if v is not None})

    def _map(self, fn) -> "Rays":
        return Rays(fn(self.origins), fn(self.directions), fn(self.z_per_t),
                    {k: fn(v) for k, v in self.attrs.items()})

    def __getitem__(self, sl) -> "Rays":
        return self._map(lambda x: x[sl])

    def to(self, device: torch.device | str) -> "Rays":
        return self._map(lambda x: x.to(device))

    def detach(self) -> "Rays":
        """The same rays without their graph (sampling passes of pose-differentiable renders)."""
        return self._map(lambda x: x.detach())

    def chunks(self, size: int):
        """Consecutive slices of at most ``size`` rays."""
        for i in range(0, len(self), size):
            yield self[i:i + size]

    @staticmethod
    def cat(parts: "list[Rays]") -> "Rays":
        """Concatenate ray batches; they must carry the same attributes."""
        if len(parts) == 1:
            return parts[0]
        names = set(parts[0].attrs)
        if any(set(p.attrs) != names for p in parts):
            raise ValueError("Rays.cat: the batches carry different attributes: "
                             + " vs ".join(str(sorted(p.attrs)) for p in parts))
        return Rays(torch.cat([p.origins for p in parts]), torch.cat([p.directions for p in parts]),
                    torch.cat([p.z_per_t for p in parts]),
                    {k: torch.cat([p.attrs[k] for p in parts]) for k in sorted(names)})


def camera_directions(cameras: Cameras, cam_idx: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``(n, 3)`` camera-space directions ``d_cam`` (OpenGL axes, ``z = -1`` for a pinhole or an
    OpenCV lens) through image points ``(u, v)`` of cameras ``cam_idx``, through the lens."""
    x = (u - cameras.cx[cam_idx]) / cameras.fx[cam_idx]
    y = (v - cameras.cy[cam_idx]) / cameras.fy[cam_idx]
    lens = cameras.lens
    if lens is None:
        return torch.stack([x, -y, -torch.ones_like(u)], dim=-1)
    # OpenCV axes -> OpenGL axes
    d_cam = undistorted_directions(lens.coeffs[cam_idx], lens.fisheye[cam_idx], x, y)
    return d_cam * torch.tensor([1.0, -1.0, -1.0], dtype=d_cam.dtype, device=d_cam.device)


@dataclass
class LensDirections:
    """``d_cam`` of every pixel centre of cameras with a lens, computed once: training draws
    whole pixels, so the per-ray Newton undistortion becomes a lookup (:func:`lens_directions`).

    ``group`` ``(n_cameras,)`` long: each camera's table; ``table`` ``(G, H W, 3)``: the
    directions of the ``G`` distinct intrinsics-and-lens combinations, pixel ``(i, j)`` at
    ``j W + i``."""

    group: Tensor
    table: Tensor


def lens_directions(cameras: Cameras, max_bytes: int = 64 << 20) -> LensDirections | None:
    """The pixel-centre directions of ``cameras``, one table per distinct ``(fx, fy, cx, cy,
    lens)``; None without a lens (a pinhole's directions are cheaper than a lookup), or when the
    tables would take more than ``max_bytes`` (cameras with intrinsics of their own each).
    Detached: for cameras whose intrinsics are not being learned."""
    lens = cameras.lens
    if lens is None:
        return None
    key = torch.cat([torch.stack([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1).double(),
                     lens.coeffs.double(), lens.fisheye.double()[:, None]], -1).detach()
    keys, group = torch.unique(key, dim=0, return_inverse=True)
    h, w = cameras.height, cameras.width
    if keys.shape[0] * h * w * 3 * 4 > max_bytes:
        return None
    first = torch.full((keys.shape[0],), len(cameras), dtype=torch.long, device=group.device)
    first.scatter_reduce_(0, group, torch.arange(len(cameras), device=group.device), reduce="amin")
    i, j = pixel_grid(cameras)
    u, v = i.float() + 0.5, j.float() + 0.5
    with torch.no_grad():
        table = torch.stack([camera_directions(cameras, torch.full_like(u, int(c), dtype=torch.long), u, v)
                             for c in first.tolist()])
    return LensDirections(group, table)


def generate_rays(cameras: Cameras, cam_idx: Tensor, u: Tensor, v: Tensor,
                  d_cam: Tensor | None = None) -> Rays:
    """Rays through image points ``(u, v)`` (continuous pixel coordinates) of cameras ``cam_idx``.

    Args:
        cameras: the camera set.
        cam_idx: ``(n_rays,)`` long, which camera each ray belongs to.
        u, v: ``(n_rays,)`` float image coordinates; pixel ``(i, j)``'s centre is
            ``(i + 0.5, j + 0.5)``.
        d_cam: ``(n_rays, 3)`` their camera-space directions when already known
            (:class:`LensDirections`); default :func:`camera_directions`.

    The rays carry ``radii`` (pixel footprint), ``camera_index`` (``cam_idx``) and every
    per-camera attribute of ``cameras`` (e.g. ``times``) as per-ray attributes.

    Example: a camera at the origin looking down -z with ``fx = fy = 100, cx = cy = 50``; the
    ray through ``u = 150, v = 50`` has ``d_cam = (1, 0, -1)``, unit direction
    ``(0.7071, 0, -0.7071)`` and ``z_per_t = 0.7071``.
    """
    if d_cam is None:
        d_cam = camera_directions(cameras, cam_idx, u, v)
    c2w = cameras.c2w[cam_idx]
    d_world = (c2w[:, :3, :3] @ d_cam.unsqueeze(-1)).squeeze(-1)
    norm = d_world.norm(dim=-1, keepdim=True)
    z_per_t = -d_cam[:, 2] / d_cam.norm(dim=-1)
    # Pixel footprint: pitch 1 / f on the z = 1 plane, times mip-NeRF's 2 / sqrt(12) (the radius
    # of the disc with the pixel's variance), per unit of planar depth -> per unit ray distance.
    f = torch.sqrt(cameras.fx[cam_idx] * cameras.fy[cam_idx])
    radii = z_per_t / f * (2.0 / 12 ** 0.5)
    attrs = {"radii": radii, "camera_index": cam_idx,
             **{k: v[cam_idx] for k, v in cameras.attrs.items()}}
    return Rays(c2w[:, :3, 3], d_world / norm, z_per_t, attrs)


def pixel_rays(cameras: Cameras, cam_idx: Tensor, i: Tensor, j: Tensor,
               directions: LensDirections | None = None) -> Rays:
    """Rays through the centres of integer pixels ``(i, j)`` (column, row); ``directions``:
    :func:`lens_directions` of ``cameras``, to look the directions up."""
    d_cam = None if directions is None else directions.table[directions.group[cam_idx], j * cameras.width + i]
    return generate_rays(cameras, cam_idx, i.float() + 0.5, j.float() + 0.5, d_cam)


def pixel_grid(cameras: Cameras) -> tuple[Tensor, Tensor]:
    """``(i, j)``: the column and row ``(H W,)`` long of every pixel of an image of ``cameras``,
    in row-major order (pixel ``(i, j)`` at ``j W + i``)."""
    dev = cameras.device
    j, i = torch.meshgrid(torch.arange(cameras.height, device=dev),
                          torch.arange(cameras.width, device=dev), indexing="ij")
    return i.reshape(-1), j.reshape(-1)


def image_rays(cameras: Cameras, index: int) -> Rays:
    """All ``height * width`` pixel-centre rays of one camera, in row-major order."""
    i, j = pixel_grid(cameras)
    idx = torch.full_like(i, index)
    return pixel_rays(cameras, idx, i, j)


def project(cameras: Cameras, index: int, points: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points into camera ``index``.

    Returns ``(uv, z)``: ``(n, 2)`` continuous pixel coordinates (through the camera's lens,
    if any) and ``(n,)`` planar depth (positive in front of the camera).
    """
    c2w = cameras.c2w[index]
    rot, center = c2w[:3, :3], c2w[:3, 3]
    p_cam = (points - center) @ rot  # R^T (p - c), row-vector form
    z = -p_cam[:, 2]
    x, y = p_cam[:, 0] / z, -p_cam[:, 1] / z
    if cameras.lens is not None:
        n = len(points)
        x, y = distort(cameras.lens.coeffs[index].expand(n, 6), cameras.lens.fisheye[index].expand(n), x, y)
    u = cameras.fx[index] * x + cameras.cx[index]
    v = cameras.fy[index] * y + cameras.cy[index]
    return torch.stack([u, v], dim=-1), z


def frustum_slopes(cameras: Cameras, per_side: int = 64) -> Tensor:
    """``(n_cams, 4)``: each camera's image as the slopes ``(x_min, x_max, y_min, y_max)`` of its
    border rays in its own frame (``x / f``, ``y / f`` with ``f = -z`` the forward distance, x
    right, y up), from rays through ``per_side`` points of each side of the image's outer
    border (through the lens, if any). A lens whose border rays do not all point forward (a
    fisheye wider than 180 degrees) gets infinite slopes.

    Example: a pinhole with ``fx = fy = 100``, ``cx = cy = 50`` and a 100 x 100 image:
    ``(-0.5, 0.5, -0.5, 0.5)``."""
    w, h, dev = float(cameras.width), float(cameras.height), cameras.device
    s = torch.linspace(0.0, 1.0, per_side, device=dev)
    u = torch.cat([s * w, s * w, torch.zeros_like(s), torch.full_like(s, w)])
    v = torch.cat([torch.zeros_like(s), torch.full_like(s, h), s * h, s * h])
    n = len(cameras)
    idx = torch.arange(n, device=dev).repeat_interleave(len(u))
    rays = generate_rays(cameras, idx, u.repeat(n), v.repeat(n))
    rot = cameras.c2w[:, :3, :3].detach()[idx]
    d = (rays.directions.detach()[:, None, :] @ rot)[:, 0].view(n, -1, 3)  # R^T d: camera frame
    forward = -d[..., 2]
    x, y = d[..., 0] / forward.clamp(min=1e-12), d[..., 1] / forward.clamp(min=1e-12)
    slopes = torch.stack([x.amin(1), x.amax(1), y.amin(1), y.amax(1)], -1)
    wide = (forward <= 1e-6).any(1)
    inf = torch.tensor([-torch.inf, torch.inf, -torch.inf, torch.inf], device=dev, dtype=slopes.dtype)
    return torch.where(wide[:, None], inf, slopes)


def near_frustum(points: Tensor, radius: Tensor, cameras: Cameras, chunk: int = 1 << 13) -> Tensor:
    """``(n,)`` bool: is each point of ``points`` ``(n, 3)`` within ``radius`` ``(n,)`` of at least
    one camera's viewing frustum (the pyramid of :func:`frustum_slopes`, from the camera's
    centre forward without a far end)? A point is kept when it lies on the inner side of, or
    within ``radius`` of, each of the pyramid's four side planes and the camera's image plane
    through its centre; so every point within ``radius`` of the frustum is kept, and a point in
    front of a pinhole that projects outside its image by more than the radius is not.
    ``radius`` ``(n, 3)`` instead: the half-extents of axis-aligned boxes centred on the points;
    the margin to a plane of unit normal ``m`` is then the box's reach ``sum_k h_k |m_k|``, so
    every box that reaches into the frustum is kept (a tighter test than the box's sphere).

    Example: a pinhole at the origin looking down -z with slopes ``+-0.5``: ``(0, 0, -5)`` is
    kept, ``(4, 0, -5)`` (slope 0.8) is not at radius 0.1, nor is ``(0, 0, 5)`` (behind)."""
    slopes = frustum_slopes(cameras).to(points.dtype)
    c2w = cameras.c2w.detach().to(points.dtype)
    rot, centre = c2w[:, :3, :3], c2w[:, :3, 3]
    # inward normals in the camera frame, (n_cams, 5, 3): the four sides, then "in front"
    x0, x1, y0, y1 = (c.nan_to_num(posinf=1e30, neginf=-1e30) for c in slopes.unbind(-1))
    one, zero = torch.ones_like(x0), torch.zeros_like(x0)
    # a side plane through the centre containing the forward axis's slope s: x - s f >= 0 (x_min)
    normals = torch.stack([torch.stack([one, zero, x0], -1), torch.stack([-one, zero, -x1], -1),
                           torch.stack([zero, one, y0], -1), torch.stack([zero, -one, -y1], -1),
                           torch.stack([zero, zero, -one], -1)], 1)            # f = -z: x - s f = x + s z
    normals = normals / normals.norm(dim=-1, keepdim=True)
    world = normals @ rot.transpose(1, 2)                                       # (n_cams, 5, 3): R n
    offset = -(world * centre[:, None, :]).sum(-1)                              # plane: n . p + offset >= 0
    infinite = slopes.isinf().any(-1)
    world = world.reshape(-1, 3)
    offset = offset.reshape(-1)
    out = []
    for i in range(0, points.shape[0], chunk):
        p, r = points[i:i + chunk], radius[i:i + chunk]
        dist = (p @ world.T + offset).view(p.shape[0], len(cameras), 5)
        margin = (r @ world.abs().T).view_as(dist) if r.dim() == 2 else r[:, None, None]
        inside = (dist >= -margin).all(-1) | infinite
        out.append(inside.any(-1))
    return torch.cat(out) if out else points.new_zeros(0, dtype=torch.bool)


def pinhole_from_fov(c2w: Tensor, fov_y: Tensor, width: int, height: int) -> Cameras:
    """Cameras with square pixels and the principal point at the image centre, from poses
    ``c2w`` ``(n_cams, 3, 4)`` and vertical fields of view ``fov_y`` ``(n_cams,)`` in radians:
    ``fx = fy = (height / 2) / tan(fov_y / 2)``, ``cx = width / 2``, ``cy = height / 2``.

    Example: ``fov_y = 90 deg`` at 64 x 32 gives ``fy = 16``, ``cx = 32``, ``cy = 16``."""
    fy = (height / 2) / torch.tan(fov_y / 2)
    ones = torch.ones_like(fy)
    return Cameras(c2w, fy, fy.clone(), ones * (width / 2), ones * (height / 2), width, height)


def look_at(eye: Tensor, target: Tensor, up: Tensor | None = None) -> Tensor:
    """``(..., 3, 4)`` camera-to-world matrices (OpenGL axes) of cameras at ``eye`` ``(..., 3)``
    looking at ``target`` (``(3,)`` or ``(..., 3)``), world ``up`` (default z). Differentiable in
    ``eye`` and ``target``."""
    if up is None:
        up = torch.tensor([0.0, 0.0, 1.0], dtype=eye.dtype, device=eye.device)
    back = eye - target
    back = back / back.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(up.expand_as(back), back)
    right = right / right.norm(dim=-1, keepdim=True)
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
