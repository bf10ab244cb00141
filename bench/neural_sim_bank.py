"""The Neural-Sim mixture loss over a growing bank of views: recomputed every iteration
(:func:`radfield.poses.distribution.mixture_mmd2` on the whole bank) against kept kernel sums
(:class:`radfield.poses.distribution.MixtureBank`), the loss and its gradient in ``p`` only.

    python bench/neural_sim_bank.py [--iters 150] [--bins 8] [--per-bin 4] [--dim 192] [--targets 256]

Each iteration adds ``--per-bin`` random "thumbnails" (``--dim`` values) to each of ``--bins``
bins and evaluates the loss and ``d loss / d p`` at softmax logits; prints each way's wall time
and their final losses (equal up to rounding: the bank is tested equal to ``mixture_mmd2``).
"""

from __future__ import annotations

import argparse
import time

import torch

from runs import ROOT  # noqa: F401  (this checkout first on sys.path)
from radfield.poses.distribution import MixtureBank, mixture_mmd2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--per-bin", type=int, default=4)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--targets", type=int, default=256)
    args = ap.parse_args()
    gen = torch.Generator().manual_seed(0)
    targets = torch.rand(args.targets, args.dim, generator=gen)
    views = [torch.rand(args.bins, args.per_bin, args.dim, generator=gen) for _ in range(args.iters)]
    bandwidth = float(torch.cdist(targets, targets).median())
    logits = torch.zeros(args.bins, requires_grad=True)
    results = {}
    for name in ("recomputed", "incremental"):
        bank, kept = MixtureBank(targets, bandwidth), []
        start = time.perf_counter()
        for x in views:
            p = torch.softmax(logits, 0)
            if name == "recomputed":
                kept.append(x)
                loss = mixture_mmd2(torch.cat(kept, 1), p, targets, bandwidth)
            else:
                bank.add(x)
                loss = bank.loss(p)
            torch.autograd.grad(loss, logits)
        results[name] = (time.perf_counter() - start, float(loss))
        print(f"{name:<11} {results[name][0]:7.1f} s, final loss {results[name][1]:.6f}", flush=True)
    print(f"{args.iters} iterations, {args.bins} bins x {args.per_bin} views a bin each, {args.dim}-dim "
          f"views, {args.targets} targets: {results['recomputed'][0] / results['incremental'][0]:.1f}x")


if __name__ == "__main__":
    main()
