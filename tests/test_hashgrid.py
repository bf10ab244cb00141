"""Hash grid (reference and CPU kernel) and SH encoding against independent ground truth."""

from __future__ import annotations

import math
import subprocess
import warnings

import numpy as np
import pytest
import torch

from radfield.fields import hashgrid
from radfield import native
from radfield.fields.hashgrid import (
    GradientStorage,
    HashGrid,
    HashGridConfig,
    hash_grid_kernel,
    hash_grid_reference,
    kernel_available,
    level_resolutions,
)
from radfield.fields.sh import SH_DIM, sh_encode

needs_kernel = pytest.mark.skipif(
    not kernel_available(),
    reason="CPU hash-grid kernel unavailable (no gcc, a failed build, or RADFIELD_NO_KERNEL=1)")


def _brute_force_level(point, table, res):
    """One level's encoding of one point with python ints and floats, corner by corner."""
    table = table.tolist()
    rows_n = len(table)
    r1 = res + 1
    p = [min(max(float(v), 0.0), 1.0) * res for v in point]
    i0 = [min(math.floor(v), res - 1) for v in p]
    t = [v - i for v, i in zip(p, i0)]
    out = [0.0] * len(table[0])
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                cx, cy, cz = i0[0] + dx, i0[1] + dy, i0[2] + dz
                if r1**3 <= rows_n:
                    row = cx + cy * r1 + cz * r1 * r1
                else:
                    h = (cx ^ (cy * 2654435761) ^ (cz * 805459861)) % 2**32
                    row = h % rows_n
                w = (t[0] if dx else 1 - t[0]) * (t[1] if dy else 1 - t[1])
                w *= t[2] if dz else 1 - t[2]
                for f in range(len(out)):
                    out[f] += w * table[row][f]
    return out


def _small_grid() -> HashGrid:
    # resolutions 4, 8, 16 with T = 2^9 rows: level 0 (5^3 = 125 rows) dense, 1 and 2 hashed.
    cfg = HashGridConfig(n_levels=3, features_per_level=2, log2_table_size=9,
                         base_resolution=4, max_resolution=16)  # fmt: skip
    grid = HashGrid(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for table in grid.tables:
            table.uniform_(-1.0, 1.0)
    return grid


def test_resolutions_and_table_shapes():
    assert level_resolutions(3, 4, 16) == [4, 8, 16]
    res = level_resolutions(16, 16, 2048)
    assert res[0] == 16 and res[-1] == 2048 and res == sorted(res)
    grid = _small_grid()
    assert [tuple(t.shape) for t in grid.tables] == [(125, 2), (512, 2), (512, 2)]


def test_brute_force_matches_reference_and_kernel():
    grid = _small_grid()
    pts = torch.tensor(
        [[0.1, 0.2, 0.3], [0.73, 0.01, 0.99], [0.5, 0.5, 0.5], [0.0, 1.0, 0.33],
         [0.999, 0.4, 0.123], [-0.2, 1.3, 0.6]],
        dtype=torch.float64,
    )  # fmt: skip
    expected = torch.tensor(
        [sum((_brute_force_level(p, t.detach().double(), r)
              for t, r in zip(grid.tables, grid.resolutions)), []) for p in pts.tolist()],
        dtype=torch.float64,
    )  # fmt: skip
    tables64 = [t.detach().double() for t in grid.tables]
    ref64 = hash_grid_reference(pts, tables64, grid.resolutions)
    assert ref64.shape == (6, 6)
    torch.testing.assert_close(ref64, expected, atol=1e-12, rtol=0)
    ref32 = hash_grid_reference(pts.float(), list(grid.tables), grid.resolutions)
    torch.testing.assert_close(ref32.double(), expected, atol=1e-5, rtol=0)
    if kernel_available():
        ker = hash_grid_kernel(pts.float(), list(grid.tables), grid.resolutions)
        torch.testing.assert_close(ker.double(), expected, atol=1e-5, rtol=0)


@needs_kernel
@pytest.mark.parametrize("log2_t", [19, 14])
def test_kernel_matches_reference_outputs_and_grads(log2_t):
    torch.manual_seed(1)
    grid = HashGrid(HashGridConfig(log2_table_size=log2_t))
    with torch.no_grad():
        for table in grid.tables:
            table.uniform_(-1.0, 1.0)
    tables = list(grid.tables)
    x = torch.rand(5000, 3)
    x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-0.5, 0.5, 1.5], [1.0, 0.0, 0.5]])
    grad_out = torch.randn(5000, grid.output_dim)

    outs, grads = [], []
    for fn in (hash_grid_reference, hash_grid_kernel):
        xg = x.clone().requires_grad_(True)
        out = fn(xg, tables, grid.resolutions)
        g = torch.autograd.grad(out, [xg, *tables], grad_out)
        outs.append(out.detach())
        grads.append(g)
    torch.testing.assert_close(outs[1], outs[0], atol=1e-6, rtol=0)
    # the forward that writes the Jacobian (x requires grad) gives the plain forward's outputs, bit for bit
    assert torch.equal(outs[1], hash_grid_kernel(x, tables, grid.resolutions).detach())
    for g_ker, g_ref in zip(grads[1][1:], grads[0][1:]):
        torch.testing.assert_close(g_ker, g_ref, atol=1e-5, rtol=1e-5)
    # input gradient: magnitudes ~ res * |table| ~ 1e3, so compare relative to the scale
    gx_ref, gx_ker = grads[0][0], grads[1][0]
    scale = gx_ref.abs().max()
    assert (gx_ker - gx_ref).abs().max() <= 1e-5 * scale
    assert gx_ker[2, 0] == 0 and gx_ker[2, 2] == 0 and gx_ref[2, 0] == 0  # clamped coords


