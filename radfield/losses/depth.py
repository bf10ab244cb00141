"""Depth supervision: losses on the sample weights of rays whose depth is known
(``shared/specs/depth-supervision.md``), on packed samples (see rendering/volume.py).

Vocabulary, along one ray ``r``:

* ``t_i`` the sample midpoints ``(t_start_i + t_end_i) / 2`` and ``dt_i = t_end_i - t_start_i``
  (ray distance, the units of ``t``);
* ``w_i`` the sample weights (sum <= 1) and ``W_i = sum_{k<=i} w_k`` their cumulative sum, the
  CDF of ray termination (``1 - transmittance`` behind sample ``i``);
* ``D`` the measured depth **along the ray** (planar depth / ``Rays.z_per_t``), per ray
  ``(n_rays,)``; rays with ``D <= 0`` have no depth and are ignored by every loss;
* ``eps`` the depth uncertainty (a standard deviation, or URF's window half-width), per ray
  ``(n_rays,)`` in the units of ``t``;
* ``Phi(x)`` the CDF of the Gaussian ``N(D, eps^2)`` at ``x``.

Every loss is 0 (with a graph) when no ray of the batch has depth, and works with rays that have
no samples and with batches of zero samples. They act on the final level's weights (and, with
``all_levels``, on each earlier level's), so any model gets them, and hard sample mining keeps them
in the gradient it injects (they are part of the objective it differentiates).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Callable

import torch
from torch import Tensor

from radfield.errors import RadfieldError, check_choice
from radfield.rendering.volume import accumulate_along_rays, exclusive_sum_per_ray

DEPTH_LOSSES = ("none", "l2", "urf", "dsnerf", "bounded")
SYNTHETIC_CAMERA_RADIUS = 4.0311
"""NeRF-synthetic's cameras' distance from the scene's centre (Blender units), the scale the
spec's reference values (``eps = 0.03``) were set at: the depth losses' unit of length is a
capture's own camera distance over this (:func:`depth_unit`)."""
URF_TARGETS = ("peak", "mass")
L2_FORMS = ("expected", "termination", "log")
BOUNDS_AT = ("auto", "midpoints", "ends")
REAL_DEPTH_SOURCES = ("sparse", "mono")
"""Depth sources measured from real images (``data.depth_source``), whose errors the bounded loss's
margin ``beta`` allows for by default."""
DSNERF_TARGETS = ("density", "mass")
REFERENCE_WEIGHTS = {"l2": 0.1, "urf": 0.00625, "dsnerf": 0.1, "bounded": 0.1}
"""The weight of each loss when ``train.depth.weight`` is None: DS-NeRF's 0.1, 0.1 for the bounded
loss (whose own ``lambda_empty`` / ``lambda_phi`` weigh its terms), 0.00625 for URF and 0.1 for L2 in
its default ``log`` form (:data:`L2_WEIGHT_IN_T` in the others). The depth-supervised mip-NeRF code
adds its depth losses to a Charbonnier photometric loss, ``sqrt(d^2 + 1e-3)``, whose gradient at
small residuals is ``1 / (2 sqrt(1e-3))``, about 16 times that of radfield's default L2 loss. So the
bounded loss's unscaled ``L_cdf`` becomes about 0.1 here, and that code's ``lambda_depth = 0.1`` for
L2 in ``t`` becomes 0.1 / 16; URF's 0.1 (radfield's own until 2026-12-05; the spec gives none) was
scaled alike. With ``--loss charbonnier`` multiply these by 10 (bounded) or 16 (L2, URF). Measured
per loss and view count: ``bench/RESULTS.md`` (``bench/depth.py``)."""
L2_WEIGHT_IN_T = 0.00625
"""L2's reference weight in its ``expected`` and ``termination`` forms, which measure in ``t``:
near the surface ``(log t - log D)^2`` is about ``(t - D)^2 / D^2``, and ``D`` is about 4 units on
NeRF-synthetic's scale, so 0.1 in ``log t`` weighs like 0.00625 in ``t``."""
REFERENCE_EPS = {"dsnerf": 0.003, "bounded": 0.03}
"""The depth uncertainty ``eps`` of each loss when ``train.depth.eps`` is None, in
:attr:`DepthConfig.unit`: the spec's 0.03 for the bounded loss, 0.003 for DS-NeRF. DS-NeRF's KL term
asks every ray's weight to spread over its Gaussian, so at 0.03 it blurs each surface over a few
hundredths of the scene while it is on: with every view of tabletop it lost 1.47 dB against no depth
at 0.03 and 0.10 dB at 0.003, and at 3 and 6 views it gained more at 0.003 (``bench/depth.py``, 600 s,
2026-12-05, ``bench/RESULTS.md``)."""


