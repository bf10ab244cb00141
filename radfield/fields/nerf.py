"""The MLP fields of the NeRF family: vanilla NeRF / TinyNeRF, mip-NeRF and NeRF-AE.

All implement :class:`radfield.fields.base.RadianceField`: ``raw(*inputs) -> (n_samples, C)``
pre-activation outputs, column 0 the density, columns 1:4 the colour (``C > 4`` carries extra
per-sample quantities a model penalises in its ``extra_losses``, see :class:`NeRFAEField`).

Positions are first mapped from the scene box ``aabb`` to ``[-1, 1]^3``
(``x_n = (x - centre) / half_size``, one ``half_size`` for all axes, the largest), so the
encodings see the same range whatever the dataset's units.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from radfield.errors import RadfieldError
from radfield.fields.encodings import (EncodingConfig, IntegratedPositionalEncoding, PositionalEncoding,
                                       build_encoding)

DENSITY_ACTIVATIONS = ("relu", "softplus")


class BoxNormalisation(nn.Module):
    """``x -> (x - centre) / half_size`` for the box ``aabb (6,)``; variances scale by
    ``1 / half_size^2``."""

    def __init__(self, aabb: Tensor):
        super().__init__()
        aabb = aabb.float()
        self.register_buffer("centre", (aabb[:3] + aabb[3:]) / 2)
        self.register_buffer("half_size", ((aabb[3:] - aabb[:3]) / 2).max())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.centre) / self.half_size


class SkipMLP(nn.Module):
    """``depth`` ReLU layers of ``width``; the input is concatenated again before layer ``skip``
    (NeRF: 8 x 256, skip at 4; ``skip = -1``: none). ``forward(x) -> (n, width)``."""

    def __init__(self, n_in: int, depth: int, width: int, skip: int = -1):
        super().__init__()
        self.skip = skip
        self.layers = nn.ModuleList()
        for k in range(depth):
            n = n_in if k == 0 else width
            self.layers.append(nn.Linear(n + (n_in if k == skip and k > 0 else 0), width))

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for k, layer in enumerate(self.layers):
            if k == self.skip and k > 0:
                h = torch.cat([h, x], dim=-1)
            h = F.relu(layer(h))
        return h


def activate_density(raw: Tensor, kind: str) -> Tensor:
    """``relu(raw)`` (NeRF) or ``softplus(raw - 1)`` (mip-NeRF: a shifted softplus)."""
    return F.relu(raw) if kind == "relu" else F.softplus(raw - 1.0)


class NeRFField(nn.Module):
    """Vanilla NeRF (and TinyNeRF with ``direction_freqs = 0``): encoded position -> trunk MLP ->
    density, and (trunk features, encoded direction) -> one hidden layer of ``width // 2`` ->
    colour. ``raw(x (n, 3), d (n, 3)) -> (n, 4)``."""

    def __init__(self, aabb: Tensor, encoding: EncodingConfig, depth: int = 8, width: int = 256,
                 skip: int = 4, direction_freqs: int = 4, density_activation: str = "relu"):
        super().__init__()
        if density_activation not in DENSITY_ACTIVATIONS:
            raise RadfieldError(f"unknown density activation {density_activation!r} "
                                f"(choose from: {', '.join(DENSITY_ACTIVATIONS)})")
        self.density_activation = density_activation
        self.normalise = BoxNormalisation(aabb)
        self.position_encoding = self._position_encoding(encoding)
        self.trunk = SkipMLP(self.position_encoding.n_out, depth, width, skip)
        self.sigma_head = nn.Linear(width, 1)
        # A small positive density bias at initialisation: with ReLU densities, a narrow network
        # can otherwise start with raw density < 0 over the whole box and never get a gradient
        # (measured: width 32-64 networks rendering a blank image for some seeds).
        nn.init.constant_(self.sigma_head.bias, 0.1)
        self.direction_encoding = PositionalEncoding(3, direction_freqs) if direction_freqs > 0 else None
        if self.direction_encoding is None:
            self.color_head = nn.Linear(width, 3)
        else:
            self.feature = nn.Linear(width, width)
            self.color_head = nn.Sequential(
                nn.Linear(width + self.direction_encoding.n_out, width // 2), nn.ReLU(inplace=True),
                nn.Linear(width // 2, 3))

    def _position_encoding(self, encoding: EncodingConfig) -> nn.Module:
        if encoding.name == "hashgrid":  # the field hands it box-normalised points in [-1, 1]^3
            encoding = dataclasses.replace(encoding, aabb=(-1.0, -1.0, -1.0, 1.0, 1.0, 1.0))
        return build_encoding(encoding, 3)

    def encode(self, x: Tensor) -> Tensor:
        return self.position_encoding(self.normalise(x))

    def _heads(self, h: Tensor, d: Tensor) -> Tensor:
        sigma = self.sigma_head(h)
        if self.direction_encoding is None:
            return torch.cat([sigma, self.color_head(h)], dim=-1)
        c = self.color_head(torch.cat([self.feature(h), self.direction_encoding(d)], dim=-1))
        return torch.cat([sigma, c], dim=-1)

    def raw(self, x: Tensor, d: Tensor) -> Tensor:
        return self._heads(self.trunk(self.encode(x)), d)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return activate_density(raw[:, 0], self.density_activation), torch.sigmoid(raw[:, 1:4])

    def density(self, x: Tensor) -> Tensor:
        return activate_density(self.sigma_head(self.trunk(self.encode(x)))[:, 0], self.density_activation)


class MipNeRFField(NeRFField):
    """mip-NeRF: the NeRF MLP on the integrated positional encoding of each sample's Gaussian.
    ``raw(mean (n, 3), var (n, 3), d (n, 3)) -> (n, 4)``; density ``softplus(raw - 1)``."""

    def __init__(self, aabb: Tensor, min_deg: int = 0, max_deg: int = 16, depth: int = 8,
                 width: int = 256, skip: int = 4, direction_freqs: int = 4):
        self._degrees = (min_deg, max_deg)
        super().__init__(aabb, EncodingConfig(), depth, width, skip, direction_freqs, "softplus")

    def _position_encoding(self, encoding: EncodingConfig) -> nn.Module:
        return IntegratedPositionalEncoding(*self._degrees)

    def raw(self, mean: Tensor, var: Tensor, d: Tensor) -> Tensor:
        half = self.normalise.half_size
        feats = self.position_encoding(self.normalise(mean), var / half ** 2)
        return self._heads(self.trunk(feats), d)

    def density(self, x: Tensor) -> Tensor:
        feats = self.position_encoding(self.normalise(x), torch.zeros_like(x))
        return activate_density(self.sigma_head(self.trunk(feats))[:, 0], "softplus")


class NeRFAEField(nn.Module):
    """NeRF auto-encoder (NeRF Atlas): encoded position -> encoder MLP -> latent material vector
    ``z`` (optionally L2-normalised) -> density MLP -> (density, features); colour MLP on
    ``(z, features, encoded direction)``.

    ``raw(x, d) -> (n, 5)``: density, colour, and ``|z|^2`` (column 4), which the model's
    ``extra_losses`` turns into ``latent_penalty * mean |z|^2``. Carrying it in ``raw`` keeps
    the penalty inside the gradient hard sample mining computes per sample.
    """

    def __init__(self, aabb: Tensor, encoding: EncodingConfig, latent: int = 32, encoder_depth: int = 3,
                 width: int = 128, direction_freqs: int = 4, normalize_latent: bool = False):
        super().__init__()
        self.normalise = BoxNormalisation(aabb)
        self.position_encoding = build_encoding(encoding, 3)
        self.encoder = nn.Sequential(SkipMLP(self.position_encoding.n_out, encoder_depth, width),
                                     nn.Linear(width, latent))
        self.normalize_latent = normalize_latent
        self.density_mlp = nn.Sequential(nn.Linear(latent, width), nn.ReLU(inplace=True),
                                         nn.Linear(width, 1 + width // 2))
        self.direction_encoding = PositionalEncoding(3, direction_freqs)
        self.color_mlp = nn.Sequential(
            nn.Linear(latent + width // 2 + self.direction_encoding.n_out, width // 2),
            nn.ReLU(inplace=True), nn.Linear(width // 2, 3))

    def latent(self, x: Tensor) -> Tensor:
        z = self.encoder(self.position_encoding(self.normalise(x)))
        return F.normalize(z, dim=-1) if self.normalize_latent else z

    def raw(self, x: Tensor, d: Tensor) -> Tensor:
        z = self.latent(x)
        h = self.density_mlp(z)
        c = self.color_mlp(torch.cat([z, F.relu(h[:, 1:]), self.direction_encoding(d)], dim=-1))
        return torch.cat([h[:, :1], c, (z * z).sum(-1, keepdim=True)], dim=-1)

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return F.softplus(raw[:, 0] - 1.0), torch.sigmoid(raw[:, 1:4])

    def density(self, x: Tensor) -> Tensor:
        return F.softplus(self.density_mlp(self.latent(x))[:, 0] - 1.0)