@needs_kernel
def test_a_precomputed_encoding_is_reused_with_the_tables_gradient():
    """``HashGrid.forward(x, encoding)`` with the no-grad ``encode(x)`` and a window: the same
    output as the plain forward, and the same table gradients as the reference's (the backward
    reads only ``x``); a wrong shape or an ``x`` that needs a gradient is refused by the kernel."""
    grid = HashGrid(HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64))
    with torch.no_grad():
        for table in grid.tables:
            table.uniform_(-1.0, 1.0)
    grid.set_window(0.5)  # a = 1 + 0.5 * 3: levels weighted 1, 1, 0.5, 0: the window applies after the reuse
    x, grad_out = torch.rand(300, 3), torch.randn(300, grid.output_dim)
    with torch.no_grad():
        encoding = grid.encode(x)
    tables = list(grid.tables)
    reused = grid(x, encoding)
    want = grid.windowed(hash_grid_reference(x, tables, grid.resolutions))
    torch.testing.assert_close(reused, want, atol=1e-6, rtol=0)
    g_reused = torch.autograd.grad(reused, tables, grad_out)
    g_want = torch.autograd.grad(want, tables, grad_out)
    for a, b in zip(g_reused, g_want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert g_reused[3].abs().max() == 0 and g_reused[0].abs().max() > 0  # the closed level: no gradient
    with pytest.raises(ValueError, match="precomputed"):
        hash_grid_kernel(x, tables, grid.resolutions, precomputed=encoding[:, :4])
    with pytest.raises(ValueError, match="precomputed"):
        hash_grid_kernel(x.clone().requires_grad_(), tables, grid.resolutions, precomputed=encoding)


@needs_kernel
def test_module_forward_uses_kernel_and_falls_back(monkeypatch):
    grid = HashGrid(HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64))
    x = torch.rand(100, 3)
    out = grid(x)
    assert "HashGrid" in type(out.grad_fn).__name__  # the kernel's autograd.Function
    ref = hash_grid_reference(x, list(grid.tables), grid.resolutions)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    monkeypatch.setenv("RADFIELD_NO_KERNEL", "1")
    assert not kernel_available()
    out = grid(x)
    assert "HashGrid" not in type(out.grad_fn).__name__  # the reference's autograd graph
    torch.testing.assert_close(out, ref, atol=0, rtol=0)


