"""VolSDF (Yariv et al. 2021): a signed-distance field whose density is a Laplace CDF of the
distance.

Vocabulary: ``d(x)`` the signed distance in world units (negative inside), ``beta > 0`` the
learnable scale of the Laplace distribution (world units), ``alpha = 1 / beta``:

``sigma(x) = alpha * Psi_beta(-d(x))``, ``Psi_beta(s) = 0.5 exp(s / beta)`` for ``s <= 0`` and
``1 - 0.5 exp(-s / beta)`` for ``s > 0`` (the CDF of a zero-mean Laplace distribution).

Example: ``beta = 0.1``: on the surface (``d = 0``) ``sigma = 10 * 0.5 = 5``; at ``d = 0.1`` outside
``sigma = 10 * 0.5 e^-1 = 1.8394``; deep inside ``sigma -> 10``.

Networks (positions box-normalised to ``x_n in [-1, 1]^3``, ``d = half_size * network(x_n)``):

* ``mlp``: positional encoding of ``x_n`` -> ``depth`` softplus layers (beta 100) with IDR's
  geometric initialisation, so that at the start ``d`` is the SDF of a sphere of radius
  ``init_radius`` (box-normalised units);
* ``hash``: ``[x_n, hash_grid(x_n)]`` -> the same small MLP, geometrically initialised on ``x_n``
  with the hash-grid weights at zero (the same sphere at the start), for speed.

Both output the distance and ``geo_features`` features; colour is an MLP on
``[features, SH(direction)]`` (no normal input, so training needs no double backward).
``raw(x, d) -> (n, 4)``: column 0 the signed distance ``d`` (world units), columns 1:4 colour
logits; ``activate`` turns ``d`` into density with the current ``beta``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radfield.errors import check_choice
from radfield.fields.encodings import PositionalEncoding
from radfield.fields.hashgrid import HashGrid, HashGridConfig
from radfield.fields.ngp import mlp
from radfield.fields.sh import SH_DIM, sh_encode

SDF_BACKBONES = ("hash", "mlp")


def laplace_density(d: Tensor, beta: Tensor) -> Tensor:
    """``sigma = (1 / beta) Psi_beta(-d)`` (module docstring), stable for any ``d``:
    ``0.5 exp(-|d| / beta)`` is the tail, reflected inside the surface."""
    tail = 0.5 * torch.exp(-d.abs() / beta)
    return torch.where(d >= 0, tail, 1.0 - tail) / beta


@dataclass
class SDFFieldConfig:
    backbone: str = "hash"
    """``hash`` (fast) or ``mlp`` (the paper's)."""
    grid: HashGridConfig = field(default_factory=lambda: HashGridConfig(
        n_levels=12, log2_table_size=17, base_resolution=16, max_resolution=512))
    pos_freqs: int = 6
    """``mlp`` backbone: positional-encoding frequencies of ``x_n``."""
    depth: int = 2
    width: int = 64
    geo_features: int = 15
    color_hidden: int = 64
    color_layers: int = 2
    init_radius: float = 0.5
    """Geometric initialisation: the SDF of this sphere (box-normalised units) at the start."""
    beta_init: float = 0.1
    beta_min: float = 1e-4


class SDFField(nn.Module):
    """Signed distance + colour (implements ``RadianceField``; ``sdf(x)`` for surfaces)."""

    def __init__(self, aabb: Tensor, config: SDFFieldConfig):
        super().__init__()
        check_choice("volsdf.field.backbone", config.backbone, SDF_BACKBONES, "backbone")
        self.config = config
        aabb = aabb.float()
        self.register_buffer("centre", (aabb[:3] + aabb[3:]) / 2)
        self.register_buffer("half_size", ((aabb[3:] - aabb[:3]) / 2).max())
        if config.backbone == "hash":
            self.grid = HashGrid(config.grid)
            n_extra = config.grid.output_dim
        else:
            self.encoding = PositionalEncoding(3, config.pos_freqs, include_input=False)
            n_extra = self.encoding.n_out
        self.n_extra = n_extra
        self.layers = nn.ModuleList()
        width_in = 3 + n_extra
        for _ in range(config.depth):
            self.layers.append(nn.Linear(width_in, config.width))
            width_in = config.width
        self.head = nn.Linear(width_in, 1 + config.geo_features)
        self.color_mlp = mlp(SH_DIM + config.geo_features, config.color_hidden, config.color_layers, 3)
        self.beta_param = nn.Parameter(torch.tensor(config.beta_init - config.beta_min))
        self.geometric_init(config.init_radius)

    @torch.no_grad()
    def geometric_init(self, radius: float) -> None:
        """IDR / SAL initialisation: hidden layers ``N(0, 2 / width)`` with zero biases and the
        extra (encoding) inputs of the first layer at zero; the last layer's distance row
        ``N(sqrt(pi / width), 1e-4)`` with bias ``-radius``: ``d_n(x) ~ |x_n| - radius``."""
        for k, layer in enumerate(self.layers):
            nn.init.normal_(layer.weight, 0.0, math.sqrt(2.0) / math.sqrt(layer.out_features))
            nn.init.zeros_(layer.bias)
            if k == 0:
                layer.weight[:, 3:] = 0.0
        width = self.head.in_features
        nn.init.normal_(self.head.weight, math.sqrt(math.pi) / math.sqrt(width), 1e-4)
        nn.init.zeros_(self.head.bias)
        self.head.bias[0] = -radius

    @property
    def beta(self) -> Tensor:
        return self.beta_param.abs() + self.config.beta_min

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - self.centre) / self.half_size

    def _geometry(self, x: Tensor) -> Tensor:
        """``(n, 1 + geo_features)``: box-normalised distance and features."""
        xn = self._normalise(x)
        extra = self.grid((xn + 1) / 2) if self.config.backbone == "hash" else self.encoding(xn)
        h = torch.cat([xn, extra], dim=-1)
        for layer in self.layers:
            h = F.softplus(layer(h), beta=100)
        return self.head(h)

    def sdf(self, x: Tensor) -> Tensor:
        """``(n,)`` signed distance in world units."""
        return self._geometry(x)[:, 0] * self.half_size

    def raw(self, x: Tensor, d: Tensor) -> Tensor:
        g = self._geometry(x)
        c = self.color_mlp(torch.cat([sh_encode(d), g[:, 1:]], dim=-1))
        return torch.cat([g[:, :1] * self.half_size, c], dim=-1)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return laplace_density(raw[:, 0], self.beta), torch.sigmoid(raw[:, 1:4])

    def density(self, x: Tensor) -> Tensor:
        return laplace_density(self.sdf(x), self.beta)


