"""Cells of a regular grid of resolution ``R`` in ``D`` dimensions, shared by the grid fields
(MeRF's planes and volume, the voxel grids' total variation).

A grid has ``R`` cells and ``R + 1`` vertices per axis over ``[0, 1]``; vertex ``v`` (integers)
sits at ``u = v / R``. A point's cell is ``i0 = min(floor(u R), R - 1)``, its fraction
``f = u R - i0``, its **corners** the vertices ``i0 + b``, ``b in {0, 1}^D``, ordered with the
last axis fastest; D-linear interpolation weighs corner ``b`` by ``prod_a (f_a if b_a else 1 - f_a)``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

__all__ = ["corner_offsets", "cell_of", "corner_weights", "interpolate"]


def corner_offsets(dims: int, device=None) -> Tensor:
    """``(2^D, D)`` long: the corner offsets ``b in {0, 1}^D``, last axis fastest (for ``D = 2``:
    ``(0, 0), (0, 1), (1, 0), (1, 1)``)."""
    return torch.tensor(list(itertools.product((0, 1), repeat=dims)), dtype=torch.long, device=device)


def cell_of(u: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """``(i0 (n, D) long, f (n, D))``: the cell ``min(floor(u R), R - 1)`` of points ``u`` (clamped to
    ``[0, 1]``) and their fraction ``u R - i0`` in ``[0, 1]``."""
    p = u.clamp(0.0, 1.0) * resolution
    i0 = p.detach().floor().clamp(max=resolution - 1)
    return i0.long(), p - i0


def corner_weights(f: Tensor) -> Tensor:
    """``(n, 2^D)`` D-linear weights ``prod_a (f_a if b_a else 1 - f_a)`` of the corners ``b``
    (:func:`corner_offsets` order) for fractions ``f (n, D)``; built axis by axis (outer products).
    Example: ``f = (0.25, 0.5)`` -> ``(0.375, 0.375, 0.125, 0.125)``."""
    w = None
    for a in range(f.shape[-1]):
        pair = torch.stack([1 - f[:, a], f[:, a]], dim=-1)
        w = pair if w is None else (w[:, :, None] * pair[:, None, :]).reshape(f.shape[0], -1)
    return w


def interpolate(corners: Tensor, f: Tensor) -> Tensor:
    """D-linear interpolation: ``sum_b prod_a (f_a if b_a else 1 - f_a) corners[:, b]``.

    Args:
        corners: ``(n, 2^D, C)`` values at the corners (:func:`corner_offsets` order).
        f: ``(n, D)`` fractions.
    Returns:
        ``(n, C)``.
    """
    return torch.bmm(corner_weights(f.to(corners.dtype))[:, None, :], corners)[:, 0]
