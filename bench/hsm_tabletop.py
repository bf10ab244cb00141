"""Baseline vs hard sample mining at equal wall-clock budgets (issue: HSM benchmark).

    python bench/hsm_tabletop.py --budgets 300 1200 [--data ../shared/data/tabletop]
        [--modes baseline hsm hsm-paper hsm-rising hsm-unbiased hsm-early hsm-2x hsm-half hsm-lean baseline-sparse hsm-sparse]
        [--modes baseline hsm hsm@0.5] [--val-images 10] [--device cuda]

Each (mode, budget) trains in its own process (so peak memory is per run), records validation
PSNR against training time (the preset's 2 val images or --val-images of them, every
--eval-every seconds; validation time is not counted as training time), the median step time
and its split, the peak resident memory, the peak of the training step's own allocations
(:func:`step_peak_mb`), then scores the test split. Writes bench/out/hsm_<scene>_<budget>.json,
a PSNR-vs-time PNG per budget, and prints a markdown table for bench/RESULTS.md.

Modes: ``baseline``, ``hsm`` and the variants of :data:`MODES` (radfield.config.HSMConfig).
``MODE@F`` trains ``MODE`` for ``F`` times the budget: ``hsm@0.5`` asks whether a run given half
the time ends where the baseline ends (its schedule's learning-rate decays come within its own
half, where the full-budget run's are still ahead).
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

import torch

from runs import DATA, OUT, ROOT, budgeted_config, fresh, time_to_reach  # this checkout first on sys.path

TEST_EVERY = 3  # score every 3rd test image (10 of tabletop's 30)
HSM = {"train.hsm.enabled": True}
MODES = {  # each variant on top of the defaults, which keep early termination since 2026-12-06
    "baseline": {},
    "hsm": HSM,
    "hsm-paper": {**HSM, "train.hsm.early_stop": False},            # the paper's step ("hsm" before 2026-12-06)
    "hsm-rising": {**HSM, "train.hsm.final_min_fraction": 0.5},    # kept fraction rises to 0.5
    "hsm-unbiased": {**HSM, "train.hsm.importance_weights": True},  # g / min(1, b p)
    "hsm-early": {**HSM, "train.hsm.early_stop": True},             # early termination kept (now "hsm")
    "hsm-2x": {**HSM, "train.hsm.first_pass_samples": 2.0},         # twice the first-pass samples
    "hsm-half": {**HSM, "train.hsm.first_pass_samples": 0.5},       # half the samples, more steps
    "hsm-lean": {**HSM, "train.hsm.max_fraction": 0.15},            # at most 15 % back-propagated
    "baseline-sparse": {"ngp.optim.sparse_tables": True},            # Instant-NGP's Adam for the tables
    "hsm-sparse": {**HSM, "ngp.optim.sparse_tables": True},
}
PROBE_STEPS = 3


def step_peak_mb(trainer, n_steps: int = PROBE_STEPS) -> float:
    """The peak of the training step's own allocations (MB): the running sum of the allocation
    and free events torch's profiler records during a step, maximised over ``n_steps`` steps
    (on a GPU, ``torch.cuda.max_memory_allocated`` minus the memory at the step's start)."""
    from torch.profiler import ProfilerActivity, profile

    peaks = []
    for _ in range(n_steps):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            trainer.train_step()
            torch.cuda.synchronize()
            peaks.append((torch.cuda.max_memory_allocated() - start) / 2 ** 20)
            continue
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            trainer.train_step()
        events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns())
        level = peak = 0
        for e in events:
            level += e.nbytes()
            peak = max(peak, level)
        peaks.append(peak / 2 ** 20)
    return max(peaks)


def run_one(mode: str, budget: float, data: str, eval_every: float, val_images: int | None = None,
            device: str = "cpu") -> dict:
    from radfield.evaluation.evaluate import evaluate_run
    from radfield.training.trainer import Trainer

    config = budgeted_config("ngp", data, budget, eval_every=eval_every, val_images=val_images,
                             overrides=MODES[mode])
    run_dir = fresh(OUT / f"run_{mode}_{int(budget)}")
    steps: list[dict] = []

    def on_step(trainer, result, seconds):
        steps.append({"t": seconds, "n": result.n_samples, "b": result.n_backward, **result.timings})

    trainer = Trainer(config, run_dir, device=device, progress=False, log_tensorboard=False)
    t0 = time.time()
    history = trainer.train(on_step=on_step)
    wall = time.time() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    step_mb = step_peak_mb(trainer)  # after the run (a few more steps; the checkpoint is written)
    metrics = evaluate_run(run_dir, "test", device=device, save_renders=False, progress=False, every=TEST_EVERY)
    med = lambda key: statistics.median(s[key] for s in steps if key in s)  # noqa: E731
    split_keys = sorted({k for s in steps for k in s} - {"t", "n", "b"})
    return {
        "mode": mode, "budget_s": budget, "steps": len(steps), "wall_s": wall,
        "median_step_s": med("t"), "median_samples": med("n"),
        "median_kept_fraction": statistics.median(s["b"] / max(s["n"], 1) for s in steps),
        "step_split_s": {k: med(k) for k in split_keys},
        "peak_rss_mb": peak_mb, "step_peak_mb": step_mb, "history": history,
        "test_psnr": metrics["psnr"], "test_ssim": metrics["ssim"], "test_n": metrics["n_images"],
    }


