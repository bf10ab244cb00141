"""A capture "as Instant-NGP's tools write it", made from ../shared/data/garden: the pinhole views
re-rendered through an OpenCV lens (k1 = 0.05, k2 = -0.08 by default) and written as Instant-NGP
transforms files with ``camera_model: OPENCV``, the coefficients and ``aabb_scale: 4``.

    python bench/lens_capture.py OUT [--k1 0.05] [--k2 -0.08] [--ignore] [--portrait]

Each distorted pixel centre ``(u, v)`` is undistorted (radfield.lens, Newton) to the pinhole
point it sees and the garden image is sampled there (bilinear). With ``k1 > 0`` every source
point lies inside the pinhole image, so no pixel is invented. ``--ignore`` writes the same images
with ``camera_model: PINHOLE``: the distortion is ignored, as by a reader that drops it.
Splits are the garden's own (``transforms_train.json``, ``transforms_test.json``): the test views
lie on a circle, the train views on the hemisphere. ``--portrait`` writes the capture as a phone's
comes out of Instant-NGP's ``colmap2nerf.py`` instead: one ``transforms.json`` with every frame
(radfield holds out every 8th), JPEG photos cropped to a 200 x 300 portrait (the lens centre moved
with the crop), ``./images/`` paths and a ``sharpness`` per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GARDEN = ROOT.parent / "shared" / "data" / "garden"

from radfield.lens import undistorted_directions  # noqa: E402


def distort_image(image: np.ndarray, f: float, cx: float, cy: float, k1: float, k2: float) -> np.ndarray:
    h, w = image.shape[:2]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5,
                          indexing="ij")
    n = u.numel()
    coeffs = torch.tensor([[k1, k2, 0.0, 0.0, 0.0, 0.0]], dtype=torch.float64).expand(n, 6)
    d = undistorted_directions(coeffs, torch.zeros(n, dtype=torch.bool), ((u - cx) / f).reshape(-1),
                               ((v - cy) / f).reshape(-1))
    su, sv = f * d[:, 0] + cx, f * d[:, 1] + cy  # the pinhole pixel each distorted pixel sees
    assert float(su.min()) >= 0 and float(su.max()) <= w and float(sv.min()) >= 0 and float(sv.max()) <= h
    grid = torch.stack([2 * su / w - 1, 2 * sv / h - 1], -1).reshape(1, h, w, 2).float()
    src = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


PORTRAIT_COLUMNS = (50, 250)
"""The columns of garden's 300 x 300 views kept by ``--portrait``."""


def make(out: Path, k1: float = 0.05, k2: float = -0.08, ignore: bool = False, portrait: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if portrait:
        return _portrait(out, k1, k2, ignore)
    for split in ("train", "test"):
        meta = json.loads((GARDEN / f"transforms_{split}.json").read_text())
        f, cx, cy = meta["fl_x"], meta["cx"], meta["cy"]
        frames = []
        for frame in meta["frames"]:
            name = Path(frame["file_path"]).name
            image_out = out / "images" / f"{split}_{name}.png"
            if not image_out.exists():
                image_out.parent.mkdir(parents=True, exist_ok=True)
                src = iio.imread(GARDEN / (frame["file_path"] + ".png"))
                iio.imwrite(image_out, distort_image(src, f, cx, cy, k1, k2))
            frames.append({"file_path": f"images/{split}_{name}.png", "transform_matrix": frame["transform_matrix"]})
        lens = {"camera_model": "PINHOLE"} if ignore else {"camera_model": "OPENCV", "k1": k1, "k2": k2,
                                                           "p1": 0.0, "p2": 0.0}
        top = {"w": meta["w"], "h": meta["h"], "fl_x": f, "fl_y": meta["fl_y"], "cx": cx, "cy": cy, **lens,
               "aabb_scale": 4, "frames": frames}
        (out / f"transforms_{split}.json").write_text(json.dumps(top, indent=1))
    return out


def _portrait(out: Path, k1: float, k2: float, ignore: bool) -> Path:
    """``make(..., portrait=True)``: the split files' views in one ``transforms.json``."""
    split_dir = make(out / "splits", k1, k2, ignore)
    c0, c1 = PORTRAIT_COLUMNS
    frames, top = [], {}
    for split in ("train", "test"):
        meta = json.loads((split_dir / f"transforms_{split}.json").read_text())
        top = {k: v for k, v in meta.items() if k != "frames"}
        for i, frame in enumerate(meta["frames"]):
            name = Path(frame["file_path"]).stem + ".jpg"
            image_out = out / "images" / name
            if not image_out.exists():
                image_out.parent.mkdir(parents=True, exist_ok=True)
                iio.imwrite(image_out, iio.imread(split_dir / frame["file_path"])[:, c0:c1, :3], quality=95)
            frames.append({"file_path": f"./images/{name}", "sharpness": 100.0 + i,
                           "transform_matrix": frame["transform_matrix"]})
    top.update(w=c1 - c0, cx=top["cx"] - c0, frames=frames)
    (out / "transforms.json").write_text(json.dumps(top, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--k1", type=float, default=0.05)
    ap.add_argument("--k2", type=float, default=-0.08)
    ap.add_argument("--ignore", action="store_true")
    ap.add_argument("--portrait", action="store_true", help="one transforms.json of 200 x 300 JPEG photos")
    args = ap.parse_args()
    print(make(args.out, args.k1, args.k2, args.ignore, args.portrait))


if __name__ == "__main__":
    main()
