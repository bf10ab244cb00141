"""Data-parallel training: step time of 1 vs 2 processes, and the gradient traffic per step.

    python bench/distributed.py [--data ../shared/data/tabletop] [--steps 60] [--warmup 10]

Three runs, one after the other, each in its own process(es), preset ``ngp-small``, a fixed
number of steps, no validation (one final validation image, not timed):

* ``1 x 2 threads``: one process with the machine's 2 torch / OpenMP threads;
* ``1 x 1 thread``: one process, one thread: the compute of one rank;
* ``2 x 1 thread``: ``torchrun --nproc-per-node 2`` (gloo on 127.0.0.1), one thread per process
  (torchrun's default), each rank with its own ~2^15 samples per step.

Per run, over the steps after ``--warmup``: median step time, median time of the gradient
all-reduce inside the step (flatten, all-reduce, unflatten, step figures), samples per step over
all ranks, samples/s, and the all-reduced bytes per step (counted by
``radfield.training.distributed.World``: the payload each rank hands to the all-reduce). The
2-process run also times, after a barrier, the all-reduce of a buffer of the gradient's size
alone (median of 20) and of 4 float64 (median of 200: the latency of a step-figure collective).
Writes ``bench/results/distributed_tabletop.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "distributed"
RESULTS = ROOT / "bench" / "results" / "distributed_tabletop.json"


def worker(data: str, steps: int, warmup: int, out_json: Path) -> None:
    """One run (one process, or one rank of a torchrun run); rank 0 writes ``out_json``."""
    import torch
    import torch.distributed as dist

    from radfield.config import PRESETS, RunConfig, apply_overrides
    from radfield.training.distributed import process_group
    from radfield.training.trainer import Trainer

    config = apply_overrides(RunConfig(), PRESETS["ngp-small"])
    config.data.path = str(Path(data).resolve())
    config.train.max_steps = warmup + steps
    config.train.eval_every = 1e9
    config.train.val_images = 1
    with process_group("cpu") as world:
        run_dir = OUT / f"run_{world.size}x{torch.get_num_threads()}"
        if world.is_main and run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        if world.size > 1:
            dist.barrier()
        trainer = Trainer(config, run_dir, progress=False, log_tensorboard=False)
        steps_seen: list[dict] = []
        marks: dict = {}

        def on_step(tr, result, seconds):
            steps_seen.append({"t": seconds, "n": result.n_samples,
                               "all_reduce": result.timings.get("all_reduce", 0.0)})
            if tr.state.step in (warmup, warmup + steps):  # same point of two steps: whole steps between
                marks[tr.state.step] = (tr.world.bytes_reduced, tr.world.collectives)

        load_before = os.getloadavg()[0]
        trainer.train(on_step=on_step)
        n_bytes = (marks[warmup + steps][0] - marks[warmup][0]) / steps
        n_coll = (marks[warmup + steps][1] - marks[warmup][1]) / steps
        grad_numel = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        alone = small = None
        if world.size > 1:  # the gradient's all-reduce alone, same size, same backend
            def timed_all_reduce(buf: torch.Tensor, n: int) -> float:
                times = []
                for _ in range(n + 2):
                    dist.barrier()
                    t0 = time.perf_counter()
                    dist.all_reduce(buf)
                    times.append(time.perf_counter() - t0)
                return statistics.median(times[2:])

            alone = timed_all_reduce(torch.ones(grad_numel), 20)
            small = timed_all_reduce(torch.ones(4, dtype=torch.float64), 200)  # a step-figure one
        timed = steps_seen[warmup:]
        med = lambda key: statistics.median(s[key] for s in timed)  # noqa: E731
        if world.is_main:
            out_json.write_text(json.dumps({
                "processes": world.size, "threads": torch.get_num_threads(), "steps": len(timed),
                "median_step_s": med("t"), "median_all_reduce_s": med("all_reduce"),
                "median_samples_per_step": med("n"),
                "samples_per_s_median_step": med("n") / med("t"),
                "samples_per_s_mean": sum(s["n"] for s in timed) / sum(s["t"] for s in timed),
                "loadavg_1min_before_after": [load_before, os.getloadavg()[0]],
                "all_reduced_bytes_per_step": n_bytes, "collectives_per_step": n_coll,
                "gradient_params": grad_numel, "gradient_all_reduce_alone_s": alone,
                "small_all_reduce_s": small,
            }, indent=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tabletop"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.data, args.steps, args.warmup, Path(args.worker))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GLOO_SOCKET_IFNAME": "lo"}
    me = [str(Path(__file__).resolve()), "--data", args.data, "--steps", str(args.steps),
          "--warmup", str(args.warmup), "--worker"]
    runs = {
        "1 x 2 threads": ([sys.executable, *me], {"OMP_NUM_THREADS": "2"}),
        "1 x 1 thread": ([sys.executable, *me], {"OMP_NUM_THREADS": "1"}),
        "2 x 1 thread": ([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *me],
                         {"OMP_NUM_THREADS": "1"}),
    }
    results = {}
    for name, (cmd, extra) in runs.items():
        out_json = OUT / f"{name.replace(' ', '')}.json"
        t0 = time.time()
        subprocess.run([*cmd, str(out_json)], check=True, cwd=ROOT, env={**env, **extra})
        results[name] = {**json.loads(out_json.read_text()), "wall_s": time.time() - t0}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "data": args.data,
              "preset": "ngp-small", "steps": args.steps, "warmup": args.warmup,
              "cpu": os.cpu_count(), "runs": results}
    RESULTS.write_text(json.dumps(record, indent=1))
    print("\n| run | median step (s) | all-reduce in step (s) | samples / step (all ranks) | samples/s "
          "(median step) | samples/s (mean) | all-reduced bytes / step | collectives / step | load before/after |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        load = "/".join(f"{x:.1f}" for x in r["loadavg_1min_before_after"])
        print(f"| {name} | {r['median_step_s']:.3f} | {r['median_all_reduce_s']:.4f} | "
              f"{r['median_samples_per_step']:,.0f} | {r['samples_per_s_median_step']:,.0f} | "
              f"{r['samples_per_s_mean']:,.0f} | {r['all_reduced_bytes_per_step']:,.0f} | "
              f"{r['collectives_per_step']:.2f} | {load} |")
    two = results["2 x 1 thread"]
    print(f"\ngradient: {two['gradient_params']:,} parameters; all-reduce of that buffer alone: "
          f"{two['gradient_all_reduce_alone_s'] * 1e3:.1f} ms; of 4 float64: "
          f"{two['small_all_reduce_s'] * 1e6:.0f} us")


if __name__ == "__main__":
    main()
