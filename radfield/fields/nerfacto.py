"""The fields of the nerfacto-style proposal pipeline (``shared/specs/proposal-sampling.md``).

Unbounded scenes are *contracted* before encoding: world points are mapped to scene units
``x_n = (x - centre) / radius`` (the scene box's centre and half its largest side), then
``contract(x_n)`` (L-inf or L2 norm) brings all space into the box ``[-2, 2]^3``, which the hash
grids see as ``[0, 1]^3``.

* :class:`NerfactoField`: hash grid -> density MLP (1 x 64) -> (raw density, 15 features);
  colour MLP (2 x 64) on (SH(d), features, appearance code). ``raw(x, d, appearance)`` takes
  the code per sample: the image's embedding (:meth:`NerfactoField.appearance_code`; index -1,
  a held-out view, gets the mean embedding) or a code fitted by an evaluation protocol.
* :class:`ProposalDensityField`: a small hash grid (5 levels, 2^17 entries) and a 16-wide MLP,
  density only.
* :class:`SeenGrid`: which cells of the contracted cube some training camera sees. Both fields
  give no density elsewhere (``ProposalPipelineConfig.skip_unseen``): no training ray passes
  there, so whatever density the hash grids' shared entries put there is a guess, and a view
  far from the training cameras would see it as a floater in front of it (``bench/RESULTS.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.fields.base import trunc_exp
from radfield.fields.hashgrid import HashGrid, HashGridConfig
from radfield.fields.ngp import mlp
from radfield.fields.sh import sh_encode
from radfield.cameras import near_frustum
from radfield.errors import RadfieldError
from radfield.geometry import contract, uncontract


class Contraction(nn.Module):
    """World points -> ``[0, 1]^3``: ``(contract((x - centre) / radius) + 2) / 4``."""

    def __init__(self, aabb: Tensor, norm: str = "inf"):
        super().__init__()
        aabb = aabb.float()
        self.norm = norm
        self.register_buffer("centre", (aabb[:3] + aabb[3:]) / 2)
        self.register_buffer("radius", ((aabb[3:] - aabb[:3]) / 2).max())

    def forward(self, x: Tensor) -> Tensor:
        return (contract((x - self.centre) / self.radius, self.norm) + 2.0) / 4.0


class SeenGrid(nn.Module):
    """``R^3`` cells over the contracted cube ``[0, 1]^3`` (:class:`Contraction`'s output), each
    True when some training camera sees it: when the box bounding the world region the cell
    covers reaches into a camera's viewing frustum (:func:`radfield.cameras.near_frustum`,
    through the cameras' lenses). All True until
    :meth:`mark`, and in checkpoints written before it.

    The world region of a cell is bounded by the box of its 8 corners mapped back to the world
    (:func:`radfield.geometry.uncontract`): with ``R`` even no cell crosses a coordinate plane of
    the contraction's centre, and within one octant each world coordinate is monotone in each
    contracted one (for both norms), so the region lies inside that box and the test only ever
    errs towards "seen". Cells that reach the cube's faces (infinity) are seen.

    Example: a camera at the centre looking down -z sees the cells in front of it and not those
    behind its image plane (beyond their radius)."""

    def __init__(self, resolution: int = 128, option: str = "resolution"):
        """``option``: the setting ``resolution`` came from, named in the error when it is odd or
        below 2."""
        super().__init__()
        if resolution < 2 or resolution % 2:
            raise RadfieldError(f"{option}={resolution}: use an even number of cells, at least 2")
        self.register_buffer("seen", torch.ones((resolution,) * 3, dtype=torch.bool))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.setdefault(prefix + "seen", torch.ones_like(self.seen))  # older checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def mark(self, contraction: "Contraction", cameras) -> None:
        """``seen`` from the training ``cameras`` (:class:`radfield.cameras.Cameras`)."""
        res, device = self.seen.shape[0], self.seen.device
        u = torch.linspace(-2.0, 2.0, res + 1, device=device, dtype=torch.float64)
        corners = torch.stack(torch.meshgrid(u, u, u, indexing="ij"), -1)
        world = contraction.centre.double() + contraction.radius.double() * uncontract(corners, contraction.norm)
        shifted = torch.stack([world[i:i + res, j:j + res, k:k + res]
                               for i in (0, 1) for j in (0, 1) for k in (0, 1)])  # each cell's 8 corners
        lo, hi = shifted.amin(0).reshape(-1, 3), shifted.amax(0).reshape(-1, 3)
        finite = torch.isfinite(lo).all(-1) & torch.isfinite(hi).all(-1)
        seen = torch.ones(res ** 3, dtype=torch.bool, device=device)
        centre, half = (lo[finite] + hi[finite]) / 2, (hi[finite] - lo[finite]) / 2
        seen[finite] = near_frustum(centre, half, cameras.to(device))
        self.seen.copy_(seen.view(self.seen.shape))

    def forward(self, c: Tensor) -> Tensor:
        """``(n,)`` bool: is each contracted point ``c (n, 3)`` (in ``[0, 1]^3``) in a seen cell?"""
        res = self.seen.shape[0]
        ijk = (c.detach() * res).long().clamp_(0, res - 1)
        return self.seen[ijk[:, 0], ijk[:, 1], ijk[:, 2]]


UNSEEN_RAW_DENSITY = -30.0
"""The pre-activation density of an unseen sample: ``exp(-30)``, about 1e-13 per unit."""


def masked_unseen(raw: Tensor, c: Tensor, seen: tuple[SeenGrid, ...], value: float,
                  activation=None) -> Tensor:
    """``activation(raw)`` (or ``raw``) where the contracted points ``c`` lie in seen cells,
    ``value`` elsewhere; no gradient reaches the network from unseen points. ``seen``: the
    field's grid, or ``()`` (nothing masked)."""
    out = raw if activation is None else activation(raw)
    if not seen:
        return out
    return torch.where(seen[0](c), out, out.new_tensor(value))


class ProposalDensityField(nn.Module):
    def __init__(self, aabb: Tensor, max_resolution: int, hidden: int = 16, norm: str = "inf",
                 unit: float = 1.0, seen: SeenGrid | None = None):
        super().__init__()
        self.contraction = Contraction(aabb, norm)
        self._seen = (seen,) if seen is not None else ()  # shared with the model, which saves it
        self.unit = unit
        """Densities are per ``unit`` of distance (the scene's frame), so a network's output means
        the same opacity whatever units the capture uses."""
        grid = HashGridConfig(n_levels=5, features_per_level=2, log2_table_size=17, base_resolution=16,
                              max_resolution=max_resolution)
        self.grid = HashGrid(grid)
        self.mlp = mlp(grid.output_dim, hidden, 1, 1)

    def density(self, x: Tensor) -> Tensor:
        """``(n,)`` density at world points ``x (n, 3)``; 0 in unseen cells."""
        c = self.contraction(x)
        return masked_unseen(self.mlp(self.grid(c))[:, 0], c, self._seen, 0.0, trunc_exp) / self.unit


class NerfactoField(nn.Module):
    def __init__(self, aabb: Tensor, grid: HashGridConfig, hidden: int = 64, geo_features: int = 15,
                 appearance_dim: int = 32, n_images: int = 0, norm: str = "inf", unit: float = 1.0,
                 view_dependent: bool = True, seen: SeenGrid | None = None):
        super().__init__()
        self.contraction = Contraction(aabb, norm)
        self._seen = (seen,) if seen is not None else ()  # shared with the model, which saves it
        self.unit = unit
        """Densities are per ``unit`` of distance (as :class:`ProposalDensityField`'s)."""
        self.grid = HashGrid(grid)
        self.density_mlp = mlp(grid.output_dim, hidden, 1, 1 + geo_features)
        self.appearance_dim = appearance_dim if n_images > 0 else 0
        self.appearance = nn.Embedding(max(n_images, 1), max(self.appearance_dim, 1))
        nn.init.normal_(self.appearance.weight, std=0.01)
        self.color_mlp = mlp(16 + geo_features + self.appearance_dim, hidden, 2, 3)
        # Diffuse colour keeps the MLP's shape: the harmonics beyond the constant one are zeroed.
        self.register_buffer("sh_mask", (torch.arange(16) < (16 if view_dependent else 1)).float(),
                             persistent=False)

    def appearance_code(self, image_index: Tensor) -> Tensor:
        """``(n, appearance_dim)`` embeddings; index ``-1`` -> the mean over training images."""
        codes = self.appearance(image_index.clamp(min=0))
        mean = self.appearance.weight.mean(0).expand_as(codes)
        return torch.where((image_index < 0)[:, None], mean, codes)

    def raw(self, x: Tensor, d: Tensor, appearance: Tensor) -> Tensor:
        """``x, d (n, 3)``, ``appearance (n, appearance_dim)`` codes (see
        :meth:`appearance_code`) -> ``(n, 4)``."""
        y = self.contraction(x)
        h = self.density_mlp(self.grid(y))
        parts = [sh_encode(d) * self.sh_mask, h[:, 1:]]
        if self.appearance_dim:
            parts.append(appearance)
        c = self.color_mlp(torch.cat(parts, dim=-1))
        return torch.cat([masked_unseen(h[:, 0], y, self._seen, UNSEEN_RAW_DENSITY)[:, None], c], dim=-1)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return trunc_exp(raw[:, 0]) / self.unit, torch.sigmoid(raw[:, 1:4])

    def density(self, x: Tensor) -> Tensor:
        y = self.contraction(x)
        return masked_unseen(self.density_mlp(self.grid(y))[:, 0], y, self._seen, 0.0, trunc_exp) / self.unit
