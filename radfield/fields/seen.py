"""Seen space: only what some training camera sees may hold density (``nerfacto.seen_space``).

Instant-NGP marks the cells of its density grid that no training camera sees as empty, for good:
nothing can ever fit them, so whatever density a field puts there is a guess that only other
views reveal. With few training views that guess is what wrecks the views between them: a field
trained on 6 garden photos put 97 % of a held-out view's rendered weight in space outside every
training frustum, within 0.3 units of the held-out camera (``bench/RESULTS.md``).

:class:`SeenSpace` carries the same rule to the proposal pipeline's contracted, unbounded space.
It stores the signed distance to the training cameras' frusta
(:func:`radfield.cameras.frustum_distance`) at the cell centres of an ``R^3`` lattice over the
contraction's cube ``[0, 1]^3``, each centre taken back to the world by
:func:`radfield.geometry.uncontract`, and interpolates it trilinearly: a point is seen where the
distance is positive. The distance to one face is linear in the world, and the contraction is the
identity inside the unit region, so there the test is exact along faces, and wrong by at most a
cell near the frusta's edges; in the contracted region each cell spans more of the world.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radfield.cameras import frustum_distance
from radfield.geometry import uncontract

BIG = 1e30
"""Distances are clamped to +-BIG, so that interpolating them cannot overflow."""


class SeenSpace(nn.Module):
    """``seen(u)``: is each point, in the contraction's unit cube coordinates ``u (n, 3)``, seen by
    some training camera? Everything is seen until :meth:`mark` is called (a model built
    without its cameras loads the distances from its checkpoint).

    Args:
        resolution: lattice cells per side of the cube.
        norm: the contraction's norm (``"inf"`` or ``"l2"``).
    """

    def __init__(self, resolution: int, norm: str = "inf"):
        super().__init__()
        self.norm = norm
        self.register_buffer("distance", torch.full((resolution,) * 3, BIG))

    @property
    def resolution(self) -> int:
        return self.distance.shape[0]

    def lattice_points(self, centre: Tensor, radius: Tensor) -> Tensor:
        """``(R^3, 3)`` world points of the cell centres, ``distance``'s flat order (z slowest):
        ``u = (i + 1/2) / R`` -> ``y = 4 u - 2`` -> ``centre + radius uncontract(y)``."""
        r = self.resolution
        c = (torch.arange(r, device=self.distance.device, dtype=torch.float64) + 0.5) / r * 4 - 2
        z, y, x = torch.meshgrid(c, c, c, indexing="ij")
        u = torch.stack([x, y, z], -1).reshape(-1, 3)
        return centre.double() + radius.double() * uncontract(u, self.norm)

    @torch.no_grad()
    def mark(self, cameras, centre: Tensor, radius: Tensor) -> None:
        """Fill ``distance`` from the training ``cameras`` (:class:`radfield.cameras.Cameras`),
        for a contraction about ``centre`` ``(3,)`` with ``radius`` (world lengths)."""
        points = self.lattice_points(centre, radius)
        d = frustum_distance(points, cameras.to(points.device))  # float64: the far cells are huge
        self.distance.copy_(d.clamp(-BIG, BIG).view_as(self.distance).float())

    def signed_distance(self, u: Tensor) -> Tensor:
        """``(n,)`` the interpolated distance at ``u`` ``(n, 3)`` in ``[0, 1]^3``."""
        grid = (u.detach() * 2 - 1).to(self.distance.dtype).view(1, -1, 1, 1, 3)
        d = F.grid_sample(self.distance[None, None], grid, mode="bilinear", padding_mode="border",
                          align_corners=False)
        return d.view(-1)

    def forward(self, u: Tensor) -> Tensor:
        return self.signed_distance(u) > 0
