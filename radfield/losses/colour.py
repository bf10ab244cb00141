"""Colour spaces and tone curves in which a photometric loss may compare colours.

Vocabulary: ``rgb`` is ``(..., 3)`` **sRGB-encoded** colour in ``[0, 1]``: what the training
images store (PNG bytes / 255, see ``data/scene.py``) and therefore what the field learns to
output. ``linear`` is the same colour with the sRGB transfer curve undone (proportional to
light). ``Y`` is relative luminance, ``XYZ`` CIE 1931 tristimulus values for the D65 white point
(white -> ``(0.9505, 1.0, 1.0888)``), ``HSV`` hue / saturation / value with hue in ``[0, 1)``.

Every function is a pure, differentiable map on tensors of any leading shape ``(...)``; the
channel axis is the last one. ``COLOUR_SPACES`` maps a colour-space name to its conversion.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from radfield.errors import RadfieldError

__all__ = ["COLOUR_SPACES", "SRGB_TO_XYZ", "srgb_to_linear", "to_luminance", "rgb_to_hsv",
           "rgb_to_xyz", "tonemap", "gamma"]

SRGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
"""Linear sRGB (Rec. 709 primaries) -> XYZ for the D65 white point; the row ``Y`` holds the
Rec. 709 luminance weights (0.2126, 0.7152, 0.0722 to four places)."""


def _check_rgb(rgb: Tensor, name: str) -> None:
    if rgb.ndim == 0 or rgb.shape[-1] != 3:
        raise ValueError(f"{name} expects (..., 3) colours, got shape {tuple(rgb.shape)}")


def srgb_to_linear(rgb: Tensor) -> Tensor:
    """Undo the sRGB transfer curve (IEC 61966-2-1), elementwise, shape kept:

    ``lin = c / 12.92`` for ``c <= 0.04045``, else ``((c + 0.055) / 1.055)^2.4``.

    Example: ``0 -> 0``, ``0.04045 -> 0.0031308``, ``0.5 -> 0.21404``, ``1 -> 1``.
    The power branch sees its input clamped to ``>= 0.04045``, so the gradient stays finite
    for any input (negative inputs follow the linear branch).
    """
    power = ((rgb.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(rgb <= 0.04045, rgb / 12.92, power)


def rgb_to_xyz(rgb: Tensor) -> Tensor:
    """sRGB-encoded ``(..., 3)`` -> CIE XYZ (D65) ``(..., 3)``: ``XYZ = M srgb_to_linear(rgb)``.

    ``M`` is :data:`SRGB_TO_XYZ`. Example: white ``(1, 1, 1) -> (0.9505, 1.0000, 1.0888)``;
    pure red ``(1, 0, 0) -> (0.4125, 0.2127, 0.0193)``, the first column of ``M``.
    """
    _check_rgb(rgb, "rgb_to_xyz")
    m = SRGB_TO_XYZ.to(device=rgb.device, dtype=rgb.dtype)
    return srgb_to_linear(rgb) @ m.T


def to_luminance(rgb: Tensor) -> Tensor:
    """Relative luminance ``Y`` of sRGB-encoded colour: ``(..., 3) -> (..., 1)``.

    ``Y = 0.2126729 R + 0.7151522 G + 0.0721750 B`` on the *linearised* channels (the ``Y``
    row of :data:`SRGB_TO_XYZ`, i.e. Rec. 709 weights), so it equals ``rgb_to_xyz(rgb)[..., 1:2]``.

    Example: white -> 1; mid-grey ``(0.5, 0.5, 0.5)`` -> ``0.2140`` (not 0.5: the encoding is
    not linear); pure green ``(0, 1, 0)`` -> ``0.7152``.
    """
    _check_rgb(rgb, "to_luminance")
    w = SRGB_TO_XYZ[1].to(device=rgb.device, dtype=rgb.dtype)
    return (srgb_to_linear(rgb) * w).sum(-1, keepdim=True)


def rgb_to_hsv(rgb: Tensor, eps: float = 1e-8) -> Tensor:
    """``(..., 3)`` RGB -> ``(..., 3)`` HSV, as :func:`colorsys.rgb_to_hsv` does, but on tensors.

    With ``V = max(r, g, b)``, ``C = V - min(r, g, b)``:
    ``S = C / V`` (0 when ``V = 0``); hue ``H = h / 6 mod 1`` with
    ``h = (g - b) / C`` if ``r`` is the maximum, else ``2 + (b - r) / C`` if ``g`` is, else
    ``4 + (r - g) / C``; ``H = 0`` for greys (``C = 0``). Ties pick ``r`` before ``g`` before ``b``.

    Example: ``(1, 0.5, 0) -> (1/12, 1, 1)``; ``(1, 0, 0.5) -> (11/12, 1, 1)``;
    ``(0.2, 0.2, 0.2) -> (0, 0, 0.2)``.

    No colour conversion is applied (HSV of the stored sRGB values). Hue is an angle: it jumps
    from ~1 back to 0 across red, so a loss on ``H`` penalises two near-red colours on either
    side of the jump as if they were far apart, and hue is meaningless (gradient 0 here) for
    greys. The divisions use ``max(C, eps)`` / ``max(V, eps)`` so gradients are finite
    everywhere.
    """
    _check_rgb(rgb, "rgb_to_hsv")
    r, g, b = rgb.unbind(-1)
    v, _ = rgb.max(-1)
    c = v - rgb.min(-1).values
    grey = c <= 0
    c_safe = torch.where(grey, torch.ones_like(c), c.clamp_min(eps))
    h = torch.where(r == v, (g - b) / c_safe,
                    torch.where(g == v, 2.0 + (b - r) / c_safe, 4.0 + (r - g) / c_safe))
    h = torch.where(grey, torch.zeros_like(h), torch.remainder(h / 6.0, 1.0))
    s = torch.where(v > 0, c / torch.where(v > 0, v, torch.ones_like(v)).clamp_min(eps),
                    torch.zeros_like(v))
    return torch.stack([h, s, v], dim=-1)


def tonemap(x: Tensor) -> Tensor:
    """Reinhard tone curve ``x / (1 + x)``, elementwise, for ``x >= 0`` (maps ``[0, inf)`` to
    ``[0, 1)``). Example: ``0 -> 0``, ``1 -> 0.5``, ``3 -> 0.75``."""
    return x / (1.0 + x)


def gamma(x: Tensor, g: float, eps: float = 1e-6) -> Tensor:
    """Gamma encoding ``max(x, eps)^(1/g)``, elementwise.

    Example with ``g = 2``: ``0.25 -> 0.5``, ``1 -> 1``, ``0 -> sqrt(1e-6) = 0.001``.
    The clamp keeps the gradient finite at 0, where ``d/dx x^(1/g)`` is infinite for ``g > 1``:
    below ``eps`` the value is constant and the gradient 0.
    """
    if not g > 0:
        raise RadfieldError(f"gamma must be positive, got {g}")
    return x.clamp_min(eps) ** (1.0 / g)


COLOUR_SPACES: dict[str, Callable[[Tensor], Tensor]] = {
    "rgb": lambda rgb: rgb,
    "luminance": to_luminance,
    "hsv": rgb_to_hsv,
    "xyz": rgb_to_xyz,
}
"""Colour-space name -> conversion of ``(..., 3)`` sRGB-encoded colour to that space
(``(..., 1)`` for ``luminance``, ``(..., 3)`` otherwise)."""
