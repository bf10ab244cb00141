"""Structural similarity (SSIM, Wang et al. 2004) on batches of one-channel images.

One computation shared by the SSIM metric (:func:`radfield.evaluation.metrics.ssim`) and the SSIM
training loss (:func:`radfield.losses.photometric.ssim_loss`).

Vocabulary:

* ``x``, ``y``: ``(n_images, 1, H, W)`` tensors, one image per (image or patch, channel) pair,
  data range 1.
* ``g``: the 1-D Gaussian of ``k = window_size`` taps; the 2-D window is ``w = g g^T``, which sums
  to 1.
* "valid" filtering: the window only takes positions where it lies inside the image (no
  padding), so a ``H x W`` image gives a ``(H - k + 1) x (W - k + 1)`` map.
* Local statistics at each window position, weighted by ``w``::

      mu_x = sum w x,   s_xx = sum w x^2 - mu_x^2,   s_xy = sum w x y - mu_x mu_y

* SSIM at one position, with ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2`` and ``L = 1``::

      SSIM = (2 mu_x mu_y + C1) (2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (s_xx + s_yy + C2))

  Defaults ``k = 11``, ``sigma = 1.5``, ``K1 = 0.01``, ``K2 = 0.03`` (multinerf's
  ``compute_ssim``; ``skimage``'s ``structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gaussian_window", "filter_valid", "ssim_map"]


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """1-D Gaussian ``g_i = exp(-(i - (size-1)/2)^2 / (2 sigma^2))``, normalised to sum 1.

    The 2-D SSIM window is the outer product ``g g^T``. float64, shape ``(size,)``.
    Example: ``size = 3``, ``sigma = 1``: ``exp(-1/2) = 0.6065``, so
    ``g = (0.6065, 1, 0.6065) / 2.2131 = (0.2741, 0.4519, 0.2741)``.
    """
    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (i / sigma) ** 2)
    return g / g.sum()


def filter_valid(x: Tensor, g: Tensor) -> Tensor:
    """Separable 'valid' filtering with the window ``g g^T``:
    ``out[n, 0, i, j] = sum_{a, b} g_a g_b x[n, 0, i + a, j + b]``.

    Shapes: ``x`` ``(n_images, 1, H, W)``, ``g`` ``(k,)`` (same dtype and device as ``x``);
    returns ``(n_images, 1, H - k + 1, W - k + 1)``. Example: a constant image ``c`` filters to
    ``c`` everywhere, because ``sum g = 1``.
    """
    k = g.numel()
    x = torch.nn.functional.conv2d(x, g.view(1, 1, k, 1))
    return torch.nn.functional.conv2d(x, g.view(1, 1, 1, k))


def ssim_map(x: Tensor, y: Tensor, window_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
             k2: float = 0.03, clamp_covariance: bool = False) -> Tensor:
    """SSIM at every 'valid' window position (formula in the module docstring).

    Variances are clamped to ``s_xx, s_yy >= 0`` (round-off). With ``clamp_covariance`` the
    covariance is also clamped to ``|s_xy| <= sqrt(s_xx s_yy)`` as multinerf does for the metric;
    the loss leaves it out, since ``sqrt`` has an infinite slope at 0 and the clamp only fixes
    round-off. No clipping of the inputs: callers that want data range ``[0, 1]`` clip first.

    Example: constant images ``x = 0.5``, ``y = 0.25`` have zero (co)variances, so
    ``SSIM = (2 * 0.125 + 1e-4) / (0.3125 + 1e-4) = 0.8003`` at every position.

    Shapes: ``x``, ``y`` ``(n_images, 1, H, W)`` with ``H, W >= window_size``; returns
    ``(n_images, 1, H - k + 1, W - k + 1)`` in the inputs' dtype, differentiable.
    """
    g = gaussian_window(window_size, sigma).to(device=x.device, dtype=x.dtype)
    mu_x, mu_y = filter_valid(x, g), filter_valid(y, g)
    s_xx = (filter_valid(x * x, g) - mu_x**2).clamp_min(0)
    s_yy = (filter_valid(y * y, g) - mu_y**2).clamp_min(0)
    s_xy = filter_valid(x * y, g) - mu_x * mu_y
    if clamp_covariance:
        bound = torch.sqrt(s_xx * s_yy)
        s_xy = torch.maximum(torch.minimum(s_xy, bound), -bound)
    c1, c2 = k1**2, k2**2
    numer = (2 * mu_x * mu_y + c1) * (2 * s_xy + c2)
    denom = (mu_x**2 + mu_y**2 + c1) * (s_xx + s_yy + c2)
    return numer / denom
