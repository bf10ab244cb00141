"""The voxel-grid model (DVGO's recipe) against independent ground truth: trilinear interpolation
written out corner by corner in plain Python, total variation by brute-force loops over every
edge, growth against the field before it (at the new vertices, and everywhere for a field linear
in x), the optimiser rebuilt at growth and a resumed run equal to an uninterrupted one, HSM with
b = B against the baseline step (the total variation is an extra loss on the field), the time
axis of dynamic scenes, training past the best constant image, and bad options as one line."""

from __future__ import annotations

import copy
import itertools
import shutil

import pytest
import torch

from radfield.cameras import pixel_rays
from radfield.cli import main
from radfield.config import RunConfig, apply_overrides
from radfield.data import load_scene
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.evaluation.evaluate import evaluate_run
from radfield.fields.voxels import (VoxelField, VoxelFieldConfig, grid_shape, lookup, stage_at,
                                    stage_vertices, total_variation, trilinear)
from radfield.models import SceneInfo, build_model
from radfield.training.checkpoint import load_checkpoint
from radfield.training.trainer import Trainer
from conftest import make_config
from test_models import baseline_and_hsm_grads, constant_image_psnr

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
SMALL = {"voxels.resolution": 12, "voxels.upsample_steps": (3,), "voxels.features": 4, "voxels.hidden": 16,
         "voxels.occupancy.resolution": 16, "voxels.occupancy_from": 0, "voxels.tv_points": 256}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=20, n_val=1, n_test=3, size=32)


@pytest.fixture(scope="module")
def dynamic_scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("dyn"), n_train=4, n_val=0, n_test=1, size=12,
                      motion=(0.0, 0.0, -0.8))


def small_model(overrides=None, scene: SceneInfo | None = None, seed=0):
    torch.manual_seed(seed)
    config = apply_overrides(RunConfig(model="voxels"), {**SMALL, **(overrides or {})})
    return build_model(config, scene or SceneInfo(BOX, 4, True))


def randomise(model, seed=1, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    for grid in (model.field.density_grid, model.field.feature_grid):
        with torch.no_grad():
            grid.values.copy_(torch.randn(grid.values.shape, generator=g) * scale)


# ---------------------------------------------------------------------------- 1. interpolation


def hand_trilinear(values, u):
    """Plain-Python trilinear interpolation of ``values (C, X, Y, Z)`` at one point ``u``."""
    _, *shape = values.shape
    out = [0.0] * values.shape[0]
    p = [min(max(float(ua), 0.0), 1.0) * (s - 1) for ua, s in zip(u, shape)]
    i0 = [min(int(pa // 1), s - 2) for pa, s in zip(p, shape)]
    f = [pa - ia for pa, ia in zip(p, i0)]
    for b in itertools.product((0, 1), repeat=3):
        w = 1.0
        for a in range(3):
            w *= f[a] if b[a] else 1.0 - f[a]
        for c in range(values.shape[0]):
            out[c] += w * float(values[c, i0[0] + b[0], i0[1] + b[1], i0[2] + b[2]])
    return out


def test_trilinear_interpolation_by_hand():
    # The docstring's example: 2 x 2 x 2 vertices i + 2 j + 4 k, u = (0.25, 0.5, 1) -> 5.25.
    ijk = torch.stack(torch.meshgrid(*[torch.arange(2.0)] * 3, indexing="ij"))
    values = (ijk[0] + 2 * ijk[1] + 4 * ijk[2])[None]
    assert float(trilinear(values, torch.tensor([[0.25, 0.5, 1.0]]))) == pytest.approx(5.25, abs=1e-6)
    # A random grid of unequal sides at random points, the faces and a point outside (clamped).
    g = torch.Generator().manual_seed(0)
    values = torch.randn(3, 4, 5, 3, generator=g, dtype=torch.float64)
    u = torch.cat([torch.rand(20, 3, generator=g, dtype=torch.float64),
                   torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.5, 0.0], [1.7, -0.2, 0.4]],
                                dtype=torch.float64)])
    got = trilinear(values, u)
    expected = torch.tensor([hand_trilinear(values, point.tolist()) for point in u], dtype=torch.float64)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.shape == (len(u), 3)
    # The gradient with respect to the grid is the corner weights: vertex (1, 2, 0) at the point
    # p = (1.5, 2.25, 0.5) weighs 0.5 * 0.75 * 0.5.
    v = values.clone().requires_grad_()
    point = torch.tensor([[1.5 / 3, 2.25 / 4, 0.5 / 2]], dtype=torch.float64)
    trilinear(v, point)[0, 1].backward()
    assert float(v.grad[1, 1, 2, 0]) == pytest.approx(0.5 * 0.75 * 0.5)
    assert float(v.grad.sum()) == pytest.approx(1.0)
    assert trilinear(v, torch.zeros(0, 3, dtype=torch.float64)).shape == (0, 3)  # an empty batch


def test_time_axis_is_linear_between_slices():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(3, 2, 4, 4, 4, generator=g, dtype=torch.float64)  # 3 slices
    u = torch.rand(6, 3, generator=g, dtype=torch.float64)
    tau = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0, 1.3], dtype=torch.float64)
    got = lookup(values, u, tau)
    s = [trilinear(values[k], u) for k in range(3)]
    expected = torch.stack([s[0][0], 0.5 * s[0][1] + 0.5 * s[1][1], s[1][2], 0.5 * s[1][3] + 0.5 * s[2][3],
                            s[2][4], s[2][5]])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("times", ["spread", "one slice pair", "last pair"])
