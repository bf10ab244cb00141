"""Image-quality metrics: PSNR, SSIM and (when available offline) LPIPS.

Vocabulary: images are ``(H, W, 3)`` float tensors, nominally in ``[0, 1]``; ``pred`` is the
rendering, ``target`` the ground truth. Every metric clips both images to ``[0, 1]`` first
(data range 1) and returns a plain Python ``float``.

* ``psnr = -10 log10(mse)``, ``mse = mean((pred - target)^2)`` over pixels and channels;
  ``inf`` when the images are identical.
* ``ssim``: Wang et al. 2004 with the settings of multinerf's ``compute_ssim`` and of
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1)``: 11x11 Gaussian window, ``sigma = 1.5``,
  ``K1 = 0.01``, ``K2 = 0.03``, "valid" filtering (no padding), mean over channels and pixels.
* ``lpips_fn()`` returns a callable, or ``None`` when LPIPS cannot run offline. ``None`` must be
  reported as "unavailable", never as 0 (0 would read as a perfect score).

Masks: an optional ``(H, W)`` bool ``mask`` (True = the pixel is scored) restricts the score to
the unmasked pixels, as surface-reconstruction papers score DTU (IDR, NeuS, VolSDF):

* masked ``mse`` / ``psnr``: the mean over the ``mask`` pixels (and channels) only;
* masked ``ssim``: the prediction's masked pixels are set to the target's
  (:func:`masked_prediction`), so no error of theirs reaches a window, and the SSIM map is
  averaged over the windows centred on a ``mask`` pixel;
* LPIPS has no per-pixel form here: callers score ``masked_prediction`` against the target,
  i.e. the masked pixels count as perfect.

Depth (:func:`depth_errors`): ``(H, W)`` planar depth maps, the rendering against a reference
whose pixels with ``depth <= 0`` (or masked) have no depth and are not scored.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
from torch import Tensor

from radfield.losses.ssim import ssim_map

__all__ = ["mse", "psnr", "psnr_uint8", "quantize_uint8", "ssim", "lpips_fn",
           "masked_prediction", "depth_errors"]


def _check_pair(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
    if pred.shape != target.shape or pred.ndim != 3 or pred.shape[-1] != 3:
        raise ValueError(f"expected two (H, W, 3) images, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if mask is not None and (mask.shape != pred.shape[:2] or not bool(mask.any())):
        raise ValueError(f"expected an (H, W) mask of {tuple(pred.shape[:2])} with a pixel "
                         f"set, got {tuple(mask.shape)} with {int(mask.sum())} set")


def masked_prediction(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """``pred`` where ``mask`` (``(H, W)`` bool, None = everywhere) is True, ``target`` elsewhere:
    a prediction whose masked pixels carry no error."""
    if mask is None:
        return pred
    return torch.where(mask.to(pred.device)[..., None], pred, target.to(pred.device, pred.dtype))


def mse(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """``mean((clip(pred) - clip(target))^2)`` over all pixels and channels, in float64; with an
    ``(H, W)`` bool ``mask``, over the pixels where it is True only."""
    _check_pair(pred, target, mask)
    diff = pred.double().clamp(0, 1) - target.double().clamp(0, 1)
    if mask is not None:
        diff = diff[mask.to(diff.device)]
    return float(diff.square().mean())


def psnr(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """Peak signal-to-noise ratio in dB for data range 1: ``-10 log10(mse)`` (over the ``mask``
    pixels only when one is given: masked PSNR).

    Example: ``pred = target + 0.1`` (no clipping involved) has ``mse = 0.01``, so
    ``psnr = -10 log10(0.01) = 20`` dB. Identical images give ``float('inf')``. Masked: errors
    ``0.1`` on one used pixel and ``0.5`` on an ignored one give ``mse = 0.01``, 20 dB again.
    """
    err = mse(pred, target, mask)
    return math.inf if err == 0.0 else -10.0 * math.log10(err)


def quantize_uint8(image: Tensor) -> Tensor:
    """``round(clip(x, 0, 1) * 255) / 255``: what saving the image as 8-bit PNG does to it."""
    return torch.round(image.double().clamp(0, 1) * 255.0) / 255.0


def psnr_uint8(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> float:
    """PSNR after quantising both images to 8 bits (:func:`quantize_uint8`).

    Example: ``target = k / 255`` and ``pred = (k + 10) / 255`` everywhere gives
    ``mse = (10/255)^2`` and ``psnr = 20 log10(255 / 10) = 28.13`` dB.
    """
    return psnr(quantize_uint8(pred), quantize_uint8(target), mask)


def ssim(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, mask: Tensor | None = None) -> float:
    """Structural similarity, mean over channels and 'valid' window positions
    (:func:`radfield.losses.ssim.ssim_map` on the clipped images, in float64).

    With window-weighted local statistics (``w`` the normalised Gaussian window)::

        mu_x = sum w x,   s_xx = sum w x^2 - mu_x^2,   s_xy = sum w x y - mu_x mu_y
        SSIM = (2 mu_x mu_y + C1) (2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (s_xx + s_yy + C2))

    with ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``, ``L = 1``. As in multinerf, round-off is cleaned
    up by clamping ``s_xx, s_yy >= 0`` and ``|s_xy| <= sqrt(s_xx s_yy)``.

    Example: constant images ``x = a``, ``y = b`` have zero (co)variances, so
    ``SSIM = (2ab + C1) / (a^2 + b^2 + C1)``; ``a = 0.5, b = 0.25`` gives ``0.8003``.

    Masked (``mask`` ``(H, W)`` bool): the prediction's masked pixels are the target's
    (:func:`masked_prediction`) and the map is averaged over the windows centred on a ``mask``
    pixel (ValueError when there is none).

    Computed in float64 on the inputs' device; needs ``H, W >= window_size``.
    """
    _check_pair(pred, target, mask)
    h, w, _ = pred.shape
    if h < window_size or w < window_size:
        raise ValueError(f"ssim needs images of at least {window_size}x{window_size}, got {h}x{w}")
    x = masked_prediction(pred, target, mask).double().clamp(0, 1).permute(2, 0, 1).unsqueeze(1)
    y = target.double().clamp(0, 1).permute(2, 0, 1).unsqueeze(1)  # (3, 1, H, W)
    values = ssim_map(x, y, window_size, sigma, k1, k2, clamp_covariance=True)
    if mask is None:
        return float(values.mean())
    r = window_size // 2  # 'valid' window (i, j) is centred on pixel (i + r, j + r)
    centres = mask.to(values.device)[r: r + values.shape[-2], r: r + values.shape[-1]]
    if not bool(centres.any()):
        raise ValueError("ssim: no window is centred on a pixel of the mask")
    return float(values[:, 0][:, centres].mean())


def _lpips_weights_present(net: str) -> bool:
    """True when the backbone and the LPIPS linear-layer weights are both on disk already."""
    import lpips  # noqa: F401  (raises ImportError when absent)

    backbone_files = {  # torchvision's cache file names for the ImageNet backbones
        "alex": "alexnet-owt-7be5be79.pth",
        "vgg": "vgg16-397923af.pth",
        "squeeze": "squeezenet1_1-b8a52dc0.pth",
    }
    cache = os.path.join(torch.hub.get_dir(), "checkpoints", backbone_files[net])
    linear = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth")
    return os.path.isfile(cache) and os.path.isfile(linear)


def lpips_fn(net: str = "alex", device: torch.device | str = "cpu"
             ) -> Callable[[Tensor, Tensor], float] | None:
    """LPIPS (Zhang et al. 2018) as ``f(pred, target) -> float``, or ``None`` if unavailable.

    Returns a callable only when the ``lpips`` package imports *and* both weight files are
    already on disk (the torchvision backbone in ``torch.hub.get_dir()/checkpoints`` and the
    linear layers shipped inside the ``lpips`` package); nothing is ever downloaded, because
    torchvision loads a cached checkpoint without touching the network. Any failure gives
    ``None``. Callers must report ``None`` as "unavailable", never as 0.

    The callable takes two ``(H, W, 3)`` images in ``[0, 1]`` (clipped) and maps them to
    ``[-1, 1]`` as LPIPS expects; lower is better.
    """
    try:
        if not _lpips_weights_present(net):
            return None
        import lpips

        model = lpips.LPIPS(net=net, verbose=False).eval().to(device)
        for p in model.parameters():
            p.requires_grad_(False)
    except Exception:
        return None

    def lpips_distance(pred: Tensor, target: Tensor) -> float:
        _check_pair(pred, target)
        to_nchw = lambda im: (im.float().clamp(0, 1).permute(2, 0, 1)[None] * 2 - 1).to(device)  # noqa: E731
        with torch.no_grad():
            return float(model(to_nchw(pred), to_nchw(target)).mean())

    return lpips_distance


def depth_errors(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> dict[str, float] | None:
    """Depth error of a rendered ``(H, W)`` depth map against a reference ``target`` over the
    pixels where ``target > 0`` (and ``mask``, when given), in float64:

    * ``abs_rel = mean(|pred - target| / target)`` (absolute relative error);
    * ``rmse = sqrt(mean((pred - target)^2))``, in the units of the depths.

    None when no pixel has a reference depth. Example: target ``(1, 2, 0)``, pred
    ``(1.5, 2, 7)``: two pixels scored, ``abs_rel = (0.5 + 0) / 2 = 0.25``,
    ``rmse = sqrt(0.25 / 2) = 0.35355``.
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(f"expected two (H, W) depth maps, got {tuple(pred.shape)} and {tuple(target.shape)}")
    scored = target > 0
    if mask is not None:
        scored &= mask.to(scored.device)
    if not bool(scored.any()):
        return None
    p, t = pred.double()[scored], target.double()[scored]
    return {"abs_rel": float(((p - t).abs() / t).mean()), "rmse": float(((p - t) ** 2).mean().sqrt())}
