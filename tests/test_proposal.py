"""Proposal sampling maths against brute force, Monte Carlo statistics and hand values."""

import math

import numpy as np
import pytest
import torch

from radfield.losses.interlevel import interlevel_loss, outer_measure
from radfield.samplers.proposal import (SPACINGS, s_to_t, sample_pdf, spacing_fn, t_to_s,
                                        uniform_bins)
from radfield.training.schedules import log_linear_lr, log_linear_lr_at


# --------------------------------------------------------------------------- spacing

def test_spacing_fn_hand_values_and_continuity():
    t = torch.tensor([0.0, 0.5, 1.0, 2.0, 10.0, math.inf], dtype=torch.float64)
    assert spacing_fn(t).tolist() == [0.0, 0.25, 0.5, 0.75, 0.95, 1.0]
    a, b = spacing_fn(torch.tensor([1 - 1e-9, 1 + 1e-9], dtype=torch.float64))
    assert abs(a - b) < 2e-9  # continuous, slope 1/2 on both sides
    for side in (1 - 1e-6, 1 + 1e-6):
        x = torch.tensor([side], dtype=torch.float64, requires_grad=True)
        spacing_fn(x).sum().backward()
        assert x.grad.item() == pytest.approx(0.5, rel=1e-5)


def _g_np(t, name):
    if name == "linear":
        return t
    if name == "disparity":
        return 1 / t
    return t / 2 if t < 1 else 1 - 1 / (2 * t)


@pytest.mark.parametrize("name", sorted(SPACINGS))
def test_t_to_s_round_trip_monotone_and_endpoints(name):
    g = torch.Generator().manual_seed(1)
    near = 0.05 + torch.rand(6, generator=g, dtype=torch.float64)
    far = 2 + 98 * torch.rand(6, generator=g, dtype=torch.float64)
    u = torch.rand(6, 50, generator=g, dtype=torch.float64).sort(-1).values
    t = near[:, None] + (far - near)[:, None] * u
    t = torch.cat([near[:, None], t, far[:, None]], -1)
    s = t_to_s(t, near, far, name)
    assert (s[:, 0] == 0).all() and (s[:, -1] == 1).all()
    assert (s.diff(dim=-1) > 0).all()
    ref = [[(_g_np(v, name) - _g_np(a, name)) / (_g_np(b, name) - _g_np(a, name)) for v in row]
           for row, a, b in zip(t.tolist(), near.tolist(), far.tolist())]
    np.testing.assert_allclose(s.numpy(), ref, rtol=1e-12, atol=1e-12)
    back = s_to_t(s, near, far, name)
    np.testing.assert_allclose(back.numpy(), t.numpy(), rtol=1e-10)
    assert torch.equal(back[:, 0], near) and torch.equal(back[:, -1], far)


def test_spacing_float_near_far_and_infinite_far():
    t = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    assert t_to_s(t, 0.0, 3.0)[0].tolist() == pytest.approx([0.6, 0.9])
    s = torch.tensor([[0.6, 0.9]], dtype=torch.float64)
    assert s_to_t(s, 0.0, 3.0)[0].tolist() == pytest.approx([1.0, 2.0])
    s = t_to_s(torch.tensor([[1.0, 4.0]], dtype=torch.float64), 0.0, math.inf)  # g(inf) = 1
    assert s[0].tolist() == pytest.approx([0.5, 0.875])
    assert s_to_t(torch.tensor([[0.5, 1.0]]), 0.0, math.inf).tolist() == [[1.0, math.inf]]
    with pytest.raises(ValueError):
        t_to_s(t, 0.0, 1.0, "cubic")


# --------------------------------------------------------------------------- uniform bins

def test_uniform_bins_without_jitter_match_brute_force():
    near = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    far = torch.tensor([5.0, 100.0, 3.0], dtype=torch.float64)
    n = 8
    t, s = uniform_bins(near, far, n, "unbounded")
    assert t.shape == s.shape == (3, n + 1)
    assert torch.equal(s, torch.linspace(0, 1, n + 1, dtype=torch.float64).expand(3, -1))

    def g_inv(v):
        return 2 * v if v < 0.5 else 1 / (2 * (1 - v))

    for r in range(3):
        a, b = _g_np(near[r].item(), "unbounded"), _g_np(far[r].item(), "unbounded")
        ref = [g_inv(a + k / n * (b - a)) for k in range(n + 1)]
        np.testing.assert_allclose(t[r].numpy(), ref, rtol=1e-12)
    assert torch.equal(t[:, 0], near) and torch.equal(t[:, -1], far)
    t_lin, _ = uniform_bins(torch.tensor([2.0]), torch.tensor([6.0]), 2, "linear")
    assert t_lin.tolist() == [[2.0, 4.0, 6.0]]


