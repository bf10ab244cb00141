"""Pose estimation of one image against a trained field (iNeRF, Yen-Chen et al. 2021), and the
test-view pose fitting of pose-refining runs' evaluations.

The field is frozen and the camera's intrinsics fixed; its pose moves by twists ``delta``
applied about a **pivot** (:mod:`radfield.poses.se3`):

``c2w <- c2w P Exp(xi) P^-1``, ``xi = (size * delta[:3], delta[3:])``, ``P = [I | (0, 0, -depth)]``

with the translation in units of the scene's ``size`` and ``depth`` the median depth of the
start's render: rotations turn the camera about the point on its axis it looks at, rather than
about its own centre. (About the centre, a rotation shifts the image almost as a sideways
translation does: the loss has a long, flat valley along their mix. Measured with Adam on the
built-in scene from 10 degrees off: 300 steps ended 3.5 degrees and 6 % of the scene away.)

The loss is the mean squared error of random pixels against their rays rendered by
:func:`radfield.rendering.differentiable.render_rays_grad`. Each step is a Levenberg-Marquardt
step on a fresh batch of pixels, linearised at the current pose:

* residuals ``r`` ``(3 m,)`` of ``m`` pixels and their Jacobian ``J = dr / d delta`` ``(3 m, 6)``,
  exactly: the colour of a ray depends on its own origin and direction only, so three backward
  passes (one per channel) of the summed colours give every ray's ``d rgb / d (o, d)``; the
  rays' own derivatives at ``delta = 0`` are ``do / d delta = R [size I | hat(p)]`` and
  ``dd / d delta = R [0 | -hat(d_cam)]`` (``R`` the camera's rotation, ``p`` the pivot,
  ``d_cam`` the ray's unit direction in camera axes: ``Exp(xi) y = y + rho + phi x y`` to first
  order);
* ``(J^T J + lambda diag(J^T J)) delta = -J^T r`` (Marquardt), shortened to a trust region: a
  rotation of at most ``radius`` and a translation of at most ``radius`` times the pivot's depth,
  ``radius`` starting at each level at ``f / fx`` radians (the angle of ``f`` pixels, the blur's
  size at shrink factor ``f``, below), doubled after a taken step (up to ``max_radius`` times that) and halved
  after a refused one (measured: without it, the first Gauss-Newton step from 10 degrees off on a
  trained Instant-NGP turned the camera 30 degrees away, to a view of empty background whose loss
  was lower than the misaligned start's, and never came back);
* the samples: those of the model's sampler widened by the trust region's reach at the
  pivot (:class:`radfield.rendering.differentiable.Sampling` ``widen``). An occupancy grid puts
  no samples on rays that miss the scene, so with the ``t`` of the samples held fixed only rays
  already on the scene have a gradient, and it pushes the scene out of view (measured: from 10
  degrees off on a trained Instant-NGP, every step drifted further, to a view of empty
  background); rays near the scene need samples there for the gradient that pulls it in;
* the step is taken when the batch's loss drops, else ``lambda`` grows 4 times and the step is
  tried again (at most 6 tries); after a taken step ``lambda`` shrinks 3 times.

First a **rotation search** (:func:`search_rotation`, ``search_deg``): a turn about the camera's
centre only remaps the image, so one wide render of the start scores a grid of turns within 15
degrees, and the best is taken when it halves the start's error. (Measured on a trained
Instant-NGP of tabletop, 200 x 200, from 10 degrees off: without it, the blurred loss fell along
a path to a wrong pose, 20-30 degrees and 60-90 % of the scene's size away (the bench of
2026-12-02: 5 of 5 views diverged); the loss there was truly lower than the start's at every pyramid level, so no step
rule could help.)

Coarse to fine in the image (``pyramid``, :func:`pyramid_factors`): the steps are split evenly
over the image shrunk by each factor ``f`` in turn, the largest first. A shrunk pixel is the mean
of an ``f x f`` block of the image, and its render the mean of the block's ``f^2`` pixel rays
(the same blur on both sides: a field sampled at one ray per shrunk pixel would stay sharp, and
its linearisation hold only within a pixel; the block's mean is estimated from jittered rays,
below). The blurred loss is smooth over ``f`` pixels, so a
start several degrees off still slides into place (iNeRF's own remedy is to sample near
keypoints; the pyramid needs no detector). Measured on a trained Instant-NGP at 48 x 48 from 10
degrees off, before the blur: the steps stalled at the start's loss.

A shrunk pixel is rendered as ``min(f, block_rays)^2`` jittered rays, not all ``f^2`` of its
pixels (a level costs the same rays whatever ``f``, and each step sees more of the image).

Example: ``fit_pose(model, cams, 3, image, white)`` starts from ``cams.c2w[3]`` and returns the
fitted ``(3, 4)`` pose and the MSE of the whole image rendered from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from radfield.cameras import Cameras, Rays, generate_rays, image_rays
from radfield.data import SceneData, load_cameras, load_scene_groups
from radfield.data.files import check_rigid, one_line, read_image
from radfield.errors import MissingSplitError, RadfieldError
from radfield.poses.corrections import pose_errors, to_world
from radfield.poses.se3 import compose, hat, invert, perturb, so3_exp
from radfield.rendering.backgrounds import background_color
from radfield.rendering.differentiable import Sampling, frozen, render_images, render_rays_grad
from radfield.training.checkpoint import load_run


@dataclass
class PoseFitOptions:
    """Options of :func:`fit_pose`.

    Attributes:
        steps: Levenberg-Marquardt steps in all (split over the pyramid's levels).
        rays_per_step: random pixels per step.
        pyramid: image shrink factors, coarse to fine (those larger than the image's smaller
            side are skipped); empty: :func:`pyramid_factors`' default.
        size: the scene's size translations are measured in (0: the model's,
            :attr:`radfield.models.SceneInfo.size`).
        seed: the pixels' random generator.
    """

    steps: int = 60
    rays_per_step: int = 2048
    """(A level shrinking ``f`` times renders ``rays_per_step / f^2`` blocks of ``f^2`` rays, at
    least 16 blocks.)"""
    pyramid: tuple[int, ...] = ()
    size: float = 0.0
    seed: int = 0
    block_rays: int = 4
    """Rays per side of a shrunk pixel (block): a block of ``f x f`` pixels is rendered as the mean
    of ``min(f, block_rays)^2`` rays, one at a random place in each cell of a grid over it (at
    the pixels' centres when ``f <= block_rays``)."""
    max_radius: float = 2.0
    """The trust region grows up to this many times its first radius (the blur's angle)."""
    search_deg: float = 15.0
    """Before the fit, the rotation about the camera's centre within this many degrees (about
    each axis) that best matches the image is searched (:func:`search_rotation`); 0: none."""


@dataclass
class PoseFit:
    """``c2w`` ``(3, 4)`` the fitted pose; ``mse`` of the whole image rendered from it;
    ``losses`` the batch loss after each step; ``path`` the pose ``(3, 4)`` after each step."""

    c2w: Tensor
    mse: float
    losses: list[float]
    path: list[Tensor]


def shrink(image: Tensor, factor: int) -> Tensor:
    """``(H, W, C)`` -> ``(H // f, W // f, C)``, each ``f x f`` block averaged (the last rows and
    columns that do not fill a block are dropped, as :meth:`Cameras.downscaled` does)."""
    if factor == 1:
        return image
    return F.avg_pool2d(image.permute(2, 0, 1)[None], factor)[0].permute(1, 2, 0)


def pivot_depth(model, camera: Cameras, background: Tensor | None, factor: int = 4) -> float:
    """The median planar depth of the pixels with opacity above 0.5 in a no-grad render of the
    one-camera ``camera`` shrunk ``factor`` times; the distance to the scene box's centre when
    no pixel is that opaque."""
    small = camera.downscaled(max(1, min(factor, camera.width, camera.height)))
    out = render_images(model, small, background)
    solid = out.depth[out.opacity > 0.5]
    if solid.numel():
        return float(solid.median())
    centre = model.scene.centre.to(camera.device)
    return float((camera.c2w[0, :, 3] - centre).norm())


def _linearise(model, rays: Rays, background: Tensor | None, rot: Tensor, pivot: Tensor,
               size: float, sampling: Sampling) -> tuple[Tensor, Tensor]:
    """``(rgb (n, 3), J (n, 3, 6))``: the rays' colours and their derivatives with respect to
    ``delta`` (module docstring)."""
    o = rays.origins.detach().requires_grad_()
    d = rays.directions.detach().requires_grad_()
    rgb = render_rays_grad(model, Rays(o, d, rays.z_per_t, rays.attrs), background, sampling).rgb
    d_cam = d.detach() @ rot  # R^T d, row form
    do = torch.cat([size * rot, rot @ hat(pivot)], -1)  # (3, 6)
    dd = torch.cat([torch.zeros(len(rays), 3, 3, device=o.device), -(rot @ hat(d_cam))], -1)  # (n, 3, 6)
    rows = []
    for c in range(3):
        g_o, g_d = torch.autograd.grad(rgb[:, c].sum(), [o, d], retain_graph=c < 2)
        rows.append(g_o @ do + (g_d[:, None, :] @ dd)[:, 0])
    return rgb.detach(), torch.stack(rows, 1)


def pyramid_factors(options: PoseFitOptions, width: int, height: int, focal: float = 0.0) -> list[int]:
    """The shrink factors of :func:`fit_pose`: ``options.pyramid``, or by default the powers of
    two from the largest that leaves at least 8 pixels on the image's smaller side down to 1.
    After a rotation search (``options.search_deg``; ``focal`` the camera's in pixels), the
    largest is at most twice the search's last grid step in pixels (the error left to fit):
    larger blurs only lose what the search found (measured: from 1.5 degrees after the search,
    a 16-times shrunk tabletop view led the fit to 6 degrees off before the finer levels pulled
    it back). Examples: 200 x 200 -> 16, 8, 4, 2, 1; 32 x 24 -> 2, 1; 200 x 200, ``focal`` 278,
    a 15-degree search -> 4, 2, 1."""
    if options.pyramid:
        return [f for f in options.pyramid if f <= min(width, height)] or [1]
    top = max(min(width, height) // 8, 1).bit_length() - 1
    if options.search_deg > 0 and focal > 0:
        left = 2 * focal * math.radians(options.search_deg) / 32
        top = min(top, max(int(left), 1).bit_length() - 1)
    return [2 ** k for k in range(top, -1, -1)]


def _turned_colours(wide: Tensor, wide_cam: Cameras, d_cam: Tensor, turns: Tensor) -> tuple[Tensor, Tensor]:
    """``(colours (k, n, 3), inside (k, n))``: the wide image ``(Hw, Ww, 3)`` of ``wide_cam``
    (a pinhole with the start's pose) read bilinearly along the camera-axis directions ``d_cam``
    ``(n, 3)`` of a camera turned by each of ``turns`` ``(k, 3, 3)`` about its centre."""
    dirs = d_cam @ turns.transpose(1, 2)  # (k, n, 3): R_k d
    z = (-dirs[..., 2]).clamp(min=1e-6)
    u = wide_cam.cx[0] + wide_cam.fx[0] * dirs[..., 0] / z
    v = wide_cam.cy[0] - wide_cam.fy[0] * dirs[..., 1] / z
    grid = torch.stack([2 * u / wide_cam.width - 1, 2 * v / wide_cam.height - 1], -1)  # (k, n, 2)
    inside = (dirs[..., 2] < 0) & (grid.abs() <= 1).all(-1)
    img = wide.permute(2, 0, 1)[None].expand(len(turns), -1, -1, -1)
    colours = F.grid_sample(img, grid[:, :, None], align_corners=False, padding_mode="border")[..., 0]
    return colours.permute(0, 2, 1), inside


def search_rotation(model, one: Cameras, target: Tensor, background: Tensor | None, reach_deg: float,
                    mask: Tensor | None = None, pixels: int = 32) -> tuple[Tensor, float]:
    """``(turn (3, 3), angle in degrees)``: the rotation about the camera's centre, within
    ``reach_deg`` of each axis, whose view best matches ``target`` ``(H, W, 3)`` at about
    ``pixels`` pixels on the image's smaller side; the identity unless its error is at most half
    the start's (on a field that renders the image poorly, no turn is to be trusted: measured on a
    field trained 4 steps, a 24-degree turn matched more than 20 % better than the true pose).

    A rotation about the centre only remaps the image, so one render serves every candidate:
    the start's pose rendered with a pinhole wide enough to hold the view turned by ``reach_deg``
    (twice the pixels, area-averaged), read bilinearly along each candidate's pixel directions
    (a homography, and through the lens, if any). The candidates: a grid of rotation vectors
    ``(tilt, pan, roll)`` of ``reach / 8`` steps, then one of quarter steps around the best.
    Pixels that a candidate's view does not see in the wide render count as the worst error
    (1), so a candidate cannot win by looking away. (This is the basin a Gauss-Newton fit
    lacks: turned 10 degrees, a 200-pixel view moves by a quarter of its width, and the blurred
    loss falls toward a wrong pose, measured on a trained Instant-NGP.)"""
    dev = one.device
    factor = max(1, min(one.width, one.height) // pixels)
    small_cam = one.downscaled(factor)
    small = shrink(target.to(dev).float(), factor).reshape(-1, 3)
    h, w = small_cam.height, small_cam.width
    rays = image_rays(small_cam, 0)
    d_cam = rays.directions @ one.c2w[0, :, :3]  # R^T d, row form
    used = torch.ones(h * w, dtype=torch.bool, device=dev)
    if mask is not None:
        used = shrink(mask.to(dev)[..., None].float(), factor).reshape(-1) == 1
    reach = math.radians(reach_deg)
    half = [min(math.atan(float((d_cam[:, k] / -d_cam[:, 2]).abs().max())) + 1.5 * reach, math.radians(75))
            for k in (0, 1)]  # the wide view's half angles
    focal = 2 * float(small_cam.fx[0] * small_cam.fy[0]) ** 0.5  # twice the pixels, averaged in 2 x 2
    ww, wh = (min(2 * math.ceil(focal * math.tan(a)), 512) for a in half)
    wide_cam = replace(one, fx=one.fx.new_tensor([ww / 2 / math.tan(half[0])]),
                       fy=one.fy.new_tensor([wh / 2 / math.tan(half[1])]), cx=one.cx.new_tensor([ww / 2]),
                       cy=one.cy.new_tensor([wh / 2]), width=ww, height=wh, lens=None)
    wide = shrink(render_images(model, wide_cam, background).rgb[0], 2)
    wide_cam = wide_cam.downscaled(2)
    target_used = small[used]

    def errors(phis: Tensor) -> Tensor:
        out = []
        for chunk in phis.split(256):
            colours, inside = _turned_colours(wide, wide_cam, d_cam[used], so3_exp(chunk))
            err = ((colours - target_used) ** 2).mean(-1).where(inside, torch.ones((), device=dev))
            out.append(err.mean(-1))
        return torch.cat(out)

    def grid(centre: Tensor, step: float, n: int) -> Tensor:
        k = torch.arange(-n, n + 1, device=dev, dtype=torch.float32) * step
        return torch.stack(torch.meshgrid(k, k, k, indexing="ij"), -1).reshape(-1, 3) + centre

    best = torch.zeros(3, device=dev)
    start_error = float(errors(best[None])[0])
    for step, n in ((reach / 8, 8), (reach / 32, 4)):
        phis = grid(best, step, n)
        err = errors(phis)
        best, best_error = phis[err.argmin()], float(err.min())
    if best_error > 0.5 * start_error:  # not clearly better: keep the start
        return torch.eye(3, device=dev), 0.0
    return so3_exp(best), math.degrees(float(best.norm()))


def fit_pose(model, cameras: Cameras, index: int, target: Tensor, background: Tensor | None,
             options: PoseFitOptions = PoseFitOptions(), mask: Tensor | None = None) -> PoseFit:
    """Fit the pose of camera ``index`` of ``cameras`` (its start) to ``target`` ``(H, W, 3)``
    float in [0, 1] (the camera's image size), the model frozen (module docstring).
    ``background`` ``(3,)``: what the image shows behind the scene; ``mask`` ``(H, W)`` bool: the
    pixels to fit (None: all; at a pyramid level, the blocks of used pixels only)."""
    dev = cameras.device
    one = cameras[index]
    size = options.size or model.scene.size
    gen = torch.Generator(dev).manual_seed(options.seed)
    target = target.to(dev).float()
    factors = pyramid_factors(options, one.width, one.height, float(one.fx[0]))
    pivot = torch.zeros(3, device=dev)
    losses: list[float] = []
    path: list[Tensor] = []
    c2w = one.c2w[0].detach().clone()
    with frozen(model):
        if options.search_deg > 0:
            turn, _ = search_rotation(model, one, target, background, options.search_deg, mask)
            c2w = torch.cat([c2w[:, :3] @ turn, c2w[:, 3:]], -1)
            one = replace(one, c2w=c2w[None])
        pivot[2] = -pivot_depth(model, one, background, max(factors))
        to_pivot = torch.cat([torch.eye(3, device=dev), pivot[:, None]], -1)
        from_pivot = invert(to_pivot)
        lam = 1e-3
        for level, factor in enumerate(factors):
            image = shrink(target, factor)
            h, w = image.shape[:2]
            used = None
            if mask is not None:  # the blocks whose every pixel is used
                used = (shrink(mask.to(dev)[..., None].float(), factor) == 1).reshape(-1).nonzero()[:, 0]
                if len(used) == 0:
                    continue
            # a block's colour is the mean of its factor^2 pixel rays (the image is shrunk alike)
            side = min(factor, options.block_rays)  # rays per block side
            n_blocks = max(options.rays_per_step // side ** 2, 16)
            reach = factor / float(one.fx[0])  # the blur's angle: the trust region's first radius
            radius, depth = reach, -float(pivot[2])
            sampling = Sampling(widen=reach * depth)
            sub = torch.arange(side, device=dev, dtype=torch.float32)
            sub_row, sub_col = (x.reshape(-1) for x in torch.meshgrid(sub, sub, indexing="ij"))
            for _ in range(options.steps // len(factors) + (level < options.steps % len(factors))):
                flat = torch.randint(0, h * w if used is None else len(used), (n_blocks,), device=dev,
                                     generator=gen)
                flat = flat if used is None else used[flat]
                pixels = image[flat // w, flat % w]  # (n_blocks, 3)
                # side^2 rays per block: the cells' centres when they are its pixels, else one at a
                # random place in each cell of a side x side grid
                jitter = (torch.rand(2, n_blocks, side * side, device=dev, generator=gen) if side < factor
                          else torch.full((2, n_blocks, side * side), 0.5, device=dev))
                rows = (((flat // w)[:, None] * side + sub_row + jitter[0]) * (factor / side)).reshape(-1)
                cols = (((flat % w)[:, None] * side + sub_col + jitter[1]) * (factor / side)).reshape(-1)

                def block_colours(rgb: Tensor) -> Tensor:
                    return rgb.reshape(n_blocks, side * side, *rgb.shape[1:]).mean(1)

                def batch_rays(pose: Tensor) -> Rays:
                    return generate_rays(replace(one, c2w=pose[None]), torch.zeros(len(rows), dtype=torch.long,
                                                                                 device=dev), cols, rows)

                with torch.enable_grad():
                    rgb, jac = _linearise(model, batch_rays(c2w), background, c2w[:, :3], pivot, size,
                                          sampling)
                r = (block_colours(rgb) - pixels).reshape(-1)
                jac = block_colours(jac).reshape(-1, 6)
                loss = float((r * r).mean())
                a, g = jac.T @ jac, jac.T @ r
                for _ in range(6):
                    delta = torch.linalg.solve(a + lam * torch.diag(a.diagonal() + 1e-12), -g)
                    xi = torch.cat([delta[:3] * size, delta[3:]])
                    xi = xi / max(1.0, float(xi[3:].norm()) / radius, float(xi[:3].norm()) / (radius * depth))
                    cand = compose(perturb(compose(c2w, to_pivot), xi), from_pivot)
                    with torch.no_grad():
                        rgb = block_colours(render_rays_grad(model, batch_rays(cand), background, sampling).rgb)
                    new = float(((rgb - pixels) ** 2).mean())
                    if new < loss:
                        c2w, loss = cand, new
                        lam, radius = max(lam / 3, 1e-7), min(2 * radius, options.max_radius * reach)
                        break
                    lam, radius = min(lam * 4, 1e7), max(radius / 2, reach / 16)
                losses.append(loss)
                path.append(c2w)
        with torch.no_grad():
            fitted = replace(one, c2w=c2w[None])
            err = ((render_images(model, fitted, background).rgb[0] - target) ** 2).mean(-1)
            mse = float(err.mean() if mask is None else err[mask.to(dev)].mean())
    return PoseFit(c2w, mse, losses, path)


# ------------------------------------------------------------------- `radfield localize`

def _read_matrix(text: str) -> np.ndarray:
    """``(4, 4)`` float64 pose from ``FILE.json``: a 3 x 4 or 4 x 4 matrix, or an object with one
    under ``transform_matrix`` or ``c2w``; RadfieldError naming the file otherwise."""
    path = Path(text)
    if not path.is_file():
        raise RadfieldError(f"{text}: no such pose file (a JSON 3x4 or 4x4 camera-to-world matrix, "
                            "or SPLIT:INDEX of the run's dataset)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RadfieldError(f"{path}: unreadable JSON ({one_line(exc)})") from None
    if isinstance(doc, dict):
        doc = doc.get("transform_matrix", doc.get("c2w"))
    try:
        m = np.asarray(doc, dtype=np.float64)
    except (TypeError, ValueError):
        m = np.zeros(0)
    if m.shape == (3, 4):
        m = np.concatenate([m, [[0.0, 0.0, 0.0, 1.0]]])
    if m.shape != (4, 4):
        raise RadfieldError(f"{path}: expected a 3x4 or 4x4 camera-to-world matrix "
                            "(or an object with transform_matrix)")
    return check_rigid(m, str(path))


def read_pose(text: str, run_path: str, downscale: int, normalization: dict | None,
              colmap_model: str | None = None) -> tuple[Tensor, Cameras | None]:
    """``(c2w (3, 4) in the scene's coordinates, cameras or None)`` of a pose argument:
    ``SPLIT:INDEX`` (image INDEX of the run's dataset split SPLIT, with its camera) or a pose file
    in the dataset's own world (its normalisation applied)."""
    split, sep, index = text.partition(":")
    if sep and index.isdigit() and not Path(text).exists():
        try:
            cams = load_cameras(run_path, split, downscale, colmap_model=colmap_model).cameras
        except MissingSplitError:
            raise RadfieldError(f"{text}: the run's dataset has no {split} split") from None
        if int(index) >= len(cams):
            raise RadfieldError(f"{text}: the {split} split has {len(cams)} images")
        return cams.c2w[int(index)].clone(), cams[int(index)]
    m = torch.from_numpy(_read_matrix(text)[:3]).float()
    if normalization:
        m[:, 3] = (m[:, 3] - torch.tensor(normalization["center"])) * float(normalization["scale"])
    return m, None


def image_camera(cams: Cameras, width: int, height: int, where: str) -> Cameras:
    """The first of ``cams``' intrinsics (and lens) scaled to an image of ``width x height``:
    the image must have the cameras' aspect (within half a pixel)."""
    one = cams[0]
    s = width / one.width
    if abs(one.height * s - height) > 0.5:
        raise RadfieldError(f"{where}: {width}x{height} does not have the aspect of the run's cameras "
                            f"({one.width}x{one.height}); give --init SPLIT:INDEX for a camera of its own")
    return Cameras(one.c2w, one.fx * s, one.fy * s, one.cx * s, one.cy * s, width, height, {}, one.lens)


def nearest_view(image: Tensor, data: SceneData, background: Tensor) -> int:
    """The training image most like ``image`` ``(H, W, 3)`` (both shrunk to 16 x 16 by area)."""
    def small(img: Tensor) -> Tensor:
        return F.interpolate(img.permute(2, 0, 1)[None], size=(16, 16), mode="area")[0]

    target = small(image.cpu())
    errors = [float(((small(data.composited(i, background.cpu())) - target) ** 2).mean()) for i in range(len(data))]
    return int(np.argmin(errors))


def localize_image(run_dir: str | Path, image_path: str | Path, init: str | None = None,
                   gt: str | None = None, options: PoseFitOptions = PoseFitOptions(),
                   device: str = "cpu") -> dict:
    """Estimate the pose of ``image_path`` against the trained run ``run_dir``
    (:func:`fit_pose`): from ``init`` (``SPLIT:INDEX`` or a pose file, see :func:`read_pose`),
    else from the training view most like the image. RGBA images are composited over the run's
    evaluation background. Returns ``c2w`` (4 x 4, the dataset's world), ``mse``, ``psnr``,
    ``start_psnr``, ``start`` (how the start was chosen) and, with ``gt``, ``rotation_error_deg``,
    ``translation_error`` (world units) and ``translation_error_fraction`` (of the scene's size)."""
    config, model = load_run(run_dir, device)
    path, data_path = Path(image_path), config.data.path
    norm = model.scene.meta.get("normalization")
    bg = background_color(config.data.eval_background, device)
    pixels = torch.from_numpy(read_image(path)).float() / 255.0
    if pixels.shape[-1] == 4:
        pixels = pixels[..., :3] * pixels[..., 3:] + bg.cpu() * (1 - pixels[..., 3:])
    height, width = pixels.shape[:2]
    read = lambda text: read_pose(text, data_path, config.data.downscale, norm,  # noqa: E731
                                  config.data.colmap_model)
    if init is not None:
        c2w, own = read(init)
        start = f"--init {init}"
    else:
        train = load_scene_groups(data_path, "train", config.data.downscale, colmap_model=config.data.colmap_model)[0]
        k = nearest_view(pixels, train, bg)
        c2w, own, start = train.cameras.c2w[k].clone(), train.cameras[k], f"nearest training view {k}"
    if own is not None and (own.width, own.height) != (width, height):
        own = None
    cams = own or image_camera(load_cameras(data_path, "train", config.data.downscale,
                                            colmap_model=config.data.colmap_model).cameras, width, height, str(path))
    cams = replace(cams, c2w=c2w[None]).to(device)
    with torch.no_grad():
        start_mse = float(((render_images(model, cams, bg).rgb[0].cpu() - pixels) ** 2).mean())
    fit = fit_pose(model, cams, 0, pixels, bg, options)
    world = to_world(fit.c2w[None].cpu().double(), norm)[0]
    result = {"c2w": torch.cat([world, torch.tensor([[0.0, 0, 0, 1]], dtype=torch.float64)]).tolist(),
              "mse": fit.mse, "psnr": mse_to_psnr(fit.mse), "start_psnr": mse_to_psnr(start_mse),
              "start": start, "steps": options.steps}
    if gt is not None:
        truth, _ = read(gt)
        rot, dist = pose_errors(fit.c2w[None].cpu().double(), truth[None].double())
        scale = float(norm["scale"]) if norm else 1.0
        result.update(rotation_error_deg=float(rot), translation_error=float(dist) / scale,
                      translation_error_fraction=float(dist) / model.scene.size)
    return result


def mse_to_psnr(mse: float) -> float:
    return -10 * math.log10(max(mse, 1e-10))
