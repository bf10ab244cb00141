"""Encodings and frustum Gaussians against independent ground truth.

Ground truth used here: Monte Carlo expectations (IPE), Gauss-Legendre quadrature over the solid
with the volume element |d| dt r dr dtheta (exact for these polynomial moments), rejection
sampling in world coordinates, mip-NeRF's published closed forms, and hand-computed values.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfield.errors import RadfieldError
from radfield.fields.encodings import (
    ENCODINGS,
    EncodingConfig,
    FourierFeatures,
    HashGridEncoding,
    IntegratedPositionalEncoding,
    PositionalEncoding,
    SHEncoding,
    SineLayer,
    SirenEncoding,
    build_encoding,
    integrated_pos_enc,
    siren_mlp,
)
from radfield.fields.hashgrid import HashGridConfig, hash_grid_reference
from radfield.fields.sh import sh_encode
from radfield.samplers.frustums import (
    conical_frustum_moments,
    conical_frustum_to_gaussian,
    cylinder_to_gaussian,
)

SMALL_GRID = HashGridConfig(n_levels=3, features_per_level=2, log2_table_size=8,
                            base_resolution=4, max_resolution=16, init_scale=1.0, use_kernel=False)


# ---------------------------------------------------------------------------------------------
# Integrated positional encoding


def test_ipe_matches_monte_carlo():
    rng = np.random.default_rng(0)
    n_mc = 200_000
    # one row, each coordinate its own Gaussian; two rows -> six (mu, var) pairs
    mus = np.array([[0.3, -1.7, 2.2], [0.05, 1.1, -0.6]])
    vars_ = np.array([[0.01, 0.5, 2.0], [0.001, 0.05, 0.2]])
    min_deg, max_deg = 0, 4
    out = integrated_pos_enc(torch.from_numpy(mus), torch.from_numpy(vars_), min_deg, max_deg)
    n_in, n_lev = 3, max_deg - min_deg
    assert out.shape == (2, 2 * n_in * n_lev)
    for row in range(2):
        for c in range(n_in):
            x = mus[row, c] + math.sqrt(vars_[row, c]) * rng.standard_normal(n_mc)
            for lev in range(min_deg, max_deg):
                col = (lev - min_deg) * n_in + c
                for offset, fn in ((0, np.sin), (n_in * n_lev, np.cos)):
                    vals = fn(2.0**lev * x)
                    se = vals.std() / math.sqrt(n_mc)
                    got = out[row, offset + col].item()
                    assert abs(got - vals.mean()) < 4 * se + 1e-12, (row, c, lev, fn.__name__)


def test_ipe_hand_values_and_degrees():
    # docstring example: mu = 0.5, var = 0.02, degrees 0..1
    out = integrated_pos_enc(torch.tensor([[0.5]], dtype=torch.float64),
                             torch.tensor([[0.02]], dtype=torch.float64), 0, 2)
    expected = [0.4746551747901966, 0.8084764355565319, 0.8688504695007325, 0.519116749427757]
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-12)
    # var = 0: plain sin / cos at 2^l mu; min_deg shifts the levels
    mu = torch.tensor([[0.3, -0.2, 1.0]], dtype=torch.float64)
    out = integrated_pos_enc(mu, torch.zeros_like(mu), 2, 5)
    levels = 2.0 ** np.arange(2, 5)
    scaled = (levels[:, None] * mu.numpy()[0][None, :]).reshape(-1)
    np.testing.assert_allclose(out[0].numpy(), np.concatenate([np.sin(scaled), np.cos(scaled)]),
                               rtol=1e-12, atol=1e-15)
    module = IntegratedPositionalEncoding(0, 16)
    assert module.n_out == 96
    assert module(torch.zeros(7, 3), torch.ones(7, 3)).shape == (7, 96)


def test_ipe_large_variance_goes_to_zero_with_finite_gradients():
    mean = torch.tensor([[0.3, 100.0, -5.0]], requires_grad=True)
    for v in (1e-3, 1.0, 1e3, 1e8, 1e30):
        var = torch.full((1, 3), v, requires_grad=True)
        out = integrated_pos_enc(mean, var, 0, 16)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(mean.grad).all()
        assert torch.isfinite(var.grad).all()
        mean.grad = None
    # at var = 1e30 every feature is exactly zero; at var = 1 the levels >= 3 are < exp(-32)
    assert out.abs().max() == 0
    out1 = integrated_pos_enc(mean.detach(), torch.ones(1, 3), 0, 16)
    assert out1.reshape(2, 16, 3)[:, 3:].abs().max() < math.exp(-32)


# ---------------------------------------------------------------------------------------------
# Frustum moments


def _frame(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors orthogonal to d and to each other."""
    q, _ = np.linalg.qr(np.stack([d, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], axis=1))
    return q[:, 1], q[:, 2]


