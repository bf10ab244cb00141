"""Surfaces and exports (issue 13), measured:

    python bench/surfaces.py volsdf --budget 600     # VolSDF on the built-in scene: Chamfer, normals
    python bench/surfaces.py density --budget 600    # ngp's density mesh on the same scene (levels)
    python bench/surfaces.py tabletop --budget 1200  # VolSDF on ../shared/data/tabletop: PSNR, mesh picture
    python bench/surfaces.py export --budget 300     # export time and memory, ngp and nerfacto, R 256 / 512
                                                     # (--only ngp: one preset)

The built-in scene's surfaces are analytic (:func:`radfield.data.synthetic.signed_distance`), so
the exported meshes are scored exactly: the Chamfer distance (mean of the two one-sided mean
distances: mesh vertices to the true surfaces, through the SDF; points sampled on the true
surfaces to the nearest mesh vertex) and the normal consistency (mean |cos| between the mesh's
vertex normals and the true SDF's gradient at the vertex). Each training and each export runs in
its own process (peak memory per process). Results: ``bench/out/surfaces_<suite>.json`` and a
markdown table for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
DATA = ROOT.parent / "shared" / "data"


def builtin_scene() -> Path:
    from radfield.data.synthetic import make_scene

    path = OUT / "builtin-64"
    if not (path / "transforms_train.json").is_file():
        make_scene(path, n_train=60, n_val=2, n_test=8, size=64)
    return path


def true_surface_points(n: int = 200_000, seed: int = 0) -> torch.Tensor:
    """Points on the built-in scene's surfaces: uniform in the box, projected along the SDF
    gradient onto the zero level (three Newton steps), kept where |d| < 1e-4."""
    from radfield.data.synthetic import signed_distance

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, 3, generator=g) * 2 - 1) * 1.2
    for _ in range(3):
        x = x.detach().requires_grad_(True)
        d = signed_distance(x)
        (grad,) = torch.autograd.grad(d.sum(), x)
        x = x - d[:, None] * torch.nn.functional.normalize(grad, dim=-1)
    x = x.detach()
    return x[signed_distance(x).abs() < 1e-4]


def score_mesh(path: Path) -> dict:
    import trimesh

    from radfield.data.synthetic import signed_distance

    mesh = trimesh.load(path, process=False)
    v = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32)
    to_true = signed_distance(v).abs()
    pts = true_surface_points()
    nearest = torch.cat([torch.cdist(pts[i:i + 4096], v).amin(1) for i in range(0, len(pts), 4096)])
    x = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(signed_distance(x).sum(), x)
    normals = torch.tensor(np.asarray(mesh.vertex_normals), dtype=torch.float32)
    cos = (torch.nn.functional.normalize(grad, dim=-1) * torch.nn.functional.normalize(normals, dim=-1)).sum(-1)
    return {"vertices": len(v), "faces": len(mesh.faces), "mesh_to_true": float(to_true.mean()),
            "true_to_mesh": float(nearest.mean()),
            "chamfer": float((to_true.mean() + nearest.mean()) / 2), "normal_consistency": float(cos.abs().mean())}


def train(preset: str, data: Path, budget: float, run_dir: Path, overrides: dict | None = None) -> dict:
    cmd = [sys.executable, "-m", "radfield", "train", str(data), "--preset", preset, "--out", str(run_dir),
           "--max-time", str(budget), "--max-steps", "1000000000", "--eval-every", str(budget), "--no-progress",
           "--device", "cpu"]
    for k, v in (overrides or {}).items():
        cmd += ["--set", f"{k}={json.dumps(v)}"]
    if run_dir.exists():
        import shutil
        shutil.rmtree(run_dir)
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{preset}: training failed\n{proc.stderr[-2000:]}")
    return {"preset": preset, "data": str(data), "budget_s": budget, "wall_s": time.time() - t0,
            "stdout": proc.stdout.strip().splitlines()[-2:]}


def export(run_dir: Path, out: Path, resolution: int, level: float | None = None) -> dict:
    """Run ``radfield export mesh`` in its own process; wall time and peak RSS of that process
    (GNU time's %M: a child's own ``ru_maxrss`` would start from its parent's)."""
    cmd = ["/usr/bin/time", "-f", "peak_kb %M", sys.executable, "-m", "radfield",
           "export", "mesh", str(run_dir), "--out", str(out), "--resolution", str(resolution), "--device", "cpu"]
    if level is not None:
        cmd += ["--level", str(level)]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"resolution": resolution, "level": level, "error": proc.stderr.strip().splitlines()[-1]}
    peak = float(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("peak_kb"))) / 1024
    return {"resolution": resolution, "level": level, "wall_s": wall, "peak_rss_mb": peak, "path": str(out)}


def test_psnr(run_dir: Path, every: int = 1) -> float:
    from radfield.evaluation.evaluate import evaluate_run

    return evaluate_run(run_dir, "test", save_renders=True, progress=False, every=every)["psnr"]