def test_uniform_bins_jitter_is_stratified_and_unbiased():
    n_rays, n = 4000, 5
    near, far = torch.full((n_rays,), 0.5), torch.full((n_rays,), 20.0)
    t, s = uniform_bins(near, far, n, "unbounded", jitter=True, generator=torch.Generator().manual_seed(2))
    assert (t.diff(dim=-1) >= 0).all() and (t >= near[:, None]).all() and (t <= far[:, None]).all()
    assert (s[:, 0] == 0).all() and (s[:, -1] == 1).all()
    k = torch.arange(1, n)
    offset = s[:, 1:-1] * n - k  # should be U(-1/2, 1/2), independently per ray and endpoint
    assert (offset.abs() <= 0.5 + 1e-6).all()
    se = (1 / math.sqrt(12)) / math.sqrt(n_rays)
    assert (offset.mean(0).abs() < 5 * se).all()
    assert (offset.var(0) - 1 / 12).abs().max() < 0.01
    assert abs(np.corrcoef(offset[:, 0], offset[:, 1])[0, 1]) < 0.07
    t2, _ = uniform_bins(near, far, n, "unbounded", jitter=True, generator=torch.Generator().manual_seed(2))
    assert torch.equal(t, t2)


# --------------------------------------------------------------------------- sample_pdf

def _cdf_np(x, s, p):
    """Piecewise-linear CDF of the step pdf with bin masses p on endpoints s, at x."""
    total = 0.0
    for i in range(len(p)):
        width = s[i + 1] - s[i]
        if x >= s[i + 1]:
            total += p[i]
        elif x > s[i] and width > 0:
            total += p[i] * (x - s[i]) / width
    return total


def _inv_cdf_np(u, s, p, iters=80):
    lo, hi = s[0], s[-1]
    for _ in range(iters):
        mid = (lo + hi) / 2
        if _cdf_np(mid, s, p) < u:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _masses(w, padding):
    p = np.asarray(w, dtype=np.float64) + padding
    return p / p.sum() if p.sum() > 0 else np.full(len(p), 1 / len(p))


def test_sample_pdf_hand_example():
    s = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    out = sample_pdf(s, torch.tensor([[0.75, 0.25]], dtype=torch.float64), 2, padding=0.0)
    assert out[0].tolist() == pytest.approx([0.0, 1 / 3, 1.0])


@pytest.mark.parametrize("padding", [0.01, 0.0])
def test_sample_pdf_deterministic_samples_are_exact_quantiles(padding):
    g = torch.Generator().manual_seed(3)
    n_rays, n_bins, n_new = 5, 12, 9
    s = torch.rand(n_rays, n_bins + 1, generator=g, dtype=torch.float64).sort(-1).values
    w = torch.rand(n_rays, n_bins, generator=g, dtype=torch.float64)
    w[:, 3] = 0.0  # empty bins (flat CDF when padding = 0)
    w = w / w.sum(-1, keepdim=True) * 0.8
    out = sample_pdf(s, w, n_new, padding=padding)
    assert out.shape == (n_rays, n_new + 1)
    for r in range(n_rays):
        sr, p = s[r].tolist(), _masses(w[r].numpy(), padding)
        ref = [sr[0]] + [_inv_cdf_np(k / n_new, sr, p) for k in range(1, n_new)] + [sr[-1]]
        np.testing.assert_allclose(out[r].numpy(), ref, atol=1e-10)
        masses = np.diff([_cdf_np(x, sr, p) for x in out[r].tolist()])
        np.testing.assert_allclose(masses, 1 / n_new, atol=1e-10)  # equal-mass bins


