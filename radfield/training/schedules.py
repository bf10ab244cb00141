"""Learning-rate schedules (plain functions of the step; wrap them in any optimizer loop).

mip-NeRF 360's schedule: log-linear decay from ``lr_init`` to ``lr_final`` over training, times a
sine warm-up from ``warmup_mult * lr`` to ``lr`` over the first ``warmup_steps`` steps.
"""

from __future__ import annotations

import math


def log_linear_lr_at(progress: float, step: int, lr_init: float = 2e-3, lr_final: float = 2e-5,
                     warmup_steps: int = 512, warmup_mult: float = 0.01) -> float:
    """``lr = warm(step) * exp((1 - r) ln lr_init + r ln lr_final)``, ``r = clip(progress, 0, 1)``.

    ``warm(step) = m + (1 - m) sin(pi/2 * clip(step / warmup_steps, 0, 1))``, ``m = warmup_mult``
    (``warm = 1`` when ``warmup_steps = 0``). ``progress`` is the fraction of training done, e.g.
    ``max(step / max_steps, elapsed / max_time)`` for time-limited runs; the warm-up always
    counts steps.

    Example (defaults): ``progress = 0.5`` after warm-up gives ``sqrt(2e-3 * 2e-5) = 2e-4``;
    ``progress = 0``, ``step = 0`` gives ``0.01 * 2e-3 = 2e-5``.
    """
    r = min(max(progress, 0.0), 1.0)
    if warmup_steps > 0:
        warm = warmup_mult + (1.0 - warmup_mult) * math.sin(
            0.5 * math.pi * min(max(step / warmup_steps, 0.0), 1.0))
    else:
        warm = 1.0
    return warm * math.exp((1.0 - r) * math.log(lr_init) + r * math.log(lr_final))


def log_linear_lr(step: int, max_steps: int, lr_init: float = 2e-3, lr_final: float = 2e-5,
                  warmup_steps: int = 512, warmup_mult: float = 0.01) -> float:
    """:func:`log_linear_lr_at` with ``progress = step / max_steps``.

    Example (defaults, ``max_steps = 10000``): step 0 -> ``2e-5``; step 256 -> warm
    ``0.01 + 0.99 sin(pi/4) = 0.71004``, decay ``2e-3 * 0.01^0.0256 = 1.77758e-3``, lr
    ``1.26215e-3``; step 5000 -> ``2e-4``; step 10000 -> ``2e-5``.
    """
    if max_steps <= 0:
        raise ValueError(f"log_linear_lr: max_steps must be positive, got {max_steps}")
    return log_linear_lr_at(step / max_steps, step, lr_init, lr_final, warmup_steps, warmup_mult)
