"""Photometric losses between rendered and target ray colours, and their composition.

Vocabulary:

* ``pred``, ``target``: ``(n_rays, C)`` colours, ``C = 3`` for RGB (sRGB-encoded in ``[0, 1]``,
  as the training images store them; see ``losses/colour.py``), ``C = 1`` after a conversion to
  luminance. Every loss returns a scalar mean over rays (or patches) and channels, so its value
  does not depend on the batch size.
* **Ray losses** (``l2``, ``l1``, ``rmse``, ``charbonnier``) treat the rays independently.
* **Patch losses** (``ssim``, ``fft``) need rays that come as square patches of ``P x P`` pixels
  (``P = patch_size``): ``n_rays = n_patches * P * P``, patch after patch, each patch in
  row-major order, i.e. ray ``k = p P^2 + i P + j`` is pixel (row ``i``, column ``j``) of patch
  ``p``: ``pred.reshape(n_patches, P, P, C)``.
* A **loss spec** is a string such as ``"l2"``, ``"l1+0.2*ssim"`` or ``"0.5*l2 + 0.1*fft"``:
  ``term ('+' term)*`` with ``term = [weight '*'] name``; :class:`PhotometricLoss` evaluates it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from radfield.errors import RadfieldError
from radfield.losses.colour import COLOUR_SPACES, gamma as gamma_encode, tonemap as tonemap_curve
from radfield.losses.ssim import ssim_map

__all__ = ["l2", "l1", "rmse", "charbonnier", "ssim_loss", "fft_loss", "to_patches",
           "PHOTOMETRIC_LOSSES", "PATCH_LOSSES", "PhotometricLoss", "parse_loss"]


# ----------------------------------------------------------------------------- ray losses

def l2(pred: Tensor, target: Tensor) -> Tensor:
    """``mean((pred - target)^2)``; PSNR = ``-10 log10`` of it for images in [0, 1]."""
    return ((pred - target) ** 2).mean()


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """``mean(|pred - target|)``."""
    return (pred - target).abs().mean()


def rmse(pred: Tensor, target: Tensor, eps: float = 1e-12) -> Tensor:
    """``sqrt(mean((pred - target)^2) + eps)``.

    ``eps`` keeps the gradient finite (zero) at ``pred == target``, where ``sqrt`` has an
    infinite slope. Example: ``pred - target = (0.3, 0.4)`` per ray of one channel ->
    ``sqrt((0.09 + 0.16) / 2) = 0.35355``.
    """
    return (((pred - target) ** 2).mean() + eps).sqrt()


def charbonnier(pred: Tensor, target: Tensor, eps: float = 1e-3) -> Tensor:
    """``mean(sqrt((pred - target)^2 + eps))`` (the depth-supervision reference uses eps = 1e-3)."""
    return (((pred - target) ** 2) + eps).sqrt().mean()


# ----------------------------------------------------------------------------- patch losses

def to_patches(rays: Tensor, patch_size: int) -> Tensor:
    """``(n_patches * P * P, C)`` rays -> ``(n_patches, P, P, C)`` patches (row-major per patch).

    Example: ``P = 2`` and rays ``0..7`` (one channel) give patches ``[[0, 1], [2, 3]]`` and
    ``[[4, 5], [6, 7]]``.
    """
    p = int(patch_size)
    if p < 1:
        raise RadfieldError(f"patch size must be >= 1, got {patch_size}")
    if rays.ndim != 2 or rays.shape[0] % (p * p) != 0:
        raise RadfieldError(f"patch size {p}: expected (n_patches * {p * p}, C) rays, got "
                            f"shape {tuple(rays.shape)}")
    return rays.reshape(-1, p, p, rays.shape[1])


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}")


def _ssim_window_size(patch_size: int, window_size: int = 11) -> int:
    """The SSIM window used for ``P x P`` patches: ``window_size`` if it fits, else the largest
    odd size ``<= P``. Example: ``P = 32 -> 11``, ``P = 8 -> 7``, ``P = 3 -> 3``; ``P < 3`` is an
    error (a 1x1 window has no variance to compare)."""
    if patch_size >= window_size:
        return window_size
    k = patch_size if patch_size % 2 == 1 else patch_size - 1
    if k < 3:
        raise RadfieldError(f"ssim loss needs patches of at least 3x3 pixels, got patch size "
                            f"{patch_size}")
    return k


def ssim_loss(pred: Tensor, target: Tensor, patch_size: int, window_size: int = 11,
              sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """``1 - mean SSIM`` over patches, channels and 'valid' window positions.

    SSIM from :func:`radfield.losses.ssim.ssim_map`, as the metric
    :func:`radfield.evaluation.metrics.ssim` (Gaussian window ``sigma = 1.5``,
    ``C1 = K1^2``, ``C2 = K2^2`` for data range 1), per channel of each patch::

        mu_x = sum w x,   s_xx = sum w x^2 - mu_x^2,   s_xy = sum w x y - mu_x mu_y
        SSIM = (2 mu_x mu_y + C1) (2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1) (s_xx + s_yy + C2))

    Window: 11x11 when ``P >= 11``; smaller patches use the largest odd window ``<= P``
    (:func:`_ssim_window_size`, same ``sigma``, renormalised); ``P < 3`` raises RadfieldError.

    Differences from the metric, for a usable gradient: no clipping to ``[0, 1]`` (it would zero
    the gradient of out-of-range values), the input dtype is kept, and ``s_xy`` is not clamped
    to ``+-sqrt(s_xx s_yy)`` (``sqrt`` has an infinite slope at 0; the clamp only fixes
    round-off). Variances are clamped to ``>= 0``.

    Example: constant patches ``x = 0.5``, ``y = 0.25`` have zero (co)variances, so
    ``SSIM = (2 * 0.125 + 1e-4) / (0.3125 + 1e-4) = 0.8003`` and the loss is ``0.1997``.

    Shapes: ``pred``, ``target`` ``(n_patches * P * P, C)``; returns a scalar.
    """
    _check_pair(pred, target)
    k = _ssim_window_size(patch_size, window_size)
    # (n_patches, P, P, C) -> (n_patches * C, 1, P, P): one image per patch and channel
    x = to_patches(pred, patch_size).permute(0, 3, 1, 2).reshape(-1, 1, patch_size, patch_size)
    y = to_patches(target, patch_size).permute(0, 3, 1, 2).reshape(-1, 1, patch_size, patch_size)
    if x.shape[0] == 0:
        return pred.sum() * 0.0
    return 1.0 - ssim_map(x, y, k, sigma, k1, k2).mean()


def fft_loss(pred: Tensor, target: Tensor, patch_size: int) -> Tensor:
    """Mean magnitude of the difference of the patches' 2-D Fourier transforms:

    ``mean_{p, u, v, c} |F(pred_p,c)(u, v) - F(target_p,c)(u, v)|``, with the orthonormal DFT
    ``F(x)(u, v) = 1/P sum_{i,j} x_ij exp(-2 pi i (u i + v j) / P)`` (``norm="ortho"``, so
    ``sum |F x|^2 = sum |x|^2``) taken per patch and channel; the mean runs over all
    ``P x P`` frequencies (the full, not the one-sided, spectrum).

    Example: ``P = 2``, ``pred - target = 0.1`` everywhere: only the DC term is non-zero,
    ``F(0, 0) = (1/2) * 4 * 0.1 = 0.2``, so the loss is ``0.2 / 4 = 0.05 = 0.1 / P``.

    Shapes: ``pred``, ``target`` ``(n_patches * P * P, C)``; returns a scalar. The gradient is
    finite (zero) at ``pred == target``.
    """
    _check_pair(pred, target)
    diff = to_patches(pred - target, patch_size)  # the DFT is linear: F(x) - F(y) = F(x - y)
    if diff.numel() == 0:
        return pred.sum() * 0.0
    spectrum = torch.fft.fft2(diff, dim=(1, 2), norm="ortho")
    return spectrum.abs().mean()


RayLoss = Callable[[Tensor, Tensor], Tensor]
PatchLoss = Callable[[Tensor, Tensor, int], Tensor]

PHOTOMETRIC_LOSSES: dict[str, RayLoss] = {"l2": l2, "l1": l1, "rmse": rmse,
                                          "charbonnier": charbonnier}
"""Ray losses ``f(pred, target)`` by spec name."""

PATCH_LOSSES: dict[str, PatchLoss] = {"ssim": ssim_loss, "fft": fft_loss}
"""Patch losses ``f(pred, target, patch_size)`` by spec name."""


# ----------------------------------------------------------------------------- composition

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_TERM = re.compile(rf"\s*(?:({_NUMBER})\s*\*\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*")


def _parse_terms(spec: str) -> list[tuple[float, str]]:
    """``"0.5*l2 + 0.1*fft"`` -> ``[(0.5, "l2"), (0.1, "fft")]``; RadfieldError when malformed."""
    valid = ", ".join([*PHOTOMETRIC_LOSSES, *PATCH_LOSSES])
    terms, pos = [], 0
    while True:
        m = _TERM.match(spec, pos)
        if m is None:
            raise RadfieldError(f"bad loss spec {spec!r} at character {pos}: expected "
                                f"[weight*]name, e.g. 'l1+0.2*ssim'")
        weight, name = float(m.group(1)) if m.group(1) else 1.0, m.group(2).lower()
        if name not in PHOTOMETRIC_LOSSES and name not in PATCH_LOSSES:
            raise RadfieldError(f"unknown loss {m.group(2)!r} in {spec!r} (choose from: {valid})")
        if not math.isfinite(weight):
            raise RadfieldError(f"bad weight {m.group(1)!r} in loss spec {spec!r}")
        terms.append((weight, name))
        pos = m.end()
        if pos == len(spec):
            return terms
        if spec[pos] != "+":
            raise RadfieldError(f"bad loss spec {spec!r} at character {pos}: expected '+' "
                                f"between terms, e.g. 'l1+0.2*ssim'")
        pos += 1


@dataclass(frozen=True)
class PhotometricLoss:
    """A weighted sum of photometric losses, evaluated in a chosen colour space.

    ``loss(pred, target) = sum_k w_k f_k(T(pred), T(target))`` with the transform ``T`` applied
    in this order: (1) ``tonemap`` ``x / (1 + x)`` if set, (2) ``gamma`` ``x^(1/g)`` if set,
    (3) conversion to ``colour_space`` (one of :data:`COLOUR_SPACES`; the conversions treat
    their input as sRGB-encoded colour). Ray losses see patch batches as plain rays.

    Example: ``PhotometricLoss.from_spec("l1+0.2*ssim")`` has ``terms = [(1.0, "l1"),
    (0.2, "ssim")]`` and ``needs_patches = True``; called with ``patch_size = 16`` on
    ``(n_patches * 256, 3)`` rays it returns ``l1 + 0.2 * (1 - SSIM)``.
    """

    terms: list[tuple[float, str]]
    colour_space: str = "rgb"
    tonemap: bool = False
    gamma: float | None = None
    spec: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.terms:
            raise RadfieldError("a photometric loss needs at least one term")
        for _, name in self.terms:
            if name not in PHOTOMETRIC_LOSSES and name not in PATCH_LOSSES:
                raise RadfieldError(f"unknown loss {name!r} (choose from: "
                                    f"{', '.join([*PHOTOMETRIC_LOSSES, *PATCH_LOSSES])})")
        if self.colour_space not in COLOUR_SPACES:
            raise RadfieldError(f"unknown colour space {self.colour_space!r} (choose from: "
                                f"{', '.join(COLOUR_SPACES)})")
        if self.gamma is not None and not self.gamma > 0:
            raise RadfieldError(f"gamma must be positive, got {self.gamma}")

    @classmethod
    def from_spec(cls, spec: str, colour_space: str = "rgb", tonemap: bool = False,
                  gamma: float | None = None) -> PhotometricLoss:
        """Parse a loss spec (module docstring); RadfieldError on unknown names or bad syntax."""
        return cls(_parse_terms(spec), colour_space, tonemap, gamma, spec)

    @property
    def needs_patches(self) -> bool:
        """True when a term is a patch loss, so batches must be square patches."""
        return any(name in PATCH_LOSSES for _, name in self.terms)

    def transform(self, rgb: Tensor) -> Tensor:
        """``(n_rays, 3)`` -> ``(n_rays, C)``: tonemap, then gamma, then the colour space."""
        if self.tonemap:
            rgb = tonemap_curve(rgb)
        if self.gamma is not None:
            rgb = gamma_encode(rgb, self.gamma)
        return COLOUR_SPACES[self.colour_space](rgb)

    def __call__(self, pred: Tensor, target: Tensor, patch_size: int | None = None) -> Tensor:
        """The weighted sum of the terms, a scalar; ``pred``, ``target``: ``(n_rays, 3)``
        (``n_rays = n_patches * P * P`` with ``P = patch_size`` when :attr:`needs_patches`)."""
        _check_pair(pred, target)
        if self.needs_patches and patch_size is None:
            raise RadfieldError(f"loss {self.spec or self.terms!r} has a patch term and needs "
                                f"a patch size")
        x, y = self.transform(pred), self.transform(target)
        total = pred.new_zeros(())
        for weight, name in self.terms:
            if name in PATCH_LOSSES:
                total = total + weight * PATCH_LOSSES[name](x, y, patch_size)
            else:
                total = total + weight * PHOTOMETRIC_LOSSES[name](x, y)
        return total


def parse_loss(spec: str, colour_space: str = "rgb", tonemap: bool = False,
               gamma: float | None = None) -> PhotometricLoss:
    """Same as :meth:`PhotometricLoss.from_spec`. Example: ``parse_loss("0.5*l2+0.1*fft").terms
    == [(0.5, "l2"), (0.1, "fft")]``; ``parse_loss("l3")`` raises RadfieldError listing the
    valid names."""
    return PhotometricLoss.from_spec(spec, colour_space, tonemap, gamma)
