"""Packed-sample volume rendering against independent ground truth: hand-computed transmittance,
closed-form / high-resolution integrals, a padded float64 reference and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfield.rendering.volume import (
    accumulate_along_rays,
    exclusive_sum_per_ray,
    ray_offsets,
    render,
    render_weights,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def _packed(rays: list[list[tuple[float, float, float]]], dtype=torch.float32):
    """``rays[r] = [(t_start, t_end, sigma), ...]`` -> packed ``(sigmas, t_starts, t_ends, ray_indices)``."""
    rows = [(r, *s) for r, samples in enumerate(rays) for s in samples]
    ri = torch.tensor([row[0] for row in rows], dtype=torch.long)
    t0 = torch.tensor([row[1] for row in rows], dtype=dtype)
    t1 = torch.tensor([row[2] for row in rows], dtype=dtype)
    sig = torch.tensor([row[3] for row in rows], dtype=dtype)
    return sig, t0, t1, ri


# ------------------------------------------------------------------------ hand-computed scene
# Ray 0: three unit intervals with sigma = ln 2 -> alpha = 1/2 each, T = 1, 1/2, 1/4,
#        w = 1/2, 1/4, 1/8, opacity 7/8, depth = 0.5/2 + 1.5/4 + 2.5/8 = 0.9375.
# Ray 1: no samples -> rgb = background, opacity 0, depth 0.
# Ray 2: unequal intervals with a gap:
#        [0, 0.5]   sigma 2 ln 2   tau = ln 2  alpha 1/2  T 1     w 1/2
#        [0.5, 2.5] sigma ln3 / 2  tau = ln 3  alpha 2/3  T 1/2   w 1/3
#        [3, 3.25]  sigma 4 ln 2   tau = ln 2  alpha 1/2  T 1/6   w 1/12
#        opacity 11/12, depth = 0.25/2 + 1.5/3 + 3.125/12.
# Ray 3: one interval with sigma 0 -> weight 0, rgb = background.
HAND_RAYS = [
    [(0.0, 1.0, LN2), (1.0, 2.0, LN2), (2.0, 3.0, LN2)],
    [],
    [(0.0, 0.5, 2 * LN2), (0.5, 2.5, LN3 / 2), (3.0, 3.25, 4 * LN2)],
    [(1.0, 2.0, 0.0)],
]
HAND_RGB = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
            [0.2, 0.4, 0.6], [1.0, 1.0, 1.0], [0.0, 0.5, 1.0],
            [0.9, 0.9, 0.9]]
HAND_W = [1 / 2, 1 / 4, 1 / 8, 1 / 2, 1 / 3, 1 / 12, 0.0]
HAND_T = [1.0, 1 / 2, 1 / 4, 1.0, 1 / 2, 1 / 6, 1.0]
HAND_ALPHA = [1 / 2, 1 / 2, 1 / 2, 1 / 2, 2 / 3, 1 / 2, 0.0]
HAND_OPACITY = [7 / 8, 0.0, 11 / 12, 0.0]
HAND_DEPTH = [0.9375, 0.0, 0.125 + 0.5 + 3.125 / 12, 0.0]


def test_ray_offsets_and_exclusive_sum_with_an_empty_ray_in_the_middle():
    ri = torch.tensor([0, 0, 2, 2, 2])
    counts, offsets = ray_offsets(ri, 4)
    assert counts.tolist() == [2, 0, 3, 0]
    assert offsets.tolist() == [0, 2, 2, 5]
    out = exclusive_sum_per_ray(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]), ri, 4)
    assert out.tolist() == [0.0, 1.0, 0.0, 3.0, 7.0]
    assert out.dtype == torch.float32
    # The docstring example.
    assert exclusive_sum_per_ray(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1]),
                                 2).tolist() == [0.0, 1.0, 0.0, 3.0]


def test_render_weights_hand_computed():
    sig, t0, t1, ri = _packed(HAND_RAYS)
    w, trans, alpha = render_weights(sig, t0, t1, ri, 4)
    assert w.shape == trans.shape == alpha.shape == (7,)
    torch.testing.assert_close(alpha, torch.tensor(HAND_ALPHA), atol=1e-6, rtol=0)
    torch.testing.assert_close(trans, torch.tensor(HAND_T), atol=1e-6, rtol=0)
    torch.testing.assert_close(w, torch.tensor(HAND_W), atol=1e-6, rtol=0)


def test_render_hand_computed_with_background():
    sig, t0, t1, ri = _packed(HAND_RAYS)
    rgbs = torch.tensor(HAND_RGB)
    bg = torch.tensor([0.3, 0.6, 0.9])
    out = render(sig, rgbs, t0, t1, ri, 4, bg)
    assert out.rgb.shape == (4, 3) and out.opacity.shape == (4,) and out.depth.shape == (4,)
    assert out.weights.shape == (7,)
    expected_rgb = torch.tensor([
        [0.5 + 0.125 * 0.3, 0.25 + 0.125 * 0.6, 0.125 + 0.125 * 0.9],
        [0.3, 0.6, 0.9],
        [0.5 * 0.2 + 1 / 3 + 0 / 12 + 0.3 / 12,
         0.5 * 0.4 + 1 / 3 + 0.5 / 12 + 0.6 / 12,
         0.5 * 0.6 + 1 / 3 + 1.0 / 12 + 0.9 / 12],
        [0.3, 0.6, 0.9],
    ])
    torch.testing.assert_close(out.rgb, expected_rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.opacity, torch.tensor(HAND_OPACITY), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.depth, torch.tensor(HAND_DEPTH), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.weights, torch.tensor(HAND_W), atol=1e-6, rtol=0)
    # Black background when None: the background term disappears.
    black = render(sig, rgbs, t0, t1, ri, 4)
    torch.testing.assert_close(black.rgb, expected_rgb - (1 - torch.tensor(HAND_OPACITY))[:, None] * bg,
                               atol=1e-6, rtol=0)


def test_accumulate_along_rays_hand_computed():
    w = torch.tensor([0.5, 0.25, 1.0])
    ri = torch.tensor([0, 0, 2])
    assert accumulate_along_rays(w, ri, 3).tolist() == [0.75, 0.0, 1.0]
    v = torch.tensor([[2.0, 4.0], [4.0, 8.0], [3.0, 5.0]])
    assert accumulate_along_rays(w, ri, 3, v).tolist() == [[2.0, 4.0], [0.0, 0.0], [3.0, 5.0]]


# ------------------------------------------------------------------------- zero-sample batch
def test_zero_samples_in_the_whole_batch():
    sig = torch.zeros(0, requires_grad=True)
    rgbs = torch.zeros(0, 3, requires_grad=True)
    bg = torch.tensor([0.1, 0.2, 0.3], requires_grad=True)
    t = torch.zeros(0)
    ri = torch.zeros(0, dtype=torch.long)
    w, trans, alpha = render_weights(sig, t, t, ri, 3)
    assert w.shape == trans.shape == alpha.shape == (0,)
    out = render(sig, rgbs, t, t, ri, 3, bg)
    assert out.rgb.shape == (3, 3) and out.opacity.shape == (3,) and out.depth.shape == (3,)
    assert out.weights.shape == (0,)
    assert out.rgb.tolist() == [[pytest.approx(0.1), pytest.approx(0.2), pytest.approx(0.3)]] * 3
    assert out.opacity.tolist() == [0.0] * 3 and out.depth.tolist() == [0.0] * 3
    (out.rgb.sum() + out.opacity.sum() + out.depth.sum()).backward()
    assert sig.grad.shape == (0,) and rgbs.grad.shape == (0, 3)
    # d sum(rgb) / d background = number of rays (every ray shows the whole background).
    assert bg.grad.tolist() == [3.0, 3.0, 3.0]
    # Per-ray backgrounds too.
    bg_rays = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9]])
    assert torch.equal(render(sig, rgbs, t, t, ri, 3, bg_rays).rgb, bg_rays)


# ----------------------------------------------------------------------- brute-force integrals
def _fine_samples(n_rays: int, length: float, n: int):
    edges = torch.linspace(0.0, length, n + 1, dtype=torch.float64)
    t0 = edges[:-1].repeat(n_rays)
    t1 = edges[1:].repeat(n_rays)
    ri = torch.arange(n_rays).repeat_interleave(n)
    return t0, t1, ri


def _linear_colour(t: torch.Tensor, length: float) -> torch.Tensor:
    """c(t) = (t / L, 1 - t / L, 0.5)."""
    return torch.stack([t / length, 1 - t / length, torch.full_like(t, 0.5)], -1)


def _colour_integral(a_b_pairs, surv_end, depth_integral):
    """For c_j(t) = a_j + b_j t: C_j = a_j (1 - T(L)) + b_j int T sigma t dt."""
    return [a * (1 - surv_end) + b * depth_integral for a, b in a_b_pairs]


def test_render_matches_closed_form_for_a_constant_slab():
    """sigma = k on [1, 2], 0 elsewhere, samples on [0, 4]; closed form per ray:
    opacity = 1 - e^-k, int T sigma t dt = (1 - e^-k) + (1 - e^-k) / k - e^-k."""
    length, n = 4.0, 2000  # slab edges 1 and 2 fall on sample edges (h = 1/500)
    ks = [0.3, 1.0, 4.0, 20.0]
    t0, t1, ri = _fine_samples(len(ks), length, n)
    tm = (t0 + t1) / 2
    k_per = torch.tensor(ks, dtype=torch.float64)[ri]
    sig = torch.where((tm > 1) & (tm < 2), k_per, torch.zeros_like(tm))
    bg = torch.tensor([0.2, 0.7, 0.1], dtype=torch.float64)
    out = render(sig, _linear_colour(tm, length), t0, t1, ri, len(ks), bg)
    for r, k in enumerate(ks):
        e = math.exp(-k)
        depth = (1 - e) + (1 - e) / k - e
        rgb = _colour_integral([(0.0, 1 / length), (1.0, -1 / length), (0.5, 0.0)], e, depth)
        rgb = [c + e * b for c, b in zip(rgb, bg.tolist())]
        assert out.opacity[r].item() == pytest.approx(1 - e, abs=1e-9)
        assert out.depth[r].item() == pytest.approx(depth, abs=1e-5)
        assert out.rgb[r].tolist() == pytest.approx(rgb, abs=1e-5)


def test_render_matches_high_resolution_integral_for_a_gaussian_bump():
    """sigma(t) = A exp(-(t - mu)^2 / (2 s^2)); T(t) in closed form with erf, int_0^L T dt by
    Simpson's rule on 20001 points; C = a (1 - T(L)) + b (int_0^L T dt - L T(L))."""
    length = 4.0
    params = [(3.0, 2.0, 0.3), (0.5, 1.0, 0.5), (10.0, 3.0, 0.2)]  # (A, mu, s)
    t0, t1, ri = _fine_samples(len(params), length, 4000)
    tm = (t0 + t1) / 2
    a_ = torch.tensor([p[0] for p in params], dtype=torch.float64)[ri]
    mu_ = torch.tensor([p[1] for p in params], dtype=torch.float64)[ri]
    s_ = torch.tensor([p[2] for p in params], dtype=torch.float64)[ri]
    sig = a_ * torch.exp(-((tm - mu_) ** 2) / (2 * s_ ** 2))
    out = render(sig.float(), _linear_colour(tm, length).float(), t0.float(), t1.float(), ri, len(params))

    grid = np.linspace(0.0, length, 20001)
    erf = np.vectorize(math.erf)
    for r, (amp, mu, s) in enumerate(params):
        def surv(t):
            c = amp * s * math.sqrt(math.pi / 2)
            return np.exp(-c * (erf((t - mu) / (s * math.sqrt(2))) - math.erf(-mu / (s * math.sqrt(2)))))

        tt = surv(grid)
        h = grid[1] - grid[0]
        int_t = h / 3 * (tt[0] + tt[-1] + 4 * tt[1:-1:2].sum() + 2 * tt[2:-1:2].sum())
        t_end = float(tt[-1])
        depth = int_t - length * t_end
        rgb = _colour_integral([(0.0, 1 / length), (1.0, -1 / length), (0.5, 0.0)], t_end, depth)
        assert out.opacity[r].item() == pytest.approx(1 - t_end, abs=1e-4)
        assert out.depth[r].item() == pytest.approx(depth, abs=1e-3)
        assert out.rgb[r].tolist() == pytest.approx(rgb, abs=1e-4)


