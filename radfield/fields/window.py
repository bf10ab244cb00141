"""BARF's coarse-to-fine window over the bands of a position encoding.

Vocabulary: an encoding has ``n`` **bands** ordered from coarse to fine (the frequencies
``2^0 .. 2^(L-1)`` of a positional encoding, the degrees of an integrated positional encoding,
the levels of a hash grid); the window ``alpha`` in ``[0, 1]`` opens them in turn.

Band ``k`` gets the weight ``w_k = (1 - cos(pi clamp(a - k, 0, 1))) / 2`` (BARF, Lin et al. 2021,
eq. 14), with ``a = alpha n`` for frequency bands (the encoding's raw input, when it has one,
passes unweighted: at ``alpha = 0`` the network sees ``x`` alone) and ``a = 1 + alpha (n - 1)``
for hash-grid levels, whose coarsest level stays open (a hash grid has no raw input to fall back
on; the analogue of BARF for hash encodings, as in Heo et al. 2023). At ``alpha = 1`` every band
has weight 1, the encoding unchanged.

Example (frequency bands, ``n = 4``, ``alpha = 0.5``, so ``a = 2``): weights ``(1, 1, 0, 0)``;
``alpha = 0.625`` (``a = 2.5``): ``(1, 1, 0.5, 0)``. Hash levels, ``n = 5``, ``alpha = 0.5``
(``a = 3``): ``(1, 1, 1, 0, 0)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from radfield.errors import RadfieldError

__all__ = ["check_window", "window_alpha", "window_weights"]


def check_window(option: str, coarse_to_fine) -> None:
    """A one-line error unless ``coarse_to_fine`` is None or ``(start, end)`` with
    ``0 <= start <= end <= 1`` (fractions of the run); ``option`` names the setting."""
    if coarse_to_fine is None:
        return
    try:
        start, end = coarse_to_fine
        ok = 0 <= start <= end <= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise RadfieldError(f"{option}: need [start, end] with 0 <= start <= end <= 1, got {coarse_to_fine!r}")


def window_alpha(progress: float, coarse_to_fine: tuple[float, float] | None) -> float | None:
    """BARF's ``alpha = clamp((progress - start) / (end - start), 0, 1)`` at ``progress``, the
    fraction of the run done; None without a window. Example: ``(0.1, 0.5)`` at progress 0.3 -> 0.5."""
    if coarse_to_fine is None:
        return None
    start, end = coarse_to_fine
    if end <= start:
        return 1.0 if progress >= end else 0.0
    return min(max((progress - start) / (end - start), 0.0), 1.0)


def window_weights(alpha: float, n: int, keep_first: bool = False) -> Tensor:
    """``(n,)`` float32 weights of the bands at window ``alpha`` (module docstring);
    ``keep_first``: hash-grid levels (the coarsest always open)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"coarse-to-fine window alpha must lie in [0, 1], got {alpha}")
    a = 1 + alpha * (n - 1) if keep_first else alpha * n
    k = torch.arange(n, dtype=torch.float64)
    w = (1 - torch.cos(math.pi * (a - k).clamp(0, 1))) / 2
    return w.float()


class WindowedBands:
    """Mixin of the encodings that take the window: ``set_window(alpha, source)`` stores the
    weights of their ``n_bands`` bands in ``self.window`` (a non-persistent buffer the encoding
    registers as None: checkpoints do not change), which their ``forward`` applies. Several
    schedules may window one encoding (pose refinement, D-NeRF's coarse-to-fine deformation):
    each sets its own ``alpha`` under its ``source`` name and the narrowest open one applies;
    None or ``alpha >= 1`` withdraws a source's window, and with none left the encoding is exactly
    as without a window. ``keep_first``: hash-grid levels."""

    n_bands: int
    keep_first: bool = False

    def set_window(self, alpha: float | None, source: str = "pose") -> None:
        alphas = self.__dict__.setdefault("_window_alphas", {})
        if alpha is None or alpha >= 1:
            alphas.pop(source, None)
        else:
            alphas[source] = alpha
        self.window = window_weights(min(alphas.values()), self.n_bands, self.keep_first) if alphas else None

    def band_weights(self, like: Tensor, repeat: int) -> Tensor | None:
        """The weights of the window, each repeated ``repeat`` times (the columns of one band),
        on ``like``'s device and dtype; None without a window."""
        if self.window is None:
            return None
        return self.window.to(like.device, like.dtype).repeat_interleave(repeat)
