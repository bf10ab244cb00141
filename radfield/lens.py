"""Lens distortion: OpenCV's radial-tangential and fisheye models, as COLMAP, Instant-NGP and
nerfstudio write them. Rays go through the distortion (:func:`radfield.cameras.generate_rays`
undistorts the pixel coordinates), so images are used as they were taken: no resampling, no
black borders, a fisheye's full field of view.

Normalised image coordinates of pixel point ``(u, v)``: ``xd = (u - cx) / fx``,
``yd = (v - cy) / fy`` (y down, as in OpenCV). The lens maps an undistorted point ``(x, y)``
(``x = X / Z, y = Y / Z`` in OpenCV camera axes) to ``(xd, yd)``:

* ``opencv`` (coefficients ``k1 k2 k3 k4 p1 p2``; COLMAP's OPENCV has ``k3 = k4 = 0``, its
  SIMPLE_RADIAL / RADIAL also ``p1 = p2 = 0``), with ``r^2 = x^2 + y^2`` and
  ``radial = 1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8`` (nerfstudio's polynomial):
  ``xd = x radial + 2 p1 x y + p2 (r^2 + 2 x^2)``, ``yd = y radial + p1 (r^2 + 2 y^2) + 2 p2 x y``.
* ``fisheye`` (OpenCV's fisheye / COLMAP's OPENCV_FISHEYE, ``k1 k2 k3 k4``): the angle from the
  optical axis ``theta = atan(r)`` becomes ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 +
  k3 theta^6 + k4 theta^8)`` and ``(xd, yd) = (x, y) theta_d / r``.

Example: ``opencv`` with ``k1 = 0.1`` at ``(0.5, 0)``: ``r^2 = 0.25``, radial ``1.025``,
``(xd, yd) = (0.5125, 0)``; ``fisheye`` with zero coefficients at ``(1, 0)``: ``theta = pi / 4``,
``(xd, yd) = (0.7854, 0)`` (the equidistant projection).

Undistortion inverts these by Newton's method (a fixed number of vectorised iterations, in
float64); :func:`check_invertible` tells at load time whether a lens can be inverted over its
whole image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

LENS_MODELS = ("opencv", "fisheye")
COEFFICIENTS = ("k1", "k2", "k3", "k4", "p1", "p2")
NEWTON_STEPS = 12


@dataclass
class Lens:
    """The lens of each camera of a set.

    Attributes:
        coeffs: ``(n_cams, 6)`` ``k1 k2 k3 k4 p1 p2`` (``p1 p2`` unused by fisheye lenses).
        fisheye: ``(n_cams,)`` bool, the fisheye model (else ``opencv``).
    """

    coeffs: Tensor
    fisheye: Tensor

    def map(self, fn) -> "Lens":
        return Lens(fn(self.coeffs), fn(self.fisheye))

    @property
    def is_identity(self) -> bool:
        """True when no camera distorts (all-pinhole): rays need no undistortion."""
        return not bool(self.fisheye.any()) and not bool((self.coeffs != 0).any())

    @staticmethod
    def from_dicts(lenses: list[tuple[str, dict[str, float]]]) -> "Lens | None":
        """From ``(model, {"k1": .., ...})`` per camera (``model`` in :data:`LENS_MODELS`,
        missing coefficients 0); None when every camera is an undistorted pinhole."""
        coeffs = torch.tensor([[d.get(k, 0.0) for k in COEFFICIENTS] for _, d in lenses], dtype=torch.float32)
        lens = Lens(coeffs.reshape(-1, 6), torch.tensor([m == "fisheye" for m, _ in lenses], dtype=torch.bool))
        return None if lens.is_identity else lens


def _radial(c: Tensor, r2: Tensor) -> tuple[Tensor, Tensor]:
    """``1 + k1 r^2 + k2 r^4 + k3 r^6 + k4 r^8`` and its derivative in ``r^2``."""
    k1, k2, k3, k4 = c.unbind(-1)[:4]
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * (k3 + r2 * k4)))
    slope = k1 + r2 * (2 * k2 + r2 * (3 * k3 + r2 * 4 * k4))
    return radial, slope


def _theta_d(c: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Fisheye ``theta_d(theta)`` and its derivative."""
    k1, k2, k3, k4 = c.unbind(-1)[:4]
    t2 = theta * theta
    value = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    slope = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
    return value, slope


