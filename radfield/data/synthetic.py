"""A built-in synthetic scene, ray-traced analytically and written as a Blender-format dataset.

The scene (all inside ``[-1, 1]^3``, world z up, transparent background):

* ``TEXTURED_SPHERE``: a checker in spherical coordinates (30 deg cells of polar angle and
  azimuth about the sphere's own z axis), orange / blue.
* ``CHECKER_BOX``: an axis-aligned box with a 3D checker (cells of 0.175), cream / green.
* ``GLOSSY_SPHERE``: a plain red sphere with a strong, sharp highlight.

Shading (no shadows), with ``n`` the unit normal, ``l`` the unit light direction, ``d`` the ray
direction and ``h = normalise(l - d)``:
``rgb = clamp(albedo * (0.25 + 0.75 max(0, n.l)) + k_s max(0, n.h)^shininess, 0, 1)``.
The Blinn-Phong term makes the scene view dependent.

Cameras (OpenGL axes, :func:`radfield.cameras.look_at` with world z up, radius 4, looking at
the origin, ``camera_angle_x = 0.6911112`` as in NeRF synthetic): train and val uniformly random
in azimuth with elevation uniform in [10, 70] deg; test on a circle at 30 deg elevation.

Other scenes of the same kind (:func:`random_layout`, ``make_scene(..., layout=...)``): the
same three objects with random sizes, places (inside ``[-1, 1]^3``, apart) and colours, one
scene per seed, for models trained across many scenes (PixelNeRF); :func:`make_scenes` writes a
folder of them. ``DEFAULT_LAYOUT`` is the scene above.

With ``motion`` (:func:`make_scene`) the scene is dynamic, in the D-NeRF format: frame ``k`` of a
split of ``n`` frames has ``time = k / (n - 1)`` and the glossy sphere's centre moves to
``centre + time * motion`` (the other objects stay).

Each pixel averages 2x2 sub-pixel rays at ``(i + 0.25 | 0.75, j + 0.25 | 0.75)`` with
premultiplied compositing: ``a = mean(alpha_s)``, ``rgb = mean(rgb_s * alpha_s) / a``
(straight alpha is what the PNG stores). Depth (planar camera z, ``t_hit * z_per_t``, 0 on a
miss) is that of the pixel-centre ray.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras, generate_rays, look_at, orbit_poses

CAMERA_ANGLE_X = 0.6911112070083618
CAMERA_RADIUS = 4.0
LIGHT_DIR = torch.nn.functional.normalize(torch.tensor([0.4, -0.3, 1.0]), dim=0)
AMBIENT, DIFFUSE = 0.25, 0.75


@dataclass(frozen=True)
class Sphere:
    centre: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class Box:
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]


TEXTURED_SPHERE = Sphere((-0.35, 0.3, 0.0), 0.55)
CHECKER_BOX = Box((0.0, -0.85, -0.85), (0.7, -0.15, -0.15))
GLOSSY_SPHERE = Sphere((0.5, 0.45, 0.45), 0.3)
# (specular k_s, shininess) of TEXTURED_SPHERE, CHECKER_BOX, GLOSSY_SPHERE (trace's order).
_SPECULAR = ((0.3, 32.0), (0.1, 16.0), (0.7, 80.0))


@dataclass(frozen=True)
class Layout:
    """A scene: the three objects and their colours (each checker's two albedos, the glossy
    sphere's albedo)."""

    textured: Sphere = TEXTURED_SPHERE
    box: Box = CHECKER_BOX
    glossy: Sphere = GLOSSY_SPHERE
    sphere_colours: tuple[tuple[float, ...], tuple[float, ...]] = ((0.95, 0.55, 0.1), (0.15, 0.35, 0.85))
    box_colours: tuple[tuple[float, ...], tuple[float, ...]] = ((0.9, 0.88, 0.8), (0.1, 0.5, 0.2))
    glossy_colour: tuple[float, ...] = (0.8, 0.1, 0.1)

    def to_dict(self) -> dict:
        return {"textured": {"centre": list(self.textured.centre), "radius": self.textured.radius},
                "box": {"lo": list(self.box.lo), "hi": list(self.box.hi)},
                "glossy": {"centre": list(self.glossy.centre), "radius": self.glossy.radius},
                "sphere_colours": [list(c) for c in self.sphere_colours],
                "box_colours": [list(c) for c in self.box_colours], "glossy_colour": list(self.glossy_colour)}


DEFAULT_LAYOUT = Layout()


def random_layout(seed: int) -> Layout:
    """A random scene of the three objects (one per ``seed``): sphere radii in [0.25, 0.55] and
    [0.2, 0.4], box half-sides in [0.15, 0.4], each object inside ``[-0.95, 0.95]^3`` and its
    bounding sphere 0.05 clear of the others' (rejection sampling); checker colours two random
    colours of clearly different brightness, the glossy sphere one saturated colour."""
    gen = torch.Generator().manual_seed(int(seed))

    def u(lo: float, hi: float, n: int = 1) -> list[float]:
        return (lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)).tolist()

    while True:
        r_t, r_g = u(0.25, 0.55)[0], u(0.2, 0.4)[0]
        half = u(0.15, 0.4, 3)
        c_t = u(-0.95 + r_t, 0.95 - r_t, 3)
        c_g = u(-0.95 + r_g, 0.95 - r_g, 3)
        c_b = [u(-0.95 + h, 0.95 - h)[0] for h in half]
        bound = [(c_t, r_t), (c_g, r_g), (c_b, math.sqrt(sum(h * h for h in half)))]
        if all(math.dist(a, b) > ra + rb + 0.05 for i, (a, ra) in enumerate(bound) for b, rb in bound[i + 1:]):
            break

    def colour() -> tuple[float, ...]:
        return tuple(round(v, 4) for v in u(0.05, 0.95, 3))

    def pair() -> tuple[tuple[float, ...], tuple[float, ...]]:
        while True:
            a, b = colour(), colour()
            if abs(sum(a) - sum(b)) > 0.6:
                return a, b

    glossy = [0.1, 0.1, 0.1]
    glossy[int(torch.randint(0, 3, (1,), generator=gen))] = 0.85
    return Layout(Sphere(tuple(c_t), r_t), Box(tuple(c - h for c, h in zip(c_b, half)),
                                               tuple(c + h for c, h in zip(c_b, half))),
                  Sphere(tuple(c_g), r_g), pair(), pair(), tuple(glossy))
