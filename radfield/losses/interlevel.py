"""mip-NeRF 360's interlevel (proposal) loss between two step functions along each ray.

Vocabulary (multinerf ``stepfun``): ``t`` bin endpoints (``n_bins + 1`` per ray, sorted), ``w``
bin weights (``n_bins`` per ray, ``>= 0``, sum ``<= 1``). ``(t, w)`` is the final (NeRF) step
function, ``(t_hat, w_hat)`` a proposal's, with its own number of bins ``n_hat``.

Layout: padded per-ray tensors: ``t`` ``(n_rays, n_bins + 1)``, ``w`` ``(n_rays, n_bins)``,
``t_hat`` ``(n_rays, n_hat + 1)``, ``w_hat`` ``(n_rays, n_hat)``. Only the order of the
endpoints matters, so ``t`` may be distances or normalised ``s`` (the same space for both).
"""

from __future__ import annotations

import torch
from torch import Tensor


def outer_measure(t: Tensor, t_hat: Tensor, w_hat: Tensor) -> Tensor:
    """``bound_i = sum of w_hat_j`` over the proposal bins ``j`` that overlap bin ``i``.

    Bins overlap when ``t_hat_j < t_{i+1}`` and ``t_i < t_hat_{j+1}`` (touching endpoints do
    not count). Overlapping ``j`` form a run ``lo_i <= j < hi_i`` with
    ``lo_i = #{k >= 1: t_hat_k <= t_i}`` and ``hi_i = #{j < n_hat: t_hat_j < t_{i+1}}``, so with
    ``C_j = w_hat_0 + ... + w_hat_{j-1}``: ``bound_i = C_{hi_i} - C_{lo_i}`` (0 if
    ``hi_i <= lo_i``); two ``searchsorted`` calls, ``O(n log n_hat)``.

    Example: ``t = (0, 1, 2)``, ``t_hat = (0, 0.5, 1.5, 2)``, ``w_hat = (0.1, 0.6, 0.3)``:
    bin ``[0, 1]`` meets proposal bins 0 and 1 -> 0.7; ``[1, 2]`` meets 1 and 2 -> 0.9.

    Args:
        t: ``(n_rays, n_bins + 1)``; t_hat: ``(n_rays, n_hat + 1)``; w_hat: ``(n_rays, n_hat)``.
    Returns:
        ``(n_rays, n_bins)``, differentiable in ``w_hat`` (not in the endpoints).
    """
    t, t_hat = t.detach(), t_hat.detach()
    cum = torch.cat([torch.zeros_like(w_hat[..., :1]), torch.cumsum(w_hat, dim=-1)], dim=-1)
    lo = torch.searchsorted(t_hat[..., 1:].contiguous(), t[..., :-1].contiguous(), right=True)
    hi = torch.searchsorted(t_hat[..., :-1].contiguous(), t[..., 1:].contiguous(), right=False)
    hi = torch.maximum(hi, lo)
    return cum.gather(-1, hi) - cum.gather(-1, lo)


def interlevel_loss(t: Tensor, w: Tensor, t_hat: Tensor, w_hat: Tensor, eps: float = 1e-7) -> Tensor:
    """Proposal loss ``mean_{rays, i} max(0, w_i - bound_i)^2 / (w_i + eps)``.

    ``bound`` is :func:`outer_measure` of ``(t_hat, w_hat)`` on the bins of ``t``. ``w`` is
    detached: only the proposal weights ``w_hat`` learn from this loss. The mean runs over rays
    *and* bins, as the spec writes it (nerfstudio sums over bins, then averages over rays: its
    value is ``n_bins`` times this one). With several proposal levels, sum one call per level.

    Example: ``t = t_hat = (0, 1, 2)``, ``w = (0.5, 0.5)``, ``w_hat = (0.2, 0.8)``: bounds
    ``(0.2, 0.8)``, ``L = mean(0.3^2 / 0.5, 0) = 0.09``.

    Args:
        t: ``(n_rays, n_bins + 1)``, w: ``(n_rays, n_bins)``; t_hat, w_hat: a proposal's.
    Returns:
        scalar.
    """
    w = w.detach()
    bound = outer_measure(t, t_hat, w_hat)
    return (torch.relu(w - bound) ** 2 / (w + eps)).mean()
