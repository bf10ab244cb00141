"""The two training steps: the baseline step and the hard-sample-mining (HSM) step.

Both take a model and a batch and leave gradients in the parameters; the caller runs the
optimiser. They share :func:`loss_from_raw`, the whole path from pre-activation field outputs to
the scalar training loss (the one render path,
:func:`radfield.rendering.pipeline.render_samples`, then the objective and the model's
``extra_losses``), so ``--hsm`` optimises exactly the same objective as the baseline and only
changes how much of it is back-propagated through the network
(``shared/specs/hard-sample-mining.md``).

Hierarchical models (coarse + fine, proposal networks) sample their final level with earlier
levels whose graphs are already built when the step starts (``batch.samples.levels``): their
losses (coarse photometric, interlevel) are part of the objective and are back-propagated in
full by both steps; mining applies to the final level, where the samples and the cost are.
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
from radfield.losses.depth import DepthLoss
from radfield.losses.interlevel import interlevel_loss
from radfield.losses.regularisers import distortion
from radfield.errors import RadfieldError
from radfield.rendering.pipeline import render_samples
from radfield.rendering.volume import RenderOutput
from radfield.samplers.samples import Samples, packed_from_bins


@dataclass
class StepBatch:
    """One training batch: rays, their samples, target colours and backgrounds, and, with depth
    supervision, the rays' measured depths."""

    rays: Rays
    samples: Samples
    target: Tensor
    """``(n_rays, 3)``."""
    background: Tensor | None
    """``(n_rays, 3)`` or ``(3,)`` (from :func:`radfield.rendering.backgrounds.ray_background`);
    may carry a graph (a learned background)."""
    patch_size: int | None = None
    """Rays come as square patches of this size (row-major per patch) for patch losses."""
    depth: Tensor | None = None
    """``(n_rays,)`` measured depth **along the ray** (planar depth / ``z_per_t``), 0 = none."""
    depth_eps: Tensor | None = None
    """``(n_rays,)`` the depth loss's uncertainty (or window) per ray, in ``depth_unit``."""
    depth_scale: float = 1.0
    """The factor on the depth loss's weight this step (``train.depth.anneal``)."""
    depth_unit: float = 1.0
    """The length the depth loss measures distances in (``train.depth.unit``): it sees ``t /
    depth_unit`` and ``depth / depth_unit``; ``depth_eps`` is in this unit."""
    near_gradient: float = 0.0
    """"Floaters No More" (Philip and Deschaintre 2023): the gradient reaching each sample's
    field outputs is scaled by ``min(1, (t / near_gradient)^2)``, ``t`` its distance from the
    camera, so the few rays that see the space just in front of a camera cannot grow floaters
    there as fast as it is sampled; 0 = off."""


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by ``factor`` (broadcast)."""

    @staticmethod
    def forward(ctx, x: Tensor, factor: Tensor) -> Tensor:
        ctx.save_for_backward(factor)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (factor,) = ctx.saved_tensors
        return grad * factor, None


def scale_near_gradients(raw: Tensor, samples: Samples, distance: float) -> Tensor:
    """``raw`` ``(n_samples, C)`` whose gradient is scaled by ``min(1, (t_mid / distance)^2)``
    per sample (:attr:`StepBatch.near_gradient`). Example: distance 0.5, a sample at 0.25 gets a
    quarter of its gradient, one at 0.5 or beyond all of it."""
    if distance <= 0 or not raw.requires_grad:
        return raw
    t_mid = (samples.t_starts + samples.t_ends) / 2
    factor = (t_mid / distance).square().clamp(max=1.0).to(raw.dtype)[:, None]
    return _ScaleGradient.apply(raw, factor)


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


def photometric_objective(loss_fn: Callable[..., Tensor], distortion_weight: float = 0.0) -> Objective:
    """The training objective of a batch:

    ``loss_fn(rgb, target) + distortion_weight * distortion(weights)`` (distortion in the
    sampler's spacing coordinates when it has them) plus, for each earlier level of a
    hierarchical sampler, ``level.weight * loss_fn(rgb_level, target)`` (coarse levels) or
    ``level.weight * interlevel(final weights, level weights)`` (proposal levels).

    ``loss_fn(pred, target)`` or, for patch losses, ``loss_fn(pred, target, patch_size)``.
    """

    def photometric(pred: Tensor, batch: StepBatch) -> Tensor:
        if batch.patch_size is None:
            return loss_fn(pred, batch.target)
        return loss_fn(pred, batch.target, batch.patch_size)

    def objective(out: RenderOutput, batch: StepBatch) -> Tensor:
        s = batch.samples
        loss = photometric(out.rgb, batch)
        if distortion_weight > 0:
            loss = loss + distortion_weight * distortion(out.weights, s.spacing_starts, s.spacing_ends,
                                                         s.ray_indices, s.n_rays)
        for level in s.levels:
            if level.weight == 0:
                continue
            if level.rgb is not None:
                rgb = level.rgb + (1.0 - level.opacity)[:, None] * batch.background
                loss = loss + level.weight * photometric(rgb, batch)
            else:
                final_s = torch.cat([s.spacing_starts.view(s.n_rays, -1),
                                     s.spacing_ends.view(s.n_rays, -1)[:, -1:]], dim=-1)
                loss = loss + level.weight * interlevel_loss(
                    final_s, out.weights.view(s.n_rays, -1), level.s, level.weights)
        return loss

    return objective


def with_depth_loss(objective: Objective, depth_loss: DepthLoss | None, weight: float,
                    all_levels: bool = False) -> Objective:
    """``objective + weight * batch.depth_scale * depth_loss(final weights, samples, batch.depth,
    batch.depth_eps)`` (:mod:`radfield.losses.depth`), distances in ``batch.depth_unit``;
    batches without depths get ``objective``
    alone. The depth loss acts on the final level's weights, like the distortion loss, so the HSM
    step keeps it in the gradient it injects; ``all_levels`` takes the mean of the term over the
    final and each earlier level's weights (their bins in ray distance), as nerfstudio's
    depth-nerfacto does."""
    if depth_loss is None or weight == 0:
        return objective

    def total(out: RenderOutput, batch: StepBatch) -> Tensor:
        loss = objective(out, batch)
        if batch.depth is None or batch.depth_scale == 0:
            return loss
        s, unit = batch.samples, batch.depth_unit
        levels = [(out.weights, s.t_starts, s.t_ends, s.ray_indices)]  # (weights, t_starts, t_ends, ray_indices)
        for level in s.levels if all_levels else []:
            bins = packed_from_bins(level.s if level.t is None else level.t)
            levels.append((level.weights.reshape(-1), bins.t_starts, bins.t_ends, bins.ray_indices))
        d = batch.depth / unit
        depth = sum(depth_loss(w, t0 / unit, t1 / unit, ri, s.n_rays, d, batch.depth_eps) for w, t0, t1, ri in levels)
        return loss + weight * batch.depth_scale * depth / len(levels)

    return total


def loss_from_raw(model, raw: Tensor, batch: StepBatch, objective: Objective
                  ) -> tuple[Tensor, RenderOutput]:
    """The training loss from the final level's pre-activation outputs ``raw``
    ``(n_samples, C)``: the one render path, the objective, and the model's ``extra_losses``."""
    raw = scale_near_gradients(raw, batch.samples, batch.near_gradient)
    out = render_samples(model, batch.rays, batch.samples, batch.background, raw=raw)
    loss = objective(out, batch)
    for term in model.extra_losses(batch.rays, batch.samples, raw).values():
        loss = loss + term
    return loss, out


def _mse(out: RenderOutput, batch: StepBatch) -> float:
    return ((out.rgb.detach() - batch.target) ** 2).mean().item()


def baseline_step(model, batch: StepBatch, objective: Objective,
                  scale: Callable[[Tensor], Tensor] = lambda x: x, autocast=nullcontext) -> StepResult:
    """Forward all samples with the autograd graph, backward through all of them."""
    t0 = time.perf_counter()
    inputs = model.field_inputs(batch.rays, batch.samples)
    with autocast():
        raw = model.field.raw(*inputs)
    loss, out = loss_from_raw(model, raw, batch, objective)
    t1 = time.perf_counter()
    scale(loss).backward()
    t2 = time.perf_counter()
    n = len(batch.samples)
    return StepResult(loss.item(), _mse(out, batch), n, n,
                      {"forward": t1 - t0, "backward": t2 - t1})


def draw_without_replacement(p: Tensor, b: int, generator: torch.Generator | None = None) -> Tensor:
    """``b`` distinct indices drawn from the probabilities ``p`` ``(n,)`` without replacement (each
    draw in proportion to ``p`` among those left, as ``torch.multinomial(p, b)``), sorted; ``b``
    at most the number of positive ``p``. The exponential race (Efraimidis and Spirakis 2006):
    keys ``E_i / p_i`` with ``E_i = -log U_i`` exponential; the ``b`` smallest win, found by
    ``kthvalue`` and one comparison, which returns them in order (on a 2-core CPU, 32 676
    samples, b = 9000: 0.54-0.57 ms against 1.52-1.56 ms for ``multinomial`` and a sort).

    Example: ``p = (0.5, 0.5, 0)``, ``b = 2``: always ``(0, 1)`` (the third key is infinite)."""
    keys = torch.rand(p.shape, generator=generator, device=p.device).log_().neg_().div_(p)
    threshold = keys.kthvalue(b).values
    return (keys <= threshold).nonzero()[:b, 0]


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

    Variants (:class:`radfield.config.HSMConfig`, all off by default): ``final_min_fraction``
    raises the lower clamp over the run (``progress``, set by the trainer before each step);
    ``importance_weights`` injects ``g[idx] / min(1, b p[idx])`` instead. Whether the batch's
    samples were pruned by early termination first is the trainer's (``early_stop``, on).

    Example (step 4): ``B = 4``, ``p = (0.7, 0.1, 0.1, 0.1)``: ``sum p^2 = 0.52``,
    ``tau_now = sqrt(2.08) = 1.442``; from ``tau = 1`` with ``ema = 0.99``:
    ``tau = 1.00442``, ``b = int(clamp(3.98, 0.2, 2.0)) = 2``.
    """

    def __init__(self, config: HSMConfig):
        for name in ("min_fraction", "max_fraction", "final_min_fraction"):
            value = getattr(config, name)
            if value is not None and not 0 < value <= 1:
                raise RadfieldError(f"train.hsm.{name}={value}: use a fraction in (0, 1]")
        if not config.first_pass_samples > 0:
            raise RadfieldError(f"train.hsm.first_pass_samples={config.first_pass_samples}: use a positive factor")
        self.config = config
        self.tau = 1.0
        self.progress = 0.0
        """The fraction of the run done (``final_min_fraction``'s clock)."""

    def update_tau(self, p: Tensor) -> float:
        tau_now = math.sqrt(p.numel() * float((p.double() ** 2).sum()))
        if tau_now > 1.0:
            self.tau = self.config.ema * self.tau + (1.0 - self.config.ema) * tau_now
        return tau_now

    def min_fraction(self) -> float:
        """The lower clamp now: ``min_fraction``, or with ``final_min_fraction`` the linear ramp
        between the two at ``progress``. Example: 0.05 -> 0.5 at progress 0.4: 0.23."""
        cfg = self.config
        if cfg.final_min_fraction is None:
            return cfg.min_fraction
        t = min(max(self.progress, 0.0), 1.0)
        return cfg.min_fraction + t * (cfg.final_min_fraction - cfg.min_fraction)

    def n_keep(self, n_samples: int) -> int:
        lo = self.min_fraction() * n_samples
        hi = max(self.config.max_fraction * n_samples, lo)
        return int(min(max(n_samples / self.tau, lo), hi))

    def step(self, model, batch: StepBatch, objective: Objective,
             generator: torch.Generator | None = None, scale: Callable[[Tensor], Tensor] = lambda x: x,
             autocast=nullcontext) -> StepResult:
        t0 = time.perf_counter()
        field_ = model.field
        inputs = model.field_inputs(batch.rays, batch.samples)
        n = len(batch.samples)
        device = batch.target.device
        with torch.no_grad(), autocast():
            raw_all = field_.raw(*inputs).float()
        t1 = time.perf_counter()
        raw_leaf = raw_all.requires_grad_()
        loss, out = loss_from_raw(model, raw_leaf, batch, objective)
        # One backward through the tiny graph gives g = d loss / d raw in raw_leaf.grad and, in
        # the same pass, the full gradients of whatever else the loss depends on (earlier
        # sampling levels, a learned background).
        if loss.requires_grad:
            factor = float(scale(torch.ones((), device=device)))
            scale(loss).backward()
            g = raw_leaf.grad / factor if raw_leaf.grad is not None else torch.zeros_like(raw_leaf)
        else:
            g = torch.zeros_like(raw_leaf)
        hardness = g.norm(dim=-1)
        total = hardness.sum()
        idx = torch.zeros(0, dtype=torch.long, device=device)
        if n and total > 0:
            p = hardness / total
            self.update_tau(p)
            b = min(self.n_keep(n), int((p > 0).sum()))
            if b >= n:
                idx = torch.arange(n, device=device)
            elif b > 0:
                idx = draw_without_replacement(p, b, generator)
        t2 = time.perf_counter()
        if idx.numel():
            with autocast():
                raw_b = field_.raw(*(x[idx] for x in inputs))
            g_b = g[idx]
            if self.config.importance_weights:
                g_b = g_b / (len(idx) * p[idx]).clamp(max=1.0)[:, None]
            surrogate = (raw_b.float() * g_b).sum()  # d surrogate / d raw_b = g_b
            t3 = time.perf_counter()
            scale(surrogate).backward()
        else:
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        return StepResult(loss.item(), _mse(out, batch), n, int(idx.numel()),
                          {"first_pass": t1 - t0, "selection": t2 - t1, "second_pass": t3 - t2,
                           "backward": t4 - t3}, hardness=hardness.detach())
