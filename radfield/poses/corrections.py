"""Per-image pose corrections, known perturbations, pose errors and similarity alignment.

Vocabulary (see :mod:`radfield.poses.se3`):

* ``c2w``: camera-to-world poses ``(n, 3, 4)``, OpenGL axes; a camera's **centre** is
  ``c2w[:, :, 3]``.
* **correction** of camera ``i``: a twist ``xi_i = (rho_i, phi_i)`` applied on the right,
  ``c2w_i' = c2w_i Exp(xi_i)`` (in the camera's own frame). :class:`PoseCorrections` stores
  ``(rho_i / scale, phi_i)``: the translation in units of the scene's size ``scale``, so one
  learning rate moves every scene by the same fraction of its size. With a **pivot** at
  distance ``d_i`` along the optical axis, each correction also has an **orbit** ``omega_i``: a
  turn about the point ``p_i = (0, 0, -d_i)`` of its frame, ``T_p Exp(0, omega_i) T_p^-1``,
  whose twist is ``(p_i x omega_i, omega_i)`` (the adjoint of the translation ``T_p``). The
  twist applied is the sum, ``xi_i = (scale rho'_i + p_i x omega_i, phi_i + omega_i)``: a turn
  about the camera's centre (a shift of the whole image), a shift of the centre, and an orbit of
  the looked-at point (parallax only) are then each a coordinate of their own for Adam.
* **pose error** between two poses: the angle of ``R_a^T R_b`` (degrees) and the distance
  between the centres.
* **similarity alignment** (Umeyama 1991): the ``s, R, t`` minimising
  ``sum_i |s R a_i + t - b_i|^2`` over camera centres. Poses refined without an anchor may move
  as a whole (the scene with them); errors are measured after aligning the whole set.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.poses.se3 import perturb, rotation_angle, se3_exp, so3_exp

__all__ = ["PoseCorrections", "perturb_poses", "pose_errors", "align_similarity",
           "apply_similarity", "to_world"]


class PoseCorrections(nn.Module):
    """One SE(3) correction per training image, zero at the start.

    ``delta`` ``(n_images, 6)`` is ``(rho / scale, phi)``; with a ``pivot`` ``(n_images,)``
    (distances along each camera's axis) ``orbit`` ``(n_images, 3)`` is the turn about the pivot
    point. :meth:`twists` gives ``xi = (scale delta[:, :3] + p x orbit, delta[:, 3:] + orbit)``.

    Example: ``scale = 2``, ``delta[0] = (0.01, 0, 0, 0, 0, 0)``: image 0's camera moves 0.02
    along its own x axis (right); its rotation is unchanged.
    """

    def __init__(self, n_images: int, scale: float = 1.0, pivot: Tensor | None = None):
        super().__init__()
        self.scale = float(scale)
        self.delta = nn.Parameter(torch.zeros(n_images, 6))
        self.orbit = None if pivot is None else nn.Parameter(torch.zeros(n_images, 3))
        self.register_buffer("pivot", torch.zeros(n_images) if pivot is None else pivot.detach().clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "pivot", torch.zeros_like(self.pivot))  # older checkpoints: no pivot
        if self.orbit is not None and prefix + "orbit" not in state_dict:
            # checkpoints of 2026-12-03's pivot (every turn about the pivot): those turns are orbits
            delta = state_dict[prefix + "delta"].clone()
            state_dict[prefix + "orbit"] = delta[:, 3:].clone()
            delta[:, 3:] = 0
            state_dict[prefix + "delta"] = delta
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def twists(self, index: Tensor | None = None) -> Tensor:
        """``(n, 6)`` twists ``xi`` of the images ``index`` (all when None), in each camera's
        frame about its centre (the module docstring)."""
        d = self.delta if index is None else self.delta[index]
        xi = torch.cat([d[:, :3] * self.scale, d[:, 3:]], -1)
        if self.orbit is None:
            return xi
        omega = self.orbit if index is None else self.orbit[index]
        depth = (self.pivot if index is None else self.pivot[index]).to(d.dtype)
        # p x omega for p = (0, 0, -depth): (depth omega_y, -depth omega_x, 0)
        lever = torch.stack([depth * omega[:, 1], -depth * omega[:, 0], torch.zeros_like(depth)], -1)
        return xi + torch.cat([lever, omega], -1)

    def forward(self, c2w: Tensor, index: Tensor) -> Tensor:
        """``(n, 3, 4)`` corrected poses ``c2w_i Exp(xi_{index_i})`` of ``c2w`` ``(n, 3, 4)``."""
        return perturb(c2w, self.twists(index).to(c2w.dtype))

    def penalty(self, rotation: float, translation: float) -> Tensor:
        """nerfstudio's camera-optimiser regulariser: ``rotation * mean_i |phi_i| + translation *
        mean_i |rho_i| / scale`` over the twists ``xi_i = (rho_i, phi_i)`` of every image (turns in
        radians, shifts in units of the scene's size). A norm, not its square: a constant pull
        toward the given pose that a correction keeps only where the photometric gradient on it
        is stronger (a sub-gradient of 0 at zero).

        Example: ``scale = 2``, one image, ``xi = (0.02, 0, 0, 0, 0, 0.1)``:
        ``penalty(1e-3, 1e-2) = 1e-3 * 0.1 + 1e-2 * 0.01 = 2e-4``."""
        xi = self.twists()
        return (rotation * torch.linalg.vector_norm(xi[:, 3:], dim=-1).mean()
                + translation * torch.linalg.vector_norm(xi[:, :3], dim=-1).mean() / self.scale)

    def magnitudes(self) -> tuple[Tensor, Tensor]:
        """``(rotation degrees, translation)`` ``(n_images,)`` of the corrections."""
        motion = se3_exp(self.twists().detach())
        return torch.rad2deg(rotation_angle(motion[:, :, :3])), motion[:, :, 3].norm(dim=-1)


def _random_units(n: int, generator: torch.Generator | None, dtype) -> Tensor:
    v = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return (v / v.norm(dim=-1, keepdim=True)).to(dtype)


def perturb_poses(c2w: Tensor, rotation_deg: float, translation: float,
                  generator: torch.Generator | None = None) -> Tensor:
    """Poses turned by exactly ``rotation_deg`` about their own centres (a random axis per camera)
    and moved by exactly ``translation`` (a random world direction per camera): the noisy
    captures of pose-refinement benchmarks. ``(n, 3, 4) -> (n, 3, 4)``; :func:`pose_errors`
    against the input gives ``rotation_deg`` and ``translation`` for every camera."""
    n = c2w.shape[0]
    angle = torch.deg2rad(torch.tensor(float(rotation_deg), dtype=torch.float64))
    axis = _random_units(n, generator, torch.float64)
    turn = so3_exp(axis * angle).to(c2w.dtype)
    moved = _random_units(n, generator, c2w.dtype) * translation
    rot = c2w[:, :, :3] @ turn
    return torch.cat([rot, (c2w[:, :, 3] + moved)[..., None]], -1)


def pose_errors(c2w: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """``(rotation degrees, centre distance)``, each ``(n,)``, between poses ``(n, 3, 4)``.

    Example: a camera turned by 2 degrees about its centre and moved by 0.05 -> ``(2, 0.05)``."""
    rel = c2w[:, :, :3].transpose(-1, -2) @ reference[:, :, :3]
    return torch.rad2deg(rotation_angle(rel)), (c2w[:, :, 3] - reference[:, :, 3]).norm(dim=-1)


def align_similarity(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(s, R, t)``, scale ``()``, rotation ``(3, 3)``, translation ``(3,)``, minimising
    ``sum_i |s R src_i + t - dst_i|^2`` over points ``(n, 3)`` (Umeyama 1991):
    ``U S V^T = svd(Sigma)``, ``Sigma = (dst - mu_d)^T (src - mu_s) / n``,
    ``R = U diag(1, 1, det(U V^T)) V^T``, ``s = tr(diag(S) D) / var(src)``, ``t = mu_d - s R mu_s``.
    Computed in float64. Needs 3 points not on a line."""
    a, b = src.double(), dst.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = a - mu_a, b - mu_b
    sigma = cb.T @ ca / a.shape[0]
    u, sv, vt = torch.linalg.svd(sigma)
    d = torch.ones(3, dtype=torch.float64)
    d[2] = torch.sign(torch.linalg.det(u @ vt))
    rot = u @ torch.diag(d) @ vt
    s = (sv * d).sum() / (ca * ca).sum(-1).mean()
    t = mu_b - s * rot @ mu_a
    return s.to(src.dtype), rot.to(src.dtype), t.to(src.dtype)


def apply_similarity(c2w: Tensor, s: Tensor, rot: Tensor, t: Tensor) -> Tensor:
    """Poses ``(n, 3, 4)`` moved with the scene by ``x -> s R x + t``: rotations ``R R_i``,
    centres ``s R c_i + t`` (a camera's frame stays orthonormal; the scale moves its centre)."""
    return torch.cat([rot @ c2w[:, :, :3], (s * c2w[:, :, 3] @ rot.T + t)[..., None]], -1)


def to_world(c2w: Tensor, normalization: dict | None) -> Tensor:
    """Poses ``(n, 3, 4)`` of a normalised scene (``x_scene = (x_world - center) * scale``, a
    reader's ``meta["normalization"]``) in the dataset's own world: centres ``c / scale + center``,
    rotations unchanged. None: the poses as they are."""
    if not normalization:
        return c2w
    center = torch.tensor(normalization["center"], dtype=c2w.dtype, device=c2w.device)
    out = c2w.clone()
    out[:, :, 3] = c2w[:, :, 3] / float(normalization["scale"]) + center
    return out

