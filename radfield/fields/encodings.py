"""Input encodings: map points or directions to features for an MLP.

Vocabulary:
    x        inputs, ``(n, n_in)``; ``n`` is any batch size (``n_samples`` for positions,
             ``n_rays`` or ``n_samples`` for directions).
    n_out    every encoding module has an int attribute ``n_out``; ``forward(x) -> (n, n_out)``.
    L        number of frequency levels; level ``l`` has frequency ``2^l`` (log-spaced, NeRF).
    B        a random frequency matrix ``(n_in, n_features)``, ``B_ij ~ N(0, scale^2)``.
    w0       SIREN's frequency factor: a sine layer computes ``sin(w0 (W x + b))``.
    mu, var  mean and diagonal variance of a Gaussian sample (mip-NeRF), ``(n, n_in)`` each.

Encodings (registry names in ``ENCODINGS``; build them with :func:`build_encoding`):
    positional       [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)]
    fourier          [sin(2 pi x B), cos(2 pi x B)] with B fixed (a buffer)
    learned_fourier  the same with B an ``nn.Parameter``
    siren            sin(w0 (W x + b)) with SIREN's first-layer init
    hashgrid         multiresolution hash grid on positions normalised into a box
    sh               real spherical harmonics of degree 0..3 of the normalised direction
The integrated positional encoding (:func:`integrated_pos_enc`) takes ``(mu, var)`` rather than
``x``, so it is a module of its own and not in the registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from radfield.errors import RadfieldError
from radfield.fields.hashgrid import HashGrid, HashGridConfig
from radfield.fields.sh import SH_DIM, sh_encode
from radfield.fields.window import WindowedBands

__all__ = [
    "PositionalEncoding",
    "FourierFeatures",
    "SineLayer",
    "SirenEncoding",
    "siren_mlp",
    "integrated_pos_enc",
    "IntegratedPositionalEncoding",
    "SHEncoding",
    "HashGridEncoding",
    "EncodingConfig",
    "ENCODINGS",
    "build_encoding",
]


def _check_input(x: Tensor, n_in: int, name: str) -> None:
    if x.ndim != 2 or x.shape[-1] != n_in:
        raise ValueError(f"{name}: input must have shape (n, {n_in}), got {tuple(x.shape)}")


class PositionalEncoding(WindowedBands, nn.Module):
    """NeRF positional encoding with frequencies ``2^0 .. 2^(L-1)`` (no factor pi).

    Columns, for ``x = (x_1 .. x_n_in)``: ``[x]`` (if ``include_input``), then for each level
    ``l = 0 .. L-1`` the block ``[sin(2^l x_1) .. sin(2^l x_n_in), cos(2^l x_1) .. cos(2^l x_n_in)]``.
    ``n_out = n_in * (include_input + 2 L)``. Shapes: ``(n, n_in) -> (n, n_out)``.
    ``set_window(alpha)``: BARF's coarse-to-fine weights on the levels (:mod:`radfield.fields.window`;
    the input columns stay unweighted).

    Example: n_in = 1, L = 2, x = 0.25 ->
    [0.25, sin 0.25, cos 0.25, sin 0.5, cos 0.5] = [0.25, 0.247404, 0.968912, 0.479426, 0.877583].
    """

    def __init__(self, n_in: int, n_freqs: int, include_input: bool = True):
        super().__init__()
        self.n_in, self.n_freqs, self.include_input = n_in, n_freqs, include_input
        self.n_out = n_in * (int(include_input) + 2 * n_freqs)
        self.n_bands = n_freqs
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs, dtype=torch.float32),
                             persistent=False)
        self.register_buffer("window", None, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.n_in, "PositionalEncoding")
        xf = x[:, None, :] * self.freqs.to(x.dtype)[None, :, None]  # (n, L, n_in)
        per_level = torch.cat([torch.sin(xf), torch.cos(xf)], dim=-1).reshape(x.shape[0], -1)
        weights = self.band_weights(per_level, 2 * self.n_in)
        if weights is not None:
            per_level = per_level * weights
        return torch.cat([x, per_level], dim=-1) if self.include_input else per_level

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_freqs={self.n_freqs}, include_input={self.include_input}"


class FourierFeatures(nn.Module):
    """Random Fourier features (Tancik et al. 2020): ``[sin(2 pi x B), cos(2 pi x B)]``.

    ``B`` is ``(n_in, n_features)`` with entries ``N(0, scale^2)`` drawn from a
    ``torch.Generator`` seeded with ``seed`` (the same seed gives the same B). It is a buffer
    (saved, not trained) unless ``learned``, then an ``nn.Parameter`` ("learned Fourier").
    Columns: the ``n_features`` sines, then the ``n_features`` cosines; ``n_out = 2 n_features``.

    Example: n_in = 1, B = [[0.25, 0.5]], x = 1 -> 2 pi x B = (pi/2, pi) -> [1, 0, 0, -1].
    """

    def __init__(self, n_in: int, n_features: int, scale: float, learned: bool = False,
                 seed: int = 0):
        super().__init__()
        self.n_in, self.n_features, self.scale, self.learned = n_in, n_features, scale, learned
        self.n_out = 2 * n_features
        generator = torch.Generator().manual_seed(seed)
        b = torch.randn(n_in, n_features, generator=generator) * scale
        if learned:
            self.B = nn.Parameter(b)
        else:
            self.register_buffer("B", b)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.n_in, "FourierFeatures")
        proj = 2 * math.pi * (x @ self.B.to(x.dtype))
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def extra_repr(self) -> str:
        return (f"n_in={self.n_in}, n_features={self.n_features}, scale={self.scale}, "
                f"learned={self.learned}")


class SineLayer(nn.Module):
    """SIREN layer (Sitzmann et al. 2020): ``sin(w0 (W x + b))``, ``(n, n_in) -> (n, n_out)``.

    Weight init ``W ~ U(-1/n_in, 1/n_in)`` for the first layer (``first=True``), else
    ``U(-sqrt(6/n_in)/w0, sqrt(6/n_in)/w0)``, which keeps pre-activations ~ unit variance through
    depth. The bias keeps PyTorch's default ``U(-1/sqrt(n_in), 1/sqrt(n_in))``, as SIREN does.

    Example: n_in = n_out = 1, W = 0.01, b = 0, w0 = 30, x = pi/0.6 -> sin(pi/2) = 1.
    """

    def __init__(self, n_in: int, n_out: int, w0: float = 30.0, first: bool = False):
        super().__init__()
        self.n_in, self.n_out, self.w0, self.first = n_in, n_out, w0, first
        self.linear = nn.Linear(n_in, n_out)
        with torch.no_grad():
            self.linear.weight.uniform_(-self.weight_bound, self.weight_bound)

    @property
    def weight_bound(self) -> float:
        """Half-width of the uniform weight init: 1/n_in (first) or sqrt(6/n_in)/w0."""
        return 1.0 / self.n_in if self.first else math.sqrt(6.0 / self.n_in) / self.w0

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.w0 * self.linear(x))

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_out={self.n_out}, w0={self.w0}, first={self.first}"


class SirenEncoding(SineLayer):
    """SIREN-style encoding: the first sine layer ``sin(w0 (W x + b))``, W ~ U(-1/n_in, 1/n_in).

    Shapes ``(n, n_in) -> (n, n_out)``; the weights are trained with the rest of the field.
    """

    def __init__(self, n_in: int, n_out: int, w0: float = 30.0):
        super().__init__(n_in, n_out, w0=w0, first=True)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.n_in, "SirenEncoding")
        return super().forward(x)


def siren_mlp(n_in: int, hidden: int, n_layers: int, n_out: int, w0: float = 30.0) -> nn.Sequential:
    """A SIREN: ``n_layers`` sine layers of width ``hidden`` (the first with the first-layer
    init) and a final linear layer to ``n_out`` with the hidden init ``U(+-sqrt(6/hidden)/w0)``.

    ``(n, n_in) -> (n, n_out)``. ``n_layers >= 1``; e.g. ``siren_mlp(3, 256, 3, 4)`` is
    SineLayer(3->256, first), SineLayer(256->256), SineLayer(256->256), Linear(256->4).
    """
    if n_layers < 1:
        raise ValueError(f"siren_mlp needs n_layers >= 1, got {n_layers}")
    layers: list[nn.Module] = [SineLayer(n_in, hidden, w0=w0, first=True)]
    layers += [SineLayer(hidden, hidden, w0=w0) for _ in range(n_layers - 1)]
    head = nn.Linear(hidden, n_out)
    bound = math.sqrt(6.0 / hidden) / w0
    with torch.no_grad():
        head.weight.uniform_(-bound, bound)
    layers.append(head)
    return nn.Sequential(*layers)


def integrated_pos_enc(mean: Tensor, var: Tensor, min_deg: int, max_deg: int) -> Tensor:
    """Integrated positional encoding (mip-NeRF): expected sin / cos features of a Gaussian.

    For ``x ~ N(mu, var)`` (per coordinate), ``E[sin(a x)] = sin(a mu) exp(-a^2 var / 2)`` and
    ``E[cos(a x)] = cos(a mu) exp(-a^2 var / 2)``; here ``a = 2^l`` for ``l = min_deg ..
    max_deg - 1``, so the damping is ``exp(-4^l var / 2)``.

    mean, var ``(n, n_in)`` (var the diagonal of the covariance, >= 0) ->
    ``(n, 2 * n_in * (max_deg - min_deg))``, columns as mip-NeRF orders them: first all sines,
    level-major then coordinate (``sin(2^l mu_c)`` at column ``(l - min_deg) * n_in + c``), then
    all cosines in the same order.

    Example: mu = 0.5, var = 0.02, degrees 0..1 -> [sin(.5) e^-.01, sin(1) e^-.04, cos(.5) e^-.01,
    cos(1) e^-.04] = [0.474655, 0.808476, 0.868850, 0.519117].
    Large ``var`` sends the features smoothly to 0 (the exponential underflows; gradients stay 0).
    """
    if mean.shape != var.shape:
        raise ValueError(f"mean and var must have one shape, got {tuple(mean.shape)} "
                         f"and {tuple(var.shape)}")
    scales = 2.0 ** torch.arange(min_deg, max_deg, dtype=mean.dtype, device=mean.device)
    shape = mean.shape[:-1] + (-1,)
    scaled_mean = (mean[..., None, :] * scales[:, None]).reshape(shape)  # (n, L * n_in)
    scaled_var = (var[..., None, :] * (scales * scales)[:, None]).reshape(shape)
    damping = torch.exp(-0.5 * scaled_var)
    return torch.cat([torch.sin(scaled_mean) * damping, torch.cos(scaled_mean) * damping], dim=-1)


class IntegratedPositionalEncoding(WindowedBands, nn.Module):
    """Module form of :func:`integrated_pos_enc`: ``forward(mean, var)``, both ``(n, n_in)``,
    -> ``(n, n_out)`` with ``n_out = 2 n_in (max_deg - min_deg)`` (mip-NeRF: 0..16 for positions).
    ``set_window(alpha)``: coarse-to-fine weights on the degrees (:mod:`radfield.fields.window`).
    """

    def __init__(self, min_deg: int = 0, max_deg: int = 16, n_in: int = 3):
        super().__init__()
        if max_deg <= min_deg:
            raise ValueError(f"need max_deg > min_deg, got {min_deg}..{max_deg}")
        self.min_deg, self.max_deg, self.n_in = min_deg, max_deg, n_in
        self.n_out = 2 * n_in * (max_deg - min_deg)
        self.n_bands = max_deg - min_deg
        self.register_buffer("window", None, persistent=False)

    def forward(self, mean: Tensor, var: Tensor) -> Tensor:
        _check_input(mean, self.n_in, "IntegratedPositionalEncoding")
        out = integrated_pos_enc(mean, var, self.min_deg, self.max_deg)
        weights = self.band_weights(out, self.n_in)
        return out if weights is None else out * weights.repeat(2)  # the sines, then the cosines

    def extra_repr(self) -> str:
        return f"min_deg={self.min_deg}, max_deg={self.max_deg}, n_in={self.n_in}"


class SHEncoding(nn.Module):
    """Spherical harmonics of degree 0..3 (:func:`radfield.fields.sh.sh_encode`), ``n_out = 16``.

    ``(n, 3) -> (n, 16)``. Directions are normalised to unit length first (the SH polynomials
    are the orthonormal harmonics only on the unit sphere); unit inputs pass through unchanged.
    """

    n_in = 3
    n_out = SH_DIM

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 3, "SHEncoding")
        return sh_encode(F.normalize(x, dim=-1))


class HashGridEncoding(WindowedBands, nn.Module):
    """Hash grid encoding of world positions: ``HashGrid((x - lo) / (hi - lo))``.

    ``aabb`` ``(6,)`` is the box ``(xmin, ymin, zmin, xmax, ymax, zmax)`` mapped onto the unit
    cube (points outside are clamped to its faces by the grid). ``(n, 3) -> (n, n_out)`` with
    ``n_out = n_levels * features_per_level``.

    Example: aabb = (-1, -1, -1, 1, 1, 1): x = (0, 0.5, -1) is looked up at (0.5, 0.75, 0).
    """

    n_in = 3

    def __init__(self, config: HashGridConfig, aabb: Tensor):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        if aabb.shape != (6,) or bool((aabb[3:] <= aabb[:3]).any()):
            raise ValueError(f"aabb must be (xmin, ymin, zmin, xmax, ymax, zmax) with max > min, "
                             f"got {aabb.tolist()}")
        self.grid = HashGrid(config)
        self.n_out = self.grid.output_dim
        self.register_buffer("aabb", aabb)

    def normalise(self, x: Tensor) -> Tensor:
        """World positions ``(n, 3)`` -> box coordinates in ``[0, 1]^3`` (unclamped)."""
        lo, hi = self.aabb[:3].to(x.dtype), self.aabb[3:].to(x.dtype)
        return (x - lo) / (hi - lo)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, 3, "HashGridEncoding")
        return self.grid(self.normalise(x))

    def set_window(self, alpha: float | None, source: str = "pose") -> None:
        """Coarse-to-fine weights on the grid's levels (:class:`HashGrid` applies them)."""
        self.grid.set_window(alpha, source)


