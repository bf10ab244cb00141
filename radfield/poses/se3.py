"""Rigid motions: the exponential and logarithm maps of SO(3) and SE(3), and pose algebra on
camera-to-world matrices.

Vocabulary:

* ``phi``: a rotation vector ``(..., 3)``, axis times angle; ``theta = |phi|`` in radians.
* ``hat(v)``: the skew matrix with ``hat(v) @ x = v x x`` (cross product).
* ``xi``: a twist ``(..., 6)`` = ``(rho, phi)``, **translation part first**: ``rho`` ``(..., 3)``
  then ``phi``. ``Exp(xi)`` is the rigid motion ``[R | V rho]`` with ``R = Exp(phi)``.
* ``pose``: a ``(..., 3, 4)`` matrix ``[R | t]`` acting on column vectors, ``x' = R x + t``
  (camera-to-world ``c2w`` in radfield, OpenGL axes, :mod:`radfield.cameras`).
* A **pose correction** acts on the right: ``c2w' = c2w Exp(xi)`` (:func:`perturb`), so ``xi``
  is expressed in the camera's own frame: ``phi`` turns the camera about its centre, ``rho``
  moves it along its own axes (BARF's and nerfstudio's camera optimisers do the same).

The maps, with ``A = sin(theta) / theta``, ``B = (1 - cos(theta)) / theta^2`` and
``C = (theta - sin(theta)) / theta^3``:

* ``Exp(phi) = I + A hat(phi) + B hat(phi)^2`` (Rodrigues);
* ``Exp(xi) = [Exp(phi) | V rho]``, ``V = I + B hat(phi) + C hat(phi)^2``;
* ``Log(R)`` from the quaternion of ``R`` (Shepperd's method,
  :func:`radfield.rotations.matrix_to_quaternion`, ``w >= 0``):
  ``phi = 2 atan2(|v|, w) v / |v|``, accurate up to ``theta = pi``;
* ``Log([R | t]) = (V^-1 t, Log(R))``, ``V^-1 = I - hat(phi) / 2 + D hat(phi)^2``,
  ``D = (1 - A / (2 B)) / theta^2``.

Near ``theta = 0`` each coefficient is its Taylor series in ``theta^2`` (``A = 1 - theta^2 / 6
+ theta^4 / 120``, ...), so the maps and their gradients are exact and finite at the identity,
where corrections start. The series takes over below ``theta^2 = 1e-4`` in float64 and below
``theta^2 = 0.25`` in lower precision, where ``1 - cos(theta)`` and ``theta - sin(theta)`` lose
too many digits (float32 at ``theta = 0.01``: 1e-3 of ``B``); both sides agree to the dtype's
precision there.

Example: ``phi = (0, 0, pi/2)`` is 90 degrees about z: ``Exp(phi) = [[0, -1, 0], [1, 0, 0],
[0, 0, 1]]``. The twist ``xi = (1, 0, 0, 0, 0, pi/2)`` has ``B = 4 / pi^2``,
``C = (pi/2 - 1) 8 / pi^3``, ``hat(phi) x = (0, pi/2, 0)``, ``hat(phi)^2 x = (-pi^2/4, 0, 0)``, so its
translation is ``V x = (2/pi, 2/pi, 0) = (0.6366, 0.6366, 0)``: the motion that turns by 90
degrees while moving along a quarter circle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.rotations import matrix_to_quaternion

__all__ = ["hat", "so3_exp", "so3_log", "se3_exp", "se3_log", "compose", "invert", "perturb",
           "rotation_angle"]

def _series_below(dtype: torch.dtype) -> float:
    """``theta^2`` below which the coefficients use their Taylor series (module docstring)."""
    return 1e-4 if dtype == torch.float64 else 0.25


def hat(v: Tensor) -> Tensor:
    """``(..., 3, 3)`` skew matrix of ``v`` ``(..., 3)``: ``[[0, -z, y], [z, 0, -x], [-y, x, 0]]``."""
    x, y, z = v.unbind(-1)
    o = torch.zeros_like(x)
    return torch.stack([torch.stack([o, -z, y], -1), torch.stack([z, o, -x], -1),
                        torch.stack([-y, x, o], -1)], -2)


def _coefficients(theta2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(A, B, C)`` of the module docstring at ``theta^2`` (Taylor series near 0)."""
    small = theta2 < _series_below(theta2.dtype)
    t2 = torch.where(small, torch.ones_like(theta2), theta2)  # a safe value on the series side
    t = t2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 ** 2 / 120, torch.sin(t) / t)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 ** 2 / 720, (1 - torch.cos(t)) / t2)
    c = torch.where(small, 1 / 6 - theta2 / 120 + theta2 ** 2 / 5040, (t - torch.sin(t)) / (t2 * t))
    return a, b, c