_EPS = 1e-6
_VIEWS_PER_BATCH = 16
_PIXELS_PER_BATCH = 1 << 22  # large views: fewer at a time, so tracing a batch stays within memory


# ---------------------------------------------------------------------------- intersections


def hit_sphere(o: Tensor, d: Tensor, s: Sphere) -> Tensor:
    """``(n,)`` nearest ``t > 0`` with ``|o + t d - c| = r`` (unit ``d``), inf on a miss.

    ``t = -b -+ sqrt(b^2 - q)`` with ``b = d.(o - c)``, ``q = |o - c|^2 - r^2``.
    """
    oc = o - torch.tensor(s.centre, dtype=o.dtype)
    b = (d * oc).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - s.radius**2)
    root = disc.clamp_min(0.0).sqrt()
    t0, t1 = -b - root, -b + root
    t = torch.where(t0 > _EPS, t0, torch.where(t1 > _EPS, t1, torch.full_like(t0, math.inf)))
    return torch.where(disc >= 0, t, torch.full_like(t, math.inf))


def hit_box(o: Tensor, d: Tensor, box: Box) -> Tensor:
    """``(n,)`` nearest ``t > 0`` on an axis-aligned box (slab method), inf on a miss.

    ``t_near = max_k min(t_lo_k, t_hi_k)``, ``t_far = min_k max(t_lo_k, t_hi_k)`` with
    ``t_lo_k = (lo_k - o_k) / d_k``; a hit needs ``t_far >= max(t_near, 0)``.
    """
    d_safe = torch.where(d.abs() < 1e-12, torch.full_like(d, 1e-12), d)
    t_lo = (torch.tensor(box.lo, dtype=o.dtype) - o) / d_safe
    t_hi = (torch.tensor(box.hi, dtype=o.dtype) - o) / d_safe
    t_near = torch.minimum(t_lo, t_hi).amax(-1)
    t_far = torch.maximum(t_lo, t_hi).amin(-1)
    t = torch.where(t_near > _EPS, t_near, t_far)
    hit = (t_far >= t_near) & (t > _EPS)
    return torch.where(hit, t, torch.full_like(t, math.inf))


def sphere_normal(p: Tensor, s: Sphere) -> Tensor:
    return (p - torch.tensor(s.centre, dtype=p.dtype)) / s.radius


