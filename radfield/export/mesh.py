"""``radfield export mesh|pointcloud``: surfaces and point clouds from a trained run, in the
dataset's own world coordinates.

Mesh: the field's density sampled on a ``R x R x R`` lattice of the scene box (vertices at
``lo + (hi - lo) * k / (R - 1)``), in slabs of z so memory stays bounded at any resolution,
marching cubes (PyMCubes) at ``level`` per slab (slabs share their boundary layer, and the shared
vertices are merged), then vertex colours from the field seen along the inward normal (the
density gradient). Point cloud: depth renders of the training views, the points
``o + t d`` of pixels with opacity > 0.5, with their rendered colours.

Coordinates: radfield works in the scene frame ``x_scene = (x_world - center) * scale`` when a
reader normalised the scene (COLMAP, LLFF); exports undo it, ``x_world = x_scene / scale + center``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Rays, image_rays
from radfield.data import load_cameras
from radfield.errors import RadfieldError
from radfield.io import atomic_write
from radfield.rendering.backgrounds import background_color
from radfield.rendering.images import render_rays
from radfield.samplers.samples import Samples
from radfield.training.checkpoint import load_run

MESH_FORMATS = (".ply", ".obj", ".glb")


def to_world(points: Tensor, normalization: dict | None) -> Tensor:
    """``x_world = x_scene / scale + center`` (identity without a normalisation)."""
    if not normalization:
        return points
    center = torch.tensor(normalization["center"], dtype=points.dtype, device=points.device)
    return points / float(normalization["scale"]) + center


def lattice(aabb: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """``(origin (3,), spacing (3,))`` of the ``R^3`` vertex lattice of the box."""
    lo, hi = aabb[:3].double(), aabb[3:].double()
    return lo, (hi - lo) / (resolution - 1)


@torch.no_grad()
def density_slab(density_fn, aabb: Tensor, resolution: int, z0: int, z1: int, chunk: int) -> np.ndarray:
    """``(R, R, z1 - z0)`` densities at lattice vertices ``(i, j, k)``, ``z0 <= k < z1``."""
    origin, step = lattice(aabb, resolution)
    idx = torch.arange(resolution, dtype=torch.float64)
    ks = torch.arange(z0, z1, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(idx, idx, ks, indexing="ij"), dim=-1).reshape(-1, 3)
    x = (origin + grid * step).float().to(aabb.device)
    out = torch.cat([density_fn(x[i:i + chunk]).float().cpu() for i in range(0, x.shape[0], chunk)])
    return out.reshape(resolution, resolution, z1 - z0).numpy()


def marching_cubes(density_fn, aabb: Tensor, resolution: int, level: float, slab: int | None = None,
                   chunk: int = 1 << 18, progress: bool = False,
                   max_points: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """``(vertices (V, 3) float64 in the scene frame, faces (F, 3) int)`` of the surface
    ``density = level``, slab by slab along z; a slab holds at most ``max_points`` lattice
    vertices (``slab`` layers, default ``max_points // R^2``), so memory does not grow with R^3."""
    import mcubes
    import trimesh

    if resolution < 2:
        raise RadfieldError(f"--resolution: must be at least 2, got {resolution}")
    origin, step = lattice(aabb, resolution)
    slab = slab or max(1, max_points // resolution ** 2 - 1)
    verts, faces, n_verts = [], [], 0
    starts = list(range(0, resolution - 1, slab))
    if progress:
        from tqdm import tqdm
        starts = tqdm(starts, desc="marching cubes", unit="slab", file=sys.stderr)
    for z0 in starts:
        z1 = min(z0 + slab + 1, resolution)  # one shared layer with the next slab
        values = density_slab(density_fn, aabb, resolution, z0, z1, chunk)
        v, f = mcubes.marching_cubes(values, level)
        if len(f):
            v = v + np.array([0.0, 0.0, z0])
            verts.append(origin.numpy() + v * step.numpy())
            faces.append(f + n_verts)
            n_verts += len(v)
    if not faces:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    mesh = trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)
    mesh.merge_vertices()  # the vertices slabs share on their common layer
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


@torch.no_grad()
def surface_colours(model, vertices: Tensor, normals: Tensor, eps: float, chunk: int = 1 << 16) -> Tensor:
    """``(V, 3)`` colours of the field at ``vertices`` seen from outside along ``-normals``:
    each vertex is one sample ``[0, 2 eps]`` on a ray from ``vertex + eps * normal``, so every
    model's own ``field_inputs`` applies (times default to 0, the canonical frame), its colour
    shaded by the model as if it were opaque (``Model.shade``, MeRF's deferred shading)."""
    out = []
    for i in range(0, vertices.shape[0], chunk):
        x, n = vertices[i:i + chunk], normals[i:i + chunk]
        k = x.shape[0]
        rays = Rays(x + eps * n, -n, torch.ones(k, device=x.device),
                    {"radii": torch.full((k,), 1e-4, device=x.device)})
        samples = Samples(torch.zeros(k, device=x.device), torch.full((k,), 2 * eps, device=x.device),
                          torch.arange(k, device=x.device), k, 1)
        _, values = model.field.activate(model.field.raw(*model.field_inputs(rays, samples)).float())
        rgb = model.shade(rays, values, torch.ones(k, device=x.device))  # the sample seen as opaque
        out.append(rgb.clamp(0, 1))
    return torch.cat(out) if out else torch.zeros(0, 3)


def density_normals(density_fn, x: Tensor, eps: float, chunk: int = 1 << 16) -> Tensor:
    """Outward unit normals ``-grad density / |grad density|`` by central differences, in chunks
    of ``chunk`` points (a fine mesh has millions of vertices)."""
    out = []
    for i in range(0, x.shape[0], chunk):
        xc, grads = x[i:i + chunk], []
        for axis in range(3):
            e = torch.zeros(3, device=x.device)
            e[axis] = eps
            grads.append(density_fn(xc + e) - density_fn(xc - e))
        out.append(-torch.nn.functional.normalize(torch.stack(grads, dim=-1), dim=-1))
    return torch.cat(out) if out else x.new_zeros(0, 3)


def check_out(out: Path, formats: tuple[str, ...]) -> None:
    if out.suffix.lower() not in formats:
        raise RadfieldError(f"{out}: unsupported format {out.suffix or '(none)'} "
                            f"(choose from: {', '.join(formats)})")
    if not out.parent.exists():
        raise RadfieldError(f"{out.parent}: no such folder")


def export_mesh(run_dir: str | Path, out: str | Path, resolution: int = 256, level: float = 10.0,
                device: str = "cpu", progress: bool = True) -> dict:
    """Write the run's density (or SDF) level surface as PLY / OBJ / GLB with vertex colours, in
    world coordinates. Returns ``{"vertices", "faces", "path"}``."""
    import trimesh

    out = Path(out)
    check_out(out, MESH_FORMATS)
    _, model = load_run(run_dir, device)
    aabb = model.aabb
    density_fn, level = model.level_set(level)  # the density, or e.g. an SDF's zero level
    with torch.no_grad():
        verts, faces = marching_cubes(density_fn, aabb, resolution, level, progress=progress)
        if len(faces) == 0:
            raise RadfieldError(f"{run_dir}: no surface at level {level} (try a lower --level)")
        v = torch.from_numpy(verts).float().to(aabb.device)
        cell = float(((aabb[3:] - aabb[:3]) / (resolution - 1)).min())
        normals = density_normals(density_fn, v, 0.5 * cell)
        colours = surface_colours(model, v, normals, cell)
    world = to_world(v, model.scene.meta.get("normalization")).cpu().numpy()
    mesh = trimesh.Trimesh(world, faces, vertex_colors=(colours.cpu().numpy() * 255).round().astype(np.uint8),
                           process=False)
    with atomic_write(out) as tmp:
        mesh.export(tmp, file_type=out.suffix.lower()[1:])
    return {"vertices": len(world), "faces": len(faces), "path": str(out)}


def export_pointcloud(run_dir: str | Path, out: str | Path, max_views: int = 16, device: str = "cpu",
                      min_opacity: float = 0.5, progress: bool = True) -> dict:
    """Write points from depth renders of (up to ``max_views``, evenly spread) training views as
    PLY with colours, and unit normals (``nx ny nz``) for models with surface normals (VolSDF), in
    world coordinates. Returns ``{"points", "normals" (bool), "path"}``."""
    import trimesh

    out = Path(out)
    check_out(out, (".ply",))
    config, model = load_run(run_dir, device)
    data = config.data
    cams = load_cameras(data.path, "train", data.downscale, colmap_model=data.colmap_model).cameras.to(device)
    views = torch.linspace(0, len(cams) - 1, min(max_views, len(cams))).round().long().unique().tolist()
    if progress:
        from tqdm import tqdm
        views = tqdm(views, desc="depth renders", unit="view", file=sys.stderr)
    bg = background_color(config.data.eval_background, device)
    points, colours, normals = [], [], []
    for i in views:
        rays = image_rays(cams, i)
        rgb, depth, opacity, normal = render_rays(model, rays, bg, normals=True)
        keep = opacity > min_opacity
        t = depth[keep] / opacity[keep]  # expected distance of the visible surface
        points.append(rays.origins[keep] + t[:, None] * rays.directions[keep])
        colours.append(rgb[keep].clamp(0, 1))
        if normal is not None:
            normals.append(torch.nn.functional.normalize(normal[keep], dim=-1))
    p = torch.cat(points)
    if p.shape[0] == 0:
        raise RadfieldError(f"{run_dir}: no pixel of the training views is opaque enough for a point")
    # the normalisation is a shift and a uniform scale: normals are the same in world coordinates
    world = to_world(p, model.scene.meta.get("normalization")).cpu().numpy()
    rgb8 = (torch.cat(colours).cpu().numpy() * 255).round().astype(np.uint8)
    with atomic_write(out) as tmp:
        if normals:  # a mesh without faces is how trimesh writes per-point normals (nx, ny, nz)
            cloud = trimesh.Trimesh(world, np.zeros((0, 3), dtype=np.int64), vertex_colors=rgb8,
                                    vertex_normals=torch.cat(normals).cpu().numpy(), process=False)
            Path(tmp).write_bytes(trimesh.exchange.ply.export_ply(cloud, vertex_normal=True))
        else:
            trimesh.PointCloud(world, colors=rgb8).export(tmp, file_type="ply")
    return {"points": len(world), "normals": bool(normals), "path": str(out)}