def test_time_sliced_lookup_and_its_gradients_match_slice_by_slice(times):
    """The batched lookup (one grid_sample over the slices in use) against each point's two
    slices interpolated on their own: values, and gradients to the grid and to the points."""
    g = torch.Generator().manual_seed(4)
    values = torch.randn(5, 3, 4, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    u = torch.rand(40, 3, generator=g, dtype=torch.float64).requires_grad_()
    tau = {"spread": torch.rand(40, generator=g, dtype=torch.float64),
           "one slice pair": torch.full((40,), 0.4, dtype=torch.float64),
           "last pair": 0.8 + 0.2 * torch.rand(40, generator=g, dtype=torch.float64)}[times]
    w = torch.randn(40, 3, generator=g, dtype=torch.float64)
    (lookup(values, u, tau) * w).sum().backward()
    got = values.grad.clone(), u.grad.clone()
    values.grad, u.grad = None, None
    s = tau * 4
    k0 = s.floor().clamp(max=3).long()
    f = (s - k0)[:, None]
    expected = torch.stack([(1 - f[i]) * trilinear(values[k0[i]], u[i:i + 1])[0]
                            + f[i] * trilinear(values[k0[i] + 1], u[i:i + 1])[0] for i in range(40)])
    (expected * w).sum().backward()
    torch.testing.assert_close(lookup(values, u, tau), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[0], values.grad, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1], u.grad, rtol=0, atol=1e-12)
    assert lookup(values, u[:0], tau[:0]).shape == (0, 3)


# ---------------------------------------------------------------------------- 2. total variation


