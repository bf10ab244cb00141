"""Equal-budget comparisons of models, with and without hard sample mining.

    python bench/zoo.py zoo        # tabletop (downscale 2): every model, baseline and --hsm
    python bench/zoo.py multiscale # multi-scale tabletop: mip-NeRF vs NeRF, PSNR per scale
    python bench/zoo.py captures   # garden-colmap (SfM poses) and garden (exact poses): nerfacto, ngp
    python bench/zoo.py dynamic --budget 1200  # dynamic: D-NeRF fast and MLP vs ngp ignoring time
    python bench/zoo.py lens --budget 600      # garden through a lens (Instant-NGP json): applied vs ignored
    python bench/zoo.py lens-strong --budget 600  # the same through a wide-angle amount of distortion
    python bench/zoo.py floaters --budget 600 --test-every 1  # nerfacto on garden-colmap, per-view PSNR
    python bench/zoo.py backbones --budget 600 # garden-colmap: MeRF (baked too) vs nerfacto vs ngp, +-hsm
    python bench/zoo.py voxels --budget 600    # voxels vs ngp on tabletop and on dynamic
    python bench/zoo.py floaters-anneal --budget 600 --test-every 1  # both gardens, +-proposal annealing
    python bench/zoo.py ngp-time --budget 300 --test-every 3 --no-validation  # ngp, 5 minutes, 200 px

Options: --budget SECONDS per run, --only NAME[,NAME] to run a subset, --no-validation,
--set KEY=VALUE (a config override for every run, e.g. --set train.near_gradient=1). Each run trains in its own
process (``python bench/zoo.py one ...``) for a wall-clock budget (validation excluded), records
the median step time, then scores the test split (every ``--test-every``-th image). Results go to
``bench/out/<suite>.json`` and a markdown table is printed for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from runs import DATA, OUT, budgeted_config, fresh  # this checkout first on sys.path

from radfield.config import parse_override  # noqa: E402  (after runs: this checkout's radfield)


class Run(NamedTuple):
    """One run of a suite: a preset on a dataset, and what it changes (``--set`` style overrides)."""
    preset: str
    data: str
    downscale: int = 1
    hsm: bool = False
    overrides: tuple[tuple[str, object], ...] = ()


ANNEAL = (("nerfacto.proposal_anneal_steps", 1000),)
"""nerfstudio's proposal weight annealing over the first 1000 steps (issue 10's floater probe)."""

SUITES: dict[str, dict[str, Run]] = {
    "zoo": {f"{p}{'+hsm' if h else ''}": Run(p, "tabletop", 2, h)
            for p in ("ngp-small", "nerfacto-small", "nerf-small", "mipnerf-small", "tiny", "nerfae")
            for h in (False, True)},
    "multiscale": {"mipnerf-small": Run("mipnerf-small", "MULTISCALE"),
                   "nerf-small": Run("nerf-small", "MULTISCALE")},
    "captures": {f"{p}@{d}": Run(p, d, 2) for d in ("garden-colmap", "garden")
                 for p in ("nerfacto-small", "ngp-small")},
    # ngp on the dynamic scene ignores the frames' times: the floor D-NeRF must clearly beat.
    "dynamic": {"dnerf": Run("dnerf", "dynamic"), "dnerf-mlp": Run("dnerf-mlp", "dynamic"),
                "ngp-ignores-time": Run("ngp", "dynamic")},
    # the issue-10 floater check: nerfacto's default preset, full size, every held-out view (every 8th)
    "floaters": {"nerfacto@garden-colmap": Run("nerfacto", "garden-colmap")},
    # the same on both gardens, with and without proposal weight annealing (use --test-every 1)
    "floaters-anneal": {f"nerfacto{'+anneal' if a else ''}@{d}": Run("nerfacto", d, overrides=ANNEAL if a else ())
                        for d in ("garden", "garden-colmap") for a in (False, True)},
    # issue 14: the backbones under the same budget, with and without HSM (MeRF also scored baked)
    "backbones": {f"{p}{'+hsm' if h else ''}": Run(p, "garden-colmap", 1, h)
                  for p in ("merf", "nerfacto", "ngp") for h in (False, True)},
    # issue 14: DVGO's voxel grids against Instant-NGP, static and (a time axis; ngp ignores time) dynamic
    "voxels": {f"{p}@{d}": Run(p, d) for d in ("tabletop", "dynamic") for p in ("voxels", "ngp")},
    # garden through an OpenCV lens, Instant-NGP transforms with aabb_scale 4 (bench/lens_capture.py):
    # the lens applied by the reader, and ignored (camera_model PINHOLE, the same photos)
    "lens": {f"{p}@{how}": Run(p, f"LENS-{how.upper()}") for p in ("ngp", "nerfacto")
             for how in ("applied", "ignored")},
    # the same with a wide-angle phone's amount of distortion (STRONG_LENS: 10 px at the corners)
    "lens-strong": {f"{p}@strong-{how}": Run(p, f"LENS-STRONG-{how.upper()}") for p in ("ngp", "nerfacto")
                    for how in ("applied", "ignored")},
    # issue 15: Instant-NGP's quality in a fixed time at 200 px (use --budget 300 --test-every 3 --no-validation)
    "ngp-time": {f"ngp@{d}": Run("ngp", d) for d in ("tabletop", "cornell")},
}
STRONG_LENS = (0.2, -0.05)
"""k1, k2 of the ``lens-strong`` suite: pixels move up to 10.3 px at the corners of garden's 300 x
300 views (3.8 px mid-edge), against 1.6 px (0.8 px) for the issue's example k1 = 0.05, k2 = -0.08."""