@needs_kernel
def test_gradient_storage_is_reused_only_when_free():
    """The tables' gradients land on kept storage once the optimiser dropped the last ones, on
    new storage while anything holds them, and equal the reference's in every case (including
    accumulation into kept gradients, where a reused storage would double-count)."""
    torch.manual_seed(2)
    grid = HashGrid(HashGridConfig(n_levels=3, log2_table_size=10, max_resolution=32))
    x = torch.rand(400, 3)
    w = torch.randn(400, grid.output_dim)
    ref = torch.autograd.grad((hash_grid_reference(x, list(grid.tables), grid.resolutions) * w).sum(),
                              list(grid.tables))

    def backward():
        (grid(x) * w).sum().backward()
        return [t.grad.data_ptr() for t in grid.tables]

    first = backward()
    for g, r in zip(grid.tables, ref):
        torch.testing.assert_close(g.grad, r, atol=1e-6, rtol=0)
        g.grad = None  # what zero_grad(set_to_none=True) does
    assert backward() == first  # the same storage again
    kept = [t.grad for t in grid.tables]  # someone holds the gradients
    for t in grid.tables:
        t.grad = None
    third = backward()
    assert all(a != b for a, b in zip(third, first))  # held storage is not overwritten
    for k, g, r in zip(kept, grid.tables, ref):
        torch.testing.assert_close(k, r, atol=1e-6, rtol=0)
        torch.testing.assert_close(g.grad, r, atol=1e-6, rtol=0)
    backward()  # accumulates into .grad (zero_grad(set_to_none=False) style): twice the gradient
    for g, r in zip(grid.tables, ref):
        torch.testing.assert_close(g.grad, 2 * r, atol=1e-6, rtol=0)
    copy = __import__("copy").deepcopy(grid)
    assert copy.gradient_storage is not grid.gradient_storage


@needs_kernel
def test_gradient_storage_without_torchs_use_count_gives_fresh_gradients(monkeypatch):
    """A PyTorch without the private storage use count: every backward allocates anew and
    nothing is kept (a kept storage could be overwritten while someone holds it), with the
    reference's gradients."""
    monkeypatch.setattr(GradientStorage, "_use_count", None)
    torch.manual_seed(3)
    grid = HashGrid(HashGridConfig(n_levels=2, log2_table_size=8, max_resolution=16))
    x, w = torch.rand(100, 3), torch.randn(100, grid.output_dim)
    ref = torch.autograd.grad((hash_grid_reference(x, list(grid.tables), grid.resolutions) * w).sum(),
                              list(grid.tables))
    for _ in range(2):
        (grid(x) * w).sum().backward()
        for t, r in zip(grid.tables, ref):
            torch.testing.assert_close(t.grad, r, atol=1e-6, rtol=0)
            t.grad = None
    assert grid.gradient_storage._kept == {}


def test_time_sliced_grid_interpolates_its_slices_linearly_in_time():
    """Each slice k is the grid whose table holds columns k F .. k F + F - 1 of every row; at time
    t the output is the slices around tau = (t - t0) / (t1 - t0) (K - 1), blended linearly
    (computed here per point with python floats); gradients reach only those two slices."""
    from radfield.fields.hashgrid import TimeSlicedHashGrid

    torch.manual_seed(3)
    K, F = 5, 2
    grid = TimeSlicedHashGrid(HashGridConfig(n_levels=3, log2_table_size=10, max_resolution=32), K, (2.0, 4.0))
    with torch.no_grad():
        for table in grid.tables:
            table.uniform_(-1.0, 1.0)
    x = torch.rand(40, 3)
    times = torch.cat([torch.tensor([2.0, 4.0, 2.5, 3.0, 5.0, 1.0]), 2.0 + 2.0 * torch.rand(34)])
    out = grid(x, times)
    assert out.shape == (40, 3 * F)
    slices = [hash_grid_reference(x, [t[:, k * F:(k + 1) * F] for t in grid.tables], grid.resolutions)
              for k in range(K)]
    for i, t in enumerate(times.tolist()):
        tau = min(max((t - 2.0) / 2.0, 0.0), 1.0) * (K - 1)
        k = min(math.floor(tau), K - 2)
        w = tau - k
        expect = (1 - w) * slices[k][i] + w * slices[k + 1][i]
        torch.testing.assert_close(out[i], expect, atol=1e-5, rtol=1e-5)
    # t = 2.5 -> tau = 1: slice 1 alone; its gradient touches slice 1's columns only
    grid(x[2:3], times[2:3]).sum().backward()
    g = grid.tables[0].grad
    assert g[:, F:2 * F].abs().sum() > 0
    assert g[:, :F].abs().sum() == 0 and g[:, 2 * F:].abs().sum() == 0
    with pytest.raises(ValueError, match="at least 2 slices"):
        TimeSlicedHashGrid(HashGridConfig(), 1)