@dataclass
class EncodingConfig:
    """Options of :func:`build_encoding`; each field is read only by the encodings named.

    name:          one of ``ENCODINGS``.
    n_freqs:       positional: number of levels L (NeRF: 10 for positions, 4 for directions).
    include_input: positional: prepend x itself.
    n_features:    fourier / learned_fourier: columns of B (n_out = 2 n_features);
                   siren: output width (n_out = n_features).
    scale:         fourier / learned_fourier: standard deviation of B's entries.
    seed:          fourier / learned_fourier: seed of B's generator.
    w0:            siren: frequency factor.
    hashgrid:      hashgrid: the grid's config.
    aabb:          hashgrid: box (xmin, ymin, zmin, xmax, ymax, zmax) mapped onto the unit cube.
    """

    name: str = "positional"
    n_freqs: int = 10
    include_input: bool = True
    n_features: int = 256
    scale: float = 10.0
    seed: int = 0
    w0: float = 30.0
    hashgrid: HashGridConfig = field(default_factory=HashGridConfig)
    aabb: tuple[float, float, float, float, float, float] = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0)


def _needs_3d(name: str, n_in: int) -> None:
    if n_in != 3:
        raise RadfieldError(f"encoding {name!r}: needs n_in = 3, got {n_in}")


def _build_sh(config: EncodingConfig, n_in: int) -> nn.Module:
    _needs_3d("sh", n_in)
    return SHEncoding()


