"""MeRF against independent ground truth: 8-bit quantisation written out in plain Python and its
straight-through gradient against finite differences of the squash, nested levels against each
level's own interpolation (the property that makes baking exact), the grid + tri-plane lookup
by hand (dense and hashed tables), the baked model read back from its PNGs and JSON against the
trained one on the same samples, HSM with b = B against the baseline step, training past the
best constant image with the baked PSNR beside the trained one, and bad input as one line."""

from __future__ import annotations

import itertools
import json
import math

import imageio.v3 as iio
import pytest
import torch

from radfield.cli import main
from radfield.config import RunConfig, apply_overrides
from radfield.data import load_scene
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.export.baked import export_baked, load_baked
from radfield.fields.hashgrid import PRIMES
from radfield.fields.cells import interpolate
from radfield.fields.merf import MerfField, MerfFieldConfig, NestedGrid, dequantise, fake_quantise, quantise, squash
from radfield.models import SceneInfo, build_model
from radfield.rendering.pipeline import render_samples
from radfield.training.checkpoint import load_run
from radfield.training.trainer import Trainer
from conftest import make_config
from test_models import baseline_and_hsm_grads, constant_image_psnr, ray_batch

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
TINY = {"merf.field.grid_resolution": 8, "merf.field.grid_levels": 2, "merf.field.plane_resolution": 32,
        "merf.field.plane_levels": 3, "merf.proposal_samples": (16, 12), "merf.n_samples": 8,
        "merf.optim.target_samples": 1024, "merf.optim.warmup_steps": 2}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=20, n_val=1, n_test=3, size=32)


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory):
    """A tiny MeRF trained 30 steps, and its bake."""
    run = tmp_path_factory.mktemp("merf") / "run"
    Trainer(make_config(scene, "merf", TINY, steps=30), run, progress=False, log_tensorboard=False).train()
    export_baked(run, run.parent / "baked")
    return run, run.parent / "baked"


# ---------------------------------------------------------------------------- 1. quantisation