def brute_tv(values):
    """``sum over axes of mean over all edges along the axis of the squared difference`` by loops
    (time is an axis when there are several slices)."""
    t, c, x, y, z = values.shape
    axes = ([(1, 0, 0, 0)] if t > 1 else []) + [(0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]
    total = 0.0
    for step in axes:
        acc, count = 0.0, 0
        for ti, xi, yi, zi in itertools.product(range(t), range(x), range(y), range(z)):
            tj, xj, yj, zj = ti + step[0], xi + step[1], yi + step[2], zi + step[3]
            if tj < t and xj < x and yj < y and zj < z:
                for ci in range(c):
                    acc += float(values[tj, ci, xj, yj, zj] - values[ti, ci, xi, yi, zi]) ** 2
                    count += 1
        total += acc / count
    return total


def brute_tv_cells(values, cells):
    """The same over the edges of the blocks at ``cells`` (t, i, j, k), block by block."""
    t_slices, c = values.shape[:2]
    span = (0, 1) if t_slices > 1 else (0,)
    axes = ([0] if t_slices > 1 else []) + [1, 2, 3]
    total = 0.0
    for axis in axes:
        acc, count = 0.0, 0
        for cell in cells.tolist():
            for corner in itertools.product(span, (0, 1), (0, 1), (0, 1)):
                if corner[axis] == 1:
                    continue
                a = [cell[k] + corner[k] for k in range(4)]
                b = list(a)
                b[axis] += 1
                for ci in range(c):
                    acc += float(values[b[0], ci, b[1], b[2], b[3]] - values[a[0], ci, a[1], a[2], a[3]]) ** 2
                    count += 1
        total += acc / count
    return total


@pytest.mark.parametrize("slices", [1, 2])
def test_total_variation_against_brute_force_loops(slices):
    g = torch.Generator().manual_seed(slices)
    values = torch.randn(slices, 2, 3, 4, 3, generator=g, dtype=torch.float64)
    assert float(total_variation(values)) == pytest.approx(brute_tv(values), rel=1e-12)
    cells = torch.tensor([[0, 0, 0, 0], [0, 1, 2, 1], [0, 1, 2, 1], [0, 0, 1, 0]])  # a block twice
    assert float(total_variation(values, cells)) == pytest.approx(brute_tv_cells(values, cells), rel=1e-12)
    # The docstring's example: i + 2 j + 4 k on 2 x 2 x 2 vertices -> 1 + 4 + 16.
    ijk = torch.stack(torch.meshgrid(*[torch.arange(2.0)] * 3, indexing="ij"))
    assert float(total_variation((ijk[0] + 2 * ijk[1] + 4 * ijk[2])[None, None])) == pytest.approx(21.0)


# ---------------------------------------------------------------------------- 3. growth


def test_stages_and_shapes():
    assert [round(stage_vertices(160, 4, k), 1) for k in range(5)] == [63.5, 80.0, 100.8, 127.0, 160.0]
    assert [stage_at(s, (100, 200)) for s in (0, 99, 100, 250)] == [0, 0, 1, 2]
    assert grid_shape(torch.tensor([0.0, 0, 0, 2, 1, 1]), 9) == (9, 5, 5)
    field = VoxelField(BOX, VoxelFieldConfig(resolution=40, upsample_steps=(10, 20, 30), time_slices=1))
    assert field.shape_at(0) == (20, 20, 20) and field.shape_at(29) == (32, 32, 32) and field.shape_at(30) == (40,) * 3


def test_growth_preserves_the_field():
    model = small_model()
    field = model.field
    assert field.density_grid.shape == (10, 10, 10)  # 12 * 2^(-1/3) = 9.5 -> 10 vertices
    randomise(model)
    old = field.density_grid.values.detach().clone()
    g = torch.Generator().manual_seed(2)
    x = (torch.rand(200, 3, generator=g) * 2 - 1) * 1.5
    d = torch.nn.functional.normalize(torch.randn(200, 3, generator=g), dim=-1)
    assert not field.grow(2) and field.grow(3) and not field.grow(4)
    assert field.density_grid.shape == (12, 12, 12) and field.feature_grid.shape == (12, 12, 12)
    # At the new vertices the grown grid holds the old field's values.
    idx = torch.stack(torch.meshgrid(*[torch.arange(12)] * 3, indexing="ij"), -1).reshape(-1, 3)
    u = idx.float() / 11
    torch.testing.assert_close(field.density_grid.values[0, 0].reshape(-1), trilinear(old[0], u)[:, 0],
                               rtol=0, atol=1e-5)
    # A field linear in x is the same everywhere after growth (trilinear interpolation reproduces it).
    linear = small_model(seed=3)
    before_shape = linear.field.density_grid.shape
    with torch.no_grad():
        for grid in (linear.field.density_grid, linear.field.feature_grid):
            ijk = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, n) for n in before_shape], indexing="ij"))
            for c in range(grid.values.shape[1]):
                grid.values[0, c] = (c + 1) * ijk[0] - 2 * ijk[1] + 0.5 * c * ijk[2] + 0.1 * c
    before = linear.field.raw(x, d)
    assert linear.field.grow(3)
    torch.testing.assert_close(linear.field.raw(x, d), before, rtol=1e-5, atol=1e-5)