def dataset_path(name: str) -> Path:
    if name == "MULTISCALE":
        out = OUT / "tabletop-multiscale"
        if not (out / "multiscale.json").is_file():
            from radfield.data.multiscale import make_multiscale
            make_multiscale(DATA / "tabletop", out, progress=False, overwrite=True)
        return out
    if name.startswith("LENS-"):
        from lens_capture import make
        ignore, strong = name.endswith("-IGNORED"), "-STRONG-" in name
        folder = "garden-lens" + ("-strong" if strong else "") + ("-ignored" if ignore else "")
        return make(OUT / folder, *(STRONG_LENS if strong else ()), ignore=ignore)
    return DATA / name


def run_one(name: str, run: Run, budget: float, test_every: int, validate: bool = True,
            extra: dict | None = None) -> dict:
    """Train ``run`` for ``budget`` seconds in its own folder, score its test split; ``extra``:
    overrides on top of the run's own (``--set``)."""
    from radfield.evaluation.evaluate import evaluate_run
    from radfield.training.trainer import Trainer

    overrides = {**dict(run.overrides), **(extra or {})}
    # validation renders are slow on a CPU: only at the end, or (--no-validation) never
    config = budgeted_config(run.preset, dataset_path(run.data), budget, eval_every=None if validate else 1e12,
                             overrides={"data.downscale": run.downscale, "train.hsm.enabled": run.hsm, **overrides})
    run_dir = fresh(OUT / "runs" / name.replace("@", "_").replace("+", "_"))
    steps: list[dict] = []
    trainer = Trainer(config, run_dir, progress=False, log_tensorboard=False)
    t0 = time.time()
    history = trainer.train(on_step=lambda tr, r, dt: steps.append(
        {"t": dt, "n": r.n_samples, "b": r.n_backward}))
    wall = time.time() - t0
    t1 = time.time()
    metrics = evaluate_run(run_dir, "test", save_renders=False, progress=False, every=test_every)
    eval_s = time.time() - t1
    baked = bake_and_score(run_dir, test_every) if config.model == "merf" else None
    return {"name": name, "preset": run.preset, "model": config.model, "data": run.data, "downscale": run.downscale,
            "hsm": run.hsm, "overrides": overrides, "budget_s": budget,
            "steps": len(steps), "train_wall_s": wall,
            "eval_s": eval_s, "median_step_s": statistics.median(s["t"] for s in steps),
            "median_samples": statistics.median(s["n"] for s in steps),
            "samples_per_s": sum(s["n"] for s in steps) / max(sum(s["t"] for s in steps), 1e-9),
            "median_kept_fraction": statistics.median(s["b"] / max(s["n"], 1) for s in steps),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "model_mb": sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values()) / 2 ** 20,
            "baked": baked, "history": history, "test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"],
            "test_n": metrics["n_images"], "per_scale": metrics.get("per_scale"),
            "test_worst": metrics.get("worst"),
            "test_per_image": [(r["name"], r["psnr"]) for r in metrics.get("per_image", [])]}


