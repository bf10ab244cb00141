"""Proposal sampling maths (mip-NeRF 360 / nerfacto): spacing, inverse-CDF resampling.

Vocabulary (as in multinerf's ``stepfun``), for one ray:

* ``t`` -- bin *endpoints* along the ray, sorted, ``n_bins + 1`` values;
* ``s`` -- the same endpoints in normalised space, ``s = (g(t) - g(near)) / (g(far) - g(near))``
  in ``[0, 1]``, for a monotone *spacing function* ``g``;
* ``w`` -- bin weights, ``n_bins`` values ``>= 0`` with ``sum(w) <= 1``.

Layout: padded per-ray tensors, every ray has the same number of bins:
``t``, ``s`` are ``(n_rays, n_bins + 1)``, ``w`` is ``(n_rays, n_bins)``; ``near``, ``far`` are
``(n_rays,)`` (or Python floats where stated).

The chain: :func:`uniform_bins` gives level-0 bins uniform in ``s``; a proposal field gives their
weights; :func:`sample_pdf` resamples new endpoints in ``s`` from those weights; :func:`s_to_t`
maps them back to distances. Sample positions ``o + t d`` are squashed by
:func:`radfield.geometry.contract` before they reach a field of an unbounded scene.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor

PerRay = Union[Tensor, float]


# --------------------------------------------------------------------------- spacing functions

def spacing_fn(t: Tensor) -> Tensor:
    """mip-NeRF 360's spacing ``g(t) = t/2`` for ``t < 1``, ``1 - 1/(2t)`` otherwise.

    Linear near the camera, uniform in disparity far away; ``g(1) = 1/2`` from both sides,
    ``g(inf) = 1``, slope ``1/2`` at ``t = 1`` from both sides.

    Example: ``g(0.5) = 0.25``, ``g(1) = 0.5``, ``g(2) = 0.75``, ``g(10) = 0.95``.
    """
    t_far = t.clamp_min(1.0)  # the 1/(2t) branch never sees t < 1 (no division by 0)
    return torch.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / t_far)


def spacing_fn_inv(g: Tensor) -> Tensor:
    """Inverse of :func:`spacing_fn`: ``t = 2 g`` for ``g < 1/2``, ``1 / (2 (1 - g))`` otherwise.

    Example: ``0.25 -> 0.5``, ``0.75 -> 2``, ``1 -> inf``.
    """
    g_far = g.clamp_min(0.5)
    return torch.where(g < 0.5, 2.0 * g, 0.5 / (1.0 - g_far))


@dataclass(frozen=True)
class Spacing:
    """A monotone spacing function ``g`` and its inverse (elementwise on tensors)."""

    fn: Callable[[Tensor], Tensor]
    inv: Callable[[Tensor], Tensor]


SPACINGS: dict[str, Spacing] = {
    # uniform in distance
    "linear": Spacing(fn=lambda t: t, inv=lambda g: g),
    # uniform in disparity 1/t (LLFF-style); needs near > 0
    "disparity": Spacing(fn=torch.reciprocal, inv=torch.reciprocal),
    # mip-NeRF 360: linear up to t = 1, then uniform in disparity (far may be inf)
    "unbounded": Spacing(fn=spacing_fn, inv=spacing_fn_inv),
}


def _spacing(name: str) -> Spacing:
    if name not in SPACINGS:
        raise ValueError(f"unknown spacing {name!r} (expected one of {sorted(SPACINGS)})")
    return SPACINGS[name]


def _per_ray(v: PerRay, like: Tensor) -> Tensor:
    """``near``/``far`` as a tensor broadcastable against ``like`` ``(n_rays, k)``: ``(n_rays, 1)``."""
    v = torch.as_tensor(v, dtype=like.dtype, device=like.device)
    return v[..., None] if v.ndim == like.ndim - 1 else v


def t_to_s(t: Tensor, near: PerRay, far: PerRay, spacing: str = "unbounded") -> Tensor:
    """Normalised distance ``s = (g(t) - g(near)) / (g(far) - g(near))``; ``near -> 0``, ``far -> 1``.

    Example (``"unbounded"``, near 0, far 3): ``g(3) = 5/6``, so ``t = 1 -> 0.5 / (5/6) = 0.6``,
    ``t = 2 -> 0.75 / (5/6) = 0.9``.

    Args:
        t: ``(n_rays, k)`` distances.
        near, far: ``(n_rays,)`` tensors or floats.
        spacing: a key of :data:`SPACINGS`.
    Returns:
        ``(n_rays, k)``.
    """
    g = _spacing(spacing).fn
    g_near, g_far = g(_per_ray(near, t)), g(_per_ray(far, t))
    return (g(t) - g_near) / (g_far - g_near)


def s_to_t(s: Tensor, near: PerRay, far: PerRay, spacing: str = "unbounded") -> Tensor:
    """Inverse of :func:`t_to_s`: ``t = g^-1(g(near) + s (g(far) - g(near)))``.

    ``s = 0`` and ``s = 1`` give ``near`` and ``far`` exactly.

    Example (``"unbounded"``, near 0, far 3): ``s = 0.6 -> 1``, ``s = 0.9 -> 2``.

    Args:
        s: ``(n_rays, k)`` normalised distances in ``[0, 1]``.
        near, far: ``(n_rays,)`` tensors or floats.
    Returns:
        ``(n_rays, k)``.
    """
    sp = _spacing(spacing)
    near_t, far_t = _per_ray(near, s), _per_ray(far, s)
    g_near, g_far = sp.fn(near_t), sp.fn(far_t)
    t = sp.inv(g_near + s * (g_far - g_near))
    t = torch.where(s <= 0.0, near_t, t)
    return torch.where(s >= 1.0, far_t, t)


# --------------------------------------------------------------------------- bins in s-space

def _interior_quantiles(n_rays: int, n_bins: int, jitter: bool, generator: Optional[torch.Generator],
                        like: Tensor) -> Tensor:
    """The ``n_bins - 1`` interior endpoints ``u_k``, ``k = 1 .. n_bins - 1``, of ``[0, 1]``.

    ``u_k = k / n`` without jitter; ``u_k = (k - 1/2 + xi_k) / n``, ``xi_k ~ U(0, 1)`` i.i.d. with
    jitter: each endpoint moves uniformly within half a bin of its place, so ``E[u_k] = k/n``,
    the endpoints stay sorted and inside ``[1/(2n), 1 - 1/(2n)]``.

    Example: ``n = 4``, no jitter: ``(0.25, 0.5, 0.75)``; with jitter ``u_1`` lies in
    ``[0.125, 0.375]``.

    Returns:
        ``(n_rays, n_bins - 1)``.
    """
    k = torch.arange(1, n_bins, dtype=like.dtype, device=like.device).expand(n_rays, n_bins - 1)
    if not jitter:
        return k / n_bins
    xi = torch.rand((n_rays, n_bins - 1), generator=generator, dtype=like.dtype, device=like.device)
    return (k - 0.5 + xi) / n_bins


def uniform_bins(near: Tensor, far: Tensor, n_bins: int, spacing: str = "unbounded",
                 jitter: bool = False, generator: Optional[torch.Generator] = None
                 ) -> tuple[Tensor, Tensor]:
    """Level-0 bins: ``n_bins`` bins uniform in ``s``, the end bins anchored at ``near`` and ``far``.

    ``s_k = k / n`` for ``k = 0 .. n``; with ``jitter`` the interior endpoints move independently
    (per ray and per endpoint) uniformly within half a bin: ``s_k = (k - 1/2 + xi_k) / n``.
    ``s_0 = 0`` and ``s_n = 1`` never move, so ``t`` always spans exactly ``[near, far]``.

    Example: near 2, far 6, ``n_bins = 2``, ``"linear"``, no jitter: ``s = (0, 0.5, 1)``,
    ``t = (2, 4, 6)``.

    Args:
        near, far: ``(n_rays,)``.
    Returns:
        ``t``, ``s``: ``(n_rays, n_bins + 1)``, sorted along the last dimension.
    """
    n_rays = near.shape[0]
    zeros = torch.zeros((n_rays, 1), dtype=near.dtype, device=near.device)
    inner = _interior_quantiles(n_rays, n_bins, jitter, generator, near)
    s = torch.cat([zeros, inner, zeros + 1.0], dim=-1)
    return s_to_t(s, near, far, spacing), s


def sample_pdf(s: Tensor, w: Tensor, n_samples: int, padding: float = 0.01, jitter: bool = False,
               generator: Optional[torch.Generator] = None) -> Tensor:
    """Resample ``n_samples`` bins by inverting the CDF of the step pdf given by ``w`` over ``s``.

    The pdf puts mass ``p_i = (w_i + padding) / sum_j (w_j + padding)`` uniformly on bin
    ``[s_i, s_{i+1}]`` (rays whose padded weights sum to 0 get ``p_i = 1/n_bins``). Its CDF is
    piecewise linear through ``(s_i, c_i)``, ``c_i = p_0 + ... + p_{i-1}``. New endpoints:
    ``s_new_0 = s_0``, ``s_new_N = s_n`` and ``s_new_k = F^-1(u_k)`` for the interior
    ``u_k = k/N`` (``jitter=False``: bin ``k`` of the result holds mass ``1/N`` exactly) or
    ``u_k = (k - 1/2 + xi_k)/N``, ``xi_k ~ U(0, 1)`` (``jitter=True``, stratified).

    Example: ``s = (0, 0.5, 1)``, ``w = (0.75, 0.25)``, ``padding = 0``, ``n_samples = 2``:
    ``u_1 = 0.5`` falls in bin 0 where the CDF rises 0 -> 0.75, so ``s_new = (0, 1/3, 1)``.

    Args:
        s: ``(n_rays, n_bins + 1)`` sorted endpoints (normalised space, or any monotone one).
        w: ``(n_rays, n_bins)`` non-negative weights (need not sum to 1).
        n_samples: number of new bins ``N >= 1``.
    Returns:
        ``(n_rays, n_samples + 1)`` sorted endpoints in ``[s_0, s_n]``, detached.
    """
    s, w = s.detach(), w.detach()
    n_rays, n_bins = w.shape
    w = w.clamp_min(0.0) + padding
    w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.ones_like(w))
    cum = torch.cumsum(w, dim=-1)
    cdf = torch.cat([torch.zeros_like(cum[..., :1]), cum / cum[..., -1:]], dim=-1)  # c_n = 1 exactly
    u = _interior_quantiles(n_rays, n_samples, jitter, generator, s).contiguous()
    # Bin i with c_i <= u < c_{i+1}: such a bin has positive mass, so the division below is safe.
    hi = torch.searchsorted(cdf.contiguous(), u, right=True).clamp(1, n_bins)
    lo = hi - 1
    c_lo, c_hi = cdf.gather(-1, lo), cdf.gather(-1, hi)
    s_lo, s_hi = s.gather(-1, lo), s.gather(-1, hi)
    frac = ((u - c_lo) / (c_hi - c_lo).clamp_min(torch.finfo(s.dtype).tiny)).clamp(0.0, 1.0)
    inner = torch.minimum(torch.maximum(s_lo + frac * (s_hi - s_lo), s_lo), s_hi)
    return torch.cat([s[..., :1], inner, s[..., -1:]], dim=-1)
