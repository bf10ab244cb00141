"""Scene geometry shared by samplers, fields and models: the ray-box slab test and scene contraction.

Vocabulary:

* ``aabb``: ``(6,)`` axis-aligned box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
* ``origins``, ``directions``: ``(n_rays, 3)``; a ray is ``o + t d``, ``t`` the ray distance
  (Euclidean when ``d`` has unit length, see :mod:`radfield.cameras`).
* ``t_near``, ``t_far``: ``(n_rays,)`` where a ray enters and leaves the box.
* contraction: a map of all of space onto a bounded region, the identity inside the unit ball
  (or cube) and ``(2 - 1/|x|) x / |x|`` outside it, so that an unbounded scene fits a grid.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays

__all__ = ["ray_aabb_intersect", "box_near_far", "contract"]


# --------------------------------------------------------------------------- the slab test

def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test: ``t_near = max_k min(t0_k, t1_k)``, ``t_far = min_k max(t0_k, t1_k)`` with
    ``t0_k = (aabb_min_k - o_k) / d_k`` and ``t1_k = (aabb_max_k - o_k) / d_k`` per axis ``k``
    (``|d_k| < 1e-12`` is replaced by ``1e-12``, so an axis-parallel ray gets huge finite slabs).

    Example: box ``[-1, 1]^3``, ``o = (-3, 0, 0)``, ``d = (1, 0, 0)``: ``t_near = 2``,
    ``t_far = 4``.

    Returns ``(t_near, t_far)``, ``(n_rays,)``; rays missing the box get ``t_near > t_far``.
    ``t_near`` may be negative when the origin is inside the box.
    """
    inv_d = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[:3] - origins) * inv_d
    t1 = (aabb[3:] - origins) * inv_d
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


def box_near_far(rays: Rays, aabb: Tensor, min_near: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``(near, far)`` ``(n_rays,)``: where each ray enters and leaves the box,
    ``near = max(t_near, min_near)``, ``far = max(t_far, near)``; so a ray starting inside the
    box starts at ``min_near`` and a ray that misses gets ``near = far`` (an empty range)."""
    near, far = ray_aabb_intersect(rays.origins, rays.directions, aabb)
    near = near.clamp(min=min_near)
    far = torch.maximum(far, near)
    return near, far


# --------------------------------------------------------------------------- scene contraction

def _magnitude(x: Tensor, norm: str, caller: str) -> Tensor:
    """``(..., 1)`` the L2 (``"l2"``) or L-infinity (``"inf"``) norm of ``x``'s last dimension."""
    if norm == "l2":
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if norm == "inf":
        return x.abs().amax(dim=-1, keepdim=True)
    raise ValueError(f"{caller}: unknown norm {norm!r} (expected 'l2' or 'inf')")


def contract(x: Tensor, norm: str = "inf") -> Tensor:
    """Squash all of space into a ball (``"l2"``) or cube (``"inf"``) of radius 2.

    ``contract(x) = x`` if ``|x| <= 1`` else ``(2 - 1/|x|) x / |x|``, with ``|x|`` the L2 norm
    (mip-NeRF 360) or the L-infinity norm (nerfacto: the cube ``[-2, 2]^3``).

    Example (``norm="l2"``): ``(0.5, 0, 0) -> (0.5, 0, 0)``; ``(4, 0, 0) -> (1.75, 0, 0)``;
    ``(3, 4, 0)``, ``|x| = 5``: ``(2 - 0.2) (0.6, 0.8, 0) = (1.08, 1.44, 0)``.
    (``norm="inf"``): ``(4, 2, 0)``, ``|x| = 4``: ``1.75 (1, 0.5, 0) = (1.75, 0.875, 0)``.

    Args:
        x: ``(..., 3)`` points (any last dimension works).
        norm: ``"l2"`` or ``"inf"``.
    Returns:
        ``(..., 3)``, with norm ``< 2``. Gradients are finite at ``x = 0`` and for huge ``|x|``.
    """
    mag = _magnitude(x, norm, "contract")
    # Evaluate the outer branch on |x| >= 1 only, so neither branch divides by zero.
    mag_out = mag.clamp_min(1.0)
    outside = (2.0 - 1.0 / mag_out) * (x / mag_out)
    return torch.where(mag <= 1.0, x, outside)


def uncontract(y: Tensor, norm: str = "inf") -> Tensor:
    """The inverse of :func:`contract`: ``y`` if ``|y| <= 1``, else ``y / (|y| (2 - |y|))``, so
    the shell ``1 < |y| < 2`` goes back to ``|x| = 1 / (2 - |y|)``; ``|y| >= 2`` (infinity)
    gives ``inf`` in its non-zero coordinates (``nan`` in zero ones).

    Example (``norm="inf"``): ``(1.75, 0.875, 0) -> (4, 2, 0)``; ``(0.5, 0, 0)`` is unchanged."""
    mag = _magnitude(y, norm, "uncontract")
    mag_out = mag.clamp(1.0, 2.0)
    return torch.where(mag <= 1.0, y, y / (mag_out * (2.0 - mag_out)))