def test_growth_rebuilds_the_optimiser_and_a_resumed_run_is_exact(scene, tmp_path):
    overrides = {**SMALL, "voxels.optim.target_samples": 1024}

    def trainer(run, resume=False):
        return Trainer(make_config(scene, "voxels", overrides, steps=6), run, progress=False,
                       log_tensorboard=False, resume=resume)

    full = trainer(tmp_path / "full")
    full.train(stop=lambda step: step >= 3)  # steps 0, 1, 2 at the first stage
    grids = [full.model.field.density_grid.values, full.model.field.feature_grid.values]
    mlp = full.model.field.color_mlp[0].weight
    assert all(full.optimizer.state[p]["step"] == 3 for p in grids + [mlp])
    full.train_step()  # step 3 grows the grids first
    full.state.step += 1
    new = [full.model.field.density_grid.values, full.model.field.feature_grid.values]
    assert new[0].shape == (1, 1, 12, 12, 12) and all(n is not o for n, o in zip(new, grids))
    held = [p for group in full.optimizer.param_groups for p in group["params"]]
    assert all(any(p is h for h in held) for p in new) and not any(p is h for p in grids for h in held)
    assert all(full.optimizer.state[p]["step"] == 1 for p in new)  # afresh
    assert full.optimizer.state[mlp]["step"] == 4  # kept
    full.train()

    half = tmp_path / "half"
    first = trainer(half)
    first.train(stop=lambda step: step >= 4)
    assert load_checkpoint(half)["model"]["field.density_grid.values"].shape == (1, 1, 12, 12, 12)
    shutil.copytree(half, tmp_path / "half2")
    resumed = trainer(half, resume=True)
    assert resumed.model.field.density_grid.shape == (12, 12, 12)
    resumed.train()
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=1e-6, msg=key)
    a, b = full.optimizer.state_dict(), resumed.optimizer.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for name, value in a["state"][k].items():
            torch.testing.assert_close(b["state"][k][name], value, rtol=0, atol=1e-6)
    # Resuming before the growth step grows on the way.
    early = trainer(tmp_path / "early")
    early.train(stop=lambda step: step >= 2)
    again = trainer(tmp_path / "early", resume=True)
    assert again.model.field.density_grid.shape == (10, 10, 10)
    again.train()
    torch.testing.assert_close(again.model.field.density_grid.values, full.model.field.density_grid.values,
                               rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- 4. HSM, b = B


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_hsm_with_b_equal_B_matches_the_baseline(scene, dynamic_scene, dynamic):
    data = load_scene(dynamic_scene if dynamic else scene, "train")
    model = small_model({"voxels.tv_density": 0.5, "voxels.tv_features": 0.5}, SceneInfo.from_data(data))
    assert model.field.time_slices == (8 if dynamic else 1)
    randomise(model, scale=0.5)
    gb, gh, result = baseline_and_hsm_grads(model, data)
    assert result.n_samples > 100 and "field.density_grid.values" in gb and gb.keys() == gh.keys()
    for k in gb:
        torch.testing.assert_close(gh[k], gb[k], rtol=1e-4, atol=1e-8, msg=k)
    # The total variation is in those gradients.
    plain = copy.deepcopy(model)
    plain.config = copy.copy(plain.config)
    plain.config.tv_density = plain.config.tv_features = 0.0
    g0, _, _ = baseline_and_hsm_grads(plain, data)
    assert float((gb["field.density_grid.values"] - g0["field.density_grid.values"]).abs().max()) > 1e-6


# ---------------------------------------------------------------------------- 5. dynamic scenes


def test_dynamic_grids_follow_the_rays_times(dynamic_scene, scene):
    data = load_scene(dynamic_scene, "train")
    model = small_model(scene=SceneInfo.from_data(data))
    randomise(model)
    field = model.field
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(64, 3, generator=g) * 2 - 1) * 1.4
    d = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    t0, t1 = torch.zeros(64), torch.ones(64)
    assert not torch.allclose(field.density_at(x, t0), field.density_at(x, t1))
    torch.testing.assert_close(field.raw(x, d, torch.full((64,), 0.5))[:, 0],
                               0.5 * field.raw(x, d, torch.full((64,), 3 / 7))[:, 0]
                               + 0.5 * field.raw(x, d, torch.full((64,), 4 / 7))[:, 0], rtol=1e-5, atol=1e-5)
    # The occupancy grid's density is the maximum over time: over the slices.
    slices = torch.stack([field.density_at(x, torch.full((64,), k / 7)) for k in range(8)])
    torch.testing.assert_close(field.density(x), slices.amax(0))
    assert (field.density(x) >= field.density_at(x, torch.rand(64, generator=g)) - 1e-6).all()
    # The rays' times reach the field.
    rays = pixel_rays(data.cameras, torch.tensor([0, 3]), torch.tensor([6, 6]), torch.tensor([6, 6]))
    samples = model.sample(rays, training=False, early_stop=False)
    inputs = model.field_inputs(rays, samples)
    assert len(inputs) == 3
    torch.testing.assert_close(inputs[2], rays.get("times")[samples.ray_indices])
    # Several slices without frame times: one line naming the option.
    with pytest.raises(RadfieldError, match="voxels.time_slices=4"):
        build_model(apply_overrides(RunConfig(model="voxels"), {"voxels.time_slices": 4}),
                    SceneInfo.from_data(load_scene(scene, "train")))


