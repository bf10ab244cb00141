"""Instant-NGP on the NeRF-synthetic protocol at 800 px: time to 33 dB (issue 15, goal 3).

    python bench/ngp_800.py [--data ../lego] [--device cuda] [--budget 300] [--modes baseline hsm]

NeRF-synthetic's protocol: 100 training views of 800 x 800, 200 test views on a circle, white
background, PSNR over the test views. Without ``--data`` (the eight Blender scenes are not
downloadable here) the built-in analytic scene (:mod:`radfield.data.synthetic`) is rendered to
that protocol first, in ``--workers`` processes (about 1.2 s a view in one process on the
project's CPU), into ``bench/out/synthetic_800``, kept for the next call; its figures are the
built-in scene's, not NeRF-synthetic's, and are reported as such.

Each mode trains ``ngp`` on ``--device`` for ``--budget`` seconds of training time with
Instant-NGP's GPU recipe (2^19-row tables, 2^18 samples a step; ``--cpu-recipe`` keeps the
preset's CPU-sized one), validating every ``--eval-every`` seconds on ``--val-images`` held-out
views; then scores every ``--test-every``-th test view. Reports the training time at which the
validation PSNR first reaches ``--target`` (33 dB), the steps, the median step, the peak of the
GPU memory, and the test PSNR. Writes ``$OUT/ngp_800.json`` (``$OUT`` the device tool's folder,
else ``bench/out``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from hsm_tabletop import MODES  # baseline, hsm and its variants
from runs import OUT, budgeted_config, fresh, time_to_reach  # this checkout first on sys.path

GPU_RECIPE = {"ngp.optim.target_samples": 1 << 18, "train.max_rays": 1 << 18, "ngp.grid.log2_table_size": 19}


def synthetic_scene(folder: Path, size: int, n_train: int, n_test: int, n_val: int, workers: int) -> Path:
    """The built-in scene at NeRF-synthetic's protocol in ``folder``, rendered once (a file
    ``done`` marks a complete one; a scene of other sizes is rendered again)."""
    from radfield.data.synthetic import make_scene

    spec = {"size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    stamp = folder / "done"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return folder
    fresh(folder)
    t0 = time.perf_counter()
    make_scene(folder, depth=False, workers=workers, **spec)
    stamp.write_text(json.dumps(spec))
    print(f"rendered the built-in scene at {size} px in {time.perf_counter() - t0:.0f} s", flush=True)
    return folder


def train_one(mode: str, data: Path, args) -> dict:
    from radfield.evaluation.evaluate import evaluate_run
    from radfield.training.trainer import Trainer

    overrides = {**({} if args.cpu_recipe else GPU_RECIPE), **MODES[mode]}
    config = budgeted_config("ngp", data, args.budget, eval_every=args.eval_every, val_images=args.val_images,
                             overrides=overrides)
    run_dir = fresh(OUT / f"ngp_800_{mode}")
    steps: list[float] = []
    cuda = args.device == "cuda"
    trainer = Trainer(config, run_dir, device=args.device, progress=False, log_tensorboard=False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    wall = time.perf_counter()
    history = trainer.train(on_step=lambda _trainer, _result, seconds: steps.append(seconds))
    wall = time.perf_counter() - wall
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None
    start = time.perf_counter()
    metrics = evaluate_run(run_dir, "test", device=args.device, save_renders=False, progress=False,
                           every=args.test_every)
    curve = [(h["time_s"], h["psnr"]) for h in history if "psnr" in h]
    return {"mode": mode, "budget_s": args.budget, "steps": len(steps), "wall_s": wall,
            "median_step_s": statistics.median(steps) if steps else None, "peak_gpu_mb": peak,
            "history": history, "time_to_target_s": time_to_reach(history, args.target),
            "final_val_psnr": curve[-1][1] if curve else None,
            "test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"], "test_n": metrics["n_images"],
            "test_s": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="a NeRF-synthetic scene (default: the built-in one at --size)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds of training time per mode")
    ap.add_argument("--modes", nargs="+", default=["baseline"], choices=list(MODES),
                    help="baseline, hsm or a variant of bench/hsm_tabletop.py's")
    ap.add_argument("--target", type=float, default=33.0, help="validation PSNR to time (dB)")
    ap.add_argument("--eval-every", type=float, default=10.0)
    ap.add_argument("--val-images", type=int, default=4)
    ap.add_argument("--test-every", type=int, default=1, help="score every k-th test view (protocol: 1)")
    ap.add_argument("--cpu-recipe", action="store_true", help="the ngp preset's CPU-sized tables and batch")
    ap.add_argument("--size", type=int, default=800)
    ap.add_argument("--n-train", type=int, default=100)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    out = Path(os.environ.get("OUT") or OUT)
    out.mkdir(parents=True, exist_ok=True)
    if args.data:
        data, scene = Path(args.data), Path(args.data).name
    else:
        data = synthetic_scene(OUT / f"synthetic_{args.size}", args.size, args.n_train, args.n_test,
                               args.val_images, args.workers)
        scene = f"built-in analytic scene, {args.size} px"
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results = {"scene": scene, "device": device, "target_psnr": args.target, "modes": {}}
    for mode in args.modes:
        r = train_one(mode, data, args)
        results["modes"][mode] = r
        reached = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f} s"
        print(f"{mode}: {r['steps']} steps in {args.budget:.0f} s of training on {device}, median step "
              f"{1000 * r['median_step_s']:.1f} ms; {args.target:g} dB (validation): {reached}; final val "
              f"{r['final_val_psnr']:.2f} dB; test {r['test_psnr']:.2f} dB, SSIM {r['test_ssim']:.4f} over "
              f"{r['test_n']} views" + (f"; GPU peak {r['peak_gpu_mb']:.0f} MB" if r["peak_gpu_mb"] else ""),
              flush=True)
    (out / "ngp_800.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