def so3_exp(phi: Tensor) -> Tensor:
    """``(..., 3, 3)`` rotation ``Exp(phi) = I + A hat(phi) + B hat(phi)^2`` of rotation vectors
    ``phi`` ``(..., 3)``. Example: ``(0, 0, pi/2)`` sends x to y."""
    a, b, _ = _coefficients((phi * phi).sum(-1))
    k = hat(phi)
    eye = torch.eye(3, dtype=phi.dtype, device=phi.device).expand(k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def so3_log(rot: Tensor) -> Tensor:
    """``(..., 3)`` rotation vectors of rotations ``rot`` ``(..., 3, 3)``, angles in ``[0, pi]``:
    ``phi = 2 atan2(|v|, w) v / |v|`` from the unit quaternion ``(w, v)``, ``w >= 0``.
    Example: ``[[0, -1, 0], [1, 0, 0], [0, 0, 1]] -> (0, 0, pi/2)``."""
    q = matrix_to_quaternion(rot)
    w, v = q[..., :1], q[..., 1:]
    s2 = (v * v).sum(-1, keepdim=True)
    small = s2 < 1e-8  # atan2 has no cancellation: the series only guards s = 0
    s = torch.where(small, torch.ones_like(s2), s2).sqrt()
    # 2 atan2(s, w) / s = 2 asin(s) / s (unit q, w >= 0) = 2 + s^2 / 3 + 3 s^4 / 20 + ...
    factor = torch.where(small, 2 + s2 / 3 + 0.15 * s2 * s2, 2 * torch.atan2(s, w) / s)
    return factor * v


def se3_exp(xi: Tensor) -> Tensor:
    """``(..., 3, 4)`` rigid motions ``[Exp(phi) | V rho]`` of twists ``xi = (rho, phi)``
    ``(..., 6)``. Example: ``(1, 2, 3, 0, 0, 0)`` is the pure translation ``[I | (1, 2, 3)]``."""
    rho, phi = xi[..., :3], xi[..., 3:]
    a, b, c = _coefficients((phi * phi).sum(-1))
    k = hat(phi)
    k2 = k @ k
    eye = torch.eye(3, dtype=xi.dtype, device=xi.device).expand(k.shape)
    rot = eye + a[..., None, None] * k + b[..., None, None] * k2
    v = eye + b[..., None, None] * k + c[..., None, None] * k2
    return torch.cat([rot, (v @ rho[..., None])], -1)


def se3_log(pose: Tensor) -> Tensor:
    """``(..., 6)`` twists ``(V^-1 t, Log(R))`` of rigid motions ``pose`` ``(..., 3, 4)``
    (the inverse of :func:`se3_exp` for rotation angles below ``pi``)."""
    phi = so3_log(pose[..., :3, :3])
    theta2 = (phi * phi).sum(-1)
    a, b, _ = _coefficients(theta2)
    small = theta2 < _series_below(theta2.dtype)
    t2 = torch.where(small, torch.ones_like(theta2), theta2)
    d = torch.where(small, 1 / 12 + theta2 / 720 + theta2 ** 2 / 30240, (1 - a / (2 * b)) / t2)
    k = hat(phi)
    eye = torch.eye(3, dtype=pose.dtype, device=pose.device).expand(k.shape)
    v_inv = eye - k / 2 + d[..., None, None] * (k @ k)
    return torch.cat([(v_inv @ pose[..., :3, 3:])[..., 0], phi], -1)


def compose(a: Tensor, b: Tensor) -> Tensor:
    """``a b`` of poses ``(..., 3, 4)``: ``[R_a R_b | R_a t_b + t_a]`` (``b`` first, then ``a``)."""
    rot = a[..., :3, :3] @ b[..., :3, :3]
    return torch.cat([rot, a[..., :3, :3] @ b[..., :3, 3:] + a[..., :3, 3:]], -1)


def invert(pose: Tensor) -> Tensor:
    """``(..., 3, 4)`` inverse ``[R^T | -R^T t]`` of poses ``[R | t]``."""
    rt = pose[..., :3, :3].transpose(-1, -2)
    return torch.cat([rt, -(rt @ pose[..., :3, 3:])], -1)


def perturb(c2w: Tensor, xi: Tensor) -> Tensor:
    """``c2w Exp(xi)``: camera-to-world poses ``(..., 3, 4)`` corrected by twists ``(..., 6)``
    expressed in each camera's own frame (see the module docstring). ``xi = 0`` returns ``c2w``
    exactly, with the gradient of :func:`se3_exp` at the identity."""
    return compose(c2w, se3_exp(xi))


def rotation_angle(rot: Tensor) -> Tensor:
    """``(...,)`` angle in radians, in ``[0, pi]``, of rotations ``(..., 3, 3)``:
    ``2 atan2(|v|, |w|)`` of their quaternions (accurate at small angles, unlike
    ``acos((trace - 1) / 2)``). Example: 90 degrees about any axis -> ``pi / 2``."""
    q = matrix_to_quaternion(rot)
    return 2 * torch.atan2(q[..., 1:].norm(dim=-1), q[..., 0].abs())
