"""The compiled bias-free ReLU MLP (radfield.fields.mlp) against torch.nn.Linear in float64."""

import pytest
import torch

from radfield.fields import mlp as mlp_module
from radfield.fields.mlp import MLP, mlp

pytestmark = pytest.mark.skipif(mlp_module._KERNEL.load() is None, reason="no C compiler: the layers run")


def _reference(net: MLP, x: torch.Tensor) -> torch.Tensor:
    """The same network, layer by layer, in float64."""
    h = x.double()
    linears = net.linears()
    for i, layer in enumerate(linears):
        h = h @ layer.weight.double().t()
        if i < len(linears) - 1:
            h = h.clamp_min(0)
    return h


@pytest.mark.parametrize("dims", [(32, 64, 1, 16), (31, 64, 2, 3), (5, 20, 2, 7), (64, 64, 3, 64), (3, 8, 1, 1)])
@pytest.mark.parametrize("n", [1, 7, 1000])
def test_kernel_matches_float64_layers_forward_and_backward(dims, n):
    torch.manual_seed(n + sum(dims))
    net = mlp(*dims)
    x = torch.randn(n, dims[0], requires_grad=True)
    x64 = x.detach().double().requires_grad_()
    out = net(x)
    assert out.grad_fn is not None and "MLPFunction" in type(out.grad_fn).__name__  # the kernel ran
    ref = _reference(net, x64)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(n, dims[3])
    out.backward(g)
    w64 = [layer.weight.detach().double().requires_grad_() for layer in net.linears()]
    h = x64
    for i, w in enumerate(w64):
        h = h @ w.t()
        if i < len(w64) - 1:
            h = h.clamp_min(0)
    h.backward(g.double())
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-5)
    for layer, w in zip(net.linears(), w64):
        assert layer.weight.grad.shape == layer.weight.shape and layer.weight.grad.is_contiguous()
        torch.testing.assert_close(layer.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-4 * max(1, n / 100))


def test_rows_do_not_depend_on_the_batch():
    """Each sample's output is computed alone: the same row gives the same bits in any batch."""
    torch.manual_seed(0)
    net = mlp(31, 64, 2, 3)
    x = torch.randn(777, 31)
    with torch.no_grad():
        full = net(x)
        parts = torch.cat([net(x[:5]), net(x[5:300]), net(x[300:])])
    assert torch.equal(full, parts)


def test_other_inputs_run_the_layers():
    """float64 (and CUDA, autocast) inputs go through nn.Sequential unchanged."""
    torch.manual_seed(1)
    net = mlp(16, 32, 1, 4).double()
    x = torch.randn(50, 16, dtype=torch.float64)
    assert torch.equal(net(x), torch.nn.Sequential.forward(net, x))


def test_state_dict_keys_are_the_sequential_ones():
    net = mlp(32, 64, 2, 3)
    assert list(net.state_dict()) == ["0.weight", "2.weight", "4.weight"]
    assert isinstance(net, torch.nn.Sequential)


def test_other_structures_run_the_layers():
    """A bias, or a layer other than ReLU between the linear ones, is not what the kernel runs."""
    torch.manual_seed(2)
    biased = MLP(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    tanh = MLP(torch.nn.Linear(8, 16, bias=False), torch.nn.Tanh(), torch.nn.Linear(16, 4, bias=False))
    x = torch.randn(20, 8)
    for net in (biased, tanh):
        assert torch.equal(net(x), torch.nn.Sequential.forward(net, x))


@pytest.mark.parametrize("dout,din", [(64, 32), (16, 64), (48, 16), (64, 64)])
@pytest.mark.parametrize("threads", [1, 2])
def test_weight_gradient_kernel_matches_float64(dout, din, threads):
    """``mlp_weight_grad`` (the backward's ``g^T a`` where the kernel has AVX-512), called
    directly on any machine: float64's sum to float32 rounding over 40 003 rows (blocks of 128
    and a remainder, split between threads), and the same bits on a second call."""
    lib = mlp_module._KERNEL.load()
    lanes = mlp_module._lanes(lib)
    assert lanes in (8, 16)
    if dout % lanes or din % lanes:
        pytest.skip(f"widths {dout} x {din} are not multiples of this kernel's {lanes} lanes")
    torch.manual_seed(dout + din)
    n = 40_003
    g, a = torch.randn(n, dout), torch.randn(n, din).clamp_min(0)  # a: a ReLU's output
    partials = torch.empty(threads, dout, din)
    outs = []
    for _ in range(2):
        out = torch.empty(dout, din)
        lib.mlp_weight_grad(g.data_ptr(), a.data_ptr(), n, dout, din, out.data_ptr(), partials.data_ptr(), threads)
        outs.append(out)
    reference = g.double().t() @ a.double()
    torch.testing.assert_close(outs[0].double(), reference, rtol=0, atol=2e-3)  # sums of ~|100|
    assert torch.equal(outs[0], outs[1])
