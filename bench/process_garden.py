"""Structure-from-motion on the 75 garden views against their exact poses.

    nice python bench/process_garden.py [--data ../shared/data/garden]

Copies garden's 60 train and 15 test PNGs into one folder (``frame_000`` .. ``frame_074``, train
first, as in ``garden-colmap``), runs :func:`radfield.data.process.process_images` with its
defaults (exhaustive matching, one SIMPLE_RADIAL camera) into ``bench/out/process_garden``, and
compares the recovered camera centres with the exact ones after the best similarity transform
(Umeyama). Errors are given as % of the camera radius: the true cameras' mean distance from the
world origin, which they orbit (4.03). Writes ``bench/out/process_garden.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not
OUT = ROOT / "bench" / "out"
SPLITS = ("train", "test")


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)`` minimising ``sum |dst_i - (s R src_i + t)|^2`` (Umeyama 1991)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    scale = float(np.trace(np.diag(sig) @ d) / (a**2).sum(1).mean())
    rot = u @ d @ vt
    return scale, rot, mu_d - scale * rot @ mu_s


def gather_images(data: Path, folder: Path) -> dict[str, np.ndarray]:
    """Copy every split's images into ``folder`` as ``frame_NNN.png``; returns name -> true
    camera centre (the translation of the camera-to-world ``transform_matrix``)."""
    centres: dict[str, np.ndarray] = {}
    for split in SPLITS:
        meta = json.loads((data / f"transforms_{split}.json").read_text())
        for frame in meta["frames"]:
            name = f"frame_{len(centres):03d}.png"
            shutil.copy(data / f"{frame['file_path']}.png", folder / name)
            centres[name] = np.asarray(frame["transform_matrix"], dtype=np.float64)[:3, 3]
    return centres


def centre_errors(model_dir: Path, true: dict[str, np.ndarray]) -> dict[str, float]:
    """RMS / median / max distance of aligned recovered centres to the true ones, in % of the
    camera radius (the true cameras' mean distance from the origin)."""
    import pycolmap

    model = pycolmap.Reconstruction(str(model_dir))
    got = {im.name: np.asarray(im.projection_center()) for im in model.images.values()
           if im.has_pose}
    names = sorted(got)
    src, dst = np.stack([got[n] for n in names]), np.stack([true[n] for n in names])
    s, rot, t = similarity_fit(src, dst)
    err = np.linalg.norm(s * src @ rot.T + t - dst, axis=1)
    radius = float(np.linalg.norm(dst, axis=1).mean())
    pct = 100 * err / radius
    return {"rms_pct": float(np.sqrt(np.mean(pct**2))), "median_pct": float(np.median(pct)),
            "max_pct": float(pct.max()), "camera_radius": radius, "n_compared": len(names)}


def main() -> None:
    from radfield.data.process import process_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "garden"))
    args = parser.parse_args()
    data, dataset = Path(args.data), OUT / "process_garden"
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        true = gather_images(data, Path(tmp))
        start = time.perf_counter()
        report = process_images(tmp, dataset, overwrite=True)
        wall = time.perf_counter() - start
    errors = centre_errors(report.model_dir, true)
    result = {"report": {**asdict(report), "out_dir": str(report.out_dir)},
              "wall_s": wall, "centre_error": errors,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "pycolmap": __import__("pycolmap").__version__}}
    (OUT / "process_garden.json").write_text(json.dumps(result, indent=1))
    print(f"wall {wall:.1f} s; camera-centre error after a similarity fit over "
          f"{errors['n_compared']} cameras: RMS {errors['rms_pct']:.2f} %, median "
          f"{errors['median_pct']:.2f} %, max {errors['max_pct']:.2f} % of the camera radius "
          f"({errors['camera_radius']:.2f})")
    print(f"wrote {OUT / 'process_garden.json'}")


if __name__ == "__main__":
    main()