# ---------------------------------------------------------------------------- 6. training


def test_voxels_train_past_the_constant_image(scene, tmp_path):
    overrides = {"voxels.resolution": 48, "voxels.upsample_steps": (50, 100, 150), "voxels.occupancy_from": 50,
                 "voxels.optim.target_samples": 2048}
    config = make_config(scene, "voxels-small", overrides, steps=200)
    Trainer(config, tmp_path / "run", progress=False, log_tensorboard=False).train()
    metrics = evaluate_run(tmp_path / "run", "test", save_renders=False, progress=False)
    floor = constant_image_psnr(scene)
    print(f"voxels: test PSNR {metrics['psnr']:.2f} dB, constant image {floor:.2f} dB")
    assert metrics["psnr"] > floor + 3.0


def test_cli_trains_voxels_with_hsm_on_a_dynamic_scene(dynamic_scene, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", str(dynamic_scene), "--model", "voxels", "--hsm", "--max-steps", "4", "--out", str(out),
               "--no-progress", "--device", "cpu", "--set", "voxels.resolution=16",
               "--set", "voxels.upsample_steps=[2]", "--set", "voxels.occupancy_from=0"])
    assert rc == 0
    ck = load_checkpoint(out)
    assert ck["model"]["field.density_grid.values"].shape == (8, 1, 16, 16, 16)  # grown, 8 time slices


@pytest.mark.parametrize("setting,words", [
    ("voxels.resolution=1", ["voxels.resolution", "2"]),
    ("voxels.upsample_steps=[500,100]", ["voxels.upsample_steps", "increasing"]),
    ("voxels.alpha_init=1.5", ["voxels.alpha_init"]),
], ids=["resolution", "steps", "alpha"])
def test_bad_voxel_options_are_one_line(scene, tmp_path, capsys, setting, words):
    rc = main(["train", str(scene), "--model", "voxels", "--max-steps", "1", "--out", str(tmp_path / "run"),
               "--no-progress", "--device", "cpu", "--set", setting])
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radfield: error:"), lines
    assert all(w in lines[0] for w in words), lines[0]