@dataclass
class DepthConfig:
    """Depth supervision of a run (``train.depth``): which loss, its weight and parameters, and
    how many of each batch's rays are drawn from pixels that have depth."""

    loss: str = "none"
    """``none``, ``l2`` (where the ray ends against ``D``, :attr:`l2_form`), ``urf`` (line of sight
    + empty space), ``dsnerf`` (KL on ray termination) or ``bounded`` (probabilistically bounded ray
    densities)."""
    weight: float | None = None
    """Weight of the depth loss in the training objective; None = the loss's reference weight
    (:data:`REFERENCE_WEIGHTS`)."""
    eps: float | None = None
    """Depth uncertainty (standard deviation along the ray, in :attr:`unit`) of ``dsnerf`` and
    ``bounded``; sparse SfM depths scale it per point by their reprojection error. None = the
    loss's reference uncertainty (:data:`REFERENCE_EPS`)."""
    beta: float | None = None
    """``bounded``: the margin ``beta`` of the CDF bounds; None = the spec's choice for the depth
    source, ``2 eps`` for depth measured from real images (sparse SfM points, monocular maps,
    :data:`REAL_DEPTH_SOURCES`) and 0 for depth maps (:func:`for_depth_source`). As the spec writes
    the loss, ``beta`` makes both bounds stricter; ``margin`` loosens them."""
    margin: float = 0.0
    """``bounded``: a margin that loosens both CDF bounds, along the ray in :attr:`unit`: the CDF
    may run ahead of the Gaussian's by ``margin`` before ``D`` and lag it by ``margin`` behind
    ``D`` (``Phi`` evaluated at ``t + margin`` in the near region, ``t - margin`` in the far one),
    what a margin for depth with errors (SfM points, sensors) does."""
    bounds_at: str = "auto"
    """``bounded``: where the CDF bounds are checked. ``auto``: ``ends`` for sparse SfM depth,
    ``midpoints`` for other depth (:func:`for_depth_source`). ``midpoints``: at each sample's midpoint
    ``t_i`` with the CDF ``W_i`` through that sample, the far bound on ``D <= t_i <= D + 3 eps``
    (the spec's). ``ends``: where the CDF is known exactly, at the ends of the intervals: the near
    bound ``W(t_end) <= Phi(t_end - beta)`` on intervals that end in ``[D - 3 eps, D)``, the far
    bound ``W(t_start) >= Phi(t_start + beta)`` on every interval that starts at or behind ``D``
    (``W(t_start)`` is the weight before the interval). With midpoints a ray may end behind the
    surface unchecked: the first sample behind ``D`` counts its own weight in ``W_i``, and the
    far window of a few ``eps`` often holds no sample at all. Measured (``bench/depth.py``, 600 s,
    2026-12-05, ``bench/RESULTS.md``): on garden-colmap (sparse SfM depth, 6 views) ``ends`` left
    0.2-0.3 % of the depth rays' weight behind the surface against 19-21 % at the midpoints
    (``bench/depth_mass.py``) and scored 20.47 / 19.70 dB against 19.38 / 18.97 (seeds 0 / 1);
    on tabletop's dense depth maps it did not help (3 views 20.77 against 20.92, seed 0), so
    ``midpoints`` stays the choice there."""
    l2_form: str = "log"
    """``l2``: what is compared with ``D``. ``expected``: the rendered depth ``sum_i w_i t_i``,
    as the spec writes L2 (one number a ray, so a ray can match ``D`` on average with its mass
    elsewhere: on garden-colmap's unbounded scene, 0.2 % of the weight beyond twice the depth
    made up 40 % of the rendered depth while 89 % of it lay in front of the surface).
    ``termination``: ``sum_i w_i (t_i - D)^2``, the expected squared distance of where the ray
    ends (the rendered depth's squared error plus the spread of its termination), so every
    weight away from ``D`` costs, the more the farther. ``log``: the same in ``log t``,
    ``sum_i w_i (log t_i - log D)^2``, which weighs a distance by its ratio to ``D`` (a
    weight at 1000 times the depth costs 48 times its weight, not a million): the default,
    at weight 0.1. Measured (``bench/depth.py``, 600 s, the whole table in one session,
    2026-12-05, ``bench/RESULTS.md``): ``log`` gained the most of every loss on garden-colmap's
    sparse depth and more than the spec's form on tabletop, at no cost with every view."""
    urf_window: tuple[float, float] = (0.45, 0.15)
    """``urf``: window half-width ``eps`` at the start and at the end of the run (in :attr:`unit`),
    annealed linearly with the run's progress."""
    urf_target: str = "peak"
    """``urf``: what each weight in the window is pulled to: ``peak``, the kernel's value at the
    sample (peaked at 1, as the spec writes it), or ``mass``, the kernel's probability mass over
    the sample's interval (URF's continuous loss in masses: the targets of a ray sum to at most 1,
    as its weights do). Measured on tabletop (every view, 10 minutes): nerfacto's proposals put
    a median of 24 of 32 samples in the final window, whose ``peak`` targets sum to about 23."""
    dsnerf_target: str = "density"
    """``dsnerf``: what weighs ``-log w_i``. ``density``: the Gaussian's value at the midpoint
    times the interval's length, ``exp(-(t_i - D)^2 / (2 eps^2)) dt_i`` (the spec's quadrature;
    where ``eps`` is below the samples' spacing it reaches few samples, or none). ``mass``: its
    exact mass over the interval, ``Phi(t1_i) - Phi(t0_i)``, times ``sqrt(2 pi) eps`` so that it
    tends to ``density`` on fine intervals: the interval that holds ``D`` is always reached, and
    as ``eps`` falls the loss asks for all the mass there, a sharp surface. Measured once
    (``bench/depth.py``, 600 s, 2026-12-05): every view of tabletop, ``eps`` 0.003, 31.02 dB
    against 31.72 without depth, so ``density`` stays the default."""
    empty_weight: float = 1.0
    """``bounded``: ``lambda_empty``, the weight of the empty-space term."""
    cdf_weight: float = 0.1
    """``bounded``: ``lambda_phi``, the weight of the two CDF terms."""
    fraction: float = 0.25
    """Fraction of each batch's rays drawn from pixels that have depth (the rest uniformly, as
    without depth); 0 = depth only where uniform draws land on it."""
    unit: float | None = None
    """The length, in scene units, that the depth losses measure distances in: they see ``t /
    unit`` and ``D / unit``, and ``eps``, ``beta``, ``margin`` and URF's window are in it, so a
    loss acts alike on captures of any size. None: :func:`depth_unit`, the farthest training
    camera's distance from the scene box's centre over NeRF-synthetic's 4.0311 (1 for tabletop,
    0.269 for garden-colmap's reader-normalised units at 6 views)."""
    all_levels: bool = False
    """Apply the loss to every level's weights, the final one and each earlier (proposal or
    coarse) level, and take the mean over the levels, as nerfstudio's depth-nerfacto does; False:
    the final level only, and the earlier levels follow it through their own losses. Measured
    (``bench/depth.py``, 600 s, 2026-12-05, ``bench/RESULTS.md``): the bounded loss on
    garden-colmap at 6 views scored 17.06 / 17.32 dB against 18.66 / 19.24 on the final level only
    (seeds 0 / 1), so off by default."""
    anneal: tuple[float, float] | None = (0.5, 1.0)
    """Fractions ``(start, end)`` of the run over which the weight falls linearly from its value
    to ``anneal_to`` times it (None: constant); by default over the second half, to 0. Depth
    shapes the geometry while it forms, and the colour has the last word where the two disagree
    (tabletop's mirror sphere, glass, a depth map's own errors). Measured (``bench/depth.py``, 600
    s, 2026-12-05, ``bench/RESULTS.md``): the bounded loss with every view of tabletop scored
    31.78 dB faded, within 0.3 dB of no depth, where at a constant weight it had lost about half a
    decibel, and at 3 views it kept its gain."""
    anneal_to: float = 0.0
    """The weight's fraction left after ``anneal``'s end."""
    consistency: float = 0.0
    """Drop, before training, the depth of pixels whose colour differs between the views that
    see their depth point by more than this (the median over the four nearest views of the mean
    absolute RGB difference in [0, 1], :func:`radfield.data.depth.colour_disagreement`; 0 = off).
    A mirror or glass shows the scene around it, so its colour changes from view to view, and
    depth at its surface forbids the density behind it that a radiance field needs to show that.
    One run with every view of tabletop, bounded loss, 0.1 (2 % of the depth dropped): 28.82 dB
    against 28.72 without it, within run-to-run spread, so off by default."""


