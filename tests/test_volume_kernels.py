"""Packed volume rendering's kernels: the compiled CPU kernel (``_volume_cpu.c``) and the Triton
kernels (its GPU path, run on the CPU under Triton's interpreter), each as :class:`FusedRender`'s
backend: forward against a hand-computed ray and the PyTorch path, gradients against the PyTorch
path's autograd in float64 and against finite differences. ``RADFIELD_TEST_DEVICE=cuda`` runs the
Triton ones compiled on a GPU (``bench/gpu_check.sh``), where :func:`render` itself takes them."""

from __future__ import annotations

import math
import os

import pytest
import torch

from radfield.rendering import volume
from radfield.rendering.volume import FusedRender, render

# conftest.py sets TRITON_INTERPRET=1 before anything imports triton (unless RADFIELD_TEST_DEVICE
# names a GPU).

DEVICE = torch.device(os.environ.get("RADFIELD_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    pytest.skip("RADFIELD_TEST_DEVICE=cuda, but torch sees no GPU", allow_module_level=True)


def _triton():
    pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")
    return volume._TRITON.load()


def _compiled():
    if DEVICE.type != "cpu":
        pytest.skip("the compiled kernel renders CPU tensors")
    lib = volume._COMPILED.load()
    if lib is None:
        pytest.skip("no C compiler: the compiled kernel is not built")
    return volume._Compiled(lib)


@pytest.fixture(params=["compiled", "triton"])
def backend(request):
    return _compiled() if request.param == "compiled" else _triton()


def fused(backend, sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, opaque_last=False):
    return FusedRender.apply(backend, sigmas, rgbs, t_starts, t_ends, ray_indices, n_rays, opaque_last)


def _batch(counts=(0, 1, 5, 33, 70, 2, 0, 12), seed=0, channels=3):
    """Packed samples of rays with ``counts`` samples each (rays longer than a kernel block of
    32, empty rays), densities spanning clear to opaque, one huge optical depth (above the cap)."""
    g = torch.Generator().manual_seed(seed)
    ray_indices = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n = len(ray_indices)
    deltas = torch.rand(n, generator=g) * 0.1 + 0.01
    ends = torch.cumsum(deltas, 0)
    t_starts, t_ends = ends - deltas, ends
    sigmas = torch.rand(n, generator=g) * 8.0
    sigmas[n // 3] = 5e4  # tau > 1e3: capped in the running sum
    rgbs = torch.rand(n, channels, generator=g)
    return sigmas, rgbs, t_starts, t_ends, ray_indices, len(counts)


def _to(device, *tensors):
    return [t.to(device) for t in tensors]


def test_the_triton_kernels_run_under_the_interpreter():
    interpreted = type(_triton()._forward).__name__ == "InterpretedFunction"
    assert interpreted == (DEVICE.type == "cpu")


def test_render_takes_the_compiled_kernel_on_the_cpu():
    """float32 CPU tensors render through the compiled kernel; float64 ones, or interval ends with
    a gradient, through PyTorch."""
    _compiled()
    sig, rgb, t0, t1, ri, n_rays = _batch()
    assert isinstance(volume._fused_backend(sig, rgb, t0, t1), volume._Compiled)
    assert volume._fused_backend(sig.double(), rgb.double(), t0.double(), t1.double()) is None
    assert volume._fused_backend(sig, rgb, t0.clone().requires_grad_(), t1) is None
    bg = torch.tensor([0.2, 0.5, 1.0])
    got = render(sig, rgb, t0, t1, ri, n_rays, bg)
    want = render(sig.double(), rgb.double(), t0.double(), t1.double(), ri, n_rays, bg.double())
    assert torch.allclose(got.rgb.double(), want.rgb, atol=2e-6)


def test_forward_matches_a_hand_computed_ray(backend):
    """One ray, two samples of length 1 with sigma = ln 2: alpha = 0.5, 0.5; T = 1, 0.5;
    w = 0.5, 0.25; opacity 0.75; depth 0.5 * 0.5 + 0.25 * 1.5 = 0.625. With ``opaque_last``
    the last alpha is 1: w = 0.5, 0.5."""
    sig = torch.full((2,), math.log(2.0))
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t0, t1 = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])
    ri = torch.zeros(2, dtype=torch.long)
    w, c, op, d = fused(backend, *_to(DEVICE, sig, rgb, t0, t1, ri), 1)
    assert w.tolist() == pytest.approx([0.5, 0.25], abs=1e-6)
    assert c[0].tolist() == pytest.approx([0.5, 0.25, 0.0], abs=1e-6)
    assert op.item() == pytest.approx(0.75, abs=1e-6) and d.item() == pytest.approx(0.625, abs=1e-6)
    w, _, op, _ = fused(backend, *_to(DEVICE, sig, rgb, t0, t1, ri), 1, opaque_last=True)
    assert w.tolist() == pytest.approx([0.5, 0.5], abs=1e-6) and op.item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("opaque_last", [False, True])
@pytest.mark.parametrize("channels", [3, 1, 5])
def test_forward_matches_the_pytorch_path(backend, opaque_last, channels):
    sig, rgb, t0, t1, ri, n_rays = _batch(channels=channels)
    want = render(sig.double(), rgb.double(), t0.double(), t1.double(), ri, n_rays, None, opaque_last)
    w, c, op, d = fused(backend, *_to(DEVICE, sig, rgb, t0, t1, ri), n_rays, opaque_last)
    for got, ref in ((w, want.weights), (c, want.rgb), (op, want.opacity), (d, want.depth)):
        assert torch.allclose(got.cpu().double(), ref, atol=2e-6, rtol=1e-5)
    assert op[0] == 0 and op[6] == 0  # the empty rays


def _upstream(n, n_rays, channels, seed=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g), torch.randn(n_rays, channels, generator=g),
            torch.randn(n_rays, generator=g), torch.randn(n_rays, generator=g))