def test_quantisation_forward_is_8_bit_and_backward_straight_through():
    m = 4.0
    assert quantise(torch.tensor([-1.0, 0.0, 1.0, 7.0]), 1.0).tolist() == [0, 128, 255, 255]
    assert float(dequantise(torch.tensor(128), 4.0)) == pytest.approx(128 / 255 * 8 - 4, abs=1e-6)  # float32
    v = torch.linspace(-9.0, 9.0, 1001, dtype=torch.float64)
    q = fake_quantise(v, m)
    for value, got in zip(v.tolist(), q.tolist()):
        s = m * math.tanh(value / m)
        byte = round((s + m) / (2 * m) * 255)  # Python rounds halves to even, as torch does
        assert got == pytest.approx(byte / 255 * 2 * m - m, abs=1e-12)
    assert len(set(q.tolist())) <= 256 and (q - squash(v, m)).abs().max() <= m / 255 + 1e-12
    # Backward: the squash's derivative, as if there were no rounding (finite differences).
    x = v.clone().requires_grad_()
    w = torch.randn(len(v), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (fake_quantise(x, m) * w).sum().backward()
    h = 1e-6
    fd = (squash(v + h, m) - squash(v - h, m)) / (2 * h)
    torch.testing.assert_close(x.grad, w * fd, rtol=1e-6, atol=1e-9)
    assert x.grad.abs().min() > 0  # the round itself would pass no gradient


# ---------------------------------------------------------------------------- 2. lookups by hand


def hash_row(vertex, res, rows):
    """Instant-NGP's row of an integer vertex, in Python integers."""
    if (res + 1) ** len(vertex) <= rows:
        return sum(c * (res + 1) ** a for a, c in enumerate(vertex))
    h = 0
    for c, prime in zip(vertex, PRIMES):
        h ^= (c * prime) & 0xFFFFFFFF
    return h % rows


def level_value(table, res, point):
    """One level's D-linear interpolation at ``point`` (its unit coordinates), by loops."""
    dims = len(point)
    p = [min(max(c, 0.0), 1.0) * res for c in point]
    i0 = [min(int(math.floor(c)), res - 1) for c in p]
    f = [c - i for c, i in zip(p, i0)]
    out = [0.0] * table.shape[1]
    for b in itertools.product((0, 1), repeat=dims):
        w = math.prod(f[a] if b[a] else 1 - f[a] for a in range(dims))
        row = hash_row([i + o for i, o in zip(i0, b)], res, table.shape[0])
        for c in range(table.shape[1]):
            out[c] += w * float(table[row, c])
    return out


@pytest.mark.parametrize("dims,log2_rows", [(2, 19), (2, 5), (3, 19), (3, 6)],
                         ids=["plane", "plane-hashed", "grid", "grid-hashed"])
def test_nested_levels_are_exact_at_the_finest_cells(dims, log2_rows):
    """Interpolating the summed vertex values equals the sum of every level's own interpolation
    at any point: the baked grid is the trained one."""
    torch.manual_seed(0)
    grid = NestedGrid(dims, 8, 3, channels=2, log2_table_size=log2_rows, init_scale=1.0)
    assert grid.resolutions == [2, 4, 8]
    g = torch.Generator().manual_seed(1)
    u = torch.cat([torch.rand(30, dims, generator=g), torch.ones(1, dims), torch.zeros(1, dims)])
    corners, f = grid.corners(u)
    got = interpolate(corners, f)
    for point, value in zip(u.tolist(), got.tolist()):
        expected = [sum(vals) for vals in zip(*(level_value(t.detach(), r, point)
                                               for t, r in zip(grid.tables, grid.resolutions)))]
        assert value == pytest.approx(expected, abs=1e-5)
    # The vertex values baking reads are the corners training interpolates.
    vertices = torch.tensor(list(itertools.product(range(9), repeat=dims)))
    values = grid.vertex_values(vertices)
    for vertex, value in zip(vertices.tolist()[::7], values.tolist()[::7]):
        expected = [sum(vals) for vals in zip(*(level_value(t.detach(), r, [c / 8 for c in vertex])
                                               for t, r in zip(grid.tables, grid.resolutions)))]
        assert value == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("quantised", [False, True], ids=["squashed", "quantised"])
def test_grid_plus_triplane_lookup_by_hand(quantised):
    config = MerfFieldConfig(grid_resolution=2, grid_levels=1, plane_resolution=4, plane_levels=2,
                             quant_range=3.0, quantise=quantised)
    torch.manual_seed(0)
    field = MerfField(BOX, config, bounded=True)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for grid in field.grids().values():
            for t in grid.tables:
                t.copy_(torch.randn(t.shape, generator=g) * 2)
    m = config.quant_range

    def stored(v):  # what a vertex holds: squashed, and 8-bit when quantised
        s = m * math.tanh(v / m)
        return round((s + m) / (2 * m) * 255) / 255 * 2 * m - m if quantised else s

    def lookup(grid, point):
        """D-linear interpolation of the stored vertex values of ``grid`` at ``point``."""
        res, dims = grid.resolution, grid.dims
        p = [min(max(c, 0.0), 1.0) * res for c in point]
        i0 = [min(int(math.floor(c)), res - 1) for c in p]
        f = [c - i for c, i in zip(p, i0)]
        out = [0.0] * 8
        for b in itertools.product((0, 1), repeat=dims):
            w = math.prod(f[a] if b[a] else 1 - f[a] for a in range(dims))
            vertex = [(i + o) / res for i, o in zip(i0, b)]
            summed = [sum(vals) for vals in zip(*(level_value(t.detach(), r, vertex)
                                                  for t, r in zip(grid.tables, grid.resolutions)))]
            out = [acc + w * stored(v) for acc, v in zip(out, summed)]
        return out

    x = torch.tensor([[0.3, -0.7, 1.2], [-1.5, 1.5, 0.0], [0.01, 0.02, -0.9], [1.1, 0.4, 0.6]])
    raw = field.raw(x)
    assert raw.shape == (4, 8)
    for point, got in zip(((x + 1.5) / 3).tolist(), raw.tolist()):
        expected = lookup(field.grid, point)
        for name, (a, b) in (("xy", (0, 1)), ("xz", (0, 2)), ("yz", (1, 2))):
            expected = [e + v for e, v in zip(expected, lookup(field.planes[name], [point[a], point[b]]))]
        assert got == pytest.approx(expected, abs=2e-5)
    sigma, values = field.activate(raw)
    torch.testing.assert_close(sigma, torch.exp(raw[:, 0]))
    torch.testing.assert_close(values, torch.sigmoid(raw[:, 1:]))


# ---------------------------------------------------------------------------- 3. baking


def test_baked_files_read_back_as_the_trained_model(scene, trained):
    run, baked_dir = trained
    _, model = load_run(run)
    baked = load_baked(baked_dir)
    description = json.loads((baked_dir / "baked.json").read_text())
    assert description["grid"]["resolution"] == 8 and description["planes"]["xz"]["resolution"] == 32
    assert description["mapping"]["kind"] == "box" and description["sampler"]["bounded"] is True
    lo, hi = description["mapping"]["aabb"][:3], description["mapping"]["aabb"][3:]
    assert description["sampler"]["unit"] == pytest.approx(max(b - a for a, b in zip(lo, hi)) / 2)  # the radius
    m = description["quantisation"]["max"][0]
    # The atlas layout: vertex (i, j, k) of the grid at pixel [j, i] of tile k, channels 4-7 in
    # grid_1.png; plane xz's vertex (v_x, v_z) at pixel [v_z, v_x].
    tiles, n = description["grid"]["tiles_per_row"], 9
    atlas = iio.imread(baked_dir / "grid_1.png")
    plane = iio.imread(baked_dir / "plane_xz_0.png")
    for i, j, k in [(0, 0, 0), (3, 5, 7), (8, 8, 8), (8, 0, 4)]:
        v = model.field.grid.vertex_values(torch.tensor([[i, j, k]]))
        expected = quantise(squash(v, m), m)[0, 4:8].tolist()
        r, c = divmod(k, tiles)
        assert atlas[r * n + j, c * n + i].tolist() == expected
    for vx, vz in [(0, 0), (31, 2), (32, 32)]:
        v = model.field.planes["xz"].vertex_values(torch.tensor([[vx, vz]]))
        assert plane[vz, vx].tolist() == quantise(squash(v, m), m)[0, :4].tolist()
    # The baked field equals the trained (quantisation-aware) field at any point, and renders of
    # the same samples match to 8-bit tolerance.
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(4000, 3, generator=g) * 2 - 1) * 1.5
    with torch.no_grad():
        diff = (baked.field.raw(x) - model.field.raw(x)).abs()
    step = 2 * m / 255
    assert float(diff.max()) <= 4 * step  # at worst one byte per grid (a rounding tie)
    assert float((diff > 1e-4).float().mean()) < 1e-3
    data = load_scene(scene, "train")
    batch = ray_batch(model, data, seed=4, n_rays=256)
    with torch.no_grad():
        a = render_samples(model, batch.rays, batch.samples, batch.background)
        b = render_samples(baked, batch.rays, batch.samples, batch.background)
    torch.testing.assert_close(b.rgb, a.rgb, rtol=0, atol=2e-3)
    torch.testing.assert_close(b.opacity, a.opacity, rtol=0, atol=2e-3)
    # The baked model samples on its own (no proposal networks): 256 bins, 127 more endpoints.
    samples = baked.sample(batch.rays)
    assert samples.per_ray == 256 + 128 - 1 and torch.isfinite(samples.t_starts).all()