def check_depth_config(config: DepthConfig) -> None:
    """RadfieldError (one line naming the option) for a value that cannot be used."""
    check_choice("train.depth.loss", config.loss, DEPTH_LOSSES, "depth loss")
    bounds = {"weight": (depth_weight(config), 0.0, False), "eps": (depth_eps(config), 0.0, True),
              "beta": (config.beta or 0.0, 0.0, False),
              "margin": (config.margin, 0.0, False), "empty_weight": (config.empty_weight, 0.0, False),
              "cdf_weight": (config.cdf_weight, 0.0, False), "consistency": (config.consistency, 0.0, False)}
    for name, (value, low, strict) in bounds.items():
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise RadfieldError(f"train.depth.{name}: must be {'>' if strict else '>='} {low:g} "
                                f"and finite, got {value}")
    if config.unit is not None and not (math.isfinite(config.unit) and config.unit > 0):
        raise RadfieldError(f"train.depth.unit: must be > 0 and finite, got {config.unit}")
    if not 0.0 <= config.fraction <= 1.0:
        raise RadfieldError(f"train.depth.fraction: must be in [0, 1], got {config.fraction}")
    if config.anneal is not None and not (len(config.anneal) == 2 and 0.0 <= config.anneal[0] < config.anneal[1]):
        raise RadfieldError(f"train.depth.anneal: must be (start, end) with 0 <= start < end, got "
                            f"{list(config.anneal)}")
    if not (math.isfinite(config.anneal_to) and 0.0 <= config.anneal_to <= 1.0):
        raise RadfieldError(f"train.depth.anneal_to: must be in [0, 1], got {config.anneal_to}")
    check_choice("train.depth.l2_form", config.l2_form, L2_FORMS, "form")
    check_choice("train.depth.bounds_at", config.bounds_at, BOUNDS_AT)
    check_choice("train.depth.dsnerf_target", config.dsnerf_target, DSNERF_TARGETS, "target")
    check_choice("train.depth.urf_target", config.urf_target, URF_TARGETS, "target")
    if not all(math.isfinite(v) and v > 0 for v in config.urf_window):
        raise RadfieldError(f"train.depth.urf_window: both half-widths must be > 0, got "
                            f"{list(config.urf_window)}")