@needs_kernel
@pytest.mark.parametrize("log2_t", [18, 10])
def test_time_sliced_kernel_matches_the_every_slice_lookup(log2_t):
    """The kernel's sliced path (two slices gathered and blended per corner) against the PyTorch
    path (every slice looked up, then blended): outputs, table gradients and input gradients,
    with a coarse-to-fine window on, on dense and hashed levels."""
    import copy

    from radfield.fields.hashgrid import TimeSlicedHashGrid

    torch.manual_seed(4)
    fast = TimeSlicedHashGrid(HashGridConfig(n_levels=6, log2_table_size=log2_t, max_resolution=256), 8)
    with torch.no_grad():
        for table in fast.tables:
            table.uniform_(-1.0, 1.0)
    slow = copy.deepcopy(fast)
    slow.config.use_kernel = False
    for grid in (fast, slow):
        grid.set_window(0.5, "test")
    x = torch.rand(3000, 3) * 1.2 - 0.1  # some points outside the unit cube (clamped)
    t = torch.rand(3000)
    t[:3] = torch.tensor([0.0, 1.0, 3 / 7])
    grad_out = torch.randn(3000, fast.output_dim)
    results = []
    for grid in (fast, slow):
        xg = x.clone().requires_grad_(True)
        out = grid(xg, t)
        grads = torch.autograd.grad(out, [xg, *grid.tables], grad_out)
        results.append((out, grads))
    (out_f, g_f), (out_s, g_s) = results
    kernel_node = lambda out: type(out.grad_fn.next_functions[0][0]).__name__  # noqa: E731 (out * window)
    assert "HashGridFunction" in kernel_node(out_f) and "HashGridFunction" not in kernel_node(out_s)
    torch.testing.assert_close(out_f, out_s, atol=2e-6, rtol=1e-5)
    for a, b in zip(g_f[1:], g_s[1:]):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    scale = g_s[0].abs().max()
    assert (g_f[0] - g_s[0]).abs().max() <= 1e-5 * scale


# ---------------------------------------------------------------- building the kernel


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """An empty cache and no loaded library: the next use builds (or fails to build) anew."""
    monkeypatch.setenv("RADFIELD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RADFIELD_NO_KERNEL", raising=False)
    monkeypatch.setattr(hashgrid._KERNEL, "lib", None)
    monkeypatch.setattr(hashgrid._KERNEL, "failed", False)
    return tmp_path


def _falls_back_with_one_warning(match: str) -> None:
    """HashGrid runs the reference (exactly) after one warning matching ``match``, then none."""
    grid = HashGrid(HashGridConfig(n_levels=3, log2_table_size=10, max_resolution=32))
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(4))
    with pytest.warns(RuntimeWarning, match=match) as record:
        out = grid(x)
    assert len([w for w in record if "kernel unavailable" in str(w.message)]) == 1
    assert "HashGrid" not in type(out.grad_fn).__name__  # the reference's autograd graph
    torch.testing.assert_close(out, hash_grid_reference(x, list(grid.tables), grid.resolutions),
                               atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use warns no more
        torch.testing.assert_close(grid(x), out, atol=0, rtol=0)
        assert not kernel_available()


def test_no_gcc_on_path_falls_back_to_the_reference(fresh_build, monkeypatch):
    empty = fresh_build / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    _falls_back_with_one_warning("gcc not found")
    assert not (fresh_build / "cache").exists() or not any((fresh_build / "cache").iterdir())


def test_failing_compiler_falls_back_to_the_reference(fresh_build, monkeypatch):
    bin_dir = fresh_build / "bin"
    bin_dir.mkdir()
    gcc = bin_dir / "gcc"  # answers --version, fails to compile
    gcc.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "gcc (fake) 0.1"; exit 0; fi\n'
                   'echo "fake gcc: cannot compile" >&2\nexit 1\n')
    gcc.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    _falls_back_with_one_warning("cannot compile")
    assert [p.name for p in (fresh_build / "cache").iterdir()] == []  # no partial library left


