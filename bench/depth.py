"""Depth supervision and few-view training (issue 11): the paper's table, views x depth losses.

    python bench/depth.py                      # both suites, 10 minutes per run (about 4 hours)
    python bench/depth.py --jobs 2             # two runs at once, one core each (about 2 hours)
    python bench/depth.py --suites tabletop --views 3 6 --budget 900

Suites:

* ``tabletop`` (``../shared/data/tabletop``, dense depth maps): 3, 6 and all training views x
  {none, l2, urf, dsnerf, bounded};
* ``garden`` (``../shared/data/garden-colmap``, sparse SfM depth from its COLMAP points): 6 views
  x the same losses; for sparse depth the bounded loss has, by default, the spec's margin for real
  depth (``beta = 2 eps``) and its bounds checked at the intervals' ends (``train.depth.bounds_at``
  ``auto``: at the spec's midpoints a fifth of its depth rays' weight lay behind the surface on
  this unbounded scene; ``--set train.depth.bounds_at=midpoints`` for the spec's).

Every run trains the same preset for the same training time (``--budget`` seconds, validation
excluded; at least 600 for the issue's table) in its own process, with each loss at its
reference weight (``radfield.losses.depth.REFERENCE_WEIGHTS``) unless ``--set`` says otherwise,
then scores the test split: PSNR, SSIM and depth AbsRel / RMSE (tabletop: against its depth
maps; garden: against the sparse SfM points of the test images). Views are chosen by
farthest-point sampling on the camera centres (``--train-views``). Writes
``bench/out/depth_<suite>_<views>v_<loss>[_s<seed>].json`` per run, with every test view's PSNR (an
existing file is reused unless ``--force``: the table can be finished across sessions);
``--seeds 0 1 2`` trains each cell once per seed and reports the mean (one floater in one view
can move a few-view run by a decibel); ``bench/out/depth_<suite>.json``, and
prints a markdown table and the issue's goals. ``--jobs 2`` trains two runs at a time with one
thread each: on a 2-core machine the table then takes half the time, each run about 5 600 steps in
its 600 s (``bench/RESULTS.md``, 2026-12-05); say which was used, since step counts differ.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runs import DATA, OUT, ROOT, budgeted_config, fresh  # this checkout first on sys.path

LOSSES = ("none", "l2", "urf", "dsnerf", "bounded")
SUITES = {
    "tabletop": {"data": DATA / "tabletop", "views": ["3", "6", "all"], "overrides": {}},
    "garden": {"data": DATA / "garden-colmap", "views": ["6"],
               "overrides": {"data.depth_source": "sparse"}},
}
GOALS = {"3": 3.0, "6": 2.0}
"""Views -> the PSNR gain over no depth the issue asks of the depth losses (dB)."""
ALL_VIEWS_TOLERANCE = 0.3


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_one(spec: dict) -> dict:
    """Train and score one (suite, views, loss) run in this process."""
    import torch

    from radfield.config import apply_overrides
    from radfield.evaluation.evaluate import evaluate_run
    from radfield.losses.depth import depth_weight
    from radfield.training.trainer import Trainer

    config = budgeted_config(spec["preset"], spec["data"], spec["budget"], eval_every=spec["budget"] / 5,
                             val_images=None, overrides={"train.depth.loss": spec["loss"]})
    config.data.train_views = None if spec["views"] == "all" else int(spec["views"])
    apply_overrides(config, spec["overrides"])
    run_dir = fresh(Path(spec["run_dir"]))
    trainer = Trainer(config, run_dir, progress=False, log_tensorboard=False)
    t0 = time.time()
    history = trainer.train()
    wall = time.time() - t0
    metrics = evaluate_run(run_dir, "test", save_renders=False, progress=False, every=spec["test_every"])
    return {
        **{k: spec[k] for k in ("suite", "views", "loss", "preset", "budget", "test_every")},
        "n_train_views": len(trainer.data), "train_views": [Path(n).name for n in trainer.data.names],
        "depth_weight": depth_weight(config.train.depth) if spec["loss"] != "none" else 0.0,
        "depth": dict(vars(trainer.config.train.depth)),  # as the run resolved it (beta, bounds_at)
        "depth_source": trainer.data.meta.get("depth_source"), "steps": trainer.state.step,
        "wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch_threads": torch.get_num_threads(), "history": history,
        "test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"], "test_n": metrics["n_images"],
        "depth_abs_rel": metrics["depth_abs_rel"], "depth_rmse": metrics["depth_rmse"],
        "depth_reference": metrics["depth_reference"], "seed": config.train.seed,
        "per_image_psnr": {Path(r["name"]).stem: r["psnr"] for r in metrics["per_image"]},
    }


def seed_mean(runs: list[dict]) -> dict:
    """The mean over seeds of one (views, loss) cell's test PSNR, SSIM and depth errors."""
    keys = ("test_psnr", "test_ssim", "depth_abs_rel", "depth_rmse")
    return {k: (None if any(r[k] is None for r in runs) else sum(r[k] for r in runs) / len(runs)) for k in keys}


def _fmt(v, p=2) -> str:
    return "n/a" if v is None else f"{v:.{p}f}"