def depth_weight(config: DepthConfig) -> float:
    """``config.weight``, or the loss's reference weight when it is None (0 for ``none``)."""
    if config.weight is not None:
        return config.weight
    if config.loss == "l2" and config.l2_form != "log":
        return L2_WEIGHT_IN_T
    return REFERENCE_WEIGHTS.get(config.loss, 0.0)


def for_depth_source(config: DepthConfig, source: str | None) -> DepthConfig:
    """``config`` with its automatic choices made for depth from ``source`` (``sparse``,
    ``mono``, ``maps`` or None, ``meta["depth_source"]``): ``beta`` None becomes ``2 eps`` for
    :data:`REAL_DEPTH_SOURCES` and 0 otherwise, ``bounds_at`` ``auto`` becomes ``ends`` for
    ``sparse`` and ``midpoints`` otherwise."""
    beta = config.beta
    if beta is None:
        beta = 2.0 * depth_eps(config) if source in REAL_DEPTH_SOURCES else 0.0
    bounds_at = config.bounds_at
    if bounds_at == "auto":
        bounds_at = "ends" if source == "sparse" else "midpoints"
    return replace(config, beta=beta, bounds_at=bounds_at)


def depth_eps(config: DepthConfig) -> float:
    """``config.eps``, or the loss's reference uncertainty when it is None (:data:`REFERENCE_EPS`;
    the spec's 0.03 for a loss that has none of its own)."""
    if config.eps is not None:
        return config.eps
    return REFERENCE_EPS.get(config.loss, REFERENCE_EPS["bounded"])


