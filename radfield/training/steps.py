"""The two training steps: the baseline step and the hard-sample-mining (HSM) step.

Both take the same inputs and leave gradients in the parameters; the caller runs the optimiser.
They share :func:`loss_from_raw`, the whole path from pre-activation field outputs to the scalar
training loss (activations -> volume rendering -> background -> photometric loss), so ``--hsm``
optimises exactly the same objective as the baseline and only changes how much of it is
back-propagated through the network (``shared/specs/hard-sample-mining.md``).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import HSMConfig
from radfield.fields.base import RadianceField
from radfield.losses.regularisers import distortion
from radfield.rendering.volume import RenderOutput, render
from radfield.samplers.occupancy import Samples



@dataclass
class StepBatch:
    """One training batch: rays, their samples, target colours and backgrounds."""

    rays: Rays
    samples: Samples
    target: Tensor
    """``(n_rays, 3)``."""
    background: Tensor
    """``(n_rays, 3)`` or ``(3,)``."""


@dataclass
class StepResult:
    loss: float
    mse: float
    n_samples: int
    n_backward: int
    """Samples back-propagated through the network (all of them in the baseline step)."""
    timings: dict[str, float] = field(default_factory=dict)
    hardness: Tensor | None = None


Objective = Callable[[RenderOutput, StepBatch], Tensor]
"""The whole training loss of a batch, from its render (photometric + weight regularisers)."""


def photometric_objective(loss_fn: Callable[[Tensor, Tensor], Tensor],
                          distortion_weight: float = 0.0) -> Objective:
    """``loss_fn(rgb, target) + distortion_weight * distortion(weights)``."""

    def objective(out: RenderOutput, batch: StepBatch) -> Tensor:
        loss = loss_fn(out.rgb, batch.target)
        if distortion_weight > 0:
            s = batch.samples
            loss = loss + distortion_weight * distortion(out.weights, s.t_starts, s.t_ends,
                                                         s.ray_indices, s.n_rays)
        return loss

    return objective


def loss_from_raw(field_: RadianceField, raw: Tensor, batch: StepBatch, objective: Objective
                  ) -> tuple[Tensor, RenderOutput]:
    """Activations, volume rendering and the training loss, from ``raw`` ``(n_samples, 4)``."""
    sigma, rgb = field_.activate(raw.float())
    s = batch.samples
    out = render(sigma, rgb, s.t_starts, s.t_ends, s.ray_indices, s.n_rays, batch.background)
    return objective(out, batch), out


def _mse(out: RenderOutput, batch: StepBatch) -> float:
    return ((out.rgb.detach() - batch.target) ** 2).mean().item()


def baseline_step(field_: RadianceField, batch: StepBatch, objective: Objective,
                  scale: Callable[[Tensor], Tensor] = lambda x: x, autocast=nullcontext) -> StepResult:
    """Forward all samples with the autograd graph, backward through all of them."""
    t0 = time.perf_counter()
    x, d = batch.samples.positions(batch.rays), batch.samples.directions(batch.rays)
    with autocast():
        raw = field_.raw(x, d)
    loss, out = loss_from_raw(field_, raw, batch, objective)
    t1 = time.perf_counter()
    scale(loss).backward()
    t2 = time.perf_counter()
    n = len(batch.samples)
    return StepResult(loss.item(), _mse(out, batch), n, n,
                      {"forward": t1 - t0, "backward": t2 - t1})


class HardSampleMiner:
    """The HSM step with its state (the EMA ``tau`` of the hardness concentration).

    Step, for ``B`` samples:

    1. ``raw = field.raw(x, d)`` without a graph;
    2. ``g = d loss / d raw`` through the tiny graph of :func:`loss_from_raw`;
    3. hardness ``n_i = ||g_i||_2``, ``p_i = n_i / sum_j n_j``;
    4. ``tau_now = sqrt(B sum_i p_i^2)``; if ``tau_now > 1``: ``tau <- ema tau + (1 - ema) tau_now``;
       ``b = int(clamp(B / tau, min_fraction B, max_fraction B))``;
    5. draw ``b`` indices from ``p`` without replacement; forward them with the graph and
       back-propagate the injected gradient ``g[idx]`` (no 1 / (b p_i) re-weighting).

    Example (step 4): ``B = 4``, ``p = (0.7, 0.1, 0.1, 0.1)``: ``sum p^2 = 0.52``,
    ``tau_now = sqrt(2.08) = 1.442``; from ``tau = 1`` with ``ema = 0.99``:
    ``tau = 1.00442``, ``b = int(clamp(3.98, 0.2, 2.0)) = 2``.
    """

    def __init__(self, config: HSMConfig):
        self.config = config
        self.tau = 1.0

    def update_tau(self, p: Tensor) -> float:
        tau_now = math.sqrt(p.numel() * float((p.double() ** 2).sum()))
        if tau_now > 1.0:
            self.tau = self.config.ema * self.tau + (1.0 - self.config.ema) * tau_now
        return tau_now

    def n_keep(self, n_samples: int) -> int:
        lo, hi = self.config.min_fraction * n_samples, self.config.max_fraction * n_samples
        return int(min(max(n_samples / self.tau, lo), hi))

    def step(self, field_: RadianceField, batch: StepBatch, objective: Objective,
             generator: torch.Generator | None = None, scale: Callable[[Tensor], Tensor] = lambda x: x,
             autocast=nullcontext) -> StepResult:
        t0 = time.perf_counter()
        x, d = batch.samples.positions(batch.rays), batch.samples.directions(batch.rays)
        n = x.shape[0]
        with torch.no_grad(), autocast():
            raw_all = field_.raw(x, d).float()
        t1 = time.perf_counter()
        raw_leaf = raw_all.requires_grad_()
        loss, out = loss_from_raw(field_, raw_leaf, batch, objective)
        (g,) = torch.autograd.grad(loss, raw_leaf) if n else (raw_leaf,)
        hardness = g.norm(dim=-1)
        total = hardness.sum()
        idx = torch.zeros(0, dtype=torch.long, device=x.device)
        if n and total > 0:
            p = hardness / total
            self.update_tau(p)
            b = min(self.n_keep(n), int((p > 0).sum()))
            if b >= n:
                idx = torch.arange(n, device=x.device)
            elif b > 0:
                idx = torch.multinomial(p, b, replacement=False, generator=generator).sort().values
        t2 = time.perf_counter()
        if idx.numel():
            with autocast():
                raw_b = field_.raw(x[idx], d[idx])
            surrogate = (raw_b.float() * g[idx]).sum()  # d surrogate / d raw_b = g[idx]
            t3 = time.perf_counter()
            scale(surrogate).backward()
        else:
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        return StepResult(loss.item(), _mse(out, batch), n, int(idx.numel()),
                          {"first_pass": t1 - t0, "selection": t2 - t1, "second_pass": t3 - t2,
                           "backward": t4 - t3}, hardness=hardness.detach())
