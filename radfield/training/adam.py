"""Adam, with Instant-NGP's step for hash tables.

A training step touches only the table entries its samples fall in. torch's Adam still moves every
entry: one that no sample touched moves on by its decaying first moment, and its bias correction
counts the optimiser's steps, not the entry's, so an entry first touched late takes its first
steps up to ``1 / sqrt(1 - b2^k)`` too large. tiny-cuda-nn's Adam, which Instant-NGP trains with,
leaves an entry whose gradient is zero as it is (value and moments) and keeps a step count per
entry for the bias correction. :class:`Adam` is torch's fused Adam for ordinary parameter groups
and that step for groups marked ``"sparse": True`` (:func:`sparse_adam_step`; a compiled CPU
kernel, ``_adam_cpu.c``, and a PyTorch reference elsewhere).

A sparse parameter's state holds torch's ``step``, ``exp_avg`` and ``exp_avg_sq`` and the entry
step counts ``entry_steps``; a state saved by torch's Adam (an older checkpoint) gains
``entry_steps`` equal to its ``step``, since torch's Adam moved every entry every step.
"""

from __future__ import annotations

import ctypes
import functools
import math
from pathlib import Path

import torch
from torch import Tensor

from radfield.errors import RadfieldError
from radfield.native import NativeLibrary, addresses

_P, _I32, _I64, _F = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float
_KERNEL = NativeLibrary(Path(__file__).with_name("_adam_cpu.c"), {
    "sparse_adam": [_I32, _P, _P, _P, _P, _P, _P, _F, _F, _F, _F, _F, _F, _P, _P, _I64, _I32],
}, "Adam CPU kernel", "its PyTorch reference", extra_flags=("-fno-math-errno",))  # sqrtf vectorises;
# its argument, a second moment, is never negative


@functools.cache
def bias_tables(beta1: float, beta2: float, device: str = "cpu") -> tuple[Tensor, Tensor]:
    """``(c1, c2s)``, float32: ``c1[k] = 1 - beta1^k`` and ``c2s[k] = sqrt(1 - beta2^k)`` for
    ``k = 0 .. K``, index 0 set to 1, ``K`` the first step at which both powers are below ``2^-25``
    (from there on both terms are 1 in float32; ``K`` at most 2^24). Example: betas (0.9, 0.99):
    ``K = 1725``, ``c1[1] = 0.1``, ``c2s[1] = 0.1``."""
    steps = max((math.ceil(25 * math.log(2) / -math.log(b)) for b in (beta1, beta2) if 0 < b < 1), default=1)
    k = torch.arange(min(steps, 1 << 24) + 1, dtype=torch.float64)
    c1, c2s = 1 - beta1**k, (1 - beta2**k).sqrt()
    c1[0] = c2s[0] = 1.0
    return c1.float().to(device), c2s.float().to(device)


def sparse_adam_reference(p: Tensor, g: Tensor, m: Tensor, v: Tensor, k: Tensor, lr: float,
                          betas: tuple[float, float], eps: float) -> None:
    """:func:`sparse_adam_step` for one tensor, in PyTorch operations (in place)."""
    b1, b2 = betas
    c1, c2s = bias_tables(b1, b2, str(p.device))
    on = g != 0
    k += on
    at = k.clamp(max=len(c1) - 1).long()
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * (g * g)
    step = (lr / c1[at]) * m_new / (v_new.sqrt() / c2s[at] + eps)
    p.copy_(torch.where(on, p - step, p))
    m.copy_(torch.where(on, m_new, m))
    v.copy_(torch.where(on, v_new, v))


def _kernel_applies(tensors: list[Tensor]) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous() for t in tensors)


def sparse_adam_step(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                     exp_avg_sqs: list[Tensor], entry_steps: list[Tensor], lr: float,
                     betas: tuple[float, float], eps: float) -> None:
    """Instant-NGP's Adam step on each entry with a nonzero gradient (module docstring), in place:

    ``k += 1``, ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= (lr / (1 - b1^k)) m / (sqrt(v) / sqrt(1 - b2^k) + eps)``;

    entries with ``g == 0`` keep ``p``, ``m``, ``v`` and ``k``. Example: a first step (``k = 0``,
    zero moments) with ``g = 0.5``, lr 0.01: ``p -= 0.01 * 0.5 / (0.5 + eps)``, i.e. by ``lr``."""
    lib = _KERNEL.load() if _kernel_applies([*params, *grads, *exp_avgs, *exp_avg_sqs, *entry_steps]) else None
    if lib is None:
        for p, g, m, v, k in zip(params, grads, exp_avgs, exp_avg_sqs, entry_steps):
            sparse_adam_reference(p, g, m, v, k, lr, betas, eps)
        return
    c1, c2s = bias_tables(*betas)
    arrays = [addresses(ts) for ts in (params, grads, exp_avgs, exp_avg_sqs, entry_steps)]
    sizes = torch.tensor([p.numel() for p in params], dtype=torch.int64)
    (b1, b2), (a1, a2) = betas, (1 - betas[0], 1 - betas[1])  # as the reference rounds them
    lib.sparse_adam(len(params), *(a.data_ptr() for a in arrays), sizes.data_ptr(), lr, b1, a1, b2, a2, eps,
                    c1.data_ptr(), c2s.data_ptr(), len(c1), torch.get_num_threads())


class Adam(torch.optim.Adam):
    """torch's fused Adam, and Instant-NGP's step (:func:`sparse_adam_step`) for the parameter
    groups with ``"sparse": True`` (hash tables: no weight decay, no AMSGrad)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=True)
        self.defaults["sparse"] = False
        for group in self.param_groups:
            group.setdefault("sparse", False)
            if group["sparse"] and (group["weight_decay"] != 0 or group["amsgrad"] or group["maximize"]):
                raise RadfieldError("a sparse Adam group takes no weight decay, AMSGrad or maximize")
        # A gradient scaler unscales the gradients before step(): the sparse step reads them as they are.
        self._step_supports_amp_scaling = False

    def load_state_dict(self, state_dict: dict) -> None:
        sparse = [group["sparse"] for group in self.param_groups]
        super().load_state_dict(state_dict)
        for group, flag in zip(self.param_groups, sparse):  # as configured now, not as saved
            group["sparse"] = flag

    def _sparse_state(self, p: Tensor) -> dict:
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if "entry_steps" not in state:  # new, or saved by torch's Adam: every entry took every step
            state["entry_steps"] = torch.full_like(p, float(state["step"]))
        return state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = [g for g in self.param_groups if g["sparse"]]
        held = [(p, p.grad) for group in sparse for p in group["params"] if p.grad is not None]
        for p, _ in held:  # torch's step skips parameters without gradients
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in held:
                p.grad = grad
        for group in sparse:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RadfieldError("the sparse Adam step takes dense gradients with zeros")
            states = [self._sparse_state(p) for p in params]
            for state in states:
                state["step"] += 1
            sparse_adam_step(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                             [s["exp_avg_sq"] for s in states], [s["entry_steps"] for s in states],
                             float(group["lr"]), tuple(group["betas"]), float(group["eps"]))
        return loss
