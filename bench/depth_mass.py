"""Where a trained run's ray termination lies on the rays that have depth (issue 11).

    python bench/depth_mass.py RUN_DIR [RUN_DIR ...] [--batches 20] [--rays 4096]

For each run (trained with ``data.depth_source`` giving depth on its training views, e.g. a
``bench/depth.py`` garden run), draws training batches as the trainer does (a quarter of the rays
from pixels with depth), renders them with the trained model and, over the rays with a measured
depth ``D``, reports the mean of: the opacity; the weight in front of the surface (``t < 0.9 D``),
near it (``|t - D| <= 0.1 D``), behind it (``t > 1.1 D``) and beyond twice its depth; the share of
the rendered depth ``sum_i w_i t_i`` that comes from beyond ``2 D``; and the relative error of the
rendered depth and of the median termination distance (where the cumulative weight reaches 0.5).
A loss on the rendered depth alone (the spec's L2) can be met by mass in front of the surface
balanced by a little mass far behind it; these figures show whether a run did that.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout first

from radfield.losses.depth import depth_unit  # noqa: E402
from radfield.rendering.pipeline import render_samples  # noqa: E402
from radfield.rendering.volume import accumulate_along_rays, exclusive_sum_per_ray  # noqa: E402
from radfield.training.checkpoint import load_run  # noqa: E402
from radfield.training.trainer import Trainer  # noqa: E402


def mass_on_depth_rays(run_dir: str, batches: int, n_rays: int, seed: int = 0) -> dict[str, float]:
    """The figures of the module docstring for one run, means over its rays with depth."""
    torch.manual_seed(seed)
    config, model = load_run(run_dir)
    if config.train.depth.loss == "none":  # the trainer draws depth pixels only with a depth loss
        config.train.depth.loss = "l2"
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(config, scratch, progress=False, log_tensorboard=False)
    trainer.model.load_state_dict(model.state_dict())
    trainer.model.eval()
    unit = depth_unit(config.train.depth, trainer.model.scene.meta.get("camera_radius"))
    rows = []
    with torch.no_grad():
        for _ in range(batches):
            batch = trainer.make_batch(n_rays)
            s = batch.samples
            w = render_samples(trainer.model, batch.rays.detach(), s, batch.background).weights
            ri, n = s.ray_indices, s.n_rays
            t = (s.t_starts + s.t_ends) / 2 / unit
            depth = batch.depth / unit
            d = depth[ri]

            def per_ray(values):
                return accumulate_along_rays(values, ri, n)

            cdf = exclusive_sum_per_ray(w, ri, n) + w
            median = torch.full((n,), float("inf")).scatter_reduce(
                0, ri, torch.where(cdf >= 0.5, t, float("inf")), "amin")
            rendered = per_ray(w * t)
            has = depth > 0
            rows.append(torch.stack([
                per_ray(w), per_ray(torch.where(t < 0.9 * d, w, 0.0)),
                per_ray(torch.where((t - d).abs() <= 0.1 * d, w, 0.0)), per_ray(torch.where(t > 1.1 * d, w, 0.0)),
                per_ray(torch.where(t > 2 * d, w, 0.0)),
                per_ray(torch.where(t > 2 * d, w * t, 0.0)) / rendered.clamp_min(1e-9),
                (rendered - depth).abs() / depth, (median - depth).abs() / depth,
            ], 1)[has])
    values = torch.cat(rows)
    names = ("opacity", "front", "near", "behind", "beyond_2d", "share_beyond_2d", "rel_err_rendered",
             "rel_err_median")
    out = {k: float(values[:, i][torch.isfinite(values[:, i])].mean()) for i, k in enumerate(names)}
    out["rays"] = int(values.shape[0])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rays", type=int, default=4096)
    args = ap.parse_args()
    print("| run | depth rays | opacity | front | near | behind | beyond 2D | rendered depth from beyond 2D "
          "| rel. error, rendered | rel. error, median |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        r = mass_on_depth_rays(run, args.batches, args.rays)
        label = f"{Path(run).parent.name}/{Path(run).name}"
        print(f"| {label} | {r['rays']} | {r['opacity']:.3f} | {r['front']:.3f} | {r['near']:.3f} | "
              f"{r['behind']:.3f} | {r['beyond_2d']:.4f} | {r['share_beyond_2d']:.3f} | "
              f"{r['rel_err_rendered']:.3f} | {r['rel_err_median']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
