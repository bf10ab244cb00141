"""Packed volume rendering, forward and backward: the kernels against the PyTorch path.

    python bench/volume_throughput.py [--device cuda] [--rays 8192] [--samples 32] [--iters 20]

Random packed samples (``--samples`` per ray on average, counts drawn per ray), upstream gradients
on the weights, colour, opacity and depth; each path timed as the median over ``--iters`` steps
(forward, then backward), with ``torch.cuda.synchronize()`` around each. The two paths' outputs and
gradients are compared (largest absolute difference printed). The kernels are Triton's on CUDA,
``_volume_cpu.c``'s on the CPU (``radfield.rendering.volume.FusedRender``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from radfield.rendering import volume


def batch(n_rays: int, mean_samples: int, device: str):
    counts = torch.randint(0, 2 * mean_samples + 1, (n_rays,))
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    n = len(ray_indices)
    deltas = torch.rand(n) * 0.02 + 0.001
    ends = torch.cumsum(deltas, 0)
    tensors = (torch.rand(n) * 50, torch.rand(n, 3), ends - deltas, ends, ray_indices)
    return [t.to(device) for t in tensors], n


def timed(fn, sync, iters: int) -> tuple[float, float, list]:
    fwd, bwd = [], []
    for _ in range(iters + 3):
        sync()
        t0 = time.perf_counter()
        outs, loss, leaves = fn()
        sync()
        t1 = time.perf_counter()
        grads = torch.autograd.grad(loss, leaves)
        sync()
        fwd.append(t1 - t0)
        bwd.append(time.perf_counter() - t1)
    return statistics.median(fwd[3:]), statistics.median(bwd[3:]), [*outs, *grads]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rays", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    (sig, rgb, t0, t1, ri), n = batch(args.rays, args.samples, args.device)
    ups = [torch.randn(n, device=args.device), torch.randn(args.rays, 3, device=args.device),
           torch.randn(args.rays, device=args.device), torch.randn(args.rays, device=args.device)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def run(render_fn):
        def step():
            s, c = sig.detach().requires_grad_(), rgb.detach().requires_grad_()
            outs = render_fn(s, c)
            return outs, sum((o * u).sum() for o, u in zip(outs, ups)), [s, c]
        return step

    def pytorch(s, c):
        return volume.render_reference(s, c, t0, t1, ri, args.rays)

    print(f"{args.device}: {args.rays} rays, {n} samples")
    paths = {"pytorch": pytorch}
    backend = volume._fused_backend(sig, rgb, t0, t1)  # Triton on CUDA, the compiled kernel on the CPU
    if backend is not None:
        name = "triton" if args.device.startswith("cuda") else "compiled"
        paths[name] = lambda s, c: volume.FusedRender.apply(backend, s, c, t0, t1, ri, args.rays, False)
    results = {name: timed(run(fn), sync, args.iters) for name, fn in paths.items()}
    for name in set(results) - {"pytorch"}:
        diff = max((a - b).abs().max().item() for a, b in zip(results[name][2], results["pytorch"][2]))
        print(f"{name} against pytorch, largest difference of the outputs and gradients: {diff:.3g}")
    for name, (f, b, _) in results.items():
        print(f"{name:8s} forward {1000 * f:7.3f} ms  backward {1000 * b:7.3f} ms  "
              f"{n / (f + b) / 1e6:8.2f} M samples/s")


if __name__ == "__main__":
    main()
