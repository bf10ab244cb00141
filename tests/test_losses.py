"""Losses against direct computations."""

import numpy as np
import pytest
import torch

from radfield.losses import charbonnier, l1, l2
from radfield.losses.regularisers import distortion


def test_photometric_losses_match_numpy():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(50, 3, generator=g), torch.rand(50, 3, generator=g)
    p, t = pred.numpy().astype(np.float64), target.numpy().astype(np.float64)
    assert l2(pred, target).item() == pytest.approx(((p - t) ** 2).mean(), rel=1e-6)
    assert l1(pred, target).item() == pytest.approx(np.abs(p - t).mean(), rel=1e-6)
    assert charbonnier(pred, target).item() == pytest.approx(np.sqrt((p - t) ** 2 + 1e-3).mean(), rel=1e-6)


def test_distortion_hand_value():
    w = torch.tensor([0.5, 0.5])
    loss = distortion(w, torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0]), torch.tensor([0, 0]), 1)
    assert loss.item() == pytest.approx(2 * 0.25 * 2 + 0.5 / 3, rel=1e-6)


def test_distortion_matches_brute_force_double_sum():
    g = torch.Generator().manual_seed(1)
    counts = [5, 0, 9, 1, 7]
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n = int(sum(counts))
    lengths = torch.rand(n, generator=g, dtype=torch.float64) * 0.3 + 0.01
    gaps = torch.rand(n, generator=g, dtype=torch.float64) * 0.2
    w = torch.rand(n, generator=g, dtype=torch.float64) / 10
    starts, ends, k = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64), 0
    for c in counts:  # sorted, non-overlapping intervals per ray
        t = 1.0
        for _ in range(c):
            starts[k] = t + gaps[k]
            ends[k] = starts[k] + lengths[k]
            t = ends[k].item()
            k += 1
    expected, k = [], 0
    for c in counts:
        ws, ms, ds = w[k:k + c], ((starts + ends) / 2)[k:k + c], (ends - starts)[k:k + c]
        total = sum(ws[i] * ws[j] * abs(ms[i] - ms[j]) for i in range(c) for j in range(c))
        total = total + sum(ws[i] ** 2 * ds[i] for i in range(c)) / 3
        expected.append(float(total))
        k += c
    got = distortion(w, starts, ends, ray_indices, len(counts))
    assert got.item() == pytest.approx(np.mean(expected), rel=1e-10)
    # and its gradient against finite differences
    assert torch.autograd.gradcheck(lambda ww: distortion(ww, starts, ends, ray_indices, len(counts)),
                                    (w.clone().requires_grad_(),))