def depth_unit(config: DepthConfig, camera_radius: float | None) -> float:
    """``config.unit``, else ``camera_radius / SYNTHETIC_CAMERA_RADIUS`` rounded to three decimals
    (1 without a camera radius). Example: cameras 1.0833 from the centre -> 0.269."""
    if config.unit is not None:
        return config.unit
    return round(camera_radius / SYNTHETIC_CAMERA_RADIUS, 3) if camera_radius else 1.0


def weight_scale(config: DepthConfig, progress: float) -> float:
    """The factor on the depth weight at ``progress`` in [0, 1] of the run (``anneal``): 1 until
    ``start``, linear down to ``anneal_to`` at ``end``, then constant. Example: ``anneal = (0.5,
    1.0)``, ``anneal_to = 0.2``, progress 0.75 -> 0.6."""
    if config.anneal is None:
        return 1.0
    start, end = config.anneal
    p = min(max((progress - start) / (end - start), 0.0), 1.0)
    return 1.0 + (config.anneal_to - 1.0) * p


def urf_window(config: DepthConfig, progress: float) -> float:
    """URF's window half-width at ``progress`` in [0, 1] of the run: linear from
    ``urf_window[0]`` to ``urf_window[1]``. Example: (0.45, 0.15) at progress 0.5 -> 0.3."""
    start, end = config.urf_window
    p = min(max(progress, 0.0), 1.0)
    return start + (end - start) * p


def gaussian_cdf(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``Phi(x) = (1 + erf((x - mean) / (std sqrt 2))) / 2``. Example: ``Phi(mean + std) = 0.8413``."""
    return 0.5 * (1.0 + torch.erf((x - mean) / (std * math.sqrt(2.0))))


def _per_sample(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                depth: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(t_mid, D of the sample's ray, whether that ray has depth)``, each ``(n_samples,)``."""
    d = depth.to(weights.dtype)[ray_indices]
    return (t_starts + t_ends) / 2, d, d > 0


def _mean_over_depth_rays(per_ray: Tensor, depth: Tensor, anchor: Tensor) -> Tensor:
    """Mean of ``per_ray`` ``(n_rays,)`` over the rays with ``depth > 0``; ``0 * anchor.sum()``
    (zero with a graph) when there are none."""
    has = depth > 0
    if not bool(has.any()):
        return anchor.sum() * 0.0
    return per_ray[has].sum() / has.sum()


def expected_depth_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                        n_rays: int, depth: Tensor) -> Tensor:
    """L2 on the rendered depth: ``(sum_i w_i t_i - D)^2``, mean over the rays with depth.

    The rendered depth is not divided by the opacity (the spec's definition): a ray that is
    not opaque is pulled towards the camera, so depth rays also learn opacity.

    Example: one ray, intervals [0.5, 1.5] and [2.5, 3.5] (``t = 1, 3``), ``w = (0.5, 0.25)``:
    rendered depth ``1.25``; ``D = 2`` gives ``L = 0.75^2 = 0.5625``.
    """
    rendered = accumulate_along_rays(weights, ray_indices, n_rays, ((t_starts + t_ends) / 2)[:, None])[:, 0]
    return _mean_over_depth_rays((rendered - depth.to(weights.dtype)) ** 2, depth, weights)


