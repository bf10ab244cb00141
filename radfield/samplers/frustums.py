"""Samples as Gaussians: the moments of a conical frustum (mip-NeRF) or a cylinder along a ray.

Vocabulary:
    d          ``directions``, ``(n_samples, 3)``: the ray direction of each sample, not necessarily
               unit length. A point on the ray axis is ``o + t d`` (``o`` the ray origin).
    t0, t1     ``t_starts, t_ends``, ``(n_samples,)``: the sample's interval along the ray, in
               units of the ray parameter ``t`` (world distance ``t |d|``), ``0 <= t0 <= t1``.
    R          ``radii``, ``(n_samples,)`` (or anything broadcastable to it): world-space radius per
               unit of ``t``. The cone's cross-section at parameter ``t`` is a disk of radius ``t R``
               (mip-NeRF: ``R = 2 / sqrt(12)`` times the world spacing of neighbouring pixels' rays
               at ``t = 1``); the cylinder's is a disk of constant radius ``R``.
    mu, h      ``mu = (t0 + t1) / 2``, ``h = (t1 - t0) / 2``: the interval's midpoint and half-width,
               the numerically stable parameterisation of mip-NeRF (no ``t1^3 - t0^3`` cancellation).
    t_mean, t_var   mean and variance of ``t`` over the solid (points uniform in its volume).
    r_var      variance of the solid's points along any one axis perpendicular to ``d``.

Output: ``mean_offset`` ``(n_samples, 3)``, relative to the ray origin (the caller adds
``origins[ray_indices]``), and ``var`` ``(n_samples, 3)`` (diagonal of the covariance) or ``cov``
``(n_samples, 3, 3)`` (full covariance). Works on packed samples (see
:mod:`radfield.rendering.volume`), including zero samples; any leading shape ``(...,)`` works too.

Cone moments (derived here; identical to mip-NeRF's eq. 7 after algebra, which the tests check).
The frustum is ``{o + t d + r u : t0 <= t <= t1, u unit and orthogonal to d, 0 <= r <= t R}``. Its
volume element is ``|d| dt * r dr dtheta``, so ``t`` has density proportional to the disk area
``pi t^2 R^2``, i.e. ``p(t) ~ t^2`` on ``[t0, t1]``, and given ``t`` the point is uniform in a
disk of radius ``t R`` (per-axis variance ``t^2 R^2 / 4``). With ``D = 3 mu^2 + h^2``:

    E[t]    = 3/4 (t1^4 - t0^4) / (t1^3 - t0^3) = mu + 2 mu h^2 / D
    Var[t]  = 3/5 (t1^5 - t0^5)/(t1^3 - t0^3) - E[t]^2 = 3 h^2 (4 mu^4 + (t0 t1)^2) / (5 D^2)
    r_var   = R^2 / 4 * E[t^2],   E[t^2] = mu^2 + h^2 (25 mu^2 + 3 h^2) / (5 D)

(the numerator ``4 mu^4 + (t0 t1)^2`` is ``5 mu^4 - 2 mu^2 h^2 + h^4`` as a sum of squares, so the
variance is non-negative in floating point). Cylinder: ``t`` is uniform, so ``E[t] = mu``,
``Var[t] = (t1 - t0)^2 / 12``, ``r_var = R^2 / 4``.

Lifting to 3-D: the covariance is ``t_var d d^T + r_var (I - d d^T / |d|^2)``, whose diagonal is
``t_var d^2 + r_var (1 - d^2 / |d|^2)`` (elementwise squares); the mean is ``t_mean d``.

Worked example (cone): t0 = 1, t1 = 3 -> mu = 2, h = 1, D = 13, E[t] = 2 + 4/13 = 2.3077,
Var[t] = 3 (64 + 9) / (5 * 169) = 0.25917, E[t^2] = 4 + 103/65 = 5.5846; with R = 0.1 and
d = (0, 0, 2): mean = (0, 0, 4.6154), var = (0.013962, 0.013962, 1.03669).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "conical_frustum_moments",
    "cylinder_moments",
    "lift_gaussian",
    "conical_frustum_to_gaussian",
    "cylinder_to_gaussian",
]


def conical_frustum_moments(t_starts: Tensor, t_ends: Tensor, radii: Tensor
                            ) -> tuple[Tensor, Tensor, Tensor]:
    """``(t_mean, t_var, r_var)``, each ``(n_samples,)``, of the cone frustum (module docstring).

    ``t_mean = mu + 2 mu h^2 / D``, ``t_var = 3 h^2 (4 mu^4 + (t0 t1)^2) / (5 D^2)``,
    ``r_var = R^2 / 4 (mu^2 + h^2 (25 mu^2 + 3 h^2) / (5 D))``, ``D = 3 mu^2 + h^2``.
    Each fraction is written as a bounded ratio, so t0 == t1 (a disk: t_var = 0,
    r_var = (t0 R)^2 / 4) is exact and has finite gradients; t0 == t1 == 0 gives zeros.

    >>> [round(float(v), 5) for v in conical_frustum_moments(
    ...     torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([0.1]))]
    [2.30769, 0.25917, 0.01396]
    """
    mu = (t_starts + t_ends) / 2
    h = (t_ends - t_starts) / 2
    mu2, h2 = mu * mu, h * h
    den = (3 * mu2 + h2).clamp_min(torch.finfo(mu.dtype).tiny)
    t_mean = mu + 2 * mu * (h2 / den)
    t_var = 0.6 * h2 * ((2 * mu2 / den) ** 2 + (t_starts * t_ends / den) ** 2)
    t_sq = mu2 + h2 * ((25 * mu2 + 3 * h2) / (5 * den))
    r_var = radii * radii / 4 * t_sq
    return t_mean, t_var, r_var


def cylinder_moments(t_starts: Tensor, t_ends: Tensor, radii: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """``(t_mean, t_var, r_var)``, each ``(n_samples,)``, of a cylinder of radius ``R``:
    ``t_mean = (t0 + t1) / 2``, ``t_var = (t1 - t0)^2 / 12``, ``r_var = R^2 / 4``.

    >>> [float(v) for v in cylinder_moments(torch.tensor([1.0]), torch.tensor([4.0]),
    ...                                     torch.tensor([0.5]))]
    [2.5, 0.75, 0.0625]
    """
    t_mean = (t_starts + t_ends) / 2
    t_var = (t_ends - t_starts) ** 2 / 12
    r_var = torch.broadcast_to(radii * radii / 4, t_mean.shape)
    return t_mean, t_var, r_var


def lift_gaussian(directions: Tensor, t_mean: Tensor, t_var: Tensor, r_var: Tensor,
                  diagonal: bool = True) -> tuple[Tensor, Tensor]:
    """Lift 1-D moments along ``d`` to a 3-D Gaussian.

    ``mean = t_mean d`` ``(n_samples, 3)``; ``cov = t_var d d^T + r_var (I - d d^T / |d|^2)``
    ``(n_samples, 3, 3)``, or with ``diagonal=True`` its diagonal ``(n_samples, 3)``
    ``t_var d^2 + r_var (1 - d^2 / |d|^2)``. ``|d|^2`` is clamped at 1e-10 (a zero direction
    gives the isotropic ``r_var`` ball).

    Example: d = (3, 4, 0), t_mean = 1, t_var = 0.01, r_var = 0.25 -> mean (3, 4, 0),
    var = (0.09 + 0.25 * 16/25, 0.16 + 0.25 * 9/25, 0.25) = (0.25, 0.25, 0.25).
    """
    t_mean, t_var, r_var = t_mean[..., None], t_var[..., None], r_var[..., None]
    mean = t_mean * directions
    d_mag_sq = (directions * directions).sum(-1, keepdim=True).clamp_min(1e-10)
    if diagonal:
        d_sq = directions * directions
        return mean, t_var * d_sq + r_var * (1 - d_sq / d_mag_sq)
    outer = directions[..., :, None] * directions[..., None, :]
    eye = torch.eye(3, dtype=directions.dtype, device=directions.device)
    null_outer = eye - outer / d_mag_sq[..., None]
    return mean, t_var[..., None] * outer + r_var[..., None] * null_outer


def _check(directions: Tensor, t_starts: Tensor, t_ends: Tensor) -> None:
    if directions.shape[-1] != 3 or directions.shape[:-1] != t_starts.shape:
        raise ValueError(f"directions must be (n_samples, 3) and t_starts (n_samples,), got "
                         f"{tuple(directions.shape)} and {tuple(t_starts.shape)}")
    if t_ends.shape != t_starts.shape:
        raise ValueError(f"t_ends must have shape {tuple(t_starts.shape)}, got {tuple(t_ends.shape)}")


def conical_frustum_to_gaussian(directions: Tensor, t_starts: Tensor, t_ends: Tensor,
                                radii: Tensor, diagonal: bool = True) -> tuple[Tensor, Tensor]:
    """Gaussian approximation of the cone frustum between ``t0`` and ``t1`` (mip-NeRF).

    directions ``(n_samples, 3)``, t_starts / t_ends ``(n_samples,)``, radii broadcastable to
    ``(n_samples,)`` -> ``(mean_offset (n_samples, 3), var (n_samples, 3))``, or
    ``(mean_offset, cov (n_samples, 3, 3))`` with ``diagonal=False``. The mean is relative to the
    ray origin. Moments: :func:`conical_frustum_moments`; lifting: :func:`lift_gaussian`.
    """
    _check(directions, t_starts, t_ends)
    t_mean, t_var, r_var = conical_frustum_moments(t_starts, t_ends, radii)
    return lift_gaussian(directions, t_mean, t_var, r_var, diagonal)


def cylinder_to_gaussian(directions: Tensor, t_starts: Tensor, t_ends: Tensor,
                         radii: Tensor, diagonal: bool = True) -> tuple[Tensor, Tensor]:
    """Gaussian of the cylinder of constant radius ``radii`` between ``t0`` and ``t1``.

    Same shapes as :func:`conical_frustum_to_gaussian`; moments: :func:`cylinder_moments`.
    """
    _check(directions, t_starts, t_ends)
    t_mean, t_var, r_var = cylinder_moments(t_starts, t_ends, radii)
    return lift_gaussian(directions, t_mean, t_var, r_var, diagonal)