# ----------------------------------------------------------------------------------- precision
def test_render_weights_float32_matches_padded_float64_reference():
    """~262k samples in 4096 rays of 0..128 samples (some empty): weights within 1e-5 of a padded
    (n_rays, max_count) float64 cumprod reference, T_i = prod_{k<i} exp(-tau_k)."""
    g = torch.Generator().manual_seed(0)
    n_rays, max_n = 4096, 128
    counts = torch.randint(0, max_n + 1, (n_rays,), generator=g)
    counts[::97] = 0
    valid = torch.arange(max_n)[None, :] < counts[:, None]  # (n_rays, max_n)
    # Densities over five decades, intervals of length 0.002..0.02 with gaps.
    sig_p = 10 ** (torch.rand(n_rays, max_n, generator=g) * 5 - 2)
    delta_p = 0.002 + 0.018 * torch.rand(n_rays, max_n, generator=g)
    gap_p = 0.01 * torch.rand(n_rays, max_n, generator=g)
    t0_p = torch.cumsum(delta_p + gap_p, 1) - delta_p
    t1_p = t0_p + delta_p
    sig, t0, t1 = sig_p[valid], t0_p[valid], t1_p[valid]  # float32, packed row-major
    ri = torch.arange(n_rays)[:, None].expand(n_rays, max_n)[valid]
    assert sig.shape[0] > 200_000

    w, trans, alpha = render_weights(sig, t0, t1, ri, n_rays)

    tau = sig_p.double() * (t1_p.double() - t0_p.double()) * valid
    surv = torch.exp(-tau)
    trans_ref = torch.cumprod(torch.cat([torch.ones(n_rays, 1, dtype=torch.float64), surv[:, :-1]], 1), 1)
    w_ref = trans_ref * (1 - surv)
    assert (w.double() - w_ref[valid]).abs().max().item() < 1e-5
    assert (trans.double() - trans_ref[valid]).abs().max().item() < 1e-5
    # Opacity per ray equals 1 - T_final (empty rays: 0).
    opacity = accumulate_along_rays(w, ri, n_rays)
    assert (opacity.double() - (1 - surv.prod(1))).abs().max().item() < 1e-5