def test_compiler_timeout_falls_back_to_the_reference(fresh_build, monkeypatch):
    timeouts = []

    def slow_compile(cmd, **kwargs):  # gcc that answers --version and never finishes a build
        timeouts.append(kwargs.get("timeout"))
        if cmd[1:2] == ["--version"]:
            return subprocess.CompletedProcess(cmd, 0, "gcc (fake) 0.1\n", "")
        raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))

    monkeypatch.setattr(native.shutil, "which", lambda name: "/usr/bin/" + name)
    monkeypatch.setattr(native.subprocess, "run", slow_compile)
    _falls_back_with_one_warning("timed out after 180 s")
    assert timeouts == [180, 180]  # both gcc calls have the time limit


def test_cache_name_depends_on_the_cpu_and_the_compiler(fresh_build, monkeypatch):
    monkeypatch.setattr(native, "gcc_version", lambda: "gcc 13.2.0")
    monkeypatch.setattr(native, "cpu_identity", lambda: "x86_64\nflags=sse2 avx2")
    avx2 = hashgrid._KERNEL.path()
    assert hashgrid._KERNEL.path() == avx2  # deterministic
    assert avx2.parent == fresh_build / "cache" and avx2.name.startswith("hashgrid_cpu_")
    monkeypatch.setattr(native, "cpu_identity", lambda: "x86_64\nflags=sse2 avx2 avx512f")
    avx512 = hashgrid._KERNEL.path()
    monkeypatch.setattr(native, "gcc_version", lambda: "gcc 14.1.0")
    other_gcc = hashgrid._KERNEL.path()
    assert len({avx2.name, avx512.name, other_gcc.name}) == 3


def test_cpu_identity_names_this_machine():
    ident = native.cpu_identity()
    assert ident.splitlines()[0] == native.platform.machine()
    try:
        cpuinfo = open("/proc/cpuinfo").read()
    except OSError:
        return
    for key in ("model name", "flags"):
        line = next((ln for ln in cpuinfo.splitlines() if ln.split(":")[0].strip() == key), None)
        if line is not None:
            assert f"{key}={' '.join(line.partition(':')[2].split())}" in ident.splitlines()


def test_reference_input_gradient_vs_finite_differences():
    torch.manual_seed(2)
    grid = _small_grid()
    tables = [t.detach().double() for t in grid.tables]
    # points away from cell boundaries of every level (res 4, 8, 16 -> cell size 1/16)
    cells = torch.randint(0, 16, (20, 3)).double()
    x = ((cells + 0.2 + 0.6 * torch.rand(20, 3, dtype=torch.float64)) / 16).requires_grad_(True)
    w = torch.randn(20, 6, dtype=torch.float64)
    (gx,) = torch.autograd.grad((hash_grid_reference(x, tables, grid.resolutions) * w).sum(), x)
    eps = 1e-6
    fd = torch.zeros_like(gx)
    for d in range(3):
        step = torch.zeros(3, dtype=torch.float64)
        step[d] = eps
        plus = (hash_grid_reference(x.detach() + step, tables, grid.resolutions) * w).sum(-1)
        minus = (hash_grid_reference(x.detach() - step, tables, grid.resolutions) * w).sum(-1)
        fd[:, d] = (plus - minus) / (2 * eps)
    torch.testing.assert_close(gx, fd, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("use_kernel", [False, True])
def test_boundary_and_outside_points_are_finite(use_kernel):
    if use_kernel and not kernel_available():
        pytest.skip("CPU hash-grid kernel unavailable")
    grid = HashGrid(HashGridConfig(n_levels=4, log2_table_size=12, max_resolution=64,
                                   use_kernel=use_kernel))  # fmt: skip
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.5], [-3.0, 7.0, 0.5],
                      [1e-8, 1 - 1e-7, 0.5], [-1e30, 1e30, 2.0]], requires_grad=True)  # fmt: skip
    out = grid(x)
    out.square().sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(t.grad).all() for t in grid.tables)
    # clamping: a point outside encodes as its clamped copy
    torch.testing.assert_close(out[3], grid(torch.tensor([[0.0, 1.0, 0.5]]))[0])


