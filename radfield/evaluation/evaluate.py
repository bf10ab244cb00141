"""Evaluate a trained run on a split: render every image, score it, save the renders.

A split with masks (``SceneData.masks``, e.g. DTU's object masks) is scored on its unmasked
pixels only (masked PSNR; SSIM and LPIPS as :mod:`radfield.evaluation.metrics` says), and the
metrics say so (``masked``).

Runs trained with ``--pose-opt`` refined their training poses, so the given test poses no longer
sit exactly in the field's frame: each test view's pose is first fitted to the frozen field
(:func:`radfield.evaluation.localize.fit_pose`, ``train.pose_opt.test_fit_steps`` steps from the
given pose), as evaluations of pose-refining methods do, and the metrics say so (``pose_fit``,
with each image's fitted motion in ``per_image``).

Depth: where the split has reference depths (its depth maps, else a COLMAP model's sparse points
projected into each image, :func:`radfield.data.depth.with_depth` with ``auto``), each rendered
planar depth map is scored against them (:func:`radfield.evaluation.metrics.depth_errors`:
abs. rel. and RMSE over the pixels with depth), ``depth_reference`` names the reference, and a
depth-error map is saved beside the renders."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch
from torch import Tensor

from radfield.cameras import pixel_rays
from radfield.data import SceneData, load_scene_groups
from radfield.data.depth import with_depth
from radfield.errors import RadfieldError
from radfield.evaluation.metrics import depth_errors, lpips_fn, masked_prediction, psnr, psnr_uint8, ssim
from radfield.evaluation.localize import PoseFitOptions, fit_pose
from radfield.evaluation.plots import colorize_depth
from radfield.io import atomic_write, save_png
from radfield.poses.corrections import pose_errors
from radfield.rendering.backgrounds import background_color, ray_background
from radfield.rendering.images import render_image
from radfield.rendering.pipeline import render_samples
from radfield.training.checkpoint import load_run

APPEARANCE_PROTOCOLS = ("mean", "fit-left")
MASK_NOTE = ("scores on unmasked pixels only: masked PSNR; SSIM over windows centred on "
             "unmasked pixels; LPIPS with masked pixels set to the target")
FIT_OPTIONS = {"steps": 100, "rays_per_step": 2048, "lr": 1e-2}
"""Options of :func:`fit_appearance_left` under ``appearance="fit-left"``."""
DEPTH_REFERENCES = {"maps": "the split's depth maps", "sparse": "sparse SfM points (COLMAP)"}
DEPTH_ERROR_RANGE = 0.2
"""Depth-error maps colour ``|pred - ref| / ref`` from 0 (blue) to this (red); black: no reference."""


def fit_appearance_left(model, cameras, index: int, target: Tensor, background: Tensor,
                        steps: int = 100, rays_per_step: int = 2048, lr: float = 1e-2, seed: int = 0,
                        mask: Tensor | None = None) -> Tensor:
    """The held-out-appearance protocol of NeRF-W / nerfacto evaluations: starting from the mean
    embedding, fit an appearance code to the **left half** of image ``index`` (Adam on the L2
    loss of random left-half pixels, of its unmasked ones when an ``(H, W)`` bool ``mask`` is
    given; the network is frozen). Returns the code ``(k,)``; score the right half only."""
    h, w = cameras.height, cameras.width
    dev = background.device
    code = model.appearance_codes().detach().mean(0).clone().requires_grad_()
    opt = torch.optim.Adam([code], lr=lr)
    gen = torch.Generator(dev).manual_seed(seed)
    target = target.to(dev)
    used = None if mask is None else mask[:, : w // 2].nonzero().to(dev)  # (n_used, 2) row, col
    if used is not None and len(used) == 0:
        return code.detach()
    for _ in range(steps):
        if used is None:
            col = torch.randint(0, w // 2, (rays_per_step,), device=dev, generator=gen)
            row = torch.randint(0, h, (rays_per_step,), device=dev, generator=gen)
        else:
            row, col = used[torch.randint(0, len(used), (rays_per_step,), device=dev, generator=gen)].unbind(-1)
        rays = pixel_rays(cameras, torch.full_like(col, index), col, row)
        rays = rays.with_attrs(appearance=code.expand(rays_per_step, -1))
        with torch.no_grad():
            samples = model.sample(rays, training=False)
        out = render_samples(model, rays, samples, ray_background(model, rays, background))
        loss = ((out.rgb - target[row, col]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return code.detach()


def _score_image(model, data: SceneData, i: int, bg, lpips, out_dir: Path, save_renders: bool,
                 suffix: str = "", appearance: str = "mean", pose_fit: PoseFitOptions | None = None) -> dict:
    cams = data.cameras.to(bg.device)
    gt, mask = data.composited(i, bg.cpu()), data.mask(i)
    moved = {}
    if pose_fit is not None:
        fit = fit_pose(model, cams, i, gt, bg, pose_fit, mask)
        rot, dist = pose_errors(fit.c2w[None], cams.c2w[i:i + 1])
        moved = {"pose_fit_deg": float(rot), "pose_fit_translation": float(dist)}
        c2w = cams.c2w.clone()
        c2w[i] = fit.c2w
        cams = dataclasses.replace(cams, c2w=c2w)
    gt_depth = None if data.depths is None else data.depths[i]
    if appearance == "fit-left":
        code = fit_appearance_left(model, cams, i, gt, bg, mask=mask, **FIT_OPTIONS)
        r = render_image(model, cams, i, bg, appearance_code=code)
        half = gt.shape[1] // 2
        r = type(r)(r.rgb[:, half:], r.depth[:, half:], r.opacity[:, half:],
                    None if r.normal is None else r.normal[:, half:])
        gt, mask = gt[:, half:], None if mask is None else mask[:, half:]
        gt_depth = None if gt_depth is None else gt_depth[:, half:]
    else:
        r = render_image(model, cams, i, bg)
    name = Path(data.names[i]).stem + suffix
    depth = None if gt_depth is None else depth_errors(r.depth, gt_depth, mask)
    row = {"name": name, **image_scores(r.rgb, gt, mask, lpips),
           "depth_abs_rel": None if depth is None else depth["abs_rel"],
           "depth_rmse": None if depth is None else depth["rmse"], **moved}
    if save_renders:
        save_png(out_dir / f"{name}_rgb.png", r.rgb)
        save_png(out_dir / f"{name}_depth.png", colorize_depth(r.depth, opacity=r.opacity))
        if gt_depth is not None:
            save_png(out_dir / f"{name}_depth_error.png", depth_error_map(r.depth, gt_depth, mask))
        save_png(out_dir / f"{name}_opacity.png", r.opacity)
        if r.normal is not None:  # world-space normals as colours, (n + 1) / 2
            save_png(out_dir / f"{name}_normal.png", ((r.normal + 1) / 2).clamp(0, 1))
    return row


def depth_error_map(pred: Tensor, reference: Tensor, mask: Tensor | None = None) -> Tensor:
    """``(H, W, 3)`` colours of the relative depth error ``|pred - ref| / ref`` on the turbo
    map from 0 to :data:`DEPTH_ERROR_RANGE`; black where there is no reference depth (or the
    pixel is masked)."""
    has = reference > 0
    if mask is not None:
        has &= mask
    rel = (pred - reference).abs() / reference.clamp(min=1e-12)
    # colorize_depth leaves values <= 0 black: an exact 0 error is lifted to the bottom colour.
    return colorize_depth(torch.where(has, rel.clamp(min=1e-12), 0.0), near=0.0, far=DEPTH_ERROR_RANGE)


def image_scores(pred: Tensor, gt: Tensor, mask: Tensor | None, lpips) -> dict:
    """PSNR, PSNR(uint8), SSIM and LPIPS of one image, on its ``mask`` pixels when it has a mask
    (see :mod:`radfield.evaluation.metrics`). None where a score does not exist: every score of
    an image whose mask is empty, LPIPS without its weights, and SSIM when no 11 x 11 window fits
    (small scales of a multi-scale dataset) or none is centred on an unmasked pixel."""
    if mask is not None and not bool(mask.any()):
        return dict.fromkeys(("psnr", "psnr_uint8", "ssim", "lpips"))
    try:
        structural = ssim(pred, gt, mask=mask)
    except ValueError:  # the two cases of the docstring; the images themselves were checked
        structural = None
    return {"psnr": psnr(pred, gt, mask), "psnr_uint8": psnr_uint8(pred, gt, mask),
            "ssim": structural, "lpips": lpips(masked_prediction(pred, gt, mask), gt) if lpips else None}


def mean_scores(rows: list[dict]) -> dict:
    def mean(key):  # over the images that have the metric; None when none has it
        vals = [row[key] for row in rows if row[key] is not None]
        return float(sum(vals) / len(vals)) if vals else None

    return {"n_images": len(rows), "psnr": mean("psnr"), "psnr_uint8": mean("psnr_uint8"),
            "ssim": mean("ssim"), "lpips": mean("lpips"), "depth_abs_rel": mean("depth_abs_rel"),
            "depth_rmse": mean("depth_rmse")}


def load_for_evaluation(run_dir: str | Path, split: str = "test", device: str = "cpu"):
    """A trained run and what it is scored on: ``(config, model, groups, background)``, with
    ``groups`` the run's ``split`` (:func:`load_scene_groups`: one group, or a multi-scale
    dataset's scales) and ``background`` ``(3,)`` its evaluation background. Runs of models that
    render unseen scenes (PixelNeRF) are refused: they are scored with ``--scenes``."""
    config, model = load_run(run_dir, device)
    if model.multi_scene:
        raise RadfieldError(f"{run_dir}: {config.model} renders unseen scenes from their source views: "
                            f"radfield eval {run_dir} --scenes FOLDER [--sources 1,2,3]")
    groups = load_scene_groups(config.data.path, split, config.data.downscale, colmap_model=config.data.colmap_model)
    return config, model, groups, background_color(config.data.eval_background, device)


def evaluate_run(run_dir: str | Path, split: str = "test", device: str = "cpu",
                 save_renders: bool = True, progress: bool = True, every: int = 1,
                 appearance: str = "mean", model=None, tag: str | None = None,
                 fit_poses: bool | None = None) -> dict:
    """Render ``split``, compute PSNR / PSNR(uint8) / SSIM / LPIPS per image and their means,
    write ``RUN_DIR/metrics.json`` (and ``metrics_<split>.json``) and the renders to
    ``RUN_DIR/renders/<split>/``. LPIPS is None when its weights are not available locally.
    ``every = k`` scores every k-th image only (recorded in the metrics as ``every``).

    Multi-scale datasets are scored per scale (``per_scale``); the top-level means are over all
    scales' images, mip-NeRF's "average" column. Models with per-image appearance embeddings
    render held-out views with the mean embedding (``appearance="mean"``), or fit a code to the
    left half of each image and score the right half (``"fit-left"``,
    :func:`fit_appearance_left`); ``metrics.json`` records which. A split with masks is scored
    on its unmasked pixels only: ``masked`` is True and ``mask_note`` says how. Where the split
    has reference depths (see the module doc), ``depth_abs_rel`` / ``depth_rmse`` are the means
    over its images (per image in ``per_image``), ``depth_reference`` says what they are
    measured against, and ``renders/<split>/*_depth_error.png`` shows the relative error.

    ``model`` renders instead of the run's own (e.g. a baked MeRF,
    :func:`radfield.export.baked.load_baked`), on the run's data; its scores go to
    ``metrics_<tag>.json`` and its renders to ``RUN_DIR/renders/<split>_<tag>/`` (``metrics.json``
    keeps the run's own). ``fit_poses``
    (None: when the run refined its poses, ``train.pose_opt``): fit each view's pose to the
    frozen field before scoring it (module docstring); ``pose_fit`` says how, or is None."""
    if appearance not in APPEARANCE_PROTOCOLS:
        raise RadfieldError(f"unknown appearance protocol {appearance!r} "
                            f"(choose from: {', '.join(APPEARANCE_PROTOCOLS)})")
    run_dir = Path(run_dir)
    config, trained, groups, bg = load_for_evaluation(run_dir, split, device)
    model = trained if model is None else model
    groups = [with_depth(g, "auto", config.data.path) for g in groups]
    lpips = lpips_fn(device=device)
    pose_opt = config.train.pose_opt
    if fit_poses is None:
        fit_poses = pose_opt.enabled and pose_opt.test_fit_steps > 0
    pose_fit = PoseFitOptions(steps=max(pose_opt.test_fit_steps, 1)) if fit_poses else None
    out_dir = run_dir / "renders" / (split if tag is None else f"{split}_{tag}")
    jobs = [(g, i) for g in groups for i in range(0, len(g), every)]
    has_appearance = model.appearance_codes() is not None
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc=f"eval {split}", unit="img", file=sys.stderr)
    per_image, per_scale = [], {}
    for g in groups:
        suffix = f"_x{g.meta['scale']}" if len(groups) > 1 else ""
        rows = []
        for i in range(0, len(g), every):
            rows.append(_score_image(model, g, i, bg, lpips, out_dir, save_renders, suffix,
                                     appearance if has_appearance else "mean", pose_fit))
            if bar is not None:
                bar.update(1)
        per_image += rows
        if len(groups) > 1:
            per_scale[str(g.meta["scale"])] = mean_scores(rows)
    if bar is not None:
        bar.close()
    masked = any(g.masks is not None for g in groups)
    reference = groups[0].meta.get("depth_source")
    metrics = {"split": split, **mean_scores(per_image), "masked": masked,
               "depth_reference": DEPTH_REFERENCES.get(reference),
               "mask_note": MASK_NOTE if masked else None,
               "lpips_note": None if lpips else "unavailable: LPIPS weights not present locally",
               "eval_background": config.data.eval_background, "every": every,
               "appearance": ({"mean": "mean embedding",
                               "fit-left": "code fitted on the left half, right half scored"}[appearance]
                              if has_appearance else None),
               "pose_fit": (None if pose_fit is None else
                            f"each view's pose fitted to the frozen field before scoring (a search of "
                            f"turns within {pose_fit.search_deg:g} degrees, then {pose_fit.steps} "
                            f"Levenberg-Marquardt steps of {pose_fit.rays_per_step} pixels over an image "
                            f"pyramid, from the given pose)"),
               "per_scale": per_scale or None, "per_image": per_image}
    scored = [r for r in per_image if r["psnr"] is not None]
    worst = min(scored, key=lambda r: r["psnr"]) if scored else None
    metrics["worst"] = None if worst is None else {"name": worst["name"], "psnr": worst["psnr"]}
    names = ("metrics.json", f"metrics_{split}.json") if tag is None else (f"metrics_{tag}.json",)
    if tag is not None:
        metrics["model"] = tag
    for name in names:
        with atomic_write(run_dir / name) as tmp:
            tmp.write_text(json.dumps(metrics, indent=1))
    return metrics


def format_table(metrics: dict) -> str:
    fmt = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    has_depth = metrics.get("depth_reference") is not None

    def depth_cols(row: dict) -> str:
        return f"{fmt(row.get('depth_abs_rel'), 4):>8}{fmt(row.get('depth_rmse'), 4):>8}" if has_depth else ""

    lines = [f"{'image':<24}{'PSNR':>8}{'PSNR8':>8}{'SSIM':>8}{'LPIPS':>8}"
             + (f"{'AbsRel':>8}{'RMSE':>8}" if has_depth else "")]
    for row in metrics["per_image"]:
        lines.append(f"{row['name']:<24}{fmt(row['psnr']):>8}{fmt(row['psnr_uint8']):>8}"
                     f"{fmt(row['ssim'], 4):>8}{fmt(row['lpips'], 4):>8}{depth_cols(row)}")
    lines.append(f"{'mean (' + str(metrics['n_images']) + ' images)':<24}{fmt(metrics['psnr']):>8}"
                 f"{fmt(metrics['psnr_uint8']):>8}{fmt(metrics['ssim'], 4):>8}{fmt(metrics['lpips'], 4):>8}"
                 f"{depth_cols(metrics)}")
    if metrics.get("worst") and metrics["n_images"] > 1:  # one bad view hides in a mean
        lines.append(f"{'worst: ' + metrics['worst']['name']:<24}{fmt(metrics['worst']['psnr']):>8}")
    for scale, m in (metrics.get("per_scale") or {}).items():
        lines.append(f"{'scale 1/' + scale + ' (' + str(m['n_images']) + ')':<24}{fmt(m['psnr']):>8}"
                     f"{fmt(m['psnr_uint8']):>8}{fmt(m['ssim'], 4):>8}{fmt(m['lpips'], 4):>8}")
    if metrics.get("masked"):
        lines.append(f"masked: {metrics['mask_note']}")
    if metrics.get("appearance"):
        lines.append(f"appearance: {metrics['appearance']} for held-out views")
    if metrics.get("pose_fit"):
        lines.append(f"poses: {metrics['pose_fit']}")
    if has_depth:
        lines.append(f"depth: planar depth against {metrics['depth_reference']} (AbsRel: mean "
                     "|d - ref| / ref; RMSE in scene units)")
    return "\n".join(lines)