def sdf_gradient(sdf_fn, x: Tensor, eps: float | None = None) -> Tensor:
    """``(n, 3)`` spatial gradient of ``sdf_fn`` at ``x``, with a graph to the parameters: by
    autograd (``eps`` None; needs a twice-differentiable network) or by central differences
    ``(d(x + eps e_k) - d(x - eps e_k)) / (2 eps)`` (Neuralangelo's numerical gradient; hash-grid
    kernels are differentiable once)."""
    if eps is None:
        x = x.detach().requires_grad_(True)
        d = sdf_fn(x)
        (g,) = torch.autograd.grad(d.sum(), x, create_graph=True)
        return g
    offsets = torch.eye(3, device=x.device, dtype=x.dtype) * eps
    both = torch.cat([x[:, None, :] + offsets, x[:, None, :] - offsets], dim=1).reshape(-1, 3)
    d = sdf_fn(both).reshape(-1, 2, 3)
    return (d[:, 0] - d[:, 1]) / (2 * eps)


def eikonal_loss(grad: Tensor) -> Tensor:
    """``mean_i (|grad d(x_i)| - 1)^2``: a signed distance has unit gradient."""
    if grad.shape[0] == 0:
        return grad.sum() * 0.0
    return ((grad.norm(dim=-1) - 1.0) ** 2).mean()
