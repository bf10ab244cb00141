"""Losses on the sample weights along each ray (packed layout, see rendering/volume.py).

Vocabulary: ``w_i`` sample weights (sum <= 1 per ray), ``m_i`` interval midpoints and
``delta_i`` interval lengths, samples of a ray sorted by ``m``.
"""

from __future__ import annotations

from torch import Tensor

from radfield.rendering.volume import accumulate_along_rays, exclusive_sum_per_ray


def distortion(weights: Tensor, t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor,
               n_rays: int) -> Tensor:
    """mip-NeRF 360 distortion loss, mean over rays:

    ``L = sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 delta_i``,

    in O(n) with ``sum_{i,j} w_i w_j |m_i - m_j| = 2 sum_i w_i (m_i W_<i - S_<i)``,
    ``W_<i = sum_{k<i} w_k``, ``S_<i = sum_{k<i} w_k m_k`` (same ray).

    Example: one ray, two intervals [0, 1], [2, 3] with w = (0.5, 0.5): midpoints 0.5, 2.5,
    ``L = 2 * 0.25 * 2 + (0.25 + 0.25) / 3 = 1.1667``.
    """
    if weights.numel() == 0:
        return weights.sum() * 0.0
    mid = (t_starts + t_ends) / 2
    w_before = exclusive_sum_per_ray(weights, ray_indices, n_rays)
    wm_before = exclusive_sum_per_ray(weights * mid, ray_indices, n_rays)
    inter = 2.0 * weights * (mid * w_before - wm_before)
    intra = weights ** 2 * (t_ends - t_starts) / 3.0
    return accumulate_along_rays(inter + intra, ray_indices, n_rays).mean()
