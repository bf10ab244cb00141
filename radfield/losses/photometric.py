"""Photometric losses between rendered and target ray colours.

Vocabulary: ``pred``, ``target``: ``(n_rays, 3)`` linear RGB in [0, 1]. Each loss returns a scalar
that is the mean over rays and channels, so its value does not depend on the batch size.
"""

from __future__ import annotations

from torch import Tensor


def l2(pred: Tensor, target: Tensor) -> Tensor:
    """``mean((pred - target)^2)``; PSNR = ``-10 log10`` of it for images in [0, 1]."""
    return ((pred - target) ** 2).mean()


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """``mean(|pred - target|)``."""
    return (pred - target).abs().mean()


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """``mean(sqrt((pred - target)^2 + eps))`` (the depth-supervision reference uses eps = 1e-3)."""
    return (((pred - target) ** 2) + eps).sqrt().mean()


PHOTOMETRIC_LOSSES = {"l2": l2, "l1": l1, "charbonnier": charbonnier}
