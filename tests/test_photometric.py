"""Photometric losses, colour spaces and loss specs against independent numpy / hand values."""

import colorsys

import numpy as np
import pytest
import torch

from radfield.errors import RadfieldError
from radfield.evaluation.metrics import ssim as ssim_metric
from radfield.losses import (COLOUR_SPACES, PATCH_LOSSES, PHOTOMETRIC_LOSSES, PhotometricLoss,
                             charbonnier, fft_loss, gamma, l1, l2, parse_loss, rgb_to_hsv,
                             rgb_to_xyz, rmse, ssim_loss, to_luminance, tonemap)


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def np_patches(rays, p):
    """Row-major patches by explicit indexing: patch q pixel (i, j) is ray q*p*p + i*p + j."""
    n = rays.shape[0] // (p * p)
    out = np.zeros((n, p, p, rays.shape[1]))
    for q in range(n):
        for i in range(p):
            for j in range(p):
                out[q, i, j] = rays[q * p * p + i * p + j]
    return out


def np_window(k, sigma=1.5):
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-x**2 / (2 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def np_ssim(x, y, k, c1=1e-4, c2=9e-4):
    """Windowed SSIM of two (P, P) arrays, mean over 'valid' positions, by explicit loops."""
    w, vals = np_window(k), []
    for a in range(x.shape[0] - k + 1):
        for b in range(x.shape[1] - k + 1):
            xs, ys = x[a:a + k, b:b + k], y[a:a + k, b:b + k]
            mx, my = (w * xs).sum(), (w * ys).sum()
            sxx, syy = (w * xs * xs).sum() - mx**2, (w * ys * ys).sum() - my**2
            sxy = (w * xs * ys).sum() - mx * my
            vals.append((2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2)))
    return float(np.mean(vals))


# ---------------------------------------------------------------- ray losses

def test_ray_losses_match_numpy():
    pred, target = rand(40, 3, seed=1), rand(40, 3, seed=2)
    d = pred.numpy() - target.numpy()
    assert l2(pred, target).item() == pytest.approx((d**2).mean(), rel=1e-12)
    assert l1(pred, target).item() == pytest.approx(np.abs(d).mean(), rel=1e-12)
    assert rmse(pred, target).item() == pytest.approx(np.sqrt((d**2).mean()), rel=1e-9)
    assert charbonnier(pred, target).item() == pytest.approx(np.sqrt(d**2 + 1e-3).mean(), rel=1e-12)
    # hand value from the rmse docstring
    assert rmse(torch.tensor([[0.3], [0.4]]), torch.zeros(2, 1)).item() == pytest.approx(0.353553, rel=1e-5)


def test_rmse_gradient_finite_at_zero_error():
    pred = rand(10, 3, seed=3).requires_grad_()
    rmse(pred, pred.detach().clone()).backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().max() == 0


# ---------------------------------------------------------------- patch losses

def test_fft_loss_matches_numpy_fft2_of_row_major_patches():
    p, n = 4, 3
    pred, target = rand(n * p * p, 3, seed=4), rand(n * p * p, 3, seed=5)
    diff = np_patches(pred.numpy(), p) - np_patches(target.numpy(), p)
    spec_np = np.fft.fft2(np_patches(pred.numpy(), p), axes=(1, 2)) \
        - np.fft.fft2(np_patches(target.numpy(), p), axes=(1, 2))
    expected = np.abs(spec_np).mean() / p  # numpy's default norm is unnormalised; ortho = / P
    assert fft_loss(pred, target, p).item() == pytest.approx(expected, rel=1e-10)

    # a wrong layout (patches interleaved row by row, as strips of an image) gives another value
    strips = diff.transpose(1, 0, 2, 3)  # (P, n, P, C): row i of every patch, then row i+1
    wrong = np.abs(np.fft.fft2(strips.reshape(n, p, p, 3), axes=(1, 2))).mean() / p
    assert abs(wrong - expected) > 0.02 * expected


