"""Packed volume rendering as Triton kernels: the GPU path of :func:`radfield.rendering.volume.render`.

The equations of :mod:`radfield.rendering.volume`, one program per ray walking its samples in
blocks of ``BLOCK`` (a block's prefix sums by ``tl.cumsum``, carried from block to block):

* forward: ``tau_i = sigma_i delta_i``, ``alpha_i = 1 - exp(-tau_i)`` (1 at a ray's last sample
  with ``opaque_last``), ``T_i = exp(-sum_{k<i} min(tau_k, 1e3))``, ``w_i = T_i alpha_i``; per ray
  ``sum_i w_i c_i``, the opacity ``sum_i w_i`` and the depth ``sum_i w_i (t0_i + t1_i) / 2``.
* backward, with ``G_i = dL/dw_i + dL/drgb . c_i + dL/dopacity + dL/ddepth t_mid_i`` the whole
  gradient reaching ``w_i``: ``dL/dc_i = w_i dL/drgb`` and
  ``dL/dtau_i = G_i T_i exp(-tau_i) - [tau_i <= 1e3] sum_{j>i} G_j w_j`` (``dw_i / dtau_i =
  T_i exp(-tau_i)``, 0 where ``alpha_i`` is forced to 1; ``dw_j / dtau_i = -w_j`` behind it),
  ``dL/dsigma_i = dL/dtau_i delta_i``. The sum behind each sample is the ray's total less a
  running prefix: one pass for the total, one for the gradients (as nerfacc's CUDA kernels).

The PyTorch path sums the optical depth in float64 over the whole batch (a float32 cumsum over
260 k samples loses 6e-3); here each ray's running sum is its own, in float32, which is as
accurate as a ray's samples are few. Used on CUDA tensors (float32, interval ends without a
gradient) as :class:`radfield.rendering.volume.FusedRender`'s backend (its CPU twin is
``_volume_cpu.c``); tested on the CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set
before this module is imported): ``tests/test_volume_kernels.py``.
"""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 32
"""Samples a program handles at a time (a ray's samples in blocks of this many)."""

TAU_CAP = tl.constexpr(1e3)
"""The cap on each ``tau`` inside the running optical depth (:func:`radfield.rendering.volume.render_weights`)."""


@triton.jit
def _load_block(sigma_ptr, t0_ptr, t1_ptr, start, k, count, BLOCK: tl.constexpr, OPAQUE_LAST: tl.constexpr):
    """Samples ``k .. k + BLOCK`` of a ray: their indices, mask, ``tau``, capped ``tau`` (0 past
    the ray's end), ``alpha``, ``exp(-tau)``, midpoints and lengths."""
    j = k + tl.arange(0, BLOCK)
    mask = j < count
    idx = start + j
    sigma = tl.load(sigma_ptr + idx, mask=mask, other=0.0)
    t0 = tl.load(t0_ptr + idx, mask=mask, other=0.0)
    t1 = tl.load(t1_ptr + idx, mask=mask, other=0.0)
    delta = t1 - t0
    tau = sigma * delta
    survive = tl.exp(-tau)
    alpha = 1.0 - survive
    if OPAQUE_LAST:
        alpha = tl.where(j == count - 1, 1.0, alpha)
    capped = tl.where(mask, tl.minimum(tau, TAU_CAP), 0.0)
    return idx, mask, j, tau, capped, alpha, survive, (t0 + t1) * 0.5, delta


@triton.jit
def _forward(sigma_ptr, rgb_ptr, t0_ptr, t1_ptr, start_ptr, count_ptr, w_ptr, out_rgb_ptr, out_opacity_ptr,
             out_depth_ptr, C, CP: tl.constexpr, OPAQUE_LAST: tl.constexpr, BLOCK: tl.constexpr):
    ray = tl.program_id(0)
    start = tl.load(start_ptr + ray)
    count = tl.load(count_ptr + ray)
    channels = tl.arange(0, CP)
    optical = 0.0
    acc = tl.zeros((CP,), dtype=tl.float32)
    opacity = 0.0
    depth = 0.0
    for k in range(0, count, BLOCK):
        idx, mask, j, tau, capped, alpha, survive, mid, delta = _load_block(sigma_ptr, t0_ptr, t1_ptr, start, k,
                                                                            count, BLOCK, OPAQUE_LAST)
        before = optical + (tl.cumsum(capped, 0) - capped)
        w = tl.where(mask, tl.exp(-before) * alpha, 0.0)
        tl.store(w_ptr + idx, w, mask=mask)
        optical += tl.sum(capped, 0)
        opacity += tl.sum(w, 0)
        depth += tl.sum(w * mid, 0)
        c = tl.load(rgb_ptr + idx[:, None] * C + channels[None, :], mask=mask[:, None] & (channels[None, :] < C),
                    other=0.0)
        acc += tl.sum(w[:, None] * c, 0)
    tl.store(out_rgb_ptr + ray * C + channels, acc, mask=channels < C)
    tl.store(out_opacity_ptr + ray, opacity)
    tl.store(out_depth_ptr + ray, depth)