def test_merf_trains_past_the_constant_image_and_bakes(scene, tmp_path, capsys):
    overrides = {"merf.optim.target_samples": 2048, "merf.optim.warmup_steps": 10, "merf.optim.lr_final": 1e-3,
                 "merf.proposal_samples": (64, 32), "merf.n_samples": 32, "merf.field.grid_resolution": 32,
                 "merf.field.plane_resolution": 128, "merf.field.plane_levels": 3}
    config = make_config(scene, "merf-small", overrides, steps=150)
    config.train.hsm.enabled = True
    run = tmp_path / "run"
    Trainer(config, run, progress=False, log_tensorboard=False).train()
    assert main(["export", "baked", str(run), "--out", str(tmp_path / "baked"), "--device", "cpu"]) == 0
    assert main(["eval", str(run), "--baked", str(tmp_path / "baked"), "--no-renders", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    trained = json.loads((run / "metrics.json").read_text())
    baked = json.loads((run / "metrics_baked.json").read_text())
    floor = constant_image_psnr(scene)
    print(f"merf + hsm: test PSNR {trained['psnr']:.2f} dB, baked {baked['psnr']:.2f} dB, "
          f"constant image {floor:.2f} dB")
    assert trained["psnr"] > floor + 3.0
    assert baked["psnr"] > trained["psnr"] - 1.0 and baked["model"] == "baked"
    assert f"PSNR {baked['psnr']:.2f} dB, trained {trained['psnr']:.2f} dB" in out


# ---------------------------------------------------------------------------- 4. HSM, b = B


def test_hsm_with_b_equal_B_matches_the_baseline_for_merf(scene):
    data = load_scene(scene, "train")
    config = apply_overrides(RunConfig(model="merf"), {**TINY, "merf.bounded": False, "merf.far": 4.0})
    torch.manual_seed(0)
    model = build_model(config, SceneInfo.from_data(data))
    assert model.config.bounded is False and model.field.to_unit.contraction is not None
    with torch.no_grad():
        for t in [*model.field.grid.tables, *(t for p in model.field.planes.values() for t in p.tables)]:
            t.uniform_(-1.0, 1.0)
        for layer in model.field.shader.mlp:  # a view-dependent residual that is not zero
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=0.3)
    gb, gh, result = baseline_and_hsm_grads(model, data)
    assert result.n_backward >= 0.9 * result.n_samples
    assert gb.keys() == gh.keys()
    for k in gb:
        torch.testing.assert_close(gh[k], gb[k], rtol=1e-4, atol=1e-7, msg=k)
    for prefix in ("field.grid.", "field.planes.xy.", "field.shader.", "proposals."):
        assert max(float(gb[k].abs().max()) for k in gb if k.startswith(prefix)) > 1e-6, prefix


# ---------------------------------------------------------------------------- 5. bad input


def test_export_baked_refuses_a_run_of_another_model(scene, tmp_path, capsys):
    run = tmp_path / "tiny"
    Trainer(make_config(scene, "tiny", {"tiny.width": 8, "tiny.sampler.n_coarse": 4}, steps=1), run,
            progress=False, log_tensorboard=False).train()
    assert main(["export", "baked", str(run), "--out", str(tmp_path / "baked"), "--device", "cpu"]) == 2
    assert main(["eval", str(run), "--baked", str(tmp_path), "--device", "cpu"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("radfield: error:") for line in lines), lines
    assert "merf" in lines[0] and "'tiny'" in lines[0] and str(run) in lines[0]
    assert "baked.json" in lines[1] and str(tmp_path) in lines[1]
    assert not (tmp_path / "baked").exists()


def test_bad_resolutions_are_one_line(scene, tmp_path, capsys):
    for setting, words in (("merf.field.plane_resolution=100", ["merf.field.plane_resolution", "power of two"]),
                           ("merf.field.grid_levels=9", ["merf.field.grid_levels", "2^8"])):
        rc = main(["train", str(scene), "--model", "merf", "--max-steps", "1", "--out", str(tmp_path / "run"),
                   "--no-progress", "--device", "cpu", "--set", setting])
        assert rc == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    with pytest.raises(RadfieldError, match="quant_range"):
        MerfField(BOX, MerfFieldConfig(quant_range=0.0), bounded=True)


def test_a_damaged_bake_is_one_line(trained, tmp_path):
    _, baked_dir = trained
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in baked_dir.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / "plane_yz_1.png").unlink()
    with pytest.raises(RadfieldError, match="plane_yz_1.png: missing"):
        load_baked(damaged)
    (damaged / "plane_yz_1.png").write_bytes((baked_dir / "plane_yz_1.png").read_bytes())
    d = json.loads((baked_dir / "baked.json").read_text())
    for section, key in (("grid", None), ("sampler", "unit")):
        broken = json.loads(json.dumps(d))
        del (broken[section] if key else broken)[key or section]
        (damaged / "baked.json").write_text(json.dumps(broken))
        with pytest.raises(RadfieldError, match="baked.json: malformed.*KeyError"):
            load_baked(damaged)
