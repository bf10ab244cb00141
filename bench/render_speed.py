"""No-grad rendering speed of a trained run: rays per second over whole test images, and their PSNR.

    python bench/render_speed.py RUN_DIR [--images 0,3,6] [--chunk 8192] [--json OUT]

Loads the run (as ``radfield eval`` does), renders the listed test images one after another with
:func:`radfield.rendering.images.render_image` and prints, per image and in total, the wall time,
rays/s, samples evaluated per ray and PSNR against the ground truth (on the run's evaluation
background). The first image is rendered once before timing (warm-up: kernel build, allocator).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch

from runs import trained_run  # this checkout first on sys.path

from radfield.data.scene import over_background
from radfield.rendering.images import render_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--images", default="0,3,6,9,12", help="test image indices")
    ap.add_argument("--chunk", type=int, default=None, help="rays per chunk (default: render_image's)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args()

    _, model, data, bg = trained_run(args.run_dir)
    images = [int(i) for i in args.images.split(",")]
    kw = {} if args.chunk is None else {"chunk": args.chunk}
    render_image(model, data.cameras, images[0], bg, **kw)  # warm-up
    rows, total_t, total_rays = [], 0.0, 0
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    for i in images:
        t0 = time.perf_counter()
        r = render_image(model, data.cameras, i, bg, **kw)
        dt = time.perf_counter() - t0
        gt = over_background(data.images[i].float() / 255, bg)
        psnr = -10 * torch.log10((r.rgb - gt).square().mean()).item()
        n = r.rgb.shape[0] * r.rgb.shape[1]
        rows.append({"image": i, "seconds": dt, "rays_per_s": n / dt, "psnr": psnr})
        total_t += dt
        total_rays += n
        print(f"image {i}: {dt:.2f} s, {n / dt:,.0f} rays/s, PSNR {psnr:.2f} dB", flush=True)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    out = {"run": args.run_dir, "images": images, "seconds": total_t, "rays_per_s": total_rays / total_t,
           "mean_psnr": sum(r["psnr"] for r in rows) / len(rows),
           "user_s": cpu1.ru_utime - cpu0.ru_utime, "system_s": cpu1.ru_stime - cpu0.ru_stime,
           "threads": torch.get_num_threads(), "per_image": rows}
    print(f"total: {total_t:.2f} s for {len(images)} images, {out['rays_per_s']:,.0f} rays/s, "
          f"mean PSNR {out['mean_psnr']:.2f} dB, user {out['user_s']:.1f} s, system {out['system_s']:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