def test_output_shape_and_init_range():
    grid = HashGrid()
    assert grid.output_dim == 32 and len(grid.tables) == 16
    assert max(t.abs().max().item() for t in grid.tables) <= 1e-4
    assert all(t.shape[0] <= 2**19 for t in grid.tables)
    assert grid(torch.rand(7, 3)).shape == (7, 32)
    assert grid(torch.rand(0, 3)).shape == (0, 32)


# ---------------------------------------------------------------- spherical harmonics


def test_sh_known_value_at_pole():
    y = sh_encode(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))[0]
    expected = torch.zeros(SH_DIM, dtype=torch.float64)
    expected[0] = 0.5 / math.sqrt(math.pi)
    expected[2] = math.sqrt(3 / (4 * math.pi))
    expected[6] = math.sqrt(5 / (16 * math.pi)) * 2  # (3 z^2 - 1) at z = 1
    expected[12] = math.sqrt(7 / (16 * math.pi)) * 2  # z (5 z^2 - 3) at z = 1
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)


def test_sh_orthonormal_by_exact_quadrature():
    # Gauss-Legendre in cos(theta) x uniform phi is exact for these degree <= 6 products.
    nodes, weights = np.polynomial.legendre.leggauss(8)
    n_phi = 16
    phi = 2 * np.pi * np.arange(n_phi) / n_phi
    z = np.repeat(nodes, n_phi)
    w = np.repeat(weights, n_phi) * (2 * np.pi / n_phi)
    s = np.sqrt(1 - z**2)
    p = np.tile(phi, len(nodes))
    dirs = torch.tensor(np.stack([s * np.cos(p), s * np.sin(p), z], -1))
    y = sh_encode(dirs)
    gram = y.T @ (y * torch.tensor(w)[:, None])
    torch.testing.assert_close(gram, torch.eye(SH_DIM, dtype=torch.float64), atol=1e-12, rtol=0)


def test_sh_kernel_matches_the_float64_polynomials():
    """The compiled float32 kernel (float32 CPU directions without a gradient) against the PyTorch
    polynomials in float64, on the quadrature directions' kind of input: random unit vectors, the
    poles and the axes; and directions that need a gradient take the PyTorch path (autograd)."""
    from radfield.fields import sh
    if sh._KERNEL.load() is None:
        pytest.skip("no C compiler: the spherical harmonics kernel is not built")
    gen = torch.Generator().manual_seed(5)
    d = torch.randn(10_000, 3, generator=gen, dtype=torch.float64)
    d = torch.cat([d / d.norm(dim=-1, keepdim=True), torch.eye(3, dtype=torch.float64), -torch.eye(3, dtype=torch.float64)])
    exact = sh_encode(d)
    fast = sh_encode(d.float())
    assert fast.dtype == torch.float32 and fast.grad_fn is None
    torch.testing.assert_close(fast.double(), exact, atol=3e-6, rtol=0)
    leaf = d.float().requires_grad_()
    y = sh_encode(leaf)
    torch.testing.assert_close(y.detach(), fast, atol=1e-6, rtol=0)
    y[:, 9].sum().backward()  # autograd ran through the PyTorch polynomials
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_sh_orthonormal_monte_carlo():
    gen = torch.Generator().manual_seed(3)
    d = torch.randn(200_000, 3, generator=gen, dtype=torch.float64)
    d = d / d.norm(dim=-1, keepdim=True)
    y = sh_encode(d)
    gram = 4 * math.pi * (y.T @ y) / d.shape[0]
    assert (gram - torch.eye(SH_DIM, dtype=torch.float64)).abs().max() < 0.05
    assert sh_encode(d.float()).dtype == torch.float32
