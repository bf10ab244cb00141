"""Rotations as unit quaternions, and spherical linear interpolation between them.

Vocabulary (used by camera paths and the viewer):

* ``q``: a unit quaternion ``(..., 4)`` stored scalar first, ``(w, x, y, z)`` (Hamilton
  convention, the order viser's ``wxyz`` uses). ``q`` and ``-q`` are the same rotation.
* ``rot``: a rotation matrix ``(..., 3, 3)`` acting on column vectors, ``x' = rot @ x``.
* The rotation by angle ``a`` about the unit axis ``n`` is ``q = (cos(a/2), sin(a/2) n)``.

Example: 90 degrees about z is ``q = (0.7071, 0, 0, 0.7071)``; its matrix sends x to y:
``[[0, -1, 0], [1, 0, 0], [0, 0, 1]]``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation matrix of the quaternions ``q`` ``(..., 4)`` (normalised first).

    ``rot = [[1 - 2(y^2 + z^2), 2(xy - wz), 2(xz + wy)],
             [2(xy + wz), 1 - 2(x^2 + z^2), 2(yz - wx)],
             [2(xz - wy), 2(yz + wx), 1 - 2(x^2 + y^2)]]``
    """
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, -2)


def matrix_to_quaternion(rot: Tensor) -> Tensor:
    """Unit quaternions ``(..., 4)``, ``w >= 0``, of rotation matrices ``rot`` ``(..., 3, 3)``.

    Shepperd's method: of ``4w^2 = 1 + r00 + r11 + r22``, ``4x^2 = 1 + r00 - r11 - r22``,
    ``4y^2 = 1 - r00 + r11 - r22``, ``4z^2 = 1 - r00 - r11 + r22`` the largest is taken as the
    pivot (well away from 0), and the other components follow from the off-diagonal sums and
    differences divided by 4 times the pivot, e.g. ``x = (r21 - r12) / (4w)`` on the w pivot.
    """
    r = rot
    r00, r11, r22 = r[..., 0, 0], r[..., 1, 1], r[..., 2, 2]
    four_sq = torch.stack([1 + r00 + r11 + r22, 1 + r00 - r11 - r22,
                           1 - r00 + r11 - r22, 1 - r00 - r11 + r22], -1)
    s21, s02, s10 = r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]
    a01, a02, a12 = r[..., 0, 1] + r[..., 1, 0], r[..., 0, 2] + r[..., 2, 0], r[..., 1, 2] + r[..., 2, 1]
    # Row k: 4 * pivot_k times the quaternion, from pivot k (w, x, y, z).
    candidates = torch.stack([
        torch.stack([four_sq[..., 0], s21, s02, s10], -1),
        torch.stack([s21, four_sq[..., 1], a01, a02], -1),
        torch.stack([s02, a01, four_sq[..., 2], a12], -1),
        torch.stack([s10, a02, a12, four_sq[..., 3]], -1),
    ], -2)
    pivot = four_sq.argmax(-1)
    q = torch.gather(candidates, -2, pivot[..., None, None].expand(*pivot.shape, 1, 4)).squeeze(-2)
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def slerp(q0: Tensor, q1: Tensor, t: Tensor | float) -> Tensor:
    """Spherical linear interpolation from ``q0`` to ``q1`` ``(..., 4)`` at ``t`` in [0, 1],
    along the shorter arc (``q1`` is negated when ``q0 . q1 < 0``).

    ``slerp = (sin((1 - t) a) q0 + sin(t a) q1) / sin(a)`` with ``cos(a) = q0 . q1``: the
    rotation turns at a constant rate about one axis. Example: from the identity to 90 degrees
    about z, ``t = 0.5`` is 45 degrees about z, ``(cos 22.5, 0, 0, sin 22.5)``.
    """
    t = torch.as_tensor(t, dtype=q0.dtype, device=q0.device)
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)
    dot = dot.abs().clamp(max=1.0)
    t = t[..., None] if t.ndim else t
    angle = torch.acos(dot)
    sin = torch.sin(angle)
    near = sin < 1e-6  # (almost) the same rotation: linear interpolation is exact enough
    safe = torch.where(near, torch.ones_like(sin), sin)
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * angle) / safe)
    w1 = torch.where(near, t, torch.sin(t * angle) / safe)
    q = w0 * q0 + w1 * q1
    return q / q.norm(dim=-1, keepdim=True)
