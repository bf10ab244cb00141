"""Bias-free ReLU MLPs (tiny-cuda-nn's networks), with a compiled CPU path.

:func:`mlp` builds ``Linear -> ReLU -> ... -> Linear`` with no biases, as an :class:`MLP`: an
``nn.Sequential`` (same parameters, same state-dict keys) whose forward runs
``radfield/fields/_mlp_cpu.c`` on float32 CPU tensors (:func:`mlp_kernel`), and the layers one by
one elsewhere (CUDA, autocast, float64, ``RADFIELD_NO_KERNEL=1``, no gcc).

The kernel keeps each sample's outputs in vector registers (AVX-512 where the CPU has it, else
AVX on x86) while it sums over the inputs, and fuses the ReLU, and in the backward the ReLU's
mask, into the products. The weight gradients, long sums over samples, are the kernel's where it
has AVX-512 and ``torch.mm``'s elsewhere. Layers up to :data:`MAX_WIDTH` wide; wider ones run the
layers. Widths are padded to multiples of the vector width (16 or 8 floats) with zero weights,
so the results are the unpadded ones. Measured on 2 cores (``bench/RESULTS.md``), with AVX: a
``[33 600, 64] x [64, 64]`` product with its ReLU in 1.7 ms against ``torch.mm``'s 2.5-2.9 ms,
the ngp field's two MLPs' forward and backward in 21.3-23.8 ms against 25.8-27.4 ms; with AVX-512
the products run 1.5-2.2x faster again, and the weight gradients 2.2x faster than ``torch.mm``'s.
The kernel is first-order: its backward is not itself differentiable (``once_differentiable``;
torch raises if a gradient of a gradient is asked through it), which no model here needs.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from radfield.native import NativeLibrary

_P, _I32, _I64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
_KERNEL = NativeLibrary(Path(__file__).with_name("_mlp_cpu.c"), {
    "mlp_dense": [_P, _I64, _I32, _P, _I32, _P, _I32, _P, _I32],
    "mlp_lanes": [_P],
    "mlp_weight_grad": [_P, _P, _I64, _I32, _I32, _P, _P, _I32],
}, "MLP CPU kernel", "torch.nn.Linear", extra_flags=("-ffp-contract=fast",))  # FMAs: its sums differ
# from PyTorch's in order anyway, so nothing is gained by rounding each product

MAX_WIDTH = 64
"""The widest layer the kernel takes (its registers hold 64 outputs of a sample)."""


@functools.cache
def _lanes(lib) -> int:
    """The kernel's vector width in floats (16 with AVX-512, else 8): it takes widths that are
    multiples of it."""
    lanes = torch.zeros(1, dtype=torch.int32)
    lib.mlp_lanes(lanes.data_ptr())
    return int(lanes.item())


def _ceil(n: int, lanes: int) -> int:
    return (n + lanes - 1) // lanes * lanes


def _padded(t: Tensor, rows: int, cols: int) -> Tensor:
    """``t`` contiguous, with zero rows and columns up to ``rows`` x ``cols`` (no copy when it is
    contiguous and that size already)."""
    if t.shape == (rows, cols):
        return t.contiguous()
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


def _dense(lib, x: Tensor, m: Tensor, relu: bool = False, mask: Tensor | None = None) -> Tensor:
    """``x (n, din) @ m (din, dout)`` then the ReLU or the mask (module ``_mlp_cpu.c``)."""
    out = torch.empty(x.shape[0], m.shape[1], dtype=torch.float32)
    lib.mlp_dense(x.data_ptr(), x.shape[0], x.shape[1], m.data_ptr(), m.shape[1], out.data_ptr(), int(relu),
                  None if mask is None else mask.data_ptr(), torch.get_num_threads())
    return out


def _weight_grad(lib, g: Tensor, a: Tensor) -> Tensor:
    """A layer's weight gradient ``g^T a`` ``(dout, din)`` from the gradient at its output ``g``
    ``(n, dout)`` and its input ``a`` ``(n, din)`` (both contiguous, padded): the kernel's
    (``mlp_weight_grad``) where it has AVX-512, ``torch.mm``'s elsewhere (with AVX alone the two
    ran about as fast; with AVX-512 the kernel 2.2x faster, ``bench/RESULTS.md``)."""
    if _lanes(lib) < 16:
        return g.t() @ a
    threads = torch.get_num_threads()
    out = torch.empty(g.shape[1], a.shape[1], dtype=torch.float32)
    partials = torch.empty(threads, g.shape[1], a.shape[1], dtype=torch.float32)
    lib.mlp_weight_grad(g.data_ptr(), a.data_ptr(), g.shape[0], g.shape[1], a.shape[1], out.data_ptr(),
                        partials.data_ptr(), threads)
    return out


def _forward(x: Tensor, weights: tuple[Tensor, ...] | list[Tensor], keep: bool
             ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """The kernel's forward: ``(output, each layer's padded input if keep else [], the padded
    weights)``. Without ``keep`` each layer's input is freed once used (a no-grad pass's memory:
    two layers' activations at a time, not all of them)."""
    lib = _KERNEL.load()
    lanes = _lanes(lib)
    padded = [_padded(w.detach(), _ceil(w.shape[0], lanes), _ceil(w.shape[1], lanes)) for w in weights]
    h = _padded(x.detach(), x.shape[0], padded[0].shape[1])
    inputs = []
    for i, w in enumerate(padded):
        if keep:
            inputs.append(h)
        h = _dense(lib, h, w.t().contiguous(), relu=i < len(padded) - 1)
    return h[:, :weights[-1].shape[0]], inputs, padded