def _quadrature_moments(d, t0, t1, radius_at, n=8):
    """Mean and covariance of a solid of revolution about the ray, by exact quadrature.

    Points p = t d + s rho(t) (cos th e1 + sin th e2) with volume element
    |d| dt * (s rho(t)) * rho(t) ds * dth; Gauss-Legendre in t and s, uniform in theta.
    """
    d = np.asarray(d, dtype=np.float64)
    e1, e2 = _frame(d)
    xg, wg = np.polynomial.legendre.leggauss(n)
    ts, wt = (t1 - t0) / 2 * xg + (t1 + t0) / 2, (t1 - t0) / 2 * wg
    ss, ws = xg / 2 + 0.5, wg / 2
    ths = np.arange(n) * 2 * np.pi / n
    T, S, TH = np.meshgrid(ts, ss, ths, indexing="ij")
    W = np.einsum("i,j->ij", wt, ws)[..., None] * (2 * np.pi / n)
    rho = radius_at(T)
    r = S * rho
    dv = (W * np.linalg.norm(d) * r * rho).reshape(-1)
    offs = (np.cos(TH)[..., None] * e1 + np.sin(TH)[..., None] * e2) * r[..., None]
    pts = (T[..., None] * d + offs).reshape(-1, 3)
    vol = dv.sum()
    mean = (dv[:, None] * pts).sum(0) / vol
    c = pts - mean
    cov = np.einsum("k,ki,kj->ij", dv, c, c) / vol
    return mean, cov, vol


def _rejection_moments(d, t0, t1, radius_at, n=1_000_000, seed=1):
    """Mean and covariance of points uniform in the solid, by rejection in a world box."""
    d = np.asarray(d, dtype=np.float64)
    rmax = max(radius_at(np.float64(t0)), radius_at(np.float64(t1)))
    ends = np.stack([t0 * d, t1 * d])
    lo, hi = ends.min(0) - rmax, ends.max(0) + rmax
    p = np.random.default_rng(seed).uniform(lo, hi, size=(n, 3))
    t = p @ d / (d @ d)
    perp = np.linalg.norm(p - t[:, None] * d, axis=1)
    inside = (t >= t0) & (t <= t1) & (perp <= radius_at(t))
    pts = p[inside]
    assert len(pts) > 50_000
    return pts.mean(0), np.cov(pts.T), inside.mean() * np.prod(hi - lo)


CASES = [  # (direction, t0, t1, radius): non-axis-aligned, non-unit directions
    ((0.6, -1.2, 0.9), 0.5, 2.0, 0.3),
    ((-2.0, 0.3, 0.1), 0.0, 1.0, 0.25),
    ((0.0, 0.0, 1.0), 1.0, 1.5, 0.1),
]


def _gaussian(fn, d, t0, t1, radius, diagonal):
    mean, var = fn(torch.tensor([d], dtype=torch.float64), torch.tensor([t0], dtype=torch.float64),
                   torch.tensor([t1], dtype=torch.float64),
                   torch.tensor([radius], dtype=torch.float64), diagonal=diagonal)
    return mean[0].numpy(), var[0].numpy()


