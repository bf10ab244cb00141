"""Distributions over camera poses whose samples are differentiable in the distribution's
parameters (Neural-Sim, Ge et al. 2022; ``shared/specs/pose-gradients.md``).

Vocabulary:

* cameras on a sphere about a look-at ``target`` (world z up, :func:`radfield.cameras.look_at`):
  **azimuth** ``a`` about z from +x, **elevation** ``e`` above the xy plane (degrees), **radius**
  ``r``; the eye is ``target + r (cos e cos a, cos e sin a, sin e)``
  (:func:`radfield.cameras.orbit_poses`' angles).
* **bins**: ``[lo, hi]`` of an angle is cut into ``K`` equal bins of width ``w = (hi - lo) / K``
  with centres ``c_k = lo + (k + 1/2) w``; ``psi`` ``(K,)`` are the bins' logits, the categorical
  probabilities ``p = softmax(psi)``.
* **Gumbel-softmax sample** at temperature ``tau``: ``y = softmax((psi + g) / tau)``,
  ``g_k = -log(-log u_k)``, ``u_k ~ U(0, 1)``; with ``straight_through``, ``y`` is the one-hot
  of its largest entry in the forward pass and keeps the soft gradient
  (``y_hard - y.detach() + y``). The angle is the soft-selected centre plus a uniform jitter
  within a bin: ``angle = sum_k y_k c_k + (v - 1/2) w``, ``v ~ U(0, 1)``. As ``tau -> 0``, ``y``
  is the one-hot of a bin drawn with probabilities ``p`` (the Gumbel-max trick), so the angle is
  uniform in a bin drawn from ``p``; the sample is a differentiable function of ``psi`` for
  fixed noise ``(u, v)`` (reparameterised), so a loss on images rendered from it has a gradient
  on ``psi``.
* Neural-Sim's distribution is 8 azimuth bins of 45 degrees, ``tau = 0.1``, one elevation bin
  (its "elevation ~ U(85, 95)" is a polar angle: here ``elevation_range = (-5, 5)``), a fixed
  radius.

The soft centre is an average of the centres: ``sum_k y_k c_k`` on a range short of a full
turn; on a full turn (``hi - lo = 360``) the circular mean ``atan2(sum_k y_k sin c_k, sum_k y_k
cos c_k)``, so a ``y`` split between the first and the last azimuth bin lands between them, not
half-way round, and neighbouring bins across the wrap pass gradient to each other. The two agree
for a one-hot ``y``; at low temperature ``y`` is almost always nearly one-hot, which is why
Neural-Sim samples at ``tau = 0.1``.

With ``bins`` given (:meth:`PoseDistribution.sample`), ``y`` is their one-hot and the samples
carry no gradient to the logits: the per-bin renders of an estimator that sums over the bins
exactly (:func:`mixture_mmd2`) rather than sampling them.

Example: azimuth bins over ``[0, 360)``, ``K = 8``: centres 22.5, 67.5, ..., 337.5; a one-hot
``y`` on bin 2 with ``v = 0.25`` gives ``a = 112.5 - 11.25 = 101.25`` degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from radfield.cameras import look_at

__all__ = ["BinnedAngle", "PoseDistribution", "PoseSample", "gumbel_softmax", "MixtureBank", "mixture_mmd2", "mmd2",
           "total_variation"]


def gumbel_softmax(logits: Tensor, u: Tensor, temperature: float, straight_through: bool = False) -> Tensor:
    """``(n, K)`` relaxed one-hot samples ``softmax((logits + g) / tau)``, ``g = -log(-log u)``,
    from uniforms ``u`` ``(n, K)`` in (0, 1) (module docstring; straight-through: one-hot values,
    soft gradients). Example: logits ``(0, 0)``, ``u = (e^-1, e^-e)`` (``g = (0, -1)``), ``tau = 1``
    -> ``softmax(0, -1) = (0.731, 0.269)``."""
    g = -torch.log(-torch.log(u))
    y = torch.softmax((logits + g) / temperature, dim=-1)
    if not straight_through:
        return y
    hard = torch.nn.functional.one_hot(y.argmax(-1), y.shape[-1]).to(y.dtype)
    return hard - y.detach() + y


def total_variation(p: Tensor, q: Tensor) -> Tensor:
    """``(1/2) sum_k |p_k - q_k|`` between probability vectors. Example: ``(1, 0)`` and
    ``(0.5, 0.5)`` -> 0.5."""
    return 0.5 * (p - q).abs().sum(-1)


def mmd2(x: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    """Biased squared maximum mean discrepancy between the rows of ``x`` ``(n, D)`` and of ``y``
    ``(m, D)``, Gaussian kernel ``k(a, b) = exp(-|a - b|^2 / (2 h^2))``:
    ``mean k(x, x') - 2 mean k(x, y) + mean k(y, y')``. Example: one point each, 1 apart, ``h = 1``
    -> ``2 - 2 e^-1/2 = 0.787``."""
    return _gaussian(x, x, bandwidth).mean() - 2 * _gaussian(x, y, bandwidth).mean() + _gaussian(y, y, bandwidth).mean()


def mixture_mmd2(x: Tensor, p: Tensor, y: Tensor, bandwidth: float) -> Tensor:
    """:func:`mmd2` between the mixture ``sum_k p_k X_k`` of ``K`` sets ``x`` ``(K, m, D)`` (set
    ``k``: ``m`` samples of bin ``k``) and the rows of ``y``: ``p^T A p - 2 p^T b + c`` with
    ``A_kl = mean k(X_k, X_l)``, ``b_k = mean k(X_k, y)``, ``c = mean k(y, y')``. A quadratic in
    ``p``, differentiable in it and in ``x``; it sums over the bins exactly where a sampled
    estimate draws them. With ``p = (1/2, 1/2)`` it is ``mmd2`` of the two sets pooled."""
    k, m, d = x.shape
    gram = _gaussian(x.reshape(k * m, d), x.reshape(k * m, d), bandwidth).reshape(k, m, k, m).mean((1, 3))
    cross = _gaussian(x.reshape(k * m, d), y, bandwidth).reshape(k, m, -1).mean((1, 2))
    return _mixture_quadratic(p, gram, cross, _gaussian(y, y, bandwidth).mean())


def _mixture_quadratic(p: Tensor, gram: Tensor, cross: Tensor, yy: Tensor) -> Tensor:
    """``p^T A p - 2 p^T b + c``: the mixture's squared MMD from its kernel means."""
    return p @ gram @ p - 2 * p @ cross + yy


def _gaussian(a: Tensor, b: Tensor, bandwidth: float) -> Tensor:
    return torch.exp(-torch.cdist(a, b) ** 2 / (2 * bandwidth ** 2))


class MixtureBank:
    """:func:`mixture_mmd2` over a bank of views that grows by ``m`` views per bin at a time
    (``add``), against fixed targets ``y`` ``(n_y, D)``: the kernel sums between the bins
    (``A``'s numerators) and with the targets (``b``'s) are kept, so adding views costs
    ``O(m n)`` kernel values for a bank of ``n``, where recomputing ``A`` costs ``O(n^2)``.
    ``loss(p)`` equals ``mixture_mmd2(bank, p, y, bandwidth)``."""

    def __init__(self, y: Tensor, bandwidth: float):
        self.y, self.bandwidth = y, bandwidth
        self.yy = _gaussian(y, y, bandwidth).mean()
        self.x: Tensor | None = None  # (K, n, D), the bank
        self.pairs: Tensor | None = None  # (K, K): sum of k over every pair of views of bins k, l
        self.cross: Tensor | None = None  # (K,): sum of k over bin k's views and the targets

    @torch.no_grad()
    def add(self, x: Tensor) -> None:
        """Add ``x`` ``(K, m, D)``: ``m`` more views of each bin."""
        k, m, d = x.shape
        flat = x.reshape(k * m, d)
        pairs = _gaussian(flat, flat, self.bandwidth).reshape(k, m, k, m).sum((1, 3))
        cross = _gaussian(flat, self.y, self.bandwidth).reshape(k, -1).sum(1)
        if self.x is not None:
            old = _gaussian(self.x.reshape(-1, d), flat, self.bandwidth).reshape(k, -1, k, m).sum((1, 3))
            pairs, cross = self.pairs + old + old.T + pairs, self.cross + cross
        self.x = x.detach() if self.x is None else torch.cat([self.x, x.detach()], 1)
        self.pairs, self.cross = pairs, cross

    def loss(self, p: Tensor) -> Tensor:
        """The mixture's squared MMD at bin probabilities ``p`` ``(K,)`` (differentiable in ``p``)."""
        if self.x is None:
            raise ValueError("MixtureBank.loss: the bank is empty; add views first")
        n = self.x.shape[1]
        return _mixture_quadratic(p, self.pairs / n ** 2, self.cross / (n * len(self.y)), self.yy)


class BinnedAngle(nn.Module):
    """An angle (degrees) from ``K`` equal bins of ``[lo, hi]`` with learnable logits (zeros:
    uniform). ``sample(u, v) -> (angle (n,), y (n, K))`` from uniforms ``u`` ``(n, K)`` and
    ``v`` ``(n,)``; ``sample(u, v, bins)`` in the given bins ``(n,)`` (no gradient to the
    logits). A range of a full turn is periodic (the module docstring's circular mean)."""

    def __init__(self, n_bins: int, lo: float, hi: float, temperature: float = 0.1,
                 straight_through: bool = False):
        super().__init__()
        if n_bins < 1 or not hi >= lo:
            raise ValueError(f"BinnedAngle: need n_bins >= 1 and hi >= lo, got {n_bins}, [{lo}, {hi}]")
        if not temperature > 0:
            raise ValueError(f"BinnedAngle: the temperature must be positive, got {temperature}")
        self.lo, self.hi, self.temperature, self.straight_through = lo, hi, temperature, straight_through
        self.logits = nn.Parameter(torch.zeros(n_bins))
        width = (hi - lo) / n_bins
        self.width = width
        self.register_buffer("centres", lo + (torch.arange(n_bins, dtype=torch.float32) + 0.5) * width,
                             persistent=False)

    def probabilities(self) -> Tensor:
        """``(K,)`` ``softmax(logits)``."""
        return torch.softmax(self.logits, -1)

    def bin_of(self, angle: Tensor) -> Tensor:
        """``(n,)`` long: the bin each angle (degrees) lies in; a full turn wraps, otherwise angles
        outside ``[lo, hi]`` fall in the end bins. Example: 8 bins of ``[0, 360]``, ``-10 -> 7``."""
        offset = angle - self.lo
        if self.periodic:
            offset = torch.remainder(offset, 360.0)
        return (offset / self.width).floor().long().clamp(0, self.logits.numel() - 1)

    @property
    def periodic(self) -> bool:
        return abs(self.hi - self.lo - 360.0) < 1e-6

    def sample(self, u: Tensor, v: Tensor, bins: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if bins is None:
            y = gumbel_softmax(self.logits, u, self.temperature, self.straight_through)
        else:
            y = torch.nn.functional.one_hot(bins, self.logits.numel()).to(self.logits.dtype)
        if self.periodic:
            c = torch.deg2rad(self.centres)
            mean = torch.rad2deg(torch.atan2(y @ torch.sin(c), y @ torch.cos(c)))
            centre = self.lo + torch.remainder(mean - self.lo, 360.0)
        else:
            centre = y @ self.centres
        return centre + (v - 0.5) * self.width, y


@dataclass
class PoseSample:
    """``n`` sampled cameras: ``c2w`` ``(n, 3, 4)``; ``azimuth``, ``elevation`` (degrees),
    ``radius`` ``(n,)``; the relaxed bin selections ``azimuth_bins`` ``(n, K_a)`` and
    ``elevation_bins`` ``(n, K_e)``. All differentiable in the distribution's logits."""

    c2w: Tensor
    azimuth: Tensor
    elevation: Tensor
    radius: Tensor
    azimuth_bins: Tensor
    elevation_bins: Tensor


class PoseDistribution(nn.Module):
    """Cameras on a sphere about ``target`` looking at it: azimuth and elevation from learnable
    categorical bins (:class:`BinnedAngle`), radius uniform in ``radius_range``.

    Parameters: ``azimuth.logits`` ``(K_a,)`` and ``elevation.logits`` ``(K_e,)``. The noise of
    :meth:`sample` comes from ``generator``: the same seed gives the same cameras for the same
    logits (replayable), and different logits move them differentiably.
    """

    def __init__(self, azimuth_bins: int = 8, azimuth_range: tuple[float, float] = (0.0, 360.0),
                 elevation_bins: int = 1, elevation_range: tuple[float, float] = (-5.0, 5.0),
                 radius_range: tuple[float, float] = (4.0, 4.0),
                 target: tuple[float, float, float] = (0.0, 0.0, 0.0), temperature: float = 0.1,
                 straight_through: bool = False):
        super().__init__()
        self.azimuth = BinnedAngle(azimuth_bins, *azimuth_range, temperature, straight_through)
        self.elevation = BinnedAngle(elevation_bins, *elevation_range, temperature, straight_through)
        self.radius_range = radius_range
        self.register_buffer("target", torch.tensor(target, dtype=torch.float32), persistent=False)

    def sample(self, n: int, generator: torch.Generator | None = None,
               azimuth_bins: Tensor | None = None) -> PoseSample:
        """``n`` cameras (module docstring of :mod:`radfield.poses.distribution`); the uniforms are
        drawn in one block ``(n, K_a + K_e + 3)`` from ``generator``. ``azimuth_bins`` ``(n,)``:
        each camera's azimuth bin, given rather than drawn (uniform within it)."""
        ka, ke = self.azimuth.logits.numel(), self.elevation.logits.numel()
        dev = self.azimuth.logits.device
        noise = torch.rand(n, ka + ke + 3, generator=generator, device=dev).clamp(1e-6, 1 - 1e-6)
        az, y_a = self.azimuth.sample(noise[:, :ka], noise[:, ka + ke], azimuth_bins)
        el, y_e = self.elevation.sample(noise[:, ka:ka + ke], noise[:, ka + ke + 1])
        r0, r1 = self.radius_range
        radius = r0 + noise[:, ka + ke + 2] * (r1 - r0)
        a, e = az * (math.pi / 180), el * (math.pi / 180)
        eye = self.target + radius[:, None] * torch.stack(
            [torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], -1)
        return PoseSample(look_at(eye, self.target), az, el, radius, y_a, y_e)