def termination_depth_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                           n_rays: int, depth: Tensor, log: bool = False) -> Tensor:
    """The expected squared error of where a ray ends, ``sum_i w_i (t_i - D)^2`` (``log``:
    ``sum_i w_i (log t_i - log D)^2``), mean over the rays with depth. With weights summing to 1
    it is the rendered depth's squared error plus the variance of the termination distance,
    so, unlike :func:`expected_depth_loss`, it cannot be met by mass in front of the surface
    balanced by mass behind it.

    Example: one ray, intervals [0.5, 1.5] and [2.5, 3.5] (``t = 1, 3``), ``w = (0.5, 0.25)``,
    ``D = 2``: ``0.5 * 1 + 0.25 * 1 = 0.75``; with ``log``: ``0.5 log(2)^2 + 0.25 log(1.5)^2 =
    0.28132``.
    """
    t, d, has = _per_sample(weights, t_starts, t_ends, ray_indices, depth)
    if log:
        t, d = torch.log(t.clamp_min(1e-6)), torch.log(d.clamp_min(1e-6))
    per_sample = torch.where(has, weights * (t - d) ** 2, 0.0)
    return _mean_over_depth_rays(accumulate_along_rays(per_sample, ray_indices, n_rays), depth, weights)


def urf_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int,
             depth: Tensor, eps: Tensor, target: str = "peak") -> Tensor:
    """Urban Radiance Fields' line-of-sight loss with window half-width ``eps``, per ray

    ``sum_{t_i < D - eps} w_i^2 + sum_{|t_i - D| <= eps} (w_i - K(t_i - D))^2``,

    mean over the rays with depth; ``K(x) = exp(-x^2 / (2 (eps / 3)^2))`` is a Gaussian kernel
    peaked at 1 whose standard deviation is a third of the window (URF's ``N(0, (eps/3)^2)``,
    scaled to peak 1 because ``w_i`` are masses: a sample at the surface should carry it all).
    ``target = "mass"`` replaces ``K(t_i - D)`` by the kernel's mass over the interval,
    ``Phi(t_end) - Phi(t_start)`` for ``N(D, (eps / 3)^2)``: where several samples share the
    window, their targets still sum to at most 1.

    Example: one ray, unit intervals with ``t = 1, 2, 3``, ``w = (0.1, 0.6, 0.2)``, ``D = 2``,
    ``eps = 0.6``: empty space holds ``t = 1`` (``< 1.4``): ``0.01``; the window holds ``t = 2``
    with ``K(0) = 1``: ``(0.6 - 1)^2 = 0.16``; ``L = 0.17``. With ``mass`` the target of
    ``[1.5, 2.5]`` is ``Phi(2.5) - Phi(-2.5) = 0.98758`` (``sigma = 0.2``): ``L = 0.01 +
    0.38758^2 = 0.16022``.
    """
    t, d, has = _per_sample(weights, t_starts, t_ends, ray_indices, depth)
    e = eps.to(weights.dtype)[ray_indices]
    empty = has & (t < d - e)
    near = has & ((t - d).abs() <= e)
    if target == "mass":
        sigma = e / 3.0
        kernel = gaussian_cdf(t_ends, d, sigma) - gaussian_cdf(t_starts, d, sigma)
    else:
        kernel = torch.exp(-((t - d) ** 2) / (2.0 * (e / 3.0) ** 2))
    per_sample = torch.where(empty, weights ** 2, 0.0) + torch.where(near, (weights - kernel) ** 2, 0.0)
    return _mean_over_depth_rays(accumulate_along_rays(per_sample, ray_indices, n_rays), depth, weights)