def suite_volsdf(budget: float) -> dict:
    scene = builtin_scene()
    run = OUT / "runs" / "volsdf-builtin"
    info = train("volsdf", scene, budget, run)
    res = {"train": info, "test_psnr": test_psnr(run)}
    for r in (256,):
        e = export(run, OUT / f"volsdf-builtin-{r}.ply", r)
        res[f"mesh_{r}"] = {**e, **score_mesh(Path(e["path"]))} if "path" in e else e
    return res


def suite_density(budget: float) -> dict:
    scene = builtin_scene()
    run = OUT / "runs" / "ngp-builtin"
    res = {"train": train("ngp", scene, budget, run), "test_psnr": test_psnr(run), "meshes": []}
    for level in (2.5, 10.0, 25.0, 50.0):
        e = export(run, OUT / f"ngp-builtin-{level}.ply", 256, level)
        res["meshes"].append({**e, **score_mesh(Path(e["path"]))} if "path" in e else e)
    return res


def suite_tabletop(budget: float) -> dict:
    run = OUT / "runs" / "volsdf-tabletop"
    res = {"train": train("volsdf", DATA / "tabletop", budget, run), "test_psnr": test_psnr(run, every=3)}
    e = export(run, OUT / "volsdf-tabletop.ply", 256)
    res["mesh"] = e
    if "path" in e:
        picture(Path(e["path"]), OUT / "volsdf-tabletop-mesh.png")
        res["picture"] = str(OUT / "volsdf-tabletop-mesh.png")
    return res


def picture(mesh_path: Path, out: Path, size: int = 640, n_points: int = 4_000_000,
            elevation: float = 30.0, azimuth: float = -60.0) -> None:
    """A shaded picture of a mesh without OpenGL: points drawn densely on its surface (about
    ``n_points``, by area), each with its face's normal, projected orthographically from the
    direction (``elevation``, ``azimuth``) in degrees, the nearest point kept per pixel (a
    z-buffer, each point a 2 x 2 splat), and shaded with a headlight and a key light (Lambert) on a white ground. Faces whose
    normals point away are still drawn (a mesh need not be consistently oriented)."""
    import trimesh
    from PIL import Image

    mesh = trimesh.load(mesh_path, process=False)
    points, face = trimesh.sample.sample_surface(mesh, n_points, seed=0)
    normals = np.asarray(mesh.face_normals)[face]
    el, az = np.radians(elevation), np.radians(azimuth)
    view = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])  # towards the eye
    right = np.cross([0.0, 0.0, 1.0], view)
    right /= np.linalg.norm(right)
    up = np.cross(view, right)
    u, v, depth = points @ right, points @ up, points @ view
    lo, hi = np.array([u.min(), v.min()]), np.array([u.max(), v.max()])
    scale = (size - 1) / (hi - lo).max()
    col = ((u - lo[0]) * scale).astype(np.int64)
    row = (size - 1 - (v - lo[1]) * scale).astype(np.int64)
    facing = np.abs(normals @ view)
    key_dir = view + right * 0.6 + up * 0.8
    key = np.abs(normals @ (key_dir / np.linalg.norm(key_dir)))
    shade = np.clip(0.15 + 0.45 * facing + 0.4 * key, 0, 1)
    # 2 x 2 splats close pinholes; all of them go through one z-buffer: per pixel, the splat
    # nearest the eye (largest depth along ``view``)
    flat = np.concatenate([np.minimum(row + dr, size - 1) * size + np.minimum(col + dc, size - 1)
                           for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1))])
    order = np.lexsort((-np.tile(depth, 4), flat))  # by pixel, nearest first
    pixels, first = np.unique(flat[order], return_index=True)
    img = np.ones(size * size)
    img[pixels] = np.tile(shade, 4)[order[first]]
    Image.fromarray((img.reshape(size, size) * 255).astype(np.uint8)).save(out)


def suite_export(budget: float, only: list[str] | None = None) -> dict:
    runs = {"ngp": OUT / "runs" / "ngp-tabletop-export", "nerfacto": OUT / "runs" / "nerfacto-tabletop-export"}
    res = {}
    for preset, run in runs.items():
        if only and preset not in only:
            continue
        res[preset] = {"train": train(preset, DATA / "tabletop", budget, run),
                       "exports": [export(run, OUT / f"{preset}-export-{r}.ply", r) for r in (256, 512)]}
    return res


SUITES = {"volsdf": suite_volsdf, "density": suite_density, "tabletop": suite_tabletop, "export": suite_export}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=list(SUITES))
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    ap.add_argument("--only", default=None, help="export suite: these presets only (comma-separated)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    extra = {"only": args.only.split(",")} if args.only and args.suite == "export" else {}
    result = {"date": time.strftime("%Y-%m-%d %H:%M"), "suite": args.suite, **SUITES[args.suite](args.budget, **extra),
              "bench_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    (OUT / f"surfaces_{args.suite}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