def test_huge_density_in_one_ray_does_not_change_the_next_ray():
    """Ray 0 has sigma = 1e20 (float32 finite); ray 1 is the ln 2 ray of the hand scene: its
    T must still be [1, 1/2, 1/4]. The global float64 prefix sum loses ray 1's taus."""
    sig, t0, t1, ri = _packed([[(0.0, 1.0, 1e20)], HAND_RAYS[0]])
    w, trans, _ = render_weights(sig, t0, t1, ri, 2)
    torch.testing.assert_close(trans, torch.tensor([1.0, 1.0, 0.5, 0.25]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.25, 0.125]), atol=1e-6, rtol=0)


def test_infinite_density_gives_finite_weights():
    """sigma = inf (trunc_exp overflow) saturates its ray: alpha 1, T 0 behind it; other rays are
    unaffected. Currently inf - inf in the global prefix sum makes every later weight NaN."""
    sig, t0, t1, ri = _packed([[(0.0, 1.0, LN2), (1.0, 2.0, math.inf), (2.0, 3.0, LN2)],
                               HAND_RAYS[0]])
    w, trans, _ = render_weights(sig, t0, t1, ri, 2)
    torch.testing.assert_close(trans, torch.tensor([1.0, 0.5, 0.0, 1.0, 0.5, 0.25]), atol=1e-6, rtol=0)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.0, 0.5, 0.25, 0.125]), atol=1e-6, rtol=0)
    # Finite gradients too (only the sigmas and colours are trained).
    sig.requires_grad_()
    rgbs = torch.rand(6, 3, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = render(sig, rgbs, t0, t1, ri, 2, torch.tensor([0.5, 0.5, 0.5]))
    assert torch.isfinite(out.rgb).all() and torch.isfinite(out.depth).all()
    out.rgb.sum().backward()
    assert torch.isfinite(sig.grad).all() and torch.isfinite(rgbs.grad).all()


# ----------------------------------------------------------------------------------- gradients
def test_render_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    # Rays with 3, 0, 2 and 1 samples.
    ri = torch.tensor([0, 0, 0, 2, 2, 3])
    t0 = torch.tensor([0.1, 0.4, 1.0, 0.0, 0.7, 0.3], dtype=torch.float64)
    t1 = t0 + torch.tensor([0.3, 0.5, 0.2, 0.6, 0.4, 0.9], dtype=torch.float64)
    sig = (0.2 + 2 * torch.rand(6, generator=g, dtype=torch.float64)).requires_grad_()
    rgbs = torch.rand(6, 3, generator=g, dtype=torch.float64).requires_grad_()
    bg = torch.rand(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    t0.requires_grad_()
    t1.requires_grad_()

    def fn(sig, rgbs, t0, t1, bg):
        out = render(sig, rgbs, t0, t1, ri, 4, bg)
        return out.rgb, out.opacity, out.depth, out.weights

    assert torch.autograd.gradcheck(fn, (sig, rgbs, t0, t1, bg), eps=1e-6, atol=1e-7, rtol=1e-5)

    # One derivative by hand: one-sample ray 3, rgb = (1 - e^{-s d}) c + e^{-s d} bg,
    # d rgb / d sigma = d e^{-s d} (c - bg).
    out = render(sig, rgbs, t0, t1, ri, 4, bg)
    (grad,) = torch.autograd.grad(out.rgb[3, 0], sig)
    d, s = (t1 - t0)[5].item(), sig[5].item()
    assert grad[5].item() == pytest.approx(d * math.exp(-s * d) * (rgbs[5, 0] - bg[3, 0]).item(), rel=1e-12)
    assert grad[:5].abs().max().item() == 0.0


# -------------------------------------------------------------------------- background shapes
def test_background_broadcast_single_and_per_ray():
    sig, t0, t1, ri = _packed(HAND_RAYS)
    rgbs = torch.tensor(HAND_RGB)
    n_rays = 4
    opacity = torch.tensor(HAND_OPACITY)
    black = render(sig, rgbs, t0, t1, ri, n_rays).rgb
    bg3 = torch.tensor([0.3, 0.6, 0.9])
    bg_rays = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.25, 0.125]])
    single = render(sig, rgbs, t0, t1, ri, n_rays, bg3).rgb
    per_ray = render(sig, rgbs, t0, t1, ri, n_rays, bg_rays).rgb
    assert single.shape == per_ray.shape == (n_rays, 3)
    torch.testing.assert_close(single, black + (1 - opacity)[:, None] * bg3[None, :], atol=1e-6, rtol=0)
    torch.testing.assert_close(per_ray, black + (1 - opacity)[:, None] * bg_rays, atol=1e-6, rtol=0)
    # Empty rays 1 and 3 show exactly their own background; ray 0 mixes 1/8 of red.
    torch.testing.assert_close(per_ray[1], bg_rays[1])
    torch.testing.assert_close(per_ray[3], bg_rays[3])
    torch.testing.assert_close(per_ray[0], torch.tensor([0.5 + 0.125, 0.25, 0.125]), atol=1e-6, rtol=0)
    # A (3,) background equals the same background repeated per ray.
    torch.testing.assert_close(single, render(sig, rgbs, t0, t1, ri, n_rays, bg3.expand(n_rays, 3)).rgb)