def dsnerf_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor, n_rays: int,
                depth: Tensor, eps: Tensor, target: str = "density") -> Tensor:
    """DS-NeRF's KL term on ray termination, per ray

    ``sum_i -log(w_i + 1e-5) exp(-(t_i - D)^2 / (2 eps^2)) dt_i``,

    mean over the rays with depth (up to a constant, the KL divergence from ``N(D, eps^2)`` to
    the termination distribution, in the quadrature of the samples).

    Example: one ray, unit intervals with ``t = 1, 2, 3``, ``w = (0.1, 0.6, 0.2)``, ``D = 2``,
    ``eps = 1``: ``2.30249 e^-0.5 + 0.51081 + 1.60939 e^-0.5 = 2.88348``.

    ``target = "mass"`` replaces ``exp(-(t_i - D)^2 / (2 eps^2)) dt_i`` by ``sqrt(2 pi) eps
    (Phi(t1_i) - Phi(t0_i))``, the same integral taken exactly over each interval. In the
    example, ``eps = 0.1``: only ``[1.5, 2.5]`` holds mass (``1 - 2e-7``), so ``L = 0.51081
    sqrt(2 pi) 0.1 = 0.12804``, where ``density`` gives ``0.51081`` times ``dt = 1``.
    """
    t, d, has = _per_sample(weights, t_starts, t_ends, ray_indices, depth)
    e = eps.to(weights.dtype)[ray_indices]
    if target == "mass":
        kernel = math.sqrt(2.0 * math.pi) * e * (gaussian_cdf(t_ends, d, e) - gaussian_cdf(t_starts, d, e))
    else:
        kernel = torch.exp(-((t - d) ** 2) / (2.0 * e ** 2)) * (t_ends - t_starts)
    per_sample = -torch.log(weights + 1e-5) * kernel
    per_sample = torch.where(has, per_sample, 0.0)
    return _mean_over_depth_rays(accumulate_along_rays(per_sample, ray_indices, n_rays), depth, weights)


def _region_mean(values: Tensor, region: Tensor) -> Tensor:
    """Mean of ``values`` over the elements of ``region`` (bool); 0 with a graph when empty."""
    if not bool(region.any()):
        return values.sum() * 0.0
    return values[region].mean()


def bounded_density_loss(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
                         n_rays: int, depth: Tensor, eps: Tensor, beta: float = 0.0,
                         empty_weight: float = 1.0, cdf_weight: float = 0.1, margin: float = 0.0,
                         at: str = "midpoints") -> Tensor:
    """Probabilistically bounded ray densities: the termination CDF ``W`` is bounded by the CDF
    ``Phi`` of ``N(D, eps^2)``. Over all samples of the batch's rays with depth:

    * empty region ``t_i < D - 3 eps``: ``L_empty = mean(w_i^2)``;
    * near region ``D - 3 eps <= t_i < D``: ``L_near = mean(max(W_i - Phi(t_i - beta), 0)^2)``
      (the CDF must not run ahead of the Gaussian's);
    * far region ``D <= t_i <= D + 3 eps``: ``L_far = mean(max(Phi(t_i + beta) - W_i, 0)^2)``
      (it must have caught up);

    ``L = empty_weight L_empty + cdf_weight (L_near + L_far)``, each mean over the elements of
    its region (a region with no element adds 0). As the spec writes them, ``beta > 0``
    evaluates ``Phi`` further from ``D`` on each side (``t - beta`` before it, ``t + beta``
    behind it), so both bounds become stricter, not looser. ``margin`` loosens them instead:
    ``Phi(t_i - beta + margin)`` near, ``Phi(t_i + beta - margin)`` far, and the empty region
    ends ``margin`` earlier (``t_i < D - 3 eps - margin``, the near region starts there) while the
    far region ends ``margin`` later (``t_i <= D + 3 eps + margin``).

    Example: one ray, ``D = 2``, ``eps = 0.1``, ``beta = 0``, samples at ``t = 1, 1.9, 2.1, 3``
    with ``w = (0.1, 0.5, 0.3, 0.1)``, so ``W = (0.1, 0.6, 0.9, 1.0)``: ``t = 1`` is empty
    space (``0.01``); ``t = 1.9`` is near, ``Phi = 0.15866``, ``(0.6 - 0.15866)^2 = 0.19478``;
    ``t = 2.1`` is far, ``Phi = 0.84134 < 0.9``: 0; ``t = 3`` is in no region.
    ``L = 0.01 + 0.1 * 0.19478 = 0.029478``. With ``margin = 0.1`` the near sample compares
    with ``Phi(2) = 0.5``: ``(0.6 - 0.5)^2 = 0.01``, the far one with ``Phi(2) = 0.5 < 0.9``,
    ``t = 1 < 1.6`` is still empty space: ``L = 0.01 + 0.1 * 0.01 = 0.011``.

    ``at = "ends"`` checks the bounds where the CDF is known exactly, at the intervals' ends:
    near, on intervals whose end ``t1_i`` lies in ``[D - 3 eps - margin, D)``,
    ``max(W(t1_i) - Phi(t1_i - beta + margin), 0)^2`` with ``W(t1_i) = W_i``; far, on every
    interval whose start ``t0_i >= D``, ``max(Phi(t0_i + beta - margin) - W(t0_i), 0)^2`` with
    ``W(t0_i) = W_i - w_i``; the empty region holds the intervals that end before the near one.
    So the weight of the first interval behind the surface counts against the far bound, however
    far behind it lies. In the example with intervals ``t -+ 0.01``: ``[0.99, 1.01]`` is empty
    space; ``[1.89, 1.91]`` is near, ``Phi(1.91) = 0.18406``: ``(0.6 - 0.18406)^2``; ``[2.09,
    2.11]`` and ``[2.99, 3.01]`` are far, ``Phi(2.09) = 0.81594 > 0.6``: ``(0.81594 - 0.6)^2``,
    and ``Phi(2.99) = 1 > 0.9``: ``0.1^2`` (up to ``1e-23``); ``L = 0.01 + 0.1 (0.17301 +
    (0.04663 + 0.01) / 2) = 0.030132``.
    """
    t, d, has = _per_sample(weights, t_starts, t_ends, ray_indices, depth)
    e = eps.to(weights.dtype)[ray_indices]
    before = exclusive_sum_per_ray(weights, ray_indices, n_rays)  # W(t0_i)
    if at == "ends":
        empty = has & (t_ends < d - 3.0 * e - margin)
        near = has & (t_ends >= d - 3.0 * e - margin) & (t_ends < d)
        far = has & (t_starts >= d)
        l_empty = _region_mean(weights ** 2, empty)
        l_near = _region_mean(torch.relu(before + weights - gaussian_cdf(t_ends - beta + margin, d, e)) ** 2, near)
        l_far = _region_mean(torch.relu(gaussian_cdf(t_starts + beta - margin, d, e) - before) ** 2, far)
        return empty_weight * l_empty + cdf_weight * (l_near + l_far)
    cdf = before + weights  # W_i, inclusive
    empty = has & (t < d - 3.0 * e - margin)
    near = has & (t >= d - 3.0 * e - margin) & (t < d)
    far = has & (t >= d) & (t <= d + 3.0 * e + margin)
    l_empty = _region_mean(weights ** 2, empty)
    l_near = _region_mean(torch.relu(cdf - gaussian_cdf(t - beta + margin, d, e)) ** 2, near)
    l_far = _region_mean(torch.relu(gaussian_cdf(t + beta - margin, d, e) - cdf) ** 2, far)
    return empty_weight * l_empty + cdf_weight * (l_near + l_far)