@triton.jit
def _whole_gradient(idx, mask, mid, rgb_ptr, g_w_ptr, g_rgb, g_opacity, g_depth, channels, C):
    """``G_i`` of the module docstring for a block (0 past the ray's end)."""
    c = tl.load(rgb_ptr + idx[:, None] * C + channels[None, :], mask=mask[:, None] & (channels[None, :] < C),
                other=0.0)
    g = tl.load(g_w_ptr + idx, mask=mask, other=0.0) + tl.sum(c * g_rgb[None, :], 1) + g_opacity + g_depth * mid
    return tl.where(mask, g, 0.0)


@triton.jit
def _backward(sigma_ptr, rgb_ptr, t0_ptr, t1_ptr, start_ptr, count_ptr, w_ptr, g_w_ptr, g_rgb_ptr, g_opacity_ptr,
              g_depth_ptr, grad_sigma_ptr, grad_rgb_ptr, C, CP: tl.constexpr, OPAQUE_LAST: tl.constexpr,
              BLOCK: tl.constexpr):
    ray = tl.program_id(0)
    start = tl.load(start_ptr + ray)
    count = tl.load(count_ptr + ray)
    channels = tl.arange(0, CP)
    g_rgb = tl.load(g_rgb_ptr + ray * C + channels, mask=channels < C, other=0.0)
    g_opacity = tl.load(g_opacity_ptr + ray)
    g_depth = tl.load(g_depth_ptr + ray)
    total = 0.0  # sum_j G_j w_j over the ray
    for k in range(0, count, BLOCK):
        idx, mask, j, tau, capped, alpha, survive, mid, delta = _load_block(sigma_ptr, t0_ptr, t1_ptr, start, k,
                                                                            count, BLOCK, OPAQUE_LAST)
        w = tl.load(w_ptr + idx, mask=mask, other=0.0)
        g = _whole_gradient(idx, mask, mid, rgb_ptr, g_w_ptr, g_rgb, g_opacity, g_depth, channels, C)
        total += tl.sum(g * w, 0)
    optical = 0.0
    seen = 0.0  # sum_j G_j w_j over the blocks done
    for k in range(0, count, BLOCK):
        idx, mask, j, tau, capped, alpha, survive, mid, delta = _load_block(sigma_ptr, t0_ptr, t1_ptr, start, k,
                                                                            count, BLOCK, OPAQUE_LAST)
        w = tl.load(w_ptr + idx, mask=mask, other=0.0)
        g = _whole_gradient(idx, mask, mid, rgb_ptr, g_w_ptr, g_rgb, g_opacity, g_depth, channels, C)
        gw = g * w
        behind = total - (seen + tl.cumsum(gw, 0))  # sum over j > i
        transmittance = tl.exp(-(optical + (tl.cumsum(capped, 0) - capped)))
        own = transmittance * survive
        if OPAQUE_LAST:
            own = tl.where(j == count - 1, 0.0, own)
        g_tau = g * own - tl.where(tau <= TAU_CAP, behind, 0.0)
        tl.store(grad_sigma_ptr + idx, g_tau * delta, mask=mask)
        tl.store(grad_rgb_ptr + idx[:, None] * C + channels[None, :], w[:, None] * g_rgb[None, :],
                 mask=mask[:, None] & (channels[None, :] < C))
        optical += tl.sum(capped, 0)
        seen += tl.sum(gw, 0)


def forward(sigmas, rgbs, t_starts, t_ends, starts, counts, opaque_last, weights, rgb, opacity, depth) -> None:
    """Fill ``weights``, ``rgb``, ``opacity`` and ``depth`` (:class:`radfield.rendering.volume.FusedRender`'s
    backend interface: contiguous float32 tensors, each ray's first sample and sample count)."""
    C = rgbs.shape[1]
    _forward[(len(counts),)](sigmas, rgbs, t_starts, t_ends, starts, counts, weights, rgb, opacity, depth, C,
                             CP=triton.next_power_of_2(max(C, 1)), OPAQUE_LAST=bool(opaque_last), BLOCK=BLOCK)


def backward(sigmas, rgbs, t_starts, t_ends, starts, counts, opaque_last, weights, g_weights, g_rgb, g_opacity,
             g_depth, grad_sigma, grad_rgb) -> None:
    """Fill ``grad_sigma`` and ``grad_rgb`` from the outputs' gradients (the backend interface)."""
    C = rgbs.shape[1]
    _backward[(len(counts),)](sigmas, rgbs, t_starts, t_ends, starts, counts, weights, g_weights, g_rgb, g_opacity,
                              g_depth, grad_sigma, grad_rgb, C, CP=triton.next_power_of_2(max(C, 1)),
                              OPAQUE_LAST=bool(opaque_last), BLOCK=BLOCK)
