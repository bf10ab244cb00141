"""Evaluation of a model trained across scenes (PixelNeRF) on unseen scenes, from k source views.

``radfield eval RUN_DIR --scenes FOLDER --sources 1,2,3``: for every scene of FOLDER
(:mod:`radfield.data.scenes`) and every ``k``:

* **source views**: ``k`` views of the scene's training split by farthest-point sampling on the
  camera centres from view 0 (:func:`radfield.data.views.farthest_point_views`): no random draw,
  nested (the 2 views include the 1, the 3 include the 2), and exactly the views
  ``radfield train SCENE --train-views k`` keeps, so a per-scene model (``ngp``) can be trained
  on the same views for a comparison. Composited over the evaluation background (white) and
  encoded once per scene and ``k``;
* every image of the test split (``--split``; every ``--every``-th) is rendered from them and
  scored against its RGBA image composited over the same background: PSNR, PSNR after uint8
  quantisation, SSIM, LPIPS when its weights are present
  (:func:`radfield.evaluation.evaluate.image_scores`).

``metrics.json`` (and ``metrics_unseen.json``): ``sources`` maps each ``k`` to the **mean over
scenes** of each scene's mean over its images (every scene weighs the same); ``per_scene`` holds
each scene's means and the names of its source views per ``k``. Renders go to
``RUN_DIR/renders/unseen/<scene>/<k>src_<image>_rgb.png``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from radfield.data import load_scene
from radfield.data.scenes import scene_folders
from radfield.data.views import farthest_point_views
from radfield.errors import RadfieldError
from radfield.evaluation.evaluate import image_scores, mean_scores
from radfield.evaluation.metrics import lpips_fn
from radfield.io import atomic_write, save_png
from radfield.rendering.backgrounds import background_color
from radfield.rendering.images import render_image
from radfield.training.checkpoint import load_run
from radfield.training.multiscene import RENDER_CHUNK, composite

SOURCE_SELECTION = ("k views of each scene's training split by farthest-point sampling on the camera "
                    "centres from view 0 (nested in k; the views --train-views k keeps)")
SCORES = ("psnr", "psnr_uint8", "ssim", "lpips")


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def evaluate_unseen(run_dir: str | Path, scenes: str | Path, sources: tuple[int, ...] = (1, 2, 3),
                    split: str = "test", device: str = "cpu", save_renders: bool = True,
                    progress: bool = True, every: int = 1) -> dict:
    """Score the run on every scene of the folder ``scenes`` from ``k`` source views for each
    ``k`` of ``sources`` (module doc); writes ``RUN_DIR/metrics.json`` and
    ``RUN_DIR/metrics_unseen.json`` and returns the metrics. One-line RadfieldErrors: a run of a
    per-scene model, a folder without scenes, a ``k`` above a scene's training views."""
    run_dir = Path(run_dir)
    config, model = load_run(run_dir, device)
    if not model.multi_scene:
        raise RadfieldError(f"{run_dir}: --scenes evaluates models trained across scenes (pixelnerf); "
                            f"this run is {config.model} (evaluate it without --scenes)")
    if not sources or min(sources) < 1:
        raise RadfieldError(f"--sources: need positive view counts, got {list(sources)}")
    folders = scene_folders(scenes)
    bg = background_color(config.data.eval_background, device)
    lpips = lpips_fn(device=device)
    trains = {}
    for folder in folders:  # every scene checked before the first render
        trains[folder] = train = load_scene(folder, "train", config.data.downscale)
        if max(sources) > len(train):
            raise RadfieldError(f"{folder}: --sources {max(sources)}: the scene's training split has "
                                f"{len(train)} views")
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(folders) * len(sources), desc="eval unseen scenes", unit="scene-k", file=sys.stderr)
    per_scene = []
    for folder in folders:
        train, test = trains[folder], load_scene(folder, split, config.data.downscale)
        cams = test.cameras.to(device)
        entry = {"scene": folder.name, "n_images": len(range(0, len(test), every)), "sources": {}}
        for k in sources:
            views = farthest_point_views(train.cameras.centers, k)
            with torch.no_grad():
                model.set_context(composite(train.images[views].to(device), bg), train.cameras[views].to(device))
            rows = []
            for i in range(0, len(test), every):
                r = render_image(model, cams, i, bg, chunk=RENDER_CHUNK)
                name = Path(test.names[i]).stem
                rows.append({"name": name, **image_scores(r.rgb, test.composited(i, bg.cpu()), None, lpips),
                             "depth_abs_rel": None, "depth_rmse": None})
                if save_renders:
                    save_png(run_dir / "renders" / "unseen" / folder.name / f"{k}src_{name}_rgb.png", r.rgb)
            means = mean_scores(rows)
            entry["sources"][str(k)] = {"views": [train.names[v] for v in views],
                                        **{key: means[key] for key in SCORES}}
            if bar is not None:
                bar.update(1)
        per_scene.append(entry)
    if bar is not None:
        bar.close()
    model.clear_context()
    by_k = {str(k): {"n_scenes": len(per_scene),
                     **{key: _mean([s["sources"][str(k)][key] for s in per_scene]) for key in SCORES}}
            for k in sources}
    metrics = {"protocol": "unseen scenes", "scenes_folder": str(Path(scenes).resolve()), "split": split,
               "n_scenes": len(per_scene), "every": every, "source_selection": SOURCE_SELECTION,
               "eval_background": config.data.eval_background,
               "lpips_note": None if lpips else "unavailable: LPIPS weights not present locally",
               "sources": by_k, "per_scene": per_scene}
    for name in ("metrics.json", "metrics_unseen.json"):
        with atomic_write(run_dir / name) as tmp:
            tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def format_unseen_table(metrics: dict) -> str:
    """Per-scene PSNR for each number of source views, then the means over scenes (PSNR, PSNR
    after uint8 quantisation, SSIM, LPIPS)."""
    fmt = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    ks = list(metrics["sources"])
    lines = [f"{'scene (PSNR)':<24}" + "".join(f"{k + ' src':>10}" for k in ks)]
    for s in metrics["per_scene"]:
        lines.append(f"{s['scene']:<24}" + "".join(f"{fmt(s['sources'][k]['psnr']):>10}" for k in ks))
    n = metrics["n_scenes"]
    for key, label, p in (("psnr", "PSNR", 2), ("psnr_uint8", "PSNR8", 2), ("ssim", "SSIM", 4), ("lpips", "LPIPS", 4)):
        lines.append(f"{f'mean {label} ({n} scenes)':<24}"
                     + "".join(f"{fmt(metrics['sources'][k][key], p):>10}" for k in ks))
    lines.append(f"source views: {metrics['source_selection']}")
    return "\n".join(lines)