# ------------------------------------------------------------- early termination in rounds
class _SlabField:
    """Density ``sigma`` for x in [1, 2] (0 elsewhere), colour (x / 6, 1 - x / 6, 0.5); counts the
    samples it evaluates."""

    def __init__(self, sigma: float):
        self.sigma, self.evaluated = sigma, 0

    def raw(self, positions, directions):
        self.evaluated += len(positions)
        x = positions[:, 0]
        inside = (x >= 1) & (x <= 2)
        s = torch.where(inside, torch.full_like(x, math.log(self.sigma)), torch.full_like(x, -100.0))
        rgb = torch.stack([x / 6, 1 - x / 6, torch.full_like(x, 0.5)], -1)
        return torch.cat([s[:, None], torch.logit(rgb)], -1)

    def activate(self, raw):
        return torch.exp(raw[:, 0]), torch.sigmoid(raw[:, 1:])


class _StagedSlabField(_SlabField):
    """The slab, evaluated in two stages (``density_then_colour``); counts the coloured rows."""

    coloured = 0

    def density_then_colour(self, positions, directions):
        sigma, rgb = self.activate(self.raw(positions, directions))

        def colour(index):
            self.coloured += len(index)
            return rgb[index]
        return sigma, colour


class _SlabModel:
    def __init__(self, sigma: float, opaque_last: bool = False, staged: bool = False):
        self.field, self.opaque_last = (_StagedSlabField if staged else _SlabField)(sigma), opaque_last

    def field_inputs(self, rays, samples):
        return samples.positions(rays), samples.directions(rays)

    def shade(self, rays, values, opacity):
        return values


