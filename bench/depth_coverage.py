"""What few training views can show of the test views: the ceiling that depth cannot lift.

    python bench/depth_coverage.py                       # tabletop, 3 / 6 / all training views
    python bench/depth_coverage.py --data PATH --views 3 6 --test-every 3

With exact depth everywhere a radiance field knows the geometry, but a test pixel whose surface
point no training view sees still has no colour to learn. For each test pixel with depth, its
surface point (the pixel's ray at the ground-truth depth) is projected into every training view
chosen as ``--train-views N`` chooses them (:func:`radfield.data.views.farthest_point_views`);
the point counts as seen by a view when it lands inside the image, in front of the camera, and
within ``--tolerance`` (relative) of that view's own depth there (not occluded). Printed per view
count: the fraction of test pixels seen by at least one and by at least two training views, and
the PSNR of an image-based oracle that copies each seen pixel's colour from the training view
nearest in angle that sees it (pixels without depth: the background; unseen ones: the test
image's mean colour), the colour a perfect Lambertian reconstruction from those views could
reach. RGBA images are composited over white (training's default background). Needs depth
maps in both splits.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from runs import DATA  # this checkout first on sys.path

from radfield.cameras import image_rays, project  # noqa: E402
from radfield.data import load_scene  # noqa: E402
from radfield.data.scene import over_background  # noqa: E402
from radfield.data.views import farthest_point_views  # noqa: E402


def seen_by(train, view: int, points: torch.Tensor, tolerance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(n,)`` bool: does training view ``view`` see ``points`` ``(n, 3)``, and ``(n, 3)`` the
    colour there (nearest pixel)."""
    cams = train.cameras
    uv, z = project(cams, view, points)
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (z > 0) & (col >= 0) & (col < cams.width) & (row >= 0) & (row < cams.height)
    col, row = col.clamp(0, cams.width - 1), row.clamp(0, cams.height - 1)
    depth = train.depths[view, row, col].float()
    ok = inside & (depth > 0) & ((z - depth).abs() <= tolerance * depth)
    return ok, over_background(train.images[view, row, col].float() / 255.0, 1.0)


def coverage(train, test, views: list[int], test_index: list[int], tolerance: float) -> dict:
    n_pix = once = twice = 0
    se = []
    centres = train.cameras.centers
    for k in test_index:
        rays = image_rays(test.cameras, k)
        depth = test.depths[k].reshape(-1).float()
        has = depth > 0
        points = rays.origins + rays.directions * (depth / rays.z_per_t)[:, None]
        target = over_background(test.images[k].reshape(-1, test.images.shape[-1]).float() / 255.0, 1.0)
        counts = torch.zeros(len(points), dtype=torch.long)
        best = torch.full((len(points),), -2.0)
        colour = torch.where(has[:, None], target[has].mean(0), torch.ones(3))
        for v in views:
            ok, c = seen_by(train, v, points, tolerance)
            ok &= has
            counts += ok.long()
            # cosine between the test ray and the training view's ray to the point: nearest in angle
            to_view = torch.nn.functional.normalize(points - centres[v], dim=-1)
            cos = (to_view * rays.directions).sum(-1)
            better = ok & (cos > best)
            best = torch.where(better, cos, best)
            colour[better] = c[better]
        n_pix += int(has.sum())
        once += int(((counts >= 1) & has).sum())
        twice += int(((counts >= 2) & has).sum())
        se.append(float(((colour - target) ** 2).mean()))
    mse = sum(se) / len(se)
    return {"seen_by_1": once / n_pix, "seen_by_2": twice / n_pix, "oracle_psnr": -10 * math.log10(mse),
            "test_pixels_with_depth": n_pix}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA / "tabletop"))
    ap.add_argument("--views", nargs="+", default=["3", "6", "all"])
    ap.add_argument("--test-every", type=int, default=3, help="every N-th test image (bench/depth.py's)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative depth agreement for 'not occluded'")
    args = ap.parse_args()
    train, test = load_scene(args.data, "train"), load_scene(args.data, "test")
    if train.depths is None or test.depths is None:
        raise SystemExit(f"{args.data}: needs depth maps in the train and test splits")
    test_index = list(range(0, len(test), args.test_every))
    rows = {}
    for v in args.views:
        views = list(range(len(train))) if v == "all" else farthest_point_views(train.cameras.centers, int(v))
        names = [train.names[i].split("/")[-1] for i in views] if v != "all" else f"all {len(views)}"
        rows[v] = {"train_views": names, **coverage(train, test, views, test_index, args.tolerance)}
        r = rows[v]
        print(f"{v:>4} views: seen by >= 1: {100 * r['seen_by_1']:.1f} %, by >= 2: {100 * r['seen_by_2']:.1f} %, "
              f"oracle PSNR {r['oracle_psnr']:.2f} dB ({len(test_index)} test views)", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