DepthLoss = Callable[[Tensor, Tensor, Tensor, Tensor, int, Tensor, Tensor], Tensor]
"""``loss(weights, t_starts, t_ends, ray_indices, n_rays, depth, eps) -> scalar`` (unweighted)."""


def make_depth_loss(config: DepthConfig) -> DepthLoss | None:
    """The loss ``config.loss`` names with its parameters bound, or None for ``none``. Choices
    left to the depth source and not yet made (:func:`for_depth_source`) are made as for depth
    maps."""
    check_depth_config(config)
    config = for_depth_source(config, None)
    if config.loss == "none":
        return None
    if config.loss == "l2":
        if config.l2_form == "expected":
            return lambda w, t0, t1, ri, n, depth, eps: expected_depth_loss(w, t0, t1, ri, n, depth)
        log = config.l2_form == "log"
        return lambda w, t0, t1, ri, n, depth, eps: termination_depth_loss(w, t0, t1, ri, n, depth, log)
    if config.loss == "urf":
        return functools.partial(urf_loss, target=config.urf_target)
    if config.loss == "dsnerf":
        return functools.partial(dsnerf_loss, target=config.dsnerf_target)

    def bounded(w, t0, t1, ri, n, depth, eps):
        return bounded_density_loss(w, t0, t1, ri, n, depth, eps, config.beta, config.empty_weight,
                                    config.cdf_weight, config.margin, config.bounds_at)
    return bounded
