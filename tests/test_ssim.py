"""The SSIM shared by the metric and the loss, against direct sums and hand values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from radfield.losses.ssim import filter_valid, gaussian_window, ssim_map


def test_gaussian_window_hand_values():
    e = math.exp(-0.5)
    expected = torch.tensor([e, 1.0, e], dtype=torch.float64) / (1 + 2 * e)  # 0.2741, 0.4519
    torch.testing.assert_close(gaussian_window(3, 1.0), expected, atol=1e-15, rtol=0)
    g = gaussian_window(11, 1.5)
    assert g.shape == (11,) and g.dtype == torch.float64
    assert float(g.sum()) == pytest.approx(1.0, abs=1e-15)
    torch.testing.assert_close(g, g.flip(0), atol=0, rtol=0)


def test_filter_valid_matches_direct_windowed_sums():
    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 7, 9))
    g = np.array([0.2, 0.5, 0.3])
    w = np.outer(g, g)
    expected = np.zeros((2, 1, 5, 7))
    for n in range(2):
        for i in range(5):
            for j in range(7):
                expected[n, 0, i, j] = (w * x[n, 0, i:i + 3, j:j + 3]).sum()
    got = filter_valid(torch.from_numpy(x), torch.from_numpy(g))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-13, atol=1e-15)


def test_ssim_map_constant_images_closed_form():
    x, y = torch.full((1, 1, 12, 13), 0.5), torch.full((1, 1, 12, 13), 0.25)
    out = ssim_map(x, y)
    assert out.shape == (1, 1, 2, 3)
    expected = (2 * 0.125 + 1e-4) / (0.3125 + 1e-4)  # 0.8003
    torch.testing.assert_close(out, torch.full_like(out, expected), atol=1e-6, rtol=0)


def test_ssim_map_covariance_clamp_only_fixes_round_off():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 1, 16, 16, generator=g, dtype=torch.float64)
    y = (0.6 * x + 0.4 * torch.rand(3, 1, 16, 16, generator=g, dtype=torch.float64))
    plain, clamped = ssim_map(x, y), ssim_map(x, y, clamp_covariance=True)
    torch.testing.assert_close(plain, clamped, atol=1e-12, rtol=0)
    torch.testing.assert_close(ssim_map(x, x), torch.ones_like(plain), atol=1e-12, rtol=0)