def table(suite: str, results: dict, views: list[str], losses: list[str]) -> str:
    """Markdown: a row per view count, a cell per loss: test PSNR / depth AbsRel."""
    lines = [f"\n**{suite}** (test PSNR dB / depth AbsRel)\n",
             "| views | " + " | ".join(losses) + " |", "|---|" + "---|" * len(losses)]
    for v in views:
        cells = []
        for loss in losses:
            r = results.get((v, loss))
            cells.append("-" if r is None else f"{_fmt(r['test_psnr'])} / {_fmt(r['depth_abs_rel'], 4)}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(results: dict, views: list[str]) -> str:
    """The issue's goals, read as: at 3 (6) views the bounded loss is at least URF and L2 and
    beats no depth by 3 (2) dB, and L2 beats no depth by as much; with all views no depth loss
    is more than 0.3 dB below no depth."""
    psnr = lambda v, loss: (results.get((v, loss)) or {}).get("test_psnr")  # noqa: E731
    lines = []
    for v in views:
        base = psnr(v, "none")
        if v in GOALS and base is not None:
            for a, b, need in (("bounded", "urf", 0.0), ("bounded", "l2", 0.0), ("bounded", "none", GOALS[v]),
                               ("l2", "none", GOALS[v])):
                pa, pb = psnr(v, a), psnr(v, b)
                if pa is not None and pb is not None:
                    ok = pa - pb >= need
                    lines.append(f"- {v} views: {a} - {b} = {pa - pb:+.2f} dB (goal >= {need:+.1f}): "
                                 f"{'met' if ok else 'NOT met'}")
        if v == "all" and base is not None:
            for loss in LOSSES[1:]:
                p = psnr(v, loss)
                if p is not None:
                    ok = p - base >= -ALL_VIEWS_TOLERANCE
                    lines.append(f"- all views: {loss} - none = {p - base:+.2f} dB (goal >= "
                                 f"-{ALL_VIEWS_TOLERANCE}): {'met' if ok else 'NOT met'}")
    return "\n".join(lines)


def train_all(pending: list[tuple[str, Path, dict]], jobs: int) -> list[str]:
    """Train each ``(label, file, spec)`` in its own process, ``jobs`` at a time (each then on
    ``cores // jobs`` threads), writing its result to ``file`` as it ends; the failed labels."""
    env = dict(os.environ)
    if jobs > 1:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def one(label: str, file: Path, spec: dict) -> str | None:
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                              capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return f"{label} (exit {proc.returncode})"
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        file.write_text(json.dumps(res, indent=1))
        print(f"{label}: {res['steps']} steps, test PSNR {_fmt(res['test_psnr'])}, AbsRel "
              f"{_fmt(res['depth_abs_rel'], 4)}", flush=True)
        return None

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return [f for f in pool.map(lambda item: one(*item), pending) if f]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    ap.add_argument("--views", nargs="+", default=None, help="override the suites' view counts (N or all)")
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=list(LOSSES))
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds per run (>= 600 for the issue)")
    ap.add_argument("--preset", default="nerfacto-small",
                    help="the model: nerfacto-small, a mip-NeRF 360-style proposal model sized for the CPU")
    ap.add_argument("--tabletop", default=str(SUITES["tabletop"]["data"]))
    ap.add_argument("--garden", default=str(SUITES["garden"]["data"]))
    ap.add_argument("--test-every", type=int, default=3, help="score every N-th test image (tabletop: 10 of 30)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="train each run once per seed (train.seed); the table and goals use the mean")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs trained at once, each on cores / jobs threads (2 on a 2-core machine: the table in "
                         "half the time, each run on one core)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {k.strip(): _value(v.strip()) for k, _, v in (s.partition("=") for s in args.set)}
    if "train.seed" in overrides:
        raise SystemExit("depth.py: give seeds with --seeds, not --set train.seed (--seeds decides the file names)")
    pending = []  # runs to train: (label, result file, spec)
    cells = {suite: {} for suite in args.suites}  # suite -> (views, loss) -> its result files, one a seed
    for suite in args.suites:
        info = SUITES[suite]
        for v in args.views or info["views"]:
            for loss in args.losses:
                files = []
                for seed in args.seeds:
                    name = f"{suite}_{v}v_{loss}" + (f"_s{seed}" if seed else "")
                    file = out / f"depth_{name}.json"
                    files.append(file)
                    if file.exists() and not args.force:
                        continue
                    spec = {"suite": suite, "data": getattr(args, suite), "views": v, "loss": loss,
                            "preset": args.preset, "budget": args.budget, "test_every": args.test_every,
                            "overrides": {**info["overrides"], **overrides, "train.seed": seed},
                            "run_dir": str(out / f"run_depth_{name}")}
                    pending.append((f"{suite} {v} views {loss} seed {seed}", file, spec))
                cells[suite][(v, loss)] = files
    failed = train_all(pending, args.jobs)
    if failed:
        raise SystemExit("failed: " + "; ".join(failed))
    reports = []
    for suite in args.suites:
        runs = {cell: [json.loads(f.read_text()) for f in files] for cell, files in cells[suite].items()}
        results = {cell: seed_mean(r) for cell, r in runs.items()}
        (out / f"depth_{suite}.json").write_text(json.dumps(
            {f"{v}v_{loss}": {"mean": results[(v, loss)], "runs": r} for (v, loss), r in runs.items()}, indent=1))
        views = list(dict.fromkeys(v for v, _ in cells[suite]))
        reports.append(table(suite, results, views, args.losses) + "\n\n" + goals(results, views))
    seeds = f", the mean of seeds {' '.join(map(str, args.seeds))}" if len(args.seeds) > 1 else ""
    print(f"\npreset {args.preset}, {args.budget:.0f} s of training per run{seeds}")
    print("\n".join(reports))


if __name__ == "__main__":
    main()
