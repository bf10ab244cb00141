"""What every radiance field offers the samplers, the renderer, the losses and the HSM step.

A field maps sample positions ``x`` ``(n_samples, 3)`` and unit directions ``d``
``(n_samples, 3)`` to **pre-activation** outputs ``raw`` ``(n_samples, 4)``: column 0 the raw
density ``s`` (before exp / softplus / ReLU), columns 1:4 the raw colour ``c`` (before sigmoid).
``activate(raw)`` turns them into density ``sigma >= 0`` and colour in [0, 1].

Keeping the two apart is what hard sample mining needs (``shared/specs/hard-sample-mining.md``):
it differentiates the loss with respect to ``raw`` through a tiny graph of activations and
rendering, then back-propagates that gradient into the network for the chosen samples only.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class RadianceField(Protocol):
    def raw(self, positions: Tensor, directions: Tensor) -> Tensor:
        """``(n, 4)`` pre-activation density and colour."""

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigma (n,), rgb (n, 3))`` from ``raw (n, 4)``."""

    def density(self, positions: Tensor) -> Tensor:
        """``(n,)`` activated density only (for occupancy grids and sample pruning)."""


class _TruncExp(torch.autograd.Function):
    """``exp(x)`` whose backward uses ``exp(min(x, 15))``, as in Instant-NGP / torch-ngp."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)