def test_sample_pdf_jittered_histogram_matches_pdf():
    s = torch.tensor([[0.0, 0.1, 0.15, 0.5, 0.55, 0.9, 1.0]], dtype=torch.float64)
    w = torch.tensor([[0.05, 0.3, 0.0, 0.4, 0.1, 0.05]], dtype=torch.float64)
    n_new = 20000
    out = sample_pdf(s, w, n_new, padding=0.01, jitter=True, generator=torch.Generator().manual_seed(4))
    inner = out[0, 1:-1].numpy()
    counts = np.histogram(inner, bins=s[0].numpy())[0]
    expected = _masses(w[0].numpy(), 0.01) * len(inner)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 20.5  # chi-square, 5 dof, p ~ 1e-3 even for i.i.d. sampling
    # finer: within each bin the samples are uniform (histogram over sub-bins of bin 3)
    sub = np.histogram(inner, bins=np.linspace(0.15, 0.5, 8))[0]
    assert np.abs(sub - sub.mean()).max() < 4 * np.sqrt(sub.mean())


def test_sample_pdf_jittered_endpoints_are_stratified_quantiles():
    n_rays, n_new = 3000, 4
    s = torch.tensor([0.0, 0.2, 0.3, 0.7, 1.0], dtype=torch.float64).expand(n_rays, -1)
    w = torch.tensor([0.1, 0.5, 0.05, 0.2], dtype=torch.float64).expand(n_rays, -1)
    out = sample_pdf(s, w, n_new, padding=0.01, jitter=True, generator=torch.Generator().manual_seed(5))
    sr, p = s[0].tolist(), _masses(w[0].numpy(), 0.01)
    for k in range(1, n_new):
        # F(s_new_k) * N - k + 1/2 must be U(0, 1): Kolmogorov-Smirnov against the uniform CDF
        v = np.sort([_cdf_np(x, sr, p) * n_new - k + 0.5 for x in out[:, k].tolist()])
        ks = np.max(np.maximum(np.arange(1, n_rays + 1) / n_rays - v, v - np.arange(n_rays) / n_rays))
        assert ks < 2.2 / math.sqrt(n_rays)


def test_sample_pdf_zero_weights_give_uniform_and_endpoints_kept():
    s = torch.linspace(0.0, 1.0, 9).expand(3, -1)
    for padding in (0.01, 0.0):
        out = sample_pdf(s, torch.zeros(3, 8), 4, padding=padding)
        assert torch.allclose(out, torch.linspace(0.0, 1.0, 5).expand(3, -1), atol=1e-6)
    g = torch.Generator().manual_seed(6)
    s = (torch.rand(50, 7, generator=g) * 10 - 3).sort(-1).values
    s[:, 2] = s[:, 3]  # a zero-width bin
    w = torch.rand(50, 6, generator=g).requires_grad_(True)
    for jitter in (False, True):
        out = sample_pdf(s, w, 33, jitter=jitter, generator=g)
        assert out.shape == (50, 34) and not out.requires_grad
        assert torch.equal(out[:, 0], s[:, 0]) and torch.equal(out[:, -1], s[:, -1])
        assert (out.diff(dim=-1) >= 0).all() and torch.isfinite(out).all()


def test_pipeline_uniform_then_resample_stays_in_range():
    near, far = torch.tensor([0.2, 1.0]), torch.tensor([1000.0, 50.0])
    t0, s0 = uniform_bins(near, far, 64, "unbounded", jitter=True, generator=torch.Generator().manual_seed(7))
    w0 = torch.softmax(-((s0[:, :-1] - 0.4) ** 2) * 200, dim=-1) * 0.9
    s1 = sample_pdf(s0, w0, 16, jitter=True, generator=torch.Generator().manual_seed(8))
    t1 = s_to_t(s1, near, far, "unbounded")
    assert torch.equal(t1[:, 0], near) and torch.equal(t1[:, -1], far)
    assert (t1.diff(dim=-1) >= 0).all()
    # padded mass in |s - 0.4| < 0.1: (0.9 + 0.2 * 64 * 0.01) / (0.9 + 64 * 0.01) = 0.67
    assert abs(((s1[:, 1:-1] - 0.4).abs() < 0.1).float().mean().item() - 0.67) < 0.07


# --------------------------------------------------------------------------- interlevel

def _outer_np(t, t_hat, w_hat):
    out = np.zeros(len(t) - 1)
    for i in range(len(t) - 1):
        for j in range(len(t_hat) - 1):
            if min(t[i + 1], t_hat[j + 1]) - max(t[i], t_hat[j]) > 0:  # intersection has length
                out[i] += w_hat[j]
    return out