def parse_mode(name: str) -> tuple[str, float]:
    """``"hsm@0.5"`` -> ``("hsm", 0.5)``; ``"hsm"`` -> ``("hsm", 1.0)``."""
    mode, _, factor = name.partition("@")
    if mode not in MODES:
        raise argparse.ArgumentTypeError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    try:
        f = float(factor or 1.0)
    except ValueError:
        f = 0.0
    if not f > 0:
        raise argparse.ArgumentTypeError(f"{name!r}: the budget factor after @ must be a positive number")
    return mode, f


def mode_argument(name: str) -> str:
    """``--modes``' type: ``name`` itself, once :func:`parse_mode` accepts it."""
    parse_mode(name)
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA / "tabletop"))
    ap.add_argument("--budgets", type=float, nargs="+", default=[300.0, 1200.0])
    ap.add_argument("--modes", nargs="+", default=["baseline", "hsm"], type=mode_argument,
                    help="baseline first: the others are compared with it; MODE@F: F times the budget")
    ap.add_argument("--eval-every", type=float, default=None, help="default: budget / 10")
    ap.add_argument("--val-images", type=int, default=None,
                    help="validation images (default: the preset's 2); their PSNR makes the curves")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: the step peak is torch.cuda.max_memory_allocated's")
    ap.add_argument("--one", nargs=2, metavar=("MODE", "BUDGET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        mode, budget = args.one[0], float(args.one[1])
        print(json.dumps(run_one(mode, budget, args.data, args.eval_every or budget / 10, args.val_images,
                                 args.device)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    from radfield.evaluation.plots import plot_curves

    scene = Path(args.data).name
    rows = []
    for budget in args.budgets:
        res = {}
        for mode in args.modes:
            name, factor = parse_mode(mode)
            cmd = [sys.executable, __file__, "--one", name, str(budget * factor), "--data", args.data,
                   "--eval-every", str(args.eval_every or budget / 10)]
            if args.val_images:
                cmd += ["--val-images", str(args.val_images)]
            cmd += ["--device", args.device]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
            res[mode] = json.loads(out.strip().splitlines()[-1])
            print(f"{mode} {budget:.0f}s: test PSNR {res[mode]['test_psnr']:.2f}", flush=True)
        base = args.modes[0]
        b = res[base]
        final_val = [x["psnr"] for x in b["history"] if "psnr" in x][-1]
        t_base = time_to_reach(b["history"], final_val)
        res["summary"] = {"reference": base, "reference_final_val_psnr": final_val,
                          "reference_time_to_final": t_base, "modes": {}}
        for mode in args.modes[1:]:
            t = time_to_reach(res[mode]["history"], final_val)
            res["summary"]["modes"][mode] = {
                "time_to_reference_final": t, "time_ratio": None if t is None or not t_base else t / t_base,
                "test_psnr_gain": res[mode]["test_psnr"] - b["test_psnr"],
                "step_peak_ratio": res[mode]["step_peak_mb"] / b["step_peak_mb"]}
        (OUT / f"hsm_{scene}_{int(budget)}.json").write_text(json.dumps(res, indent=1))
        plot_curves({m: [(x["time_s"], x["psnr"]) for x in res[m]["history"] if "psnr" in x]
                     for m in args.modes}, OUT / f"hsm_{scene}_{int(budget)}.png",
                    title=f"{scene}, {budget / 60:.0f} min budget: validation PSNR vs training time")
        rows.append((budget, res))
    print("\n| budget | mode | steps | median step (s) | samples/step | kept b/B | peak RSS (MB) | step peak (MB) "
          "| test PSNR | test SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for budget, res in rows:
        for m in args.modes:
            r = res[m]
            print(f"| {budget / 60:.0f} min | {m} | {r['steps']} | {r['median_step_s']:.3f} | "
                  f"{r['median_samples']:.0f} | {r['median_kept_fraction']:.2f} | {r['peak_rss_mb']:.0f} | "
                  f"{r['step_peak_mb']:.0f} | {r['test_psnr']:.2f} | {r['test_ssim']:.4f} |")
    for budget, res in rows:
        s = res["summary"]
        print(f"\n{budget / 60:.0f} min: {s['reference']} final val PSNR {s['reference_final_val_psnr']:.2f} dB "
              f"at {s['reference_time_to_final']} s")
        for m, v in s["modes"].items():
            print(f"  {m}: reaches it at {v['time_to_reference_final']} s (ratio {v['time_ratio']}), "
                  f"test {v['test_psnr_gain']:+.2f} dB, step peak {v['step_peak_ratio']:.2f}x")
        for m in args.modes:
            print(f"  {m} step split (median s): {json.dumps({k: round(v, 4) for k, v in res[m]['step_split_s'].items()})}")


if __name__ == "__main__":
    main()