def distort(coeffs: Tensor, fisheye: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Distorted normalised coordinates ``(xd, yd)`` of undistorted ``(x, y)`` (see module doc).
    ``coeffs (n, 6)``, ``fisheye (n,)`` bool, ``x, y (n,)`` (one lens per point)."""
    r2 = x * x + y * y
    radial, _ = _radial(coeffs, r2)
    p1, p2 = coeffs[:, 4], coeffs[:, 5]
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    if bool(fisheye.any()):
        r = torch.sqrt(r2)
        theta_d, _ = _theta_d(coeffs, torch.atan(r))
        scale = torch.where(r > 1e-12, theta_d / r.clamp(min=1e-12), torch.ones_like(r))
        xd, yd = torch.where(fisheye, x * scale, xd), torch.where(fisheye, y * scale, yd)
    return xd, yd


def _undistort_opencv(c: Tensor, xd: Tensor, yd: Tensor) -> tuple[Tensor, Tensor]:
    """Newton's method on ``distort(x, y) = (xd, yd)`` from ``(xd, yd)``, 2x2 Jacobian by hand."""
    p1, p2 = c[:, 4], c[:, 5]
    x, y = xd, yd
    for _ in range(NEWTON_STEPS):
        r2 = x * x + y * y
        radial, slope = _radial(c, r2)
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        a = radial + 2 * x * x * slope + 2 * p1 * y + 6 * p2 * x  # d fx / dx
        b = 2 * x * y * slope + 2 * p1 * x + 2 * p2 * y  # d fx / dy = d fy / dx
        d = radial + 2 * y * y * slope + 6 * p1 * y + 2 * p2 * x  # d fy / dy
        det = a * d - b * b
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        x, y = x - (d * fx - b * fy) / det, y - (a * fy - b * fx) / det
    return x, y


def _undistort_theta(c: Tensor, theta_d: Tensor) -> Tensor:
    """Newton's method on the fisheye ``theta_d(theta) = theta_d`` from ``theta = theta_d``."""
    theta = theta_d
    for _ in range(NEWTON_STEPS):
        value, slope = _theta_d(c, theta)
        theta = theta - (value - theta_d) / torch.where(slope.abs() < 1e-12, torch.full_like(slope, 1e-12), slope)
    return theta


def undistorted_directions(coeffs: Tensor, fisheye: Tensor, xd: Tensor, yd: Tensor) -> Tensor:
    """``(n, 3)`` camera-space ray directions, OpenCV axes (x right, y down, z forward), of
    distorted normalised points ``(xd, yd)``: ``(x, y, 1)`` for ``opencv`` lenses, the unit
    ``(sin theta (xd, yd) / r_d, cos theta)`` for fisheye ones (any angle below 90 degrees).
    Computed in float64, returned in ``xd.dtype``."""
    c, u, v = coeffs.double(), xd.double(), yd.double()
    x, y = _undistort_opencv(c, u, v)
    out = torch.stack([x, y, torch.ones_like(x)], -1)
    if bool(fisheye.any()):
        rd = torch.sqrt(u * u + v * v)
        theta = _undistort_theta(c, rd)
        s = torch.where(rd > 1e-12, torch.sin(theta) / rd.clamp(min=1e-12), torch.ones_like(rd))
        fish = torch.stack([u * s, v * s, torch.cos(theta)], -1)
        out = torch.where(fisheye[:, None], fish, out)
    return out.to(xd.dtype)


def check_invertible(coeffs: Tensor, fisheye: bool, fx: float, fy: float, cx: float, cy: float,
                     width: int, height: int) -> str | None:
    """None when the lens can be undistorted over the whole image, else why not (one phrase).

    Along the ray from the principal point to each image corner (256 steps), the distorted
    radius must grow with the undistorted one (the mapping is one-to-one), the Newton inverse
    must re-distort to within 1e-3 px, and a fisheye's angle must stay below 90 degrees (rays in
    front of the camera)."""
    c = coeffs.double().reshape(1, 6)
    corners = [(0.0, 0.0), (width, 0.0), (0.0, height), (float(width), float(height))]
    s = torch.linspace(0.0, 1.0, 257, dtype=torch.float64)[1:]
    for u, v in corners:
        xd, yd = s * (u - cx) / fx, s * (v - cy) / fy
        cs = c.expand(len(s), 6)
        if fisheye:
            rd = torch.sqrt(xd * xd + yd * yd)
            theta = _undistort_theta(cs, rd)
            value, slope = _theta_d(cs, theta)
            if (not bool(torch.isfinite(theta).all()) or bool((slope <= 0).any())
                    or float(((value - rd).abs() * max(fx, fy)).max()) > 1e-3):
                return "the fisheye distortion theta_d(theta) is not invertible over the image"
            if bool((theta >= math.pi / 2).any()):
                return "its field of view reaches 180 degrees or more"
            continue
        x, y = _undistort_opencv(cs, xd, yd)
        rx, ry = distort(cs, torch.zeros(len(s), dtype=torch.bool), x, y)
        err = torch.maximum((rx - xd).abs() * fx, (ry - yd).abs() * fy)
        r = torch.sqrt(x * x + y * y)
        if not bool(torch.isfinite(err).all()) or float(err.max()) > 1e-3 or bool((r[1:] <= r[:-1]).any()):
            return "the distortion is not invertible over the image (it folds back before the corners)"
    return None