def test_fft_loss_hand_value_and_gradient_at_zero():
    # docstring example: P = 2, constant difference 0.1 -> 0.1 / P
    assert fft_loss(torch.full((4, 3), 0.1), torch.zeros(4, 3), 2).item() == pytest.approx(0.05, rel=1e-6)
    pred = rand(2 * 9, 3, seed=6).requires_grad_()
    fft_loss(pred, pred.detach().clone(), 3).backward()
    assert torch.isfinite(pred.grad).all()


def test_ssim_loss_identical_patches_is_zero():
    x = rand(2 * 16 * 16, 3, seed=7)
    assert ssim_loss(x, x.clone(), 16).item() == pytest.approx(0.0, abs=1e-12)


def test_ssim_loss_closed_form_for_affine_change():
    """pred = a target + b on 11x11 patches: one window position, and mu_x = a mu_y + b,
    s_xx = a^2 s_yy, s_xy = a s_yy from the target's window statistics alone."""
    p, n, a, b = 11, 2, 0.6, 0.2
    target = rand(n * p * p, 3, seed=8)
    pred = a * target + b
    w = np_window(11)
    vals = []
    for patch in np_patches(target.numpy(), p):
        for c in range(3):
            y = patch[..., c]
            my = (w * y).sum()
            syy = (w * y * y).sum() - my**2
            mx, sxx, sxy = a * my + b, a * a * syy, a * syy
            vals.append((2 * mx * my + 1e-4) * (2 * sxy + 9e-4)
                        / ((mx**2 + my**2 + 1e-4) * (sxx + syy + 9e-4)))
    assert ssim_loss(pred, target, p).item() == pytest.approx(1 - np.mean(vals), rel=1e-10)


@pytest.mark.parametrize("p, k", [(16, 11), (8, 7), (4, 3)])
def test_ssim_loss_matches_numpy_windowed_ssim(p, k):
    n = 2
    pred, target = rand(n * p * p, 3, seed=9), rand(n * p * p, 3, seed=10)
    pp, tp = np_patches(pred.numpy(), p), np_patches(target.numpy(), p)
    expected = np.mean([np_ssim(pp[q, ..., c], tp[q, ..., c], k) for q in range(n) for c in range(3)])
    assert ssim_loss(pred, target, p).item() == pytest.approx(1 - expected, rel=1e-10)


def test_ssim_loss_agrees_with_the_metric_and_hand_value():
    pred, target = rand(16 * 16, 3, seed=11), rand(16 * 16, 3, seed=12)
    metric = ssim_metric(pred.reshape(16, 16, 3), target.reshape(16, 16, 3))
    assert ssim_loss(pred, target, 16).item() == pytest.approx(1 - metric, abs=1e-10)
    # docstring example: constant 0.5 vs 0.25
    loss = ssim_loss(torch.full((121, 1), 0.5), torch.full((121, 1), 0.25), 11).item()
    assert loss == pytest.approx(1 - (2 * 0.125 + 1e-4) / (0.3125 + 1e-4), rel=1e-6)


def test_ssim_loss_gradient_matches_finite_differences():
    pred, target = rand(2 * 25, 1, seed=13), rand(2 * 25, 1, seed=14)
    assert torch.autograd.gradcheck(lambda x: ssim_loss(x, target, 5), (pred.requires_grad_(),))
    x = rand(25, 3, seed=15).requires_grad_()
    ssim_loss(x, x.detach().clone(), 5).backward()
    assert torch.isfinite(x.grad).all()


def test_patch_size_errors():
    x = rand(2 * 16, 3)
    with pytest.raises(RadfieldError, match="at least 3x3"):
        ssim_loss(x, x, 2)
    with pytest.raises(RadfieldError, match="patch size 3"):
        fft_loss(x, x, 3)  # 32 rays are not whole 3x3 patches


# ---------------------------------------------------------------- colour spaces