@pytest.mark.parametrize("opaque_last", [False, True])
def test_gradients_match_the_pytorch_path(backend, opaque_last):
    """Upstream gradients on all four outputs (the weights' stand for distortion and interlevel
    losses), against the float64 PyTorch path's autograd."""
    sig, rgb, t0, t1, ri, n_rays = _batch()
    ups = _upstream(len(sig), n_rays, 3)

    def grads(fn, dtype, device):
        s = sig.to(device, dtype).requires_grad_()
        c = rgb.to(device, dtype).requires_grad_()
        outs = fn(s, c, *(x.to(device, dtype) for x in (t0, t1)), ri.to(device))
        loss = sum((o * u.to(device, dtype)).sum() for o, u in zip(outs, ups))
        return [x.cpu().double() for x in torch.autograd.grad(loss, [s, c])]

    def reference(s, c, a, b, r):
        out = render(s, c, a, b, r, n_rays, None, opaque_last)
        return out.weights, out.rgb, out.opacity, out.depth

    got = grads(lambda s, c, a, b, r: fused(backend, s, c, a, b, r, n_rays, opaque_last), torch.float32, DEVICE)
    want = grads(reference, torch.float64, "cpu")
    for g, w in zip(got, want):
        assert torch.allclose(g, w, atol=1e-4, rtol=1e-4), (g - w).abs().max()


def test_gradients_match_finite_differences(backend):
    """Central differences of the whole loss in float64 on the PyTorch path's forward, which the
    kernel's analytic backward must match: independent of any autograd."""
    sig, rgb, t0, t1, ri, n_rays = _batch(counts=(3, 40, 4), seed=5)
    ups = _upstream(len(sig), n_rays, 3, seed=6)

    def loss64(s):
        out = render(s, rgb.double(), t0.double(), t1.double(), ri, n_rays)
        return sum((o * u.double()).sum() for o, u in zip((out.weights, out.rgb, out.opacity, out.depth), ups))

    s = sig.to(DEVICE).requires_grad_()
    outs = fused(backend, s, *_to(DEVICE, rgb, t0, t1, ri), n_rays)
    (g,) = torch.autograd.grad(sum((o * u.to(DEVICE)).sum() for o, u in zip(outs, ups)), [s])
    base = sig.double()
    for i in (0, 2, 3, 20, 42, 45):
        h = 1e-6 * max(1.0, base[i].item())
        plus, minus = base.clone(), base.clone()
        plus[i] += h
        minus[i] -= h
        fd = (loss64(plus) - loss64(minus)).item() / (2 * h)
        assert g[i].item() == pytest.approx(fd, rel=1e-3, abs=1e-4)


def test_no_samples(backend):
    empty = torch.zeros(0)
    w, c, op, d = fused(backend, *_to(DEVICE, empty, torch.zeros(0, 3), empty, empty,
                                              torch.zeros(0, dtype=torch.long)), 4)
    assert w.shape == (0,) and c.shape == (4, 3) and (c == 0).all() and (op == 0).all() and (d == 0).all()


@pytest.mark.skipif(DEVICE.type != "cuda", reason="render() takes the Triton kernels on CUDA tensors only")
def test_render_takes_the_triton_kernels_on_cuda():
    kernels = _triton()
    sig, rgb, t0, t1, ri, n_rays = _batch()
    bg = torch.tensor([1.0, 1.0, 1.0])
    assert volume._fused_backend(*_to(DEVICE, sig, rgb, t0, t1)) is kernels
    got = render(*_to(DEVICE, sig, rgb, t0, t1, ri), n_rays, bg.to(DEVICE))
    want = render(sig.double(), rgb.double(), t0.double(), t1.double(), ri, n_rays, bg.double())
    assert torch.allclose(got.rgb.cpu().double(), want.rgb, atol=2e-6)