def _slab_rays(n_steps: list[int], dt: float = 0.05):
    """Rays along +x from x = 0, ray r with ``n_steps[r]`` samples of length ``dt``."""
    from radfield.cameras import Rays
    from radfield.samplers.samples import Samples
    n = len(n_steps)
    rays = Rays(torch.zeros(n, 3), torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3).contiguous(), torch.ones(n))
    ri = torch.cat([torch.full((k,), r, dtype=torch.long) for r, k in enumerate(n_steps)])
    j = torch.cat([torch.arange(k) for k in n_steps]).float()
    return rays, Samples(j * dt, (j + 1) * dt, ri, n)


@pytest.mark.parametrize("round_size", [1, 3, 16, 200])
@pytest.mark.parametrize("opaque_last", [False, True])
@pytest.mark.parametrize("colour_eps", [None, 0.0, 1e-3])
@pytest.mark.parametrize("compiled", [True, False])
def test_render_in_rounds_matches_a_float64_march_with_termination(round_size, opaque_last, colour_eps, compiled,
                                                                   monkeypatch):
    """Slab of sigma 40 in x in [1, 2], samples of 0.05 (tau = 2 each): a ray that reaches it
    counts the samples in front and the slab samples while T > 1e-4 (T = 1, e^-2, .., e^-8 > 1e-4
    > e^-10: five), then stops. Reference: a float64 loop over each ray's samples. A field
    evaluated in two stages (``colour_eps`` not None) colours only the samples of weight above
    ``colour_eps``: at 1e-3 the fifth slab sample (w = e^-8 (1 - e^-2) = 2.9e-4) is left out of
    the colour, not of the opacity or depth; samples in front of the slab have weight 0. Each
    round's compositing runs compiled (``_composite_cpu.c``) and in PyTorch."""
    from radfield.rendering import pipeline
    from radfield.rendering.pipeline import render_samples_in_rounds
    if compiled and pipeline._COMPOSITOR.load() is None:
        pytest.skip("no C compiler: the compiled compositing is not built")
    if not compiled:
        monkeypatch.setattr(pipeline._COMPOSITOR, "load", lambda: None)
    n_steps = [60, 0, 10, 25, 21, 100]
    rays, samples = _slab_rays(n_steps)
    model = _SlabModel(40.0, opaque_last, staged=colour_eps is not None)
    bg = torch.tensor([0.1, 0.2, 0.3])
    out, _ = render_samples_in_rounds(model, rays, samples, bg, eps=1e-4, round_size=round_size,
                                      **({} if colour_eps is None else {"colour_eps": colour_eps}))
    n_coloured = 0
    for r, k in enumerate(n_steps):
        t, w_sum, c, d = 1.0, 0.0, np.zeros(3), 0.0
        for j in range(k):
            x = (j + 0.5) * 0.05
            tau = 2.0 if 1 <= x <= 2 else 0.0
            alpha = 1 - math.exp(-tau) if not (opaque_last and j == k - 1) else 1.0
            if t <= 1e-4:
                break
            w = t * alpha
            w_sum, d = w_sum + w, d + w * x
            if w > (colour_eps or 0.0):
                c += w * np.array([x / 6, 1 - x / 6, 0.5])
                n_coloured += 1
            t *= 1 - alpha
        expect = c + (1 - w_sum) * bg.numpy()
        assert out.rgb[r].numpy() == pytest.approx(expect, abs=1e-5)
        assert out.opacity[r].item() == pytest.approx(w_sum, abs=1e-5)
        assert out.depth[r].item() == pytest.approx(d, abs=1e-5)
    # Ray 0 reaches the slab at sample 20 and stops after its 5th slab sample (index 24): samples
    # 25 .. 59 are evaluated only as far as the round holding sample 24 reaches.
    evaluated_ray0 = min(60, -(-25 // round_size) * round_size)
    total = evaluated_ray0 + 10 + 25 + 21 + min(100, -(-25 // round_size) * round_size)
    assert model.field.evaluated == total
    if colour_eps is not None:
        assert model.field.coloured == n_coloured

