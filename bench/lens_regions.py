"""Where applying a lens wins: PSNR by image region, two runs of one capture (lens applied / ignored).

    python bench/lens_regions.py RUN_APPLIED RUN_IGNORED [--images 0,5,10] [--png OUT.png] [--json OUT]

Renders the listed test images of both runs (each run's own test split: the same photos, read
through its lens or as pinholes) and scores three regions by the distance ``r`` of a pixel from
the image centre, in units of half the shorter side: the centre (``r < 0.5``), the ring
(``0.5 <= r < 1``) and the corners (``r >= 1``), where a lens moves pixels most. ``--png``: for
the image where the applied lens gains most, the ground truth, both renders and 4x their absolute
errors, each with its top-left corner (a third of the side) enlarged 3x beside it.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from runs import trained_run  # this checkout first on sys.path

from radfield.data.scene import over_background
from radfield.rendering.images import render_image

REGIONS = {"centre": (0.0, 0.5), "ring": (0.5, 1.0), "corners": (1.0, float("inf"))}


def region_masks(h: int, w: int) -> dict[str, torch.Tensor]:
    """Boolean ``(h, w)`` masks of :data:`REGIONS` (pixel centres; ``r`` in half the shorter side)."""
    y, x = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    r = torch.hypot(x - w / 2, y - h / 2) / (min(h, w) / 2)
    return {name: (r >= lo) & (r < hi) for name, (lo, hi) in REGIONS.items()}


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10 * torch.log10((a - b).square().mean()).item()


def renders(run_dir: str, images: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``(renders, ground truths)`` of the run's test images, on its evaluation background."""
    _, model, data, bg = trained_run(run_dir)
    out, gts = [], []
    for i in images:
        out.append(render_image(model, data.cameras, i, bg).rgb.clamp(0, 1))
        gts.append(over_background(data.images[i].float() / 255, bg))
    return out, gts


def picture(path: str, gt: torch.Tensor, applied: torch.Tensor, ignored: torch.Tensor) -> None:
    """Rows: ground truth, applied, ignored (whole image, then its top-left third enlarged 3x);
    then the two renders' absolute errors x4 the same way."""
    from PIL import Image

    h, w = gt.shape[:2]
    c = min(h, w) // 3

    def row(img: torch.Tensor) -> np.ndarray:
        corner = img[:c, :c].repeat_interleave(3, 0).repeat_interleave(3, 1)
        corner = torch.cat([corner, torch.ones(h - 3 * c, 3 * c, 3)], dim=0)
        return torch.cat([img, torch.ones(h, 4, 3), corner], dim=1).numpy()

    tiles = [row(gt), row(applied), row(ignored), row(((applied - gt).abs() * 4).clamp(0, 1)),
             row(((ignored - gt).abs() * 4).clamp(0, 1))]
    sheet = np.concatenate([np.concatenate([t, np.ones((4, t.shape[1], 3))], axis=0) for t in tiles], axis=0)
    Image.fromarray((sheet * 255).round().astype(np.uint8)).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("applied")
    ap.add_argument("ignored")
    ap.add_argument("--images", default="0,5,10", help="test image indices")
    ap.add_argument("--png", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    images = [int(i) for i in args.images.split(",")]
    a, gts = renders(args.applied, images)
    b, _ = renders(args.ignored, images)
    rows, best = [], None
    for i, ra, rb, gt in zip(images, a, b, gts):
        masks = region_masks(*gt.shape[:2])
        row = {"image": i, "applied": psnr(ra, gt), "ignored": psnr(rb, gt)}
        for name, mask in masks.items():
            row[f"{name}_applied"], row[f"{name}_ignored"] = psnr(ra[mask], gt[mask]), psnr(rb[mask], gt[mask])
        rows.append(row)
        gain = row["applied"] - row["ignored"]
        if best is None or gain > best[0]:
            best = (gain, ra, rb, gt, i)
        print(f"image {i}: whole {row['applied']:.2f} / {row['ignored']:.2f} dB; " + ", ".join(
            f"{n} {row[f'{n}_applied']:.2f} / {row[f'{n}_ignored']:.2f}" for n in REGIONS) + " (applied / ignored)")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0] if k != "image"}
    print("mean: " + ", ".join(f"{n} {mean[f'{n}_applied']:.2f} / {mean[f'{n}_ignored']:.2f}" for n in REGIONS)
          + f", whole {mean['applied']:.2f} / {mean['ignored']:.2f} dB")
    if args.png:
        picture(args.png, best[3], best[1], best[2])
        print(f"picture: test image {best[4]} ({best[0]:+.2f} dB) -> {args.png}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"applied": args.applied, "ignored": args.ignored, "per_image": rows, "mean": mean}, f, indent=1)


if __name__ == "__main__":
    main()