def box_normal(p: Tensor, box: Box) -> Tensor:
    """Outward normal of the face the point lies on: the axis where ``|p - centre| / half``
    is largest."""
    lo, hi = torch.tensor(box.lo, dtype=p.dtype), torch.tensor(box.hi, dtype=p.dtype)
    rel = (p - (lo + hi) / 2) / ((hi - lo) / 2)
    axis = rel.abs().argmax(-1, keepdim=True)
    return torch.zeros_like(p).scatter(-1, axis, rel.gather(-1, axis).sign())


def signed_distance(p: Tensor, layout: Layout = DEFAULT_LAYOUT) -> Tensor:
    """``(n,)`` signed distance of points ``p (n, 3)`` to the static scene's surfaces (the union
    of its two spheres and its box; negative inside): exact ground truth for surface
    reconstruction (meshes, SDF fields)."""
    p = p.float()

    def sphere(s: Sphere) -> Tensor:
        return (p - torch.tensor(s.centre)).norm(dim=-1) - s.radius

    lo, hi = torch.tensor(layout.box.lo), torch.tensor(layout.box.hi)
    q = (p - (lo + hi) / 2).abs() - (hi - lo) / 2
    box = q.clamp(min=0).norm(dim=-1) + q.amax(-1).clamp(max=0)
    return torch.minimum(torch.minimum(sphere(layout.textured), sphere(layout.glossy)), box)


# ---------------------------------------------------------------------------- textures


def sphere_checker(normal: Tensor, colours=DEFAULT_LAYOUT.sphere_colours) -> Tensor:
    """``(n, 3)`` albedo: 30-degree checker in polar angle ``acos(n_z)`` and ``atan2(n_y, n_x)``."""
    theta = torch.acos(normal[:, 2].clamp(-1.0, 1.0))
    phi = torch.atan2(normal[:, 1], normal[:, 0])
    cell = math.pi / 6
    odd = ((torch.floor(theta / cell) + torch.floor(phi / cell)) % 2).unsqueeze(-1)
    return odd * torch.tensor(colours[0]) + (1 - odd) * torch.tensor(colours[1])


def box_checker(p: Tensor, normal: Tensor, colours=DEFAULT_LAYOUT.box_colours) -> Tensor:
    """``(n, 3)`` albedo: 3D checker of cells 0.175, sampled just inside the surface."""
    cells = torch.floor((p - 1e-4 * normal) / 0.175).sum(-1)
    odd = (cells % 2).unsqueeze(-1)
    return odd * torch.tensor(colours[0]) + (1 - odd) * torch.tensor(colours[1])


# ---------------------------------------------------------------------------- tracing


def trace(origins: Tensor, directions: Tensor, shift: Tensor | None = None,
          layout: Layout = DEFAULT_LAYOUT) -> tuple[Tensor, Tensor, Tensor]:
    """Shade the nearest hit of each ray in the scene ``layout``.

    Args:
        origins, directions: ``(n, 3)`` float32; directions unit length.
        shift: optional ``(n, 3)`` displacement of the glossy sphere seen by each ray (a dynamic
            scene; hitting a sphere moved by ``s`` is hitting the sphere from ``o - s``).

    Returns:
        ``rgb (n, 3)`` in [0, 1] (0 on a miss), ``alpha (n,)`` (1 on a hit, 0 on a miss) and
        ``t_hit (n,)`` ray distance to the hit (inf on a miss).
    """
    o, d = origins.float(), directions.float()
    s = torch.zeros_like(o) if shift is None else shift.float()
    t_all = torch.stack([hit_sphere(o, d, layout.textured), hit_box(o, d, layout.box),
                         hit_sphere(o - s, d, layout.glossy)], dim=-1)
    t_hit, which = t_all.min(dim=-1)
    hit = torch.isfinite(t_hit)
    p = o + torch.where(hit, t_hit, 0.0).unsqueeze(-1) * d
    normals = torch.stack([sphere_normal(p, layout.textured), box_normal(p, layout.box),
                           sphere_normal(p - s, layout.glossy)], dim=1)
    n = normals[torch.arange(len(o)), which]
    albedos = torch.stack([sphere_checker(n, layout.sphere_colours), box_checker(p, n, layout.box_colours),
                           torch.tensor(layout.glossy_colour).expand_as(p)], dim=1)
    albedo = albedos[torch.arange(len(o)), which]
    ks, shininess = torch.tensor(_SPECULAR).T[:, which]
    half = torch.nn.functional.normalize(LIGHT_DIR - d, dim=-1)
    diffuse = (n @ LIGHT_DIR).clamp_min(0.0)
    specular = ks * (n * half).sum(-1).clamp_min(0.0) ** shininess
    rgb = (albedo * (AMBIENT + DIFFUSE * diffuse).unsqueeze(-1) + specular.unsqueeze(-1))
    rgb = torch.where(hit.unsqueeze(-1), rgb.clamp(0.0, 1.0), 0.0)
    return rgb, hit.float(), t_hit