class _MLPFunction(torch.autograd.Function):
    """``x (n, d_0)`` through bias-free layers ``weights`` (torch's ``(d_out, d_in)``), ReLU between."""

    @staticmethod
    def forward(ctx, x: Tensor, *weights: Tensor) -> Tensor:
        out, inputs, padded = _forward(x, weights, keep=True)
        ctx.save_for_backward(*inputs, *padded)
        ctx.shapes = [tuple(w.shape) for w in weights]
        ctx.d_in = x.shape[1]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        lib = _KERNEL.load()
        n_layers = len(ctx.shapes)
        inputs, padded = ctx.saved_tensors[:n_layers], ctx.saved_tensors[n_layers:]
        g = _padded(grad_out.float(), grad_out.shape[0], padded[-1].shape[0])
        grads: list[Tensor | None] = [None] * n_layers
        for i in reversed(range(n_layers)):
            a, w = inputs[i], padded[i]
            if ctx.needs_input_grad[1 + i]:
                grads[i] = _weight_grad(lib, g, a)[:ctx.shapes[i][0], :ctx.shapes[i][1]].contiguous()
            if i > 0 or ctx.needs_input_grad[0]:  # the ReLU's mask is where its output is positive
                g = _dense(lib, g, w, mask=a if i > 0 else None)
        grad_x = g[:, :ctx.d_in] if ctx.needs_input_grad[0] else None
        return (grad_x, *grads)


@torch.compiler.disable
def mlp_kernel(x: Tensor, weights: list[Tensor]) -> Tensor:
    """The compiled CPU path of :class:`MLP` (float32 CPU tensors, widths <= :data:`MAX_WIDTH`);
    without a graph to build, no layer's input is kept."""
    if torch.is_grad_enabled() and (x.requires_grad or any(w.requires_grad for w in weights)):
        return _MLPFunction.apply(x, *weights)
    return _forward(x, weights, keep=False)[0]


class MLP(nn.Sequential):
    """``Linear(bias=False) -> ReLU -> ... -> Linear(bias=False)``: see the module docstring."""

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def _kernel_applies(self, x: Tensor, linears: list[nn.Linear]) -> bool:
        if len(self) != 2 * len(linears) - 1 or any(m.bias is not None for m in linears) or any(
                not isinstance(m, nn.ReLU) for m in list(self)[1::2]):
            return False  # not the alternation of bias-free layers and ReLUs that the kernel runs
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2 or x.shape[0] == 0:
            return False
        if any(m.weight.dtype != torch.float32 or m.weight.device.type != "cpu" or max(m.weight.shape) > MAX_WIDTH
               for m in linears):
            return False
        if torch.is_autocast_enabled("cpu"):
            return False
        return _KERNEL.load() is not None

    def forward(self, x: Tensor) -> Tensor:
        linears = self.linears()
        if self._kernel_applies(x, linears):
            return mlp_kernel(x, [m.weight for m in linears])
        return super().forward(x)


def mlp(n_in: int, n_hidden: int, n_layers: int, n_out: int) -> MLP:
    """``n_layers`` hidden ReLU layers of width ``n_hidden``, bias-free."""
    layers, width = [], n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, n_hidden, bias=False), nn.ReLU(inplace=True)]
        width = n_hidden
    layers.append(nn.Linear(width, n_out, bias=False))
    return MLP(*layers)
