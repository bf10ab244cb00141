"""PixelNeRF on unseen generated scenes against an ``ngp`` trained per scene on the same views.

    python bench/pixelnerf.py [--train-scenes 200] [--budget 1800] [--ngp-budget 30] [--test-scenes 20]

1. Scenes from the built-in generator (:func:`radfield.data.synthetic.make_scenes`): training
   scenes with seeds ``0..N-1`` and unseen test scenes with seeds from 1000 (64 x 64 views), in
   ``bench/out/pixelnerf/``; made once.
2. ``pixelnerf-small`` trained across the training scenes for ``--budget`` seconds of training
   (validation excluded), then scored on every test scene from 1, 2 and 3 source views
   (:func:`radfield.evaluation.unseen.evaluate_unseen`: farthest-point source views, test split
   over white).
3. For every test scene and ``k``: ``ngp-small`` trained on that scene's same ``k`` views
   (``--train-views k`` keeps exactly PixelNeRF's source views) for ``--ngp-budget`` seconds,
   scored on the same test split. Each per-scene model gets the same wall time.

Writes ``bench/out/pixelnerf.json`` (per scene and ``k``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from runs import OUT, budgeted_config, fresh  # this checkout first on sys.path

from radfield.data.scenes import scene_folders  # noqa: E402
from radfield.data.synthetic import make_scenes  # noqa: E402
from radfield.evaluation.evaluate import evaluate_run  # noqa: E402
from radfield.evaluation.unseen import evaluate_unseen  # noqa: E402
from radfield.training.multiscene import MultiSceneTrainer  # noqa: E402
from radfield.training.trainer import Trainer  # noqa: E402

SOURCES = (1, 2, 3)


def scenes(folder: Path, n: int, first_seed: int) -> list[Path]:
    if not (folder.is_dir() and len([q for q in folder.iterdir() if q.is_dir()]) == n):
        make_scenes(fresh(folder), n, first_seed)
    return scene_folders(folder)


def pixelnerf(train: Path, test: Path, budget: float) -> dict:
    run = fresh(OUT / "runs" / "pixelnerf")
    t0 = time.time()
    trainer = MultiSceneTrainer(budgeted_config("pixelnerf-small", train, budget, eval_every=1e12), run,
                                progress=False, log_tensorboard=False)
    trainer.train()
    train_s = time.time() - t0
    t0 = time.time()
    metrics = evaluate_unseen(run, test, SOURCES, save_renders=False, progress=False)
    eval_s = time.time() - t0
    return {"steps": trainer.state.step, "train_wall_s": train_s, "eval_s": eval_s,
            "eval_s_per_scene": eval_s / len(metrics["per_scene"]), "sources": metrics["sources"],
            "per_scene": metrics["per_scene"]}


def ngp(scene: Path, k: int, budget: float) -> dict:
    run = fresh(OUT / "runs" / "pixelnerf-ngp")
    config = budgeted_config("ngp-small", scene, budget, eval_every=1e12, overrides={"data.train_views": k})
    t0 = time.time()
    trainer = Trainer(config, run, progress=False, log_tensorboard=False)
    trainer.train()
    m = evaluate_run(run, "test", save_renders=False, progress=False)
    return {"scene": scene.name, "k": k, "steps": trainer.state.step, "wall_s": time.time() - t0,
            "psnr": m["psnr"], "ssim": m["ssim"]}


def table(result: dict) -> str:
    lines = ["| sources | PixelNeRF PSNR | PixelNeRF SSIM | ngp per scene PSNR | ngp SSIM | PixelNeRF wins (scenes) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for k in SOURCES:
        pix = result["pixelnerf"]["sources"][str(k)]
        rows = [r for r in result["ngp"] if r["k"] == k]
        per_scene = {s["scene"]: s["sources"][str(k)]["psnr"] for s in result["pixelnerf"]["per_scene"]}
        wins = sum(per_scene[r["scene"]] > r["psnr"] for r in rows)
        lines.append(f"| {k} | {pix['psnr']:.2f} | {pix['ssim']:.4f} | "
                     f"{statistics.mean(r['psnr'] for r in rows):.2f} | {statistics.mean(r['ssim'] for r in rows):.4f} "
                     f"| {wins} of {len(rows)} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-scenes", type=int, default=200)
    ap.add_argument("--test-scenes", type=int, default=20)
    ap.add_argument("--budget", type=float, default=1800.0, help="PixelNeRF's training seconds")
    ap.add_argument("--ngp-budget", type=float, default=30.0, help="seconds per scene and k for ngp")
    ap.add_argument("--skip-pixelnerf", action="store_true", help="reuse bench/out/pixelnerf.json's PixelNeRF")
    args = ap.parse_args()
    out = OUT / "pixelnerf.json"
    t0 = time.time()
    train = scenes(OUT / "pixelnerf" / "train", args.train_scenes, 0)[0].parent
    test_scenes = scenes(OUT / "pixelnerf" / "test", args.test_scenes, 1000)
    print(f"scenes ready in {time.time() - t0:.0f} s", flush=True)
    result = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.skip_pixelnerf:
        result["pixelnerf"] = json.loads(out.read_text())["pixelnerf"]
    else:
        result["pixelnerf"] = pixelnerf(train, test_scenes[0].parent, args.budget)
    print(json.dumps({k: v for k, v in result["pixelnerf"].items() if k != "per_scene"}), flush=True)
    result["ngp"] = []
    for scene in test_scenes:
        for k in SOURCES:
            result["ngp"].append(ngp(scene, k, args.ngp_budget))
            print(json.dumps(result["ngp"][-1]), flush=True)
            out.write_text(json.dumps(result, indent=1))
    print(table(result))


if __name__ == "__main__":
    main()
