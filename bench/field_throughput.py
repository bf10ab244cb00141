"""Hash grid training throughput on CPU: kernel path vs the plain PyTorch reference.

The MLP head is the ngp field's density MLP (`radfield.fields.mlp`): its CPU kernel on the kernel
path, plain `torch.nn.Linear` layers on the reference path.

One step = forward (encode [+ NGP-sized MLP head] + MSE loss), backward, Adam step + zero_grad.
Reports the median over a few steps after warm-up, split into its three phases, as samples/s.

    python bench/field_throughput.py [--batch-log2 16] [--iters 5] [--threads N] [--device cuda]
                                     [--tables paper|ngp]

``--tables paper`` (default): Instant-NGP's paper grid, 2^19-row tables, finest level 2048.
``--tables ngp``: the grid of radfield's ``ngp`` model as it trains a unit box (its defaults:
2^18-row tables, finest level 512; ``radfield.config.NGPConfig``).

On CUDA the "kernel" path is the Triton kernels (radfield/fields/hashgrid_triton.py), timed with
torch.cuda.synchronize() around each phase.

The reference path gets fewer steps (--ref-iters) because it is ~20-60x slower. On a shared
machine, 2-thread numbers collapse when another process holds a core (OpenMP spin-waits):
compare with --threads 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch import nn

from radfield.config import NGPConfig
from radfield.fields.hashgrid import HashGrid, HashGridConfig, kernel_available, triton_kernels
from radfield.fields.mlp import mlp
from radfield.models.ngp import ROI_MAX_RESOLUTION
from radfield.native import keep_freed_memory
from radfield.training.adam import Adam


def make_adam(grid_params, head_params, lr: float, sparse_tables: bool = False) -> tuple[torch.optim.Adam, str]:
    """Instant-NGP's Adam (0.9, 0.99, eps 1e-15): radfield's (torch's fused Adam; with
    ``sparse_tables`` Instant-NGP's step for the tables, radfield.training.adam), or torch's
    foreach Adam where the fused one is missing."""
    groups = [{"params": list(grid_params), "sparse": sparse_tables}, {"params": list(head_params)}]
    groups = [g for g in groups if g["params"]]
    try:
        opt = Adam(groups, lr=lr, betas=(0.9, 0.99), eps=1e-15)
        params = [p for g in groups for p in g["params"]]
        for p in params:  # probe one real step with zero grads, then reset the state
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.state.clear()
        for p in params:
            p.grad = None
        return opt, "sparse tables" if sparse_tables else "fused"
    except (RuntimeError, TypeError):
        for g in groups:
            g.pop("sparse")
        return torch.optim.Adam(groups, lr=lr, betas=(0.9, 0.99), eps=1e-15, foreach=True), "foreach"


def grid_config(tables: str, use_kernel: bool) -> HashGridConfig:
    if tables == "paper":
        return HashGridConfig(use_kernel=use_kernel)
    cfg = dataclasses.replace(NGPConfig().grid, use_kernel=use_kernel)
    if cfg.max_resolution == 0:  # auto: the ngp model's finest level across a unit box (aabb_scale 1)
        cfg.max_resolution = ROI_MAX_RESOLUTION
    return cfg


def grid_description(tables: str) -> str:
    cfg = grid_config(tables, True)
    return (f"L{cfg.n_levels} F{cfg.features_per_level} T2^{cfg.log2_table_size}, "
            f"levels {cfg.base_resolution}-{cfg.max_resolution}")


def run(use_kernel: bool, with_head: bool, batch: int, iters: int, warmup: int, device: str = "cpu",
        tables: str = "paper", sparse_tables: bool = False) -> dict:
    torch.manual_seed(0)
    grid = HashGrid(grid_config(tables, use_kernel)).to(device)
    head = None
    if with_head:
        head = mlp(grid.output_dim, 64, 1, 16).to(device)  # the ngp field's density MLP (its CPU kernel)
    opt, adam_kind = make_adam(grid.parameters(), head.parameters() if head else [], 1e-2, sparse_tables)
    times = {"fwd": [], "bwd": [], "opt": []}
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for step in range(warmup + iters):
        x = torch.rand(batch, 3, device=device)
        target = torch.rand(batch, 16 if with_head else grid.output_dim, device=device)
        sync()
        t0 = time.perf_counter()
        out = grid(x)
        if head is not None:  # the reference path runs the MLP's layers as plain torch.nn.Linear
            out = head(out) if use_kernel else nn.Sequential.forward(head, out)
        loss = (out - target).square().mean()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        t3 = time.perf_counter()
        if step >= warmup:
            times["fwd"].append(t1 - t0)
            times["bwd"].append(t2 - t1)
            times["opt"].append(t3 - t2)
    med = {k: statistics.median(v) for k, v in times.items()}
    total = statistics.median([a + b + c for a, b, c in zip(*times.values())])
    return {**med, "total": total, "samples_s": batch / total, "adam": adam_kind}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-log2", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--ref-iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: as is)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sparse-tables", action="store_true",
                        help="Instant-NGP's Adam step for the tables (optim.sparse_tables)")
    parser.add_argument("--tables", choices=("paper", "ngp"), default="paper",
                        help="Instant-NGP's paper grid (2^19 rows, finest 2048) or radfield's ngp default")
    args = parser.parse_args()
    kept = keep_freed_memory()  # as radfield's trainer does; RADFIELD_KEEP_FREED_MEMORY=0 to compare
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    batch = 2**args.batch_log2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch 2^{args.batch_log2}, "
          f"hash grid {args.tables} ({grid_description(args.tables)}), median of {args.iters} "
          f"(reference {args.ref_iters}) steps after {args.warmup} warm-up, "
          f"freed memory {'kept' if kept else 'returned'}")
    on_cuda = args.device.startswith("cuda")
    paths = [("kernel", True)] if (triton_kernels() if on_cuda else kernel_available()) else []
    if not paths:
        print(f"({'Triton kernels' if on_cuda else 'CPU kernel'} unavailable: reference only)")
    paths.append(("reference", False))
    header = (f"{'path':<10} {'model':<14} {'fwd ms':>8} {'bwd ms':>8} {'adam ms':>8} {'step ms':>8} "
              f"{'Msamples/s':>11}  adam")
    print(header)
    print("-" * len(header))
    for name, use_kernel in paths:
        for with_head in (False, True):
            iters = args.iters if use_kernel else args.ref_iters
            r = run(use_kernel, with_head, batch, iters, args.warmup, args.device, args.tables, args.sparse_tables)
            model = "grid+MLP head" if with_head else "grid only"
            print(f"{name:<10} {model:<14} {r['fwd'] * 1e3:8.1f} {r['bwd'] * 1e3:8.1f} "
                  f"{r['opt'] * 1e3:8.1f} {r['total'] * 1e3:8.1f} {r['samples_s'] / 1e6:11.3f}  "
                  f"{r['adam']}")  # fmt: skip


if __name__ == "__main__":
    main()
