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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.fields.base import trunc_exp
from radfield.fields.hashgrid import HashGrid, HashGridConfig
from radfield.fields.ngp import mlp
from radfield.fields.sh import sh_encode
from radfield.geometry import contract


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


class ProposalDensityField(nn.Module):
    def __init__(self, aabb: Tensor, max_resolution: int, hidden: int = 16, norm: str = "inf",
                 unit: float = 1.0):
        super().__init__()
        self.contraction = Contraction(aabb, norm)
        self.unit = unit
        """Densities are per ``unit`` of distance (the scene's frame), so a network's output means
        the same opacity whatever units the capture uses."""
        grid = HashGridConfig(n_levels=5, features_per_level=2, log2_table_size=17, base_resolution=16,
                              max_resolution=max_resolution)
        self.grid = HashGrid(grid)
        self.mlp = mlp(grid.output_dim, hidden, 1, 1)

    def density(self, x: Tensor) -> Tensor:
        """``(n,)`` density at world points ``x (n, 3)``."""
        return trunc_exp(self.mlp(self.grid(self.contraction(x)))[:, 0]) / self.unit


class NerfactoField(nn.Module):
    def __init__(self, aabb: Tensor, grid: HashGridConfig, hidden: int = 64, geo_features: int = 15,
                 appearance_dim: int = 32, n_images: int = 0, norm: str = "inf", unit: float = 1.0,
                 view_dependent: bool = True):
        super().__init__()
        self.contraction = Contraction(aabb, norm)
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
        h = self.density_mlp(self.grid(self.contraction(x)))
        parts = [sh_encode(d) * self.sh_mask, h[:, 1:]]
        if self.appearance_dim:
            parts.append(appearance)
        c = self.color_mlp(torch.cat(parts, dim=-1))
        return torch.cat([h[:, :1], c], dim=-1)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return trunc_exp(raw[:, 0]) / self.unit, torch.sigmoid(raw[:, 1:4])

    def density(self, x: Tensor) -> Tensor:
        return trunc_exp(self.density_mlp(self.grid(self.contraction(x)))[:, 0]) / self.unit