@pytest.mark.parametrize("solid", ["cone", "cylinder"])
@pytest.mark.parametrize("case", CASES)
def test_frustum_moments_match_quadrature(solid, case):
    d, t0, t1, radius = case
    fn = conical_frustum_to_gaussian if solid == "cone" else cylinder_to_gaussian
    radius_at = (lambda t: t * radius) if solid == "cone" else (lambda t: np.full_like(t, radius))
    q_mean, q_cov, q_vol = _quadrature_moments(d, t0, t1, radius_at)
    # the quadrature's volume is the solid's: pi R^2 |d| (t1^3 - t0^3) / 3 or pi R^2 |d| (t1 - t0)
    dn = np.linalg.norm(d)
    vol = (np.pi * radius**2 * dn * (t1**3 - t0**3) / 3 if solid == "cone"
           else np.pi * radius**2 * dn * (t1 - t0))
    assert q_vol == pytest.approx(vol, rel=1e-12)
    mean, var = _gaussian(fn, d, t0, t1, radius, diagonal=True)
    mean_f, cov = _gaussian(fn, d, t0, t1, radius, diagonal=False)
    np.testing.assert_allclose(mean, q_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mean_f, q_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cov, q_cov, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(var, np.diag(q_cov), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("solid", ["cone", "cylinder"])
def test_frustum_moments_match_rejection_sampling(solid):
    d, t0, t1, radius = (0.6, -1.2, 0.9), 0.5, 2.0, 0.3
    fn = conical_frustum_to_gaussian if solid == "cone" else cylinder_to_gaussian
    radius_at = (lambda t: t * radius) if solid == "cone" else (lambda t: np.full_like(t, radius))
    mc_mean, mc_cov, _ = _rejection_moments(d, t0, t1, radius_at)
    mean, cov = _gaussian(fn, d, t0, t1, radius, diagonal=False)
    assert np.linalg.norm(mc_mean - mean) < 1e-2 * np.linalg.norm(mean)
    assert np.linalg.norm(mc_cov - cov) < 2e-2 * np.linalg.norm(cov)
    np.testing.assert_allclose(np.diag(mc_cov), np.diag(cov), rtol=3e-2)


def test_cone_moments_equal_mip_nerf_closed_form_and_hand_values():
    # mip-NeRF (Barron et al. 2021, eq. 7) in its published form
    t0 = torch.tensor([0.0, 0.5, 1.0, 2.0, 10.0, 3.0], dtype=torch.float64)
    t1 = torch.tensor([0.1, 0.6, 3.0, 2.0, 50.0, 3.0 + 1e-6], dtype=torch.float64)
    r = torch.tensor([0.3, 0.01, 0.1, 1.0, 0.002, 0.5], dtype=torch.float64)
    mu, hw = (t0 + t1) / 2, (t1 - t0) / 2
    den = 3 * mu**2 + hw**2
    t_mean = mu + 2 * mu * hw**2 / den
    t_var = hw**2 / 3 - 4 / 15 * (hw**4 * (12 * mu**2 - hw**2)) / den**2
    r_var = r**2 * (mu**2 / 4 + 5 / 12 * hw**2 - 4 / 15 * hw**4 / den)
    got = conical_frustum_moments(t0, t1, r)
    for a, b in zip(got, (t_mean, t_var, r_var)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-18)
    # module docstring example: t0 = 1, t1 = 3, R = 0.1, d = (0, 0, 2)
    mean, var = conical_frustum_to_gaussian(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([1.0]),
                                            torch.tensor([3.0]), torch.tensor([0.1]))
    np.testing.assert_allclose(mean[0].numpy(), [0, 0, 2 * 30 / 13], rtol=1e-6)
    np.testing.assert_allclose(var[0].numpy(), [0.0025 * 363 / 65, 0.0025 * 363 / 65,
                                                4 * 219 / 845], rtol=1e-5)


def test_cone_moments_are_stable_in_float32():
    # a thin interval far away: t1^3 - t0^3 style formulas lose every digit in float32
    t0 = torch.tensor([100.0, 1000.0, 1.0])
    t1 = torch.tensor([100.01, 1000.5, 1.0001])
    r = torch.tensor([0.01, 0.01, 0.01])
    got = conical_frustum_moments(t0, t1, r)
    ref = conical_frustum_moments(t0.double(), t1.double(), r.double())
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.double().numpy(), b.numpy(), rtol=2e-3)
    # t_var ~ (t1 - t0)^2 / 12 for a thin interval
    np.testing.assert_allclose(ref[1].numpy(), ((t1.double() - t0.double()) ** 2 / 12).numpy(),
                               rtol=1e-3)


@pytest.mark.parametrize("fn", [conical_frustum_to_gaussian, cylinder_to_gaussian])
def test_degenerate_frustums_are_finite(fn):
    d = torch.tensor([[0.3, -0.4, 1.2], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    t0 = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    t1 = torch.tensor([2.0, 0.0, 2.0], requires_grad=True)  # t0 == t1, t0 == t1 == 0, d == 0
    r = torch.tensor([0.2, 0.2, 0.2], requires_grad=True)
    for diagonal in (True, False):
        mean, var = fn(d, t0, t1, r, diagonal=diagonal)
        (mean.sum() + var.sum()).backward()
        for tensor in (mean, var, d.grad, t0.grad, t1.grad, r.grad):
            assert torch.isfinite(tensor).all()
        d.grad = t0.grad = t1.grad = r.grad = None
    mean, var = fn(d.detach(), t0.detach(), t1.detach(), r.detach())
    if fn is conical_frustum_to_gaussian:  # a disk of radius t R: var along d 0, across (tR)^2/4
        dn = d[0].detach() / d[0].detach().norm()
        np.testing.assert_allclose(var[0].numpy(), (0.4**2 / 4 * (1 - dn**2)).numpy(), rtol=1e-6)
        assert var[1].abs().max() == 0
    np.testing.assert_allclose(var[2].numpy(), var[2, 0].item(), rtol=1e-6)  # isotropic ball
    assert mean[2].abs().max() == 0


def test_frustum_shapes():
    for fn in (conical_frustum_to_gaussian, cylinder_to_gaussian):
        empty = torch.zeros(0)
        mean, var = fn(torch.zeros(0, 3), empty, empty, empty)
        assert mean.shape == (0, 3) and var.shape == (0, 3)
        mean, cov = fn(torch.ones(5, 3), torch.ones(5), 2 * torch.ones(5), torch.tensor(0.1),
                       diagonal=False)
        assert mean.shape == (5, 3) and cov.shape == (5, 3, 3)
        with pytest.raises(ValueError):
            fn(torch.ones(5, 3), torch.ones(4), torch.ones(4), torch.ones(4))


# ---------------------------------------------------------------------------------------------
# Encodings


def test_positional_encoding_hand_values():
    enc = PositionalEncoding(2, 2)
    assert enc.n_out == 10
    out = enc(torch.tensor([[0.25, -1.0]], dtype=torch.float64))
    expected = [0.25, -1.0,
                0.247403959, -0.841470985, 0.968912422, 0.540302306,   # level 0: sin, cos
                0.479425539, -0.909297427, 0.877582562, -0.416146837]  # level 1: sin, cos
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-8)
    enc = PositionalEncoding(3, 10, include_input=False)
    assert enc.n_out == 60 and enc(torch.rand(4, 3)).shape == (4, 60)
    with pytest.raises(ValueError):
        enc(torch.rand(4, 2))


def test_fourier_features_known_matrix_seed_and_scale():
    enc = FourierFeatures(2, 2, scale=1.0)
    assert enc.n_out == 4
    with torch.no_grad():
        enc.B.copy_(torch.tensor([[0.25, 0.5], [0.0, 0.125]]))
    # x B = (0.25, 0.75) -> 2 pi x B = (pi/2, 3 pi/2)
    out = enc(torch.tensor([[1.0, 2.0]]))
    np.testing.assert_allclose(out[0].numpy(), [1.0, -1.0, 0.0, 0.0], atol=1e-6)
    a, b = FourierFeatures(4, 2048, 3.0, seed=7), FourierFeatures(4, 2048, 3.0, seed=7)
    assert torch.equal(a.B, b.B) and not torch.equal(a.B, FourierFeatures(4, 2048, 3.0).B)
    n = a.B.numel()
    assert abs(a.B.std().item() - 3.0) < 4 * 3.0 / math.sqrt(2 * n)
    assert abs(a.B.mean().item()) < 4 * 3.0 / math.sqrt(n)


def test_fourier_fixed_vs_learned_gradients():
    fixed, learned = FourierFeatures(3, 8, 2.0), FourierFeatures(3, 8, 2.0, learned=True)
    assert torch.equal(fixed.B, learned.B)
    assert "B" in dict(fixed.named_buffers()) and len(list(fixed.parameters())) == 0
    assert "B" in fixed.state_dict()
    assert [name for name, _ in learned.named_parameters()] == ["B"]
    x = torch.rand(5, 3, requires_grad=True)
    fixed(x).sum().backward()
    learned(x).sum().backward()
    assert fixed.B.grad is None and not fixed.B.requires_grad
    # d/dB_ij sum(sin p + cos p) = sum_n 2 pi x_ni (cos p_nj - sin p_nj), p = 2 pi x B
    xn, bn = x.detach().double().numpy(), learned.B.detach().double().numpy()
    p = 2 * np.pi * xn @ bn
    expected = 2 * np.pi * xn.T @ (np.cos(p) - np.sin(p))
    np.testing.assert_allclose(learned.B.grad.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_siren_layers_formula_and_init():
    torch.manual_seed(0)
    first = SirenEncoding(64, 512, w0=30.0)
    hidden = SineLayer(256, 512, w0=20.0)
    for layer, bound in ((first, 1 / 64), (hidden, math.sqrt(6 / 256) / 20)):
        w = layer.linear.weight.detach()
        assert layer.n_out == 512 and layer.weight_bound == pytest.approx(bound)
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert w.var().item() == pytest.approx(bound**2 / 3, rel=0.03)  # uniform, not narrower
        x = torch.randn(6, layer.n_in, dtype=torch.float64)
        out = layer.double()(x)
        wn, bn = layer.linear.weight.detach().numpy(), layer.linear.bias.detach().numpy()
        np.testing.assert_allclose(out.detach().numpy(),
                                   np.sin(layer.w0 * (x.numpy() @ wn.T + bn)),
                                   rtol=1e-9, atol=1e-13)
    # docstring example: W = 0.01, b = 0, w0 = 30, x = pi / 0.6 -> sin(pi / 2) = 1
    layer = SineLayer(1, 1, w0=30.0)
    with torch.no_grad():
        layer.linear.weight.fill_(0.01)
        layer.linear.bias.zero_()
    assert layer(torch.tensor([[math.pi / 0.6]])).item() == pytest.approx(1.0, abs=1e-6)


def test_siren_mlp_structure():
    net = siren_mlp(3, 32, 3, 4, w0=25.0)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["SineLayer", "SineLayer", "SineLayer", "Linear"]
    assert net[0].first and not net[1].first and net[1].w0 == 25.0
    assert net[-1].weight.abs().max() <= math.sqrt(6 / 32) / 25.0
    assert net(torch.rand(7, 3)).shape == (7, 4)
    with pytest.raises(ValueError):
        siren_mlp(3, 32, 0, 4)


def test_sh_encoding_equals_sh_encode():
    enc = SHEncoding()
    assert enc.n_out == 16
    dirs = torch.nn.functional.normalize(torch.randn(9, 3, dtype=torch.float64), dim=-1)
    np.testing.assert_allclose(enc(dirs).numpy(), sh_encode(dirs).numpy(), rtol=1e-12)
    np.testing.assert_allclose(enc(3.7 * dirs).numpy(), sh_encode(dirs).numpy(), rtol=1e-12)
    expected = np.zeros(16)  # sh.py's worked example at +z
    expected[[0, 2, 6, 12]] = [0.2820948, 0.4886025, 0.6307831, 0.7463527]
    np.testing.assert_allclose(enc(torch.tensor([[0.0, 0.0, 2.0]]))[0].numpy(), expected,
                               atol=1e-6)


def test_hashgrid_encoding_normalises_into_box():
    aabb = torch.tensor([-1.0, -2.0, 0.0, 1.0, 2.0, 4.0])
    enc = HashGridEncoding(SMALL_GRID, aabb)
    assert enc.n_out == 6
    x = np.random.default_rng(3).uniform([-1, -2, 0], [1, 2, 4], size=(50, 3)).astype(np.float32)
    unit = (x - np.array([-1, -2, 0])) / np.array([2, 4, 4])
    expected = hash_grid_reference(torch.from_numpy(unit.astype(np.float32)),
                                   list(enc.grid.tables), enc.grid.resolutions)
    out = enc(torch.from_numpy(x))
    assert out.shape == (50, 6)
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-5,
                               atol=1e-6)
    # the box's low corner is the grid's (0, 0, 0): dense row 0 of every level
    corner = enc(aabb[None, :3]).detach().reshape(3, 2)
    for level, table in enumerate(enc.grid.tables):
        np.testing.assert_allclose(corner[level].numpy(), table[0].detach().numpy(), rtol=1e-6)


def test_registry_builds_every_encoding():
    assert sorted(ENCODINGS) == sorted(
        ["positional", "fourier", "learned_fourier", "siren", "hashgrid", "sh"])
    expected_n_out = {"positional": 3 * (1 + 2 * 4), "fourier": 2 * 16, "learned_fourier": 2 * 16,
                      "siren": 16, "hashgrid": 6, "sh": 16}
    x = torch.rand(5, 3)
    for name in ENCODINGS:
        config = EncodingConfig(name=name, n_freqs=4, n_features=16, scale=2.0,
                                hashgrid=SMALL_GRID)
        enc = build_encoding(config, 3)
        assert isinstance(enc.n_out, int) and enc.n_out == expected_n_out[name], name
        assert enc(x).shape == (5, enc.n_out), name
    assert isinstance(build_encoding(EncodingConfig("learned_fourier"), 2).B, torch.nn.Parameter)
    assert build_encoding(EncodingConfig("positional", n_freqs=6), 1).n_out == 13
    with pytest.raises(RadfieldError) as err:
        build_encoding(EncodingConfig("fancy"), 3)
    for name in ENCODINGS:
        assert name in str(err.value)
    with pytest.raises(RadfieldError):
        build_encoding(EncodingConfig("sh"), 2)


@pytest.mark.parametrize("name", ["positional", "fourier", "learned_fourier", "siren", "hashgrid"])
def test_every_position_encoding_plugs_into_the_nerf_field(name):
    """Each registry encoding builds inside NeRFField and sees box-normalised points: the field
    output at a point equals the MLP applied to the encoding of (x - centre) / half_size."""
    from radfield.fields.nerf import NeRFField

    aabb = torch.tensor([-2.0, -1.0, 0.0, 2.0, 3.0, 4.0])  # centre (0, 1, 2), half size 2
    cfg = EncodingConfig(name=name, n_freqs=4, n_features=16, hashgrid=HashGridConfig(
        n_levels=4, log2_table_size=10, max_resolution=32))
    field = NeRFField(aabb, cfg, depth=2, width=32, skip=-1, direction_freqs=2)
    x = torch.tensor([[-2.0, -1.0, 0.0], [2.0, 3.0, 4.0], [0.5, 1.5, 2.5]])
    d = torch.nn.functional.normalize(torch.ones(3, 3), dim=-1)
    raw = field.raw(x, d)
    assert raw.shape == (3, 4) and torch.isfinite(raw).all()
    x_n = (x - torch.tensor([0.0, 1.0, 2.0])) / 2.0
    assert torch.allclose(field.encode(x), field.position_encoding(x_n), atol=1e-6)
    if name == "hashgrid":  # the box corners land on the grid's corners, not outside it
        assert torch.allclose(field.position_encoding.normalise(x_n[:2]),
                              torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]))