def render_views(cameras: Cameras, views: Tensor, shifts: Tensor | None = None,
                 layout: Layout = DEFAULT_LAYOUT) -> tuple[np.ndarray, np.ndarray]:
    """``(k, H, W, 4)`` uint8 straight-alpha RGBA (2x2 supersampled, premultiplied averaging)
    and ``(k, H, W)`` float32 planar depth of the pixel-centre rays (0 on a miss) of the ``k``
    cameras ``views`` (``shifts (n_cams, 3)``: the glossy sphere's displacement per camera).
    All views are traced in one batch: per-op overhead dominates otherwise."""
    h, w, k = cameras.height, cameras.width, len(views)
    idx, j, i = torch.meshgrid(views, torch.arange(h), torch.arange(w), indexing="ij")
    idx, i, j = idx.reshape(-1), i.reshape(-1).float(), j.reshape(-1).float()
    premult, alpha = torch.zeros(len(idx), 3), torch.zeros(len(idx))
    for du, dv in ((0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
        rays = generate_rays(cameras, idx, i + du, j + dv)
        rgb_s, alpha_s, _ = trace(rays.origins, rays.directions, None if shifts is None else shifts[idx], layout)
        premult += rgb_s * alpha_s.unsqueeze(-1) / 4
        alpha += alpha_s / 4
    rgb = premult / alpha.clamp_min(1e-12).unsqueeze(-1)
    rgba = torch.cat([rgb, alpha.unsqueeze(-1)], dim=-1).reshape(k, h, w, 4)
    centre = generate_rays(cameras, idx, i + 0.5, j + 0.5)
    _, _, t_hit = trace(centre.origins, centre.directions, None if shifts is None else shifts[idx], layout)
    depth = torch.where(torch.isfinite(t_hit), t_hit * centre.z_per_t, 0.0).reshape(k, h, w)
    image = (rgba * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return image, depth.numpy().astype(np.float32)


def random_hemisphere_poses(n: int, generator: torch.Generator) -> Tensor:
    """``(n, 3, 4)`` cameras at radius 4 looking at the origin, azimuth uniform, elevation
    uniform in [10, 70] degrees."""
    az = 2 * math.pi * torch.rand(n, generator=generator)
    elev = torch.deg2rad(10.0 + 60.0 * torch.rand(n, generator=generator))
    eyes = CAMERA_RADIUS * torch.stack([elev.cos() * az.cos(), elev.cos() * az.sin(),
                                        elev.sin()], dim=-1)
    if n == 0:
        return torch.zeros(0, 3, 4)
    return torch.stack([look_at(eye, torch.zeros(3)) for eye in eyes])


def intrinsics(size: int) -> dict:
    """Blender-json intrinsics of a ``size x size`` view with ``camera_angle_x = 0.6911``."""
    focal = 0.5 * size / math.tan(0.5 * CAMERA_ANGLE_X)
    return {"camera_angle_x": CAMERA_ANGLE_X, "fl_x": focal, "fl_y": focal,
            "cx": size / 2, "cy": size / 2, "w": size, "h": size}


def _views_per_batch(size: int) -> int:
    """Views traced together: :data:`_VIEWS_PER_BATCH`, fewer where they would hold more than
    :data:`_PIXELS_PER_BATCH` pixels. Example: 64 px -> 16, 800 px -> 6."""
    return max(1, min(_VIEWS_PER_BATCH, _PIXELS_PER_BATCH // (size * size)))


def _write_views(out_dir: Path, split: str, cameras: Cameras, views: Tensor, shifts: Tensor | None,
                 layout: Layout, depth: bool) -> None:
    """Render the views ``views`` of ``cameras`` and write their ``split/r_K.png`` (and
    ``r_K_depth.npy``), :func:`_views_per_batch` at a time, with one torch thread:
    the batches are small enough that intra-op threading only adds overhead, which on a busy
    machine grows ~15x (measured 1.6 s vs 23 s for the default scene on 2 loaded cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        per_batch = _views_per_batch(max(cameras.height, cameras.width))
        for start in range(0, len(views), per_batch):
            batch = views[start:start + per_batch]
            images, depths = render_views(cameras, batch, shifts, layout)
            for index, image, depth_map in zip(batch.tolist(), images, depths):
                iio.imwrite(out_dir / split / f"r_{index}.png", image)
                if depth:
                    np.save(out_dir / split / f"r_{index}_depth.npy", depth_map)
    finally:
        torch.set_num_threads(threads)


def write_split(out_dir: Path, split: str, poses: Tensor, size: int,
                motion: tuple[float, float, float] | None = None, layout: Layout = DEFAULT_LAYOUT,
                depth: bool = True, workers: int = 1) -> None:
    """Render ``poses`` and write ``transforms_{split}.json``, ``split/r_K.png`` and (with
    ``depth``) ``split/r_K_depth.npy`` (with ``motion``: frame K at time K / (n - 1), see the
    module). ``workers > 1`` renders the views in that many processes (the same files)."""
    k = intrinsics(size)
    n = poses.shape[0]
    times = torch.arange(n, dtype=torch.float32) / max(n - 1, 1) if motion is not None else None
    shifts = None if times is None else times[:, None] * torch.tensor(motion, dtype=torch.float32)
    fx, fy, cx, cy = (torch.full((n,), float(k[key])) for key in ("fl_x", "fl_y", "cx", "cy"))
    cameras = Cameras(poses, fx, fy, cx, cy, size, size)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    views = torch.arange(n)
    if workers > 1 and n > _views_per_batch(size):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        parts = views.tensor_split(min(workers, n))
        with ProcessPoolExecutor(len(parts), mp_context=get_context("spawn")) as pool:
            for done in [pool.submit(_write_views, out_dir, split, cameras, part, shifts, layout, depth)
                         for part in parts]:
                done.result()
    else:
        _write_views(out_dir, split, cameras, views, shifts, layout, depth)
    frames = []
    for index in range(n):
        matrix = torch.cat([poses[index], torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
        frames.append({"file_path": f"./{split}/r_{index}", "transform_matrix": matrix.tolist()})
        if depth:
            frames[-1]["depth_file_path"] = f"./{split}/r_{index}_depth.npy"
        if times is not None:
            frames[-1]["time"] = float(times[index])
    (out_dir / f"transforms_{split}.json").write_text(json.dumps({**k, "frames": frames}, indent=1))


def make_scene(out_dir: str | Path, n_train: int = 40, n_val: int = 4, n_test: int = 8,
               size: int = 64, seed: int = 0, motion: tuple[float, float, float] | None = None,
               layout: Layout = DEFAULT_LAYOUT, depth: bool = True, workers: int = 1) -> Path:
    """Write the synthetic scene as a Blender-format dataset in ``out_dir``; returns its path.
    ``seed`` draws the cameras; ``layout`` is the scene (:func:`random_layout` for others);
    ``motion``: a dynamic scene (D-NeRF format), the glossy sphere moving by ``time * motion``;
    ``depth``: write depth maps; ``workers``: processes rendering each split's views (large
    scenes: NeRF-synthetic's protocol, 100 + 200 views of 800 x 800, takes about 6 minutes in
    one process on this project's CPU).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    splits = {"train": random_hemisphere_poses(n_train, gen),
              "val": random_hemisphere_poses(n_val, gen),
              "test": orbit_poses(n_test, CAMERA_RADIUS, 30.0) if n_test else torch.zeros(0, 3, 4)}
    for split, poses in splits.items():
        if len(poses):  # a split of no views is not written
            write_split(out, split, poses, size, motion, layout, depth, workers)
    if layout != DEFAULT_LAYOUT:
        (out / "layout.json").write_text(json.dumps(layout.to_dict(), indent=1))
    return out


def make_scenes(out_dir: str | Path, n_scenes: int, first_seed: int = 0, **kwargs) -> list[Path]:
    """``n_scenes`` random scenes (:func:`random_layout` of seeds ``first_seed ..``, cameras
    drawn with the same seed) as ``out_dir/scene_SSSS`` (S the seed); ``kwargs`` as
    :func:`make_scene`'s. Returns their paths."""
    return [make_scene(Path(out_dir) / f"scene_{seed:04d}", seed=seed, layout=random_layout(seed), **kwargs)
            for seed in range(first_seed, first_seed + n_scenes)]