def test_outer_measure_hand_value():
    t = torch.tensor([[0.0, 1.0, 2.0]])
    b = outer_measure(t, torch.tensor([[0.0, 0.5, 1.5, 2.0]]), torch.tensor([[0.1, 0.6, 0.3]]))
    assert b[0].tolist() == pytest.approx([0.7, 0.9])
    assert outer_measure(t, t, torch.tensor([[0.25, 0.5]])).tolist() == [[0.25, 0.5]]  # touching != overlap


def test_outer_measure_matches_brute_force():
    rng = np.random.default_rng(9)
    n_rays, n, m = 20, 10, 17
    t = np.sort(rng.uniform(0, 1, (n_rays, n + 1)), -1)
    t_hat = np.sort(rng.uniform(-0.2, 1.1, (n_rays, m + 1)), -1)
    t_hat[:, 5] = t[:, 3]  # shared endpoints: touching bins must not count
    t_hat[:, 9] = t[:, 7]
    t_hat = np.sort(t_hat, -1)
    w_hat = rng.uniform(0, 0.2, (n_rays, m))
    got = outer_measure(torch.from_numpy(t), torch.from_numpy(t_hat), torch.from_numpy(w_hat)).numpy()
    ref = np.stack([_outer_np(*args) for args in zip(t, t_hat, w_hat)])
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_interlevel_loss_values_and_gradients():
    t = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    w = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    loss = interlevel_loss(t, w, t, torch.tensor([[0.2, 0.8]], dtype=torch.float64), eps=0.0)
    assert loss.item() == pytest.approx(0.09)
    assert interlevel_loss(t, w, t, w).item() == 0.0

    rng = np.random.default_rng(10)
    n_rays, n, m = 6, 8, 13
    t = np.sort(rng.uniform(0, 1, (n_rays, n + 1)), -1)
    t_hat = np.sort(rng.uniform(0, 1, (n_rays, m + 1)), -1)
    w = rng.dirichlet(np.ones(n), n_rays) * 0.9
    w_hat = rng.dirichlet(np.ones(m), n_rays) * 0.5
    bound = np.stack([_outer_np(*args) for args in zip(t, t_hat, w_hat)])
    ref = (np.maximum(0, w - bound) ** 2 / (w + 1e-7)).mean()
    assert ref > 0
    wt = torch.from_numpy(w).requires_grad_(True)
    wh = torch.from_numpy(w_hat).requires_grad_(True)
    loss = interlevel_loss(torch.from_numpy(t), wt, torch.from_numpy(t_hat), wh)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    loss.backward()
    assert wt.grad is None and wh.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(
        lambda v: interlevel_loss(torch.from_numpy(t), wt, torch.from_numpy(t_hat), v), (wh,))


# --------------------------------------------------------------------------- schedules

def test_log_linear_lr_hand_values():
    assert log_linear_lr(0, 10000) == pytest.approx(0.01 * 2e-3, rel=1e-12)
    assert log_linear_lr(512, 10000) == pytest.approx(2e-3 * 0.01 ** (512 / 10000), rel=1e-12)
    assert log_linear_lr(5000, 10000) == pytest.approx(2e-4, rel=1e-12)  # geometric mean
    assert log_linear_lr(10000, 10000) == pytest.approx(2e-5, rel=1e-12)
    assert log_linear_lr(20000, 10000) == pytest.approx(2e-5, rel=1e-12)  # clipped after the end
    assert log_linear_lr(256, 10000) == pytest.approx(1.2621477e-3, rel=1e-6)  # docstring example
    # warm-up alone (no decay): 0.01 + 0.99 sin(pi/2 * step/512)
    for step, warm in [(0, 0.01), (128, 0.01 + 0.99 * 0.3826834324), (256, 0.01 + 0.99 * 0.7071067812),
                       (512, 1.0), (3000, 1.0)]:
        assert log_linear_lr(step, 10000, lr_init=1.0, lr_final=1.0) == pytest.approx(warm, rel=1e-9)
    assert log_linear_lr(0, 100, warmup_steps=0) == pytest.approx(2e-3)
    with pytest.raises(ValueError):
        log_linear_lr(0, 0)


def test_log_linear_lr_at_progress():
    assert log_linear_lr_at(0.5, 10) == pytest.approx(2e-4 * (0.01 + 0.99 * math.sin(math.pi / 2 * 10 / 512)))
    assert log_linear_lr_at(0.25, 1000) == pytest.approx(2e-3 * 0.01 ** 0.25)
    assert log_linear_lr_at(0.3, 3000) == pytest.approx(log_linear_lr(3000, 10000))
