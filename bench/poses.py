"""Camera poses as variables (issue 12): pose refinement, pose estimation, pose distributions.

    python bench/poses.py refine    # tabletop, training poses perturbed: clean vs noisy vs noisy --pose-opt
    python bench/poses.py garden    # garden-colmap (SfM poses): without and with --pose-opt
    python bench/poses.py localize  # radfield localize on held-out tabletop views from 10-degree-off starts
    python bench/poses.py neuralsim # examples/neural_sim.py: TV to the hidden distribution, wall time
                                    # (--estimators mixture: only the exact one)
    python bench/poses.py all

Options: ``--budget SECONDS`` of training per run (default 900, validation excluded: the pose
error keeps falling long after 300 s, the earlier default; ``bench/RESULTS.md``), ``--preset``
(default ``ngp-small``; ``garden`` defaults to ``nerfacto-small``), ``--test-every K`` (score every
K-th test image), ``--fit-steps N`` (pose fits: localize, and the test views of ``--pose-opt``
runs; 30), ``--views N`` (localize: test views), ``--iters N`` (neuralsim), ``--set KEY=VALUE``
(config overrides of the ``--pose-opt`` runs, e.g. ``train.pose_opt.lr=6e-4``), ``--runs`` (a
subset of a suite's runs), ``--seed N`` (every run's ``train.seed``), ``--tag`` (the JSON's name).

* **refine**: ``../shared/data/tabletop`` with every training pose turned by exactly 2 degrees
  about its centre (random axis) and moved by exactly 2 % of the scene's size (the largest side of
  the box; random direction), written as ``bench/out/tabletop-noisy`` (images by absolute path).
  Three runs of one budget: clean poses, noisy poses, noisy poses with ``--pose-opt``. Test PSNR
  with each run's protocol (``--pose-opt``: test poses fitted first, ``metrics.json``'s
  ``pose_fit``) and, for the pose-refining run, also on the given test poses. Pose error of the
  training poses against the true ones after a similarity alignment of the camera centres
  (Umeyama): mean rotation (degrees) and mean centre distance (% of the scene's size), of the
  noisy poses and of the refined ones (``RUN/transforms.json``). Goals (issue 12): within 1 dB of
  the clean run, pose error reduced at least 5x.
* **garden**: ``../shared/data/garden-colmap`` (downscale 2), one budget, without and with
  ``--pose-opt``: ``--pose-opt`` must not lose PSNR.
* **localize**: the clean tabletop run of ``refine`` (trained here when absent); every test view
  starts from its true pose turned by 10 degrees about its centre (random axis, seeded) and is
  fitted with :func:`radfield.evaluation.localize.fit_pose`; converged = under 1 degree and 1 %
  of the scene's size.
* **neuralsim**: ``examples/neural_sim.py`` on the built-in scene (its own quick field): the
  recovery and the bi-level experiment, each with the exact mixture estimator (16 views an
  iteration, 2 per bin) and with Neural-Sim's pathwise one (4 Gumbel-softmax views).

Results: ``bench/out/poses_<suite>.json`` and a markdown table for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

from runs import DATA, OUT, ROOT, budgeted_config, fresh  # this checkout first on sys.path

from radfield.config import apply_overrides, parse_override  # noqa: E402
from radfield.data import load_scene  # noqa: E402
from radfield.evaluation.evaluate import evaluate_run  # noqa: E402
from radfield.io import atomic_write  # noqa: E402
from radfield.poses.corrections import align_similarity, apply_similarity, perturb_poses, pose_errors  # noqa: E402


def noisy_tabletop(rotation_deg: float = 2.0, fraction: float = 0.02, seed: int = 0) -> tuple[Path, float]:
    """``bench/out/tabletop-noisy``: tabletop with perturbed training poses
    (:func:`radfield.data.perturbed.write_perturbed_copy`); returns it and the translation used
    (``fraction`` of the scene's size)."""
    from radfield.data.perturbed import write_perturbed_copy

    train = load_scene(DATA / "tabletop", "train")
    translation = fraction * float((train.aabb[3:] - train.aabb[:3]).max())
    out = OUT / "tabletop-noisy"
    write_perturbed_copy(DATA / "tabletop", out, rotation_deg, translation, seed)
    return out, translation


def aligned_errors(poses: torch.Tensor, truth: torch.Tensor, size: float) -> dict:
    """Mean rotation (degrees) and centre distance (% of ``size``) after a similarity alignment."""
    s, rot, t = align_similarity(poses[:, :, 3], truth[:, :, 3])
    r, d = pose_errors(apply_similarity(poses, s, rot, t), truth)
    return {"rotation_deg": float(r.mean()), "translation_pct": 100 * float(d.mean()) / size}


OVERRIDES: dict = {}
SEED = [0]  # --seed: every run's train.seed
"""``--set KEY=VALUE`` overrides of the ``--pose-opt`` runs' configs."""


def train(name: str, data: Path, preset: str, budget: float, downscale: int = 1,
          pose_opt: bool = False, fit_steps: int = 30) -> tuple[Path, dict]:
    from radfield.training.trainer import Trainer

    config = budgeted_config(preset, data, budget, overrides={
        "data.downscale": downscale, "train.pose_opt.enabled": pose_opt, "train.pose_opt.test_fit_steps": fit_steps,
        "train.seed": SEED[0]})
    if pose_opt and OVERRIDES:
        apply_overrides(config, OVERRIDES)
    run = fresh(OUT / "runs" / name)
    t0 = time.time()
    trainer = Trainer(config, run, progress=False, log_tensorboard=False)
    trainer.train()
    return run, {"name": name, "preset": preset, "data": data.name, "pose_opt": pose_opt, "budget_s": budget,
                 "steps": trainer.state.step, "train_wall_s": time.time() - t0}


def score(run: Path, every: int, fit_poses: bool | None = None) -> dict:
    t0 = time.time()
    m = evaluate_run(run, "test", save_renders=False, progress=False, every=every, fit_poses=fit_poses)
    return {"psnr": m["psnr"], "ssim": m["ssim"], "n": m["n_images"], "pose_fit": m["pose_fit"],
            "eval_s": time.time() - t0}


def suite_refine(args) -> list[dict]:
    noisy, translation = noisy_tabletop()
    truth = load_scene(DATA / "tabletop", "train").cameras.c2w.double()
    size = float((load_scene(DATA / "tabletop", "train").aabb.double().diff().max()))
    given = load_scene(noisy, "train").cameras.c2w.double()
    rows = []
    for name, data, pose_opt in (("clean", DATA / "tabletop", False), ("noisy", noisy, False),
                                 ("noisy+pose-opt", noisy, True)):
        if args.runs and name not in args.runs:
            continue
        run, row = train(f"poses-tabletop-{name}", data, args.preset, args.budget, pose_opt=pose_opt,
                         fit_steps=args.fit_steps)
        row["test"] = score(run, args.test_every)
        if pose_opt:
            row["test_given_poses"] = score(run, args.test_every, fit_poses=False)
            refined = torch.tensor([f["transform_matrix"] for f in json.loads(
                (run / "transforms.json").read_text())["frames"]], dtype=torch.float64)[:, :3]
            row["pose_error_before"] = aligned_errors(given, truth, size)
            row["pose_error_after"] = aligned_errors(refined, truth, size)
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows[0]["perturbation"] = {"rotation_deg": 2.0, "translation": translation, "scene_size": size}
    for row in rows:
        row["pose_opt_set"] = OVERRIDES if row["pose_opt"] else {}
    return rows


def suite_garden(args) -> list[dict]:
    preset = args.preset if args.preset != "ngp-small" else "nerfacto-small"
    rows = []
    for pose_opt in (False, True):
        name = f"poses-garden-{'pose-opt' if pose_opt else 'baseline'}"
        if args.runs and name.removeprefix("poses-garden-") not in args.runs:
            continue
        run, row = train(name, DATA / "garden-colmap", preset, args.budget, downscale=2, pose_opt=pose_opt,
                         fit_steps=args.fit_steps)
        row["test"] = score(run, args.test_every)
        if pose_opt:
            row["test_given_poses"] = score(run, args.test_every, fit_poses=False)
            row["pose_opt_set"] = OVERRIDES
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def suite_localize(args) -> list[dict]:
    from radfield.evaluation.localize import PoseFitOptions, fit_pose
    from radfield.rendering.backgrounds import background_color
    from radfield.training.checkpoint import load_run

    run = OUT / "runs" / "poses-tabletop-clean"
    if not (run / "checkpoint.pt").is_file():
        run, _ = train("poses-tabletop-clean", DATA / "tabletop", args.preset, args.budget)
    config, model = load_run(run)
    test = load_scene(DATA / "tabletop", "test")
    bg = background_color(config.data.eval_background, "cpu")
    size = model.scene.size
    picks = torch.linspace(0, len(test) - 1, min(args.views, len(test))).round().long().tolist()
    starts = perturb_poses(test.cameras.c2w, 10.0, 0.0, torch.Generator().manual_seed(0))
    rows = []
    for i in picks:
        cams = dataclasses.replace(test.cameras, c2w=starts)
        t0 = time.time()
        fit = fit_pose(model, cams, i, test.composited(i, bg), bg, PoseFitOptions(steps=args.fit_steps))
        rot, dist = pose_errors(fit.c2w[None].double(), test.cameras.c2w[i:i + 1].double())
        row = {"view": test.names[i], "rotation_deg": float(rot), "translation_pct": 100 * float(dist) / size,
               "mse": fit.mse, "seconds": time.time() - t0}
        row["converged"] = row["rotation_deg"] < 1.0 and row["translation_pct"] < 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def suite_neuralsim(args) -> list[dict]:
    sys.path.insert(0, str(ROOT / "examples"))
    import neural_sim

    rows = []
    for estimator, bilevel in [(e, b) for e in args.estimators.split(",") for b in (False, True)]:
        ns = argparse.Namespace(run=None, out=str(OUT / "neural_sim"), train_seconds=min(args.budget, 120.0),
                                iters=args.iters, views=16 if estimator == "mixture" else 4, targets=256, size=24,
                                lr=0.05, inner_lr=0.5, temperature=0.1, bilevel=bilevel, estimator=estimator, seed=0)
        t0 = time.time()
        r = neural_sim.run(ns)
        rows.append({"experiment": r["experiment"], "estimator": estimator, "views": ns.views,
                     "tv_start": r["tv_start"], "tv_end": r["tv_end"], "tv_targets_hidden": r["tv_targets_hidden"],
                     "tv_targets_end": r["tv_targets_end"],
                     "iters": r["iters"], "learn_s": r["learn_s"], "field_s": r["field_s"],
                     "wall_s": time.time() - t0, "learned": r["learned"], "hidden": r["hidden"]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(suite: str, rows: list[dict]) -> str:
    f = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    if suite in ("refine", "garden"):
        lines = ["| run | steps | test PSNR | test PSNR, given poses | pose error before (deg / % size) | "
                 "after |", "|---|---|---|---|---|---|"]
        for r in rows:
            before, after = r.get("pose_error_before"), r.get("pose_error_after")
            pe = lambda e: "" if e is None else f"{e['rotation_deg']:.3f} / {e['translation_pct']:.2f}"  # noqa: E731
            given = r.get("test_given_poses")
            lines.append(f"| {r['name']} | {r['steps']} | {f(r['test']['psnr'])} | "
                         f"{f(given['psnr']) if given else ''} | {pe(before)} | {pe(after)} |")
        return "\n".join(lines)
    if suite == "localize":
        ok = sum(r["converged"] for r in rows)
        med = lambda k: sorted(r[k] for r in rows)[len(rows) // 2]  # noqa: E731
        return (f"| views | converged (<1 deg, <1 % size) | median rotation (deg) | median translation (% size) | "
                f"mean s / view |\n|---|---|---|---|---|\n| {len(rows)} | {ok}/{len(rows)} = {ok / len(rows):.2f} | "
                f"{med('rotation_deg'):.3f} | {med('translation_pct'):.3f} | "
                f"{sum(r['seconds'] for r in rows) / len(rows):.1f} |")
    lines = ["| experiment | estimator | views / iteration | iterations | TV start | TV end | TV end, to the "
             "targets' bins (they: to the hidden) | learning (s) | field (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['experiment']} | {r['estimator']} | {r['views']} | {r['iters']} | {r['tv_start']:.3f} | "
              f"{r['tv_end']:.3f} | {r['tv_targets_end']:.3f} ({r['tv_targets_hidden']:.3f}) | "
              f"{r['learn_s']:.0f} | {r['field_s']:.0f} |" for r in rows]
    return "\n".join(lines)


SUITES = {"refine": suite_refine, "garden": suite_garden, "localize": suite_localize, "neuralsim": suite_neuralsim}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=[*SUITES, "all"])
    ap.add_argument("--budget", type=float, default=900.0, help="training seconds per run")
    ap.add_argument("--preset", default="ngp-small")
    ap.add_argument("--test-every", type=int, default=3)
    ap.add_argument("--views", type=int, default=30, help="localize: test views")
    ap.add_argument("--fit-steps", type=int, default=30,
                    help="Levenberg-Marquardt steps of a pose fit (localize; test views of --pose-opt runs)")
    ap.add_argument("--iters", type=int, default=150, help="neuralsim: iterations")
    ap.add_argument("--estimators", default="mixture,pathwise", help="neuralsim: some of mixture,pathwise")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override of the --pose-opt runs, e.g. train.pose_opt.lr=6e-4 (repeatable)")
    ap.add_argument("--runs", default="", help="refine: some of clean,noisy,noisy+pose-opt; "
                    "garden: some of baseline,pose-opt (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="train.seed of every run")
    ap.add_argument("--tag", default="", help="suffix of the JSON's name (bench/out/poses_SUITE_TAG.json)")
    args = ap.parse_args()
    args.runs = [r for r in args.runs.split(",") if r]
    OVERRIDES.update(parse_override(item) for item in args.set)
    SEED[0] = args.seed
    for suite in (SUITES if args.suite == "all" else [args.suite]):
        t0 = time.time()
        rows = SUITES[suite](args)
        doc = {"suite": suite, "budget_s": args.budget, "preset": args.preset, "wall_s": time.time() - t0,
               "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
        name = f"poses_{suite}{'_' + args.tag if args.tag else ''}.json"
        with atomic_write(OUT / name) as tmp:
            tmp.write_text(json.dumps(doc, indent=1))
        print(f"\n{suite} ({OUT / name}):\n{table(suite, rows)}\n", flush=True)


if __name__ == "__main__":
    main()