def _build_hashgrid(config: EncodingConfig, n_in: int) -> nn.Module:
    _needs_3d("hashgrid", n_in)
    return HashGridEncoding(config.hashgrid, torch.tensor(config.aabb, dtype=torch.float32))


ENCODINGS: dict[str, Callable[[EncodingConfig, int], nn.Module]] = {
    "positional": lambda c, n_in: PositionalEncoding(n_in, c.n_freqs, c.include_input),
    "fourier": lambda c, n_in: FourierFeatures(n_in, c.n_features, c.scale, False, c.seed),
    "learned_fourier": lambda c, n_in: FourierFeatures(n_in, c.n_features, c.scale, True, c.seed),
    "siren": lambda c, n_in: SirenEncoding(n_in, c.n_features, c.w0),
    "hashgrid": _build_hashgrid,
    "sh": _build_sh,
}


def build_encoding(config: EncodingConfig, n_in: int) -> nn.Module:
    """The encoding ``config.name`` for ``n_in`` input columns; it has ``n_out``.

    >>> build_encoding(EncodingConfig("positional", n_freqs=4), 3).n_out
    27
    """
    try:
        builder = ENCODINGS[config.name]
    except KeyError:
        raise RadfieldError(f"unknown encoding {config.name!r}; valid: "
                            f"{', '.join(sorted(ENCODINGS))}") from None
    return builder(config, n_in)