def test_hsv_matches_colorsys():
    rgb = torch.cat([rand(200, 3, seed=16), torch.tensor([
        [0, 0, 0], [1, 1, 1], [0.2, 0.2, 0.2], [1, 0, 0], [1, 0, 0.5], [1, 0.5, 0], [0.5, 0.5, 0],
        [0, 0.5, 0.5], [0.5, 0, 0.5], [0.3, 0.7, 0.7], [0.7, 0.7, 0.3], [0, 0, 1]], dtype=torch.float64)])
    got = rgb_to_hsv(rgb).numpy()
    expected = np.array([colorsys.rgb_to_hsv(*c) for c in rgb.tolist()])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert got[:, 0].min() >= 0 and got[:, 0].max() < 1
    x = rgb.clone().requires_grad_()
    rgb_to_hsv(x).sum().backward()
    assert torch.isfinite(x.grad).all()  # greys and black included


def test_xyz_of_white_and_primaries():
    eye = torch.eye(3, dtype=torch.float64)
    white = rgb_to_xyz(torch.ones(3, dtype=torch.float64))
    np.testing.assert_allclose(white.numpy(), [0.95047, 1.0, 1.08883], atol=2e-5)
    # sRGB primaries (encoded 0 and 1 are also linear 0 and 1): derive the matrix from the
    # primaries' chromaticities xy and the D65 white XYZ; column i = S_i (x/y, 1, (1-x-y)/y)
    xy = np.array([[0.64, 0.33], [0.30, 0.60], [0.15, 0.06]])
    cols = np.stack([xy[:, 0] / xy[:, 1], np.ones(3), (1 - xy.sum(1)) / xy[:, 1]])
    m = cols * np.linalg.solve(cols, [0.95047, 1.0, 1.08883])
    np.testing.assert_allclose(rgb_to_xyz(eye).numpy(), m.T, atol=1e-7)
    np.testing.assert_allclose(rgb_to_xyz(eye)[0].numpy(), [0.4125, 0.2127, 0.0193], atol=1e-4)
    # mid grey: linear value ((0.5 + 0.055) / 1.055) ** 2.4 = 0.21404 times the white point
    grey = rgb_to_xyz(torch.full((3,), 0.5, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(grey, 0.2140411 * white.numpy(), rtol=1e-6)


def test_luminance():
    white = torch.ones(1, 3, dtype=torch.float64)
    assert to_luminance(white).shape == (1, 1)
    assert to_luminance(white).item() == pytest.approx(1.0, abs=1e-6)
    assert to_luminance(torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(0.7152, abs=1e-4)
    assert to_luminance(torch.tensor([[0.5, 0.5, 0.5]])).item() == pytest.approx(0.21404, abs=1e-5)
    # dark values follow the linear segment: 0.02 / 12.92
    assert to_luminance(torch.full((1, 3), 0.02)).item() == pytest.approx(0.02 / 12.92, rel=1e-5)
    x = rand(30, 3, seed=17)
    np.testing.assert_allclose(to_luminance(x).numpy(), rgb_to_xyz(x)[:, 1:2].numpy(), rtol=1e-12)


def test_tonemap_and_gamma():
    np.testing.assert_allclose(tonemap(torch.tensor([0.0, 1.0, 3.0])).numpy(), [0, 0.5, 0.75])
    np.testing.assert_allclose(gamma(torch.tensor([0.25, 1.0, 0.0]), 2.0).numpy(),
                               [0.5, 1.0, 1e-3], rtol=1e-5)
    assert gamma(torch.tensor([8.0]), 1 / 3).item() == pytest.approx(512.0)
    x = torch.zeros(3, requires_grad=True)
    gamma(x, 2.2).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(RadfieldError):
        gamma(x, 0.0)
    assert set(COLOUR_SPACES) == {"rgb", "luminance", "hsv", "xyz"}


# ---------------------------------------------------------------- loss specs

def test_parse_loss_terms_and_patch_flag():
    assert parse_loss("l2").terms == [(1.0, "l2")] and not parse_loss("l2").needs_patches
    loss = parse_loss(" 0.5*l2 + 0.1 * fft+2e-1*SSIM ")
    assert loss.terms == [(0.5, "l2"), (0.1, "fft"), (0.2, "ssim")]
    assert loss.needs_patches
    assert parse_loss("l1+1e+2*charbonnier").terms == [(1.0, "l1"), (100.0, "charbonnier")]
    assert set(PHOTOMETRIC_LOSSES) == {"l2", "l1", "rmse", "charbonnier"}
    assert set(PATCH_LOSSES) == {"ssim", "fft"}


@pytest.mark.parametrize("spec, match", [
    ("l3", "choose from: l2, l1, rmse, charbonnier, ssim, fft"), ("", "bad loss spec"),
    ("l2+", "bad loss spec"), ("l2 l1", "expected '\\+'"), ("-0.5*l2", "bad loss spec"),
    ("0.5*", "bad loss spec"), ("l2*0.5", "expected '\\+'"), ("0.1**l2", "bad loss spec")])
def test_parse_loss_errors(spec, match):
    with pytest.raises(RadfieldError, match=match):
        parse_loss(spec)


def test_loss_options_errors():
    with pytest.raises(RadfieldError, match="colour space"):
        parse_loss("l2", colour_space="lab")
    with pytest.raises(RadfieldError, match="patch size"):
        parse_loss("l1+ssim")(rand(121, 3), rand(121, 3))


def test_composite_equals_weighted_sum_of_terms():
    p = 11
    pred, target = rand(2 * p * p, 3, seed=18), rand(2 * p * p, 3, seed=19)
    loss = parse_loss("0.5*l2 + 0.1*fft + 0.2*ssim + rmse")
    expected = (0.5 * ((pred - target) ** 2).mean() + 0.1 * fft_loss(pred, target, p)
                + 0.2 * ssim_loss(pred, target, p) + ((pred - target) ** 2).mean().sqrt())
    assert loss(pred, target, p).item() == pytest.approx(expected.item(), rel=1e-9)


def test_transform_order_tonemap_gamma_colour_space():
    pred, target = rand(2 * 9, 3, seed=20) * 3, rand(2 * 9, 3, seed=21) * 3
    loss = PhotometricLoss.from_spec("l1+fft", colour_space="luminance", tonemap=True, gamma=2.2)

    def by_hand(x):  # numpy: x / (1 + x), then ^(1/2.2), then sRGB -> linear -> Y
        c = (x / (1 + x)) ** (1 / 2.2)
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
        return lin @ np.array([0.2126729, 0.7151522, 0.0721750])[:, None]

    yp, yt = by_hand(pred.numpy()), by_hand(target.numpy())
    spec = np.fft.fft2(np_patches(yp, 3) - np_patches(yt, 3), axes=(1, 2))
    expected = np.abs(yp - yt).mean() + np.abs(spec).mean() / 3
    assert loss(pred, target, 3).item() == pytest.approx(expected, rel=1e-9)
    # another order (gamma before tonemap) gives a different value
    c_wrong = lambda x: (x ** (1 / 2.2)) / (1 + x ** (1 / 2.2))  # noqa: E731
    wrong = np.abs(c_wrong(pred.numpy()) - c_wrong(target.numpy())).mean()
    assert abs(PhotometricLoss.from_spec("l1", tonemap=True, gamma=2.2)(pred, target).item() - wrong) > 1e-3


def test_hsv_loss_in_composite():
    pred, target = rand(20, 3, seed=22), rand(20, 3, seed=23)
    hp = np.array([colorsys.rgb_to_hsv(*c) for c in pred.tolist()])
    ht = np.array([colorsys.rgb_to_hsv(*c) for c in target.tolist()])
    got = parse_loss("l2", colour_space="hsv")(pred, target).item()
    assert got == pytest.approx(((hp - ht) ** 2).mean(), rel=1e-9)