def bake_and_score(run_dir: Path, test_every: int) -> dict:
    """Bake a MeRF run (``radfield export baked``) and score the bake on the same test images."""
    from radfield.evaluation.evaluate import evaluate_run
    from radfield.export.baked import export_baked, load_baked

    info = export_baked(run_dir, run_dir / "baked")
    m = evaluate_run(run_dir, "test", save_renders=False, progress=False, every=test_every,
                     model=load_baked(run_dir / "baked"), tag="baked")
    files_mb = sum(f.stat().st_size for f in (run_dir / "baked").rglob("*") if f.is_file()) / 2 ** 20
    return {"psnr": m["psnr"], "ssim": m["ssim"], "grid_mb": info["bytes"] / 2 ** 20, "files_mb": files_mb}


def table(results: list[dict]) -> str:
    lines = ["| run | model | data | steps | median step (s) | kept b/B | model (MB) | test PSNR | worst view | "
             "test SSIM | test images |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        worst = r.get("test_worst")
        worst = f"{worst['psnr']:.2f} ({worst['name']})" if worst else "n/a"
        size = f"{r['model_mb']:.1f}" if "model_mb" in r else "n/a"
        lines.append(f"| {r['name']} | {r['model']} | {r['data']} x1/{r['downscale']} | {r['steps']} | "
                     f"{r['median_step_s']:.3f} | {r['median_kept_fraction']:.2f} | {size} | {r['test_psnr']:.2f} | "
                     f"{worst} | {r['test_ssim']:.4f} | {r['test_n']} |")
        for scale, m in (r.get("per_scale") or {}).items():
            lines.append(f"| {r['name']} scale 1/{scale} | | | | | | | {m['psnr']:.2f} | | {m['ssim']:.4f} | "
                         f"{m['n_images']} |")
        if r.get("baked"):
            b = r["baked"]
            lines.append(f"| {r['name']} baked | | | | | | {b['files_mb']:.1f} (files) | {b['psnr']:.2f} "
                         f"({b['psnr'] - r['test_psnr']:+.2f}) | | {b['ssim']:.4f} | {r['test_n']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", choices=[*SUITES, "one"])
    ap.add_argument("--budget", type=float, default=90.0)
    ap.add_argument("--test-every", type=int, default=5)
    ap.add_argument("--only", default=None)
    ap.add_argument("--no-validation", action="store_true",
                    help="no validation render at the end of training (a barely trained MLP model "
                         "renders a 200 x 200 image in minutes); the test split is scored anyway")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every run of the suite (as radfield train --set)")
    ap.add_argument("--name", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--of", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.suite == "one":
        suite = SUITES[args.of] if args.of else next(s for s in SUITES.values() if args.name in s)
        print(json.dumps(run_one(args.name, suite[args.name], args.budget, args.test_every,
                                 not args.no_validation, dict(map(parse_override, args.set)))))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    names = list(SUITES[args.suite]) if args.only is None else args.only.split(",")
    results = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "one", "--of", args.suite, "--name", name,
                               "--budget", str(args.budget),
                               "--test-every", str(args.test_every),
                               *(["--no-validation"] if args.no_validation else []),
                               *(f"--set={item}" for item in args.set)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{name}: {r['steps']} steps, test PSNR {r['test_psnr']:.2f}", file=sys.stderr, flush=True)
        (OUT / f"{args.suite}.json").write_text(json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M"), "budget_s": args.budget, "results": results}, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
