"""The model zoo (ngp, nerfacto, nerf, mipnerf, tiny, nerfae) end to end and piece by piece.

Ground truth used here, independent of the code under test:

* training: every model must beat, by 3 dB, the PSNR of the best constant image (each test
  image's own mean colour, composited over white), which a model that learned no geometry
  cannot reach;
* HSM with ``b = B`` against the baseline step on the same batch (hierarchical levels included);
* volume rendering recomputed densely with ``cumprod`` (not the library's packed cumsum), the
  distortion loss by brute force over all sample pairs, ``|z|^2`` from ``field.latent``;
* hand-computed opaque-last weights, frustum variances ``(t R)^2 / 4`` of a thin cone, the
  log-linear learning rate written out by hand, patch pixels recovered by projecting the rays.

The models are shrunk (widths, samples, steps) so that each trains in a few seconds on 2 busy
CPU cores; the whole file takes about 90 s.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from radfield.cameras import Rays, pixel_rays, project
from radfield.cli import main
from radfield.config import HSMConfig, RunConfig
from radfield.data import load_scene
from radfield.data.multiscale import make_multiscale
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.evaluation.evaluate import evaluate_run
from radfield.fields import hashgrid
from radfield.evaluation.metrics import psnr
from radfield.rendering.images import render_image
from radfield.losses import l2
from radfield.losses.interlevel import interlevel_loss
from radfield.models import SceneInfo, build_model
from radfield.models.nerf import MipNeRFModel
from radfield.rendering.backgrounds import LearnedBackground
from radfield.rendering.volume import render, render_weights
from radfield.samplers.frustums import conical_frustum_to_gaussian, cylinder_to_gaussian
from radfield.samplers.samples import Samples, packed_from_bins
from radfield.training.schedules import log_linear_lr_at
from radfield.training.steps import (HardSampleMiner, StepBatch, baseline_step, loss_from_raw,
                                     photometric_objective)
from radfield.training.checkpoint import load_run
from radfield.training.trainer import Trainer
from conftest import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN, N_VAL, N_TEST, SIZE = 20, 1, 3, 32
WHITE = torch.ones(3)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=N_TRAIN, n_val=N_VAL,
                      n_test=N_TEST, size=SIZE)


@pytest.fixture(scope="module")
def train_data(scene):
    return load_scene(scene, "train")


def make_trainer(config: RunConfig, run_dir) -> Trainer:
    return Trainer(config, run_dir, progress=False, log_tensorboard=False)


# ---------------------------------------------------------------------------- references


def dense_render(sigma, rgb, t_starts, t_ends, n_rays, background=None, opaque_last=False):
    """Reference volume rendering of ``per_ray`` samples on every ray: ``alpha = 1 -
    exp(-sigma delta)``, ``T_i = prod_{k<i} (1 - alpha_k)`` (cumprod), ``w = T alpha``.
    Returns ``(rgb (n_rays, 3), opacity (n_rays,), weights (n_rays, per_ray))``."""
    sigma, delta = sigma.view(n_rays, -1), (t_ends - t_starts).view(n_rays, -1)
    alpha = 1 - torch.exp(-sigma * delta)
    if opaque_last:
        alpha = torch.cat([alpha[:, :-1], torch.ones_like(alpha[:, -1:])], dim=-1)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=-1), dim=-1)
    w = trans * alpha
    colour = (w[..., None] * rgb.view(n_rays, -1, 3)).sum(1)
    opacity = w.sum(1)
    if background is not None:
        colour = colour + (1 - opacity)[:, None] * background
    return colour, opacity, w


def brute_force_distortion(w, starts, ends):
    """``mean_rays [sum_{i,j} w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 delta_i]``, all pairs."""
    m = (starts + ends) / 2
    pairs = (w[:, :, None] * w[:, None, :] * (m[:, :, None] - m[:, None, :]).abs()).sum((1, 2))
    return (pairs + (w ** 2 * (ends - starts)).sum(1) / 3).mean()


def constant_image_psnr(scene) -> float:
    """PSNR of the best constant predictor: each test image's own mean colour (the L2-optimal
    constant for that image), composited over white; the best over the test images."""
    test = load_scene(scene, "test")
    imgs = [test.composited(i, WHITE) for i in range(len(test))]
    return max(psnr(img.mean(dim=(0, 1)).expand_as(img), img) for img in imgs)


def grads_of(module) -> dict:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def ray_batch(model, data, seed: int, n_rays: int = 32) -> StepBatch:
    """Random training pixels of ``data``, composited over a random background, sampled by the
    model (training mode, a generator seeded with ``seed``): the same seed gives the same batch
    for the same parameters."""
    g = torch.Generator().manual_seed(seed)
    cams = data.cameras
    cam = torch.randint(0, len(cams), (n_rays,), generator=g)
    col = torch.randint(0, cams.width, (n_rays,), generator=g)
    row = torch.randint(0, cams.height, (n_rays,), generator=g)
    rays = pixel_rays(cams, cam, col, row)
    rgba = data.images[cam, row, col].float() / 255
    bg = torch.rand(n_rays, 3, generator=g)
    target = rgba[:, :3] * rgba[:, 3:] + bg * (1 - rgba[:, 3:])
    samples = model.sample(rays, training=True, generator=g)
    return StepBatch(rays, samples, target, bg)


def field_inputs(model, batch: StepBatch) -> tuple:
    return model.field_inputs(batch.rays, batch.samples)


def raw_of(model, batch: StepBatch):
    return model.field.raw(*field_inputs(model, batch))


def build(scene, train_data, preset, overrides, seed=0, box_frame=True):
    """``box_frame``: the scene without ``camera_radius``, so the proposal pipeline measures in
    the box (unit 1.5) as these tests' magnitudes were set for; its camera frame (unit 4 on the
    built-in scene) has fields 4x thinner there and is tested on its own."""
    config = make_config(scene, preset, overrides)
    torch.manual_seed(seed)
    info = SceneInfo.from_data(train_data)
    if box_frame:
        info.meta.pop("camera_radius", None)
    model = build_model(config, info)
    if config.model == "nerfacto":
        # Hash tables start near zero, so at initialisation the main field's weights follow the
        # proposals' and the interlevel loss is 0; rough tables make it (and its gradient) live.
        for table in model.field.grid.tables:
            torch.nn.init.uniform_(table, -1.0, 1.0)
    return model


# ---------------------------------------------------------------------------- 1. training

# Each model shrunk to train in a few seconds (measured on 2 busy cores, train + eval):
# fewer samples, narrower MLPs, a short warm-up and a higher learning rate for the short run.
def optim(model: str, target_samples: int = 2048, **values) -> dict:
    """Overrides of ``model``'s training recipe (``<model>.optim.<name>``)."""
    return {f"{model}.optim.{k}": v for k, v in {"target_samples": target_samples, **values}.items()}


TRAIN_RUNS = {
    "ngp-small": (100, {**optim("ngp", warmup_steps=10), "ngp.occupancy.resolution": 32}),
    # RGBA data: nerfacto samples inside the scene box (nerfacto.bounded is resolved to True).
    "nerfacto-small": (150, {**optim("nerfacto", warmup_steps=10, lr_final=1e-3),
                             "nerfacto.proposal_samples": (64, 32), "nerfacto.n_samples": 32}),
    "nerf-small": (250, {**optim("nerf", lr=5e-3, lr_final=5e-4), "nerf.width": 64,
                         "nerf.sampler.n_coarse": 16, "nerf.sampler.n_fine": 32}),
    "mipnerf-small": (200, {**optim("mipnerf", warmup_steps=20, lr=1e-2, lr_final=1e-3),
                            "mipnerf.width": 64, "mipnerf.sampler.n_coarse": 24,
                            "mipnerf.sampler.n_fine": 24}),
    "tiny": (200, {**optim("tiny", lr=5e-3, lr_final=5e-4), "tiny.sampler.n_coarse": 32}),
    "nerfae": (200, {**optim("nerfae", lr=5e-3, lr_final=5e-4), "nerfae.width": 64,
                     "nerfae.sampler.n_coarse": 16, "nerfae.sampler.n_fine": 16}),
}


@pytest.mark.parametrize("preset,hsm", [("ngp-small", False), ("nerfacto-small", False),
                                        ("nerfacto-small", True), ("nerf-small", False),
                                        ("nerf-small", True), ("mipnerf-small", False),
                                        ("tiny", False), ("nerfae", False)],
                         ids=["ngp", "nerfacto", "nerfacto-hsm", "nerf", "nerf-hsm", "mipnerf",
                              "tiny", "nerfae"])
def test_every_model_trains_past_the_constant_image(scene, tmp_path, preset, hsm):
    steps, overrides = TRAIN_RUNS[preset]
    config = make_config(scene, preset, overrides, steps)
    config.train.hsm.enabled = hsm
    trainer = make_trainer(config, tmp_path / "run")
    kept = []
    trainer.train(on_step=lambda tr, result, dt: kept.append((result.n_backward, result.n_samples)))
    assert trainer.state.step == steps and len(kept) == steps
    if hsm:  # samples were mined: at most max_fraction of them back-propagated, every step
        assert all(b <= config.train.hsm.max_fraction * n + 1 for b, n in kept)
        assert all(b > 0 for b, _ in kept)
    metrics = evaluate_run(tmp_path / "run", "test", save_renders=False, progress=False)
    floor = constant_image_psnr(scene)
    print(f"{preset}{' + hsm' if hsm else ''}: test PSNR {metrics['psnr']:.2f} dB, "
          f"constant image {floor:.2f} dB")
    assert metrics["n_images"] == N_TEST
    assert metrics["psnr"] > floor + 3.0


# ---------------------------------------------------------------------------- 2-3. HSM, b = B

OBJECTIVE = photometric_objective(l2, distortion_weight=0.01)
FULL = HSMConfig(enabled=True, min_fraction=1.0, max_fraction=1.0)
HIER = {
    "nerf": ("nerf-small", {"nerf.width": 32, "nerf.density_activation": "softplus",
                            "nerf.sampler.n_coarse": 8, "nerf.sampler.n_fine": 16}),
    "nerfacto": ("nerfacto-small", {"nerfacto.bounded": False, "nerfacto.far": 4.0, "nerfacto.grid.log2_table_size": 12,
                                    "nerfacto.grid.max_resolution": 128,
                                    "nerfacto.proposal_samples": (16, 12), "nerfacto.n_samples": 8}),
    "nerfae": ("nerfae", {"nerfae.width": 32, "nerfae.latent": 8, "nerfae.sampler.n_coarse": 8,
                          "nerfae.sampler.n_fine": 8, "nerfae.latent_penalty": 0.5}),
}


def baseline_and_hsm_grads(model, data, seed=3):
    """Gradients of every model parameter after the baseline step and after the HSM step with
    ``b = B``, each on its own copy of the model and the same batch."""
    twin = copy.deepcopy(model)
    batch = ray_batch(model, data, seed)
    base = baseline_step(model, batch, OBJECTIVE)
    result = HardSampleMiner(FULL).step(twin, ray_batch(twin, data, seed), OBJECTIVE)
    assert result.loss == pytest.approx(base.loss, rel=1e-6)
    assert result.n_samples == base.n_samples == len(batch.samples)
    return grads_of(model), grads_of(twin), result


def test_ngp_reuses_the_early_termination_pass_encodings_with_the_same_gradients(scene, train_data, monkeypatch):
    """``ngp``'s samples carry the hash encodings of the no-grad early-termination pass, which
    the training step reuses: the loss and every gradient equal a step that reads the grid again
    (the same batch with ``features`` dropped), and the reused rows are the grid's encoding."""
    model = build(scene, train_data, "ngp", {})
    for table in model.field.grid.tables:
        torch.nn.init.uniform_(table, -1.0, 1.0)
    twin = copy.deepcopy(model)
    batch = ray_batch(model, train_data, seed=4, n_rays=64)
    features = batch.samples.features
    assert features is not None and features.shape == (len(batch.samples), model.field.grid.output_dim)
    x = model.field.normalise(batch.samples.positions(batch.rays))
    torch.testing.assert_close(features, model.field.grid.encode(x).detach(), atol=0, rtol=0)
    plain = dataclasses.replace(batch, samples=dataclasses.replace(batch.samples, features=None))
    calls = []
    kernel = hashgrid.hash_grid_kernel
    monkeypatch.setattr(hashgrid, "hash_grid_kernel",
                        lambda *a, **k: calls.append(k.get("precomputed")) or kernel(*a, **k))
    reused, fresh = baseline_step(model, batch, OBJECTIVE), baseline_step(twin, plain, OBJECTIVE)
    if hashgrid.kernel_available():  # the reusing step read no table; the other read them
        assert [c is None for c in calls] == [False, True]
    assert reused.loss == pytest.approx(fresh.loss, rel=1e-6)
    g_reused, g_fresh = grads_of(model), grads_of(twin)
    assert g_reused.keys() == g_fresh.keys() and any("grid" in k for k in g_reused)
    for k in g_fresh:
        torch.testing.assert_close(g_reused[k], g_fresh[k], rtol=1e-5, atol=1e-8, msg=k)
    assert max(float(g.abs().max()) for k, g in g_fresh.items() if "grid" in k) > 1e-6


@pytest.mark.parametrize("name", ["nerf", "nerfacto"])
def test_hsm_with_b_equal_B_matches_baseline_for_hierarchical_models(scene, train_data, name):
    preset, overrides = HIER[name]
    model = build(scene, train_data, preset, overrides)
    gb, gh, result = baseline_and_hsm_grads(model, train_data)
    assert result.n_backward >= 0.9 * result.n_samples  # zero-hardness samples carry no gradient
    assert gb.keys() == gh.keys()
    earlier = ("coarse_field." if name == "nerf" else "proposals.")
    assert any(k.startswith("field.") for k in gb) and any(k.startswith(earlier) for k in gb)
    for k in gb:
        torch.testing.assert_close(gh[k], gb[k], rtol=1e-4, atol=1e-7, msg=k)
    # The comparisons are not between zeros: fine and earlier-level networks both learn.
    for prefix in ("field.", earlier):
        assert max(float(gb[k].abs().max()) for k in gb if k.startswith(prefix)) > 1e-5, prefix


def test_nerfacto_measures_unbounded_scenes_in_the_cameras_radius(scene, train_data):
    """Built-in scene: box [-1.5, 1.5]^3, cameras 4 from its centre. The camera frame: a
    contraction cube of half-size 4, near/far 0.05 / 1000 times 4, densities per 4 units
    (sigma = exp(raw) / 4); the box frame keeps 1.5 and exp(raw)."""
    preset, overrides = HIER["nerfacto"]
    model = build(scene, train_data, preset, {**overrides, "nerfacto.far": 1000.0}, box_frame=False)
    assert model.frame.unit == pytest.approx(4.0, abs=1e-5) and model.frame.bounds_unit == pytest.approx(4.0, abs=1e-5)
    torch.testing.assert_close(model.frame.box, torch.tensor([-4.0, -4, -4, 4, 4, 4]), rtol=0, atol=1e-5)
    assert float(model.field.contraction.radius) == pytest.approx(4.0, abs=1e-5)
    assert all(float(p.contraction.radius) == pytest.approx(4.0, abs=1e-5) for p in model.proposals)
    rays = Rays(torch.zeros(2, 3), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), torch.ones(2))
    near, far = model.near_far(rays)
    torch.testing.assert_close(near, torch.full((2,), 0.2), rtol=1e-5, atol=0)
    torch.testing.assert_close(far, torch.full((2,), 4000.0), rtol=1e-5, atol=0)
    raw = torch.tensor([[0.0, 0, 0, 0], [math.log(8.0), 0, 0, 0]])
    torch.testing.assert_close(model.field.activate(raw)[0], torch.tensor([0.25, 2.0]), rtol=1e-5, atol=0)
    boxed = build(scene, train_data, preset, overrides)
    assert boxed.frame.unit == 1.0 and boxed.frame.bounds_unit == pytest.approx(1.5)
    assert float(boxed.field.contraction.radius) == pytest.approx(1.5)
    torch.testing.assert_close(boxed.field.activate(raw)[0], torch.tensor([1.0, 8.0]), rtol=1e-5, atol=0)


def test_nerfacto_diffuse_colour_ignores_the_view_direction(scene, train_data):
    """``nerfacto.view_dependent=False``: the colour at a point is the same from every direction
    (with it on, a trained-looking random colour MLP varies with direction)."""
    preset, overrides = HIER["nerfacto"]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, generator=g) - 0.5
    d1 = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    d2 = torch.nn.functional.normalize(torch.randn(64, 3, generator=g), dim=-1)
    for view_dependent in (True, False):
        field = build(scene, train_data, preset, {**overrides, "nerfacto.view_dependent": view_dependent}).field
        with torch.no_grad():
            for p in field.color_mlp.parameters():
                p.normal_(0.0, 0.5, generator=g)
            codes = field.appearance_code(torch.zeros(64, dtype=torch.long))
            a, b = field.raw(x, d1, codes), field.raw(x, d2, codes)
        assert torch.equal(a[:, 0], b[:, 0])  # density never depends on direction
        assert torch.equal(a, b) != view_dependent, view_dependent


def test_proposal_weights_anneal_from_uniform_to_the_proposals(scene, train_data):
    """nerfstudio's annealing, 1000 steps, slope 10: exponent 0 at step 0, 10 x / (9 x + 1) =
    5 / 5.5 at step 500, 1 from step 1000 on. At exponent 0 the resampled bins do not depend on
    the proposal networks (re-initialising them changes nothing); at 1 they do."""
    preset, overrides = HIER["nerfacto"]
    model = build(scene, train_data, preset, {**overrides, "nerfacto.proposal_anneal_steps": 1000})
    for step, expected in ((0, 0.0), (500, 5 / 5.5), (1000, 1.0), (4000, 1.0)):
        model.update(step)
        assert model.anneal == pytest.approx(expected, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    rays = Rays(torch.randn(16, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 3.0]),
                torch.nn.functional.normalize(torch.randn(16, 3, generator=g) * 0.2 + torch.tensor([0.0, 0, -1]), dim=-1),
                torch.ones(16))

    def bins_with_fresh_proposals(step: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        for proposal in model.proposals:
            for table in proposal.grid.tables:
                torch.nn.init.uniform_(table, -1.0, 1.0)
        model.update(step)
        with torch.no_grad():
            return model.sample(rays, training=False).t_starts

    assert torch.equal(bins_with_fresh_proposals(0, 1), bins_with_fresh_proposals(0, 2))
    assert not torch.equal(bins_with_fresh_proposals(1000, 1), bins_with_fresh_proposals(1000, 2))


def test_nerfae_latent_penalty_is_in_the_hsm_gradient(scene, train_data):
    preset, overrides = HIER["nerfae"]
    model = build(scene, train_data, preset, overrides)
    field = model.field
    batch = ray_batch(model, train_data, seed=5)
    # Its value: latent_penalty * mean |z|^2 over the batch's (final-level) samples.
    with torch.no_grad():
        z = field.latent(field_inputs(model, batch)[0])
        loss, out = loss_from_raw(model, raw_of(model, batch), batch, OBJECTIVE)
        objective = OBJECTIVE(out, batch)
    penalty = 0.5 * (z * z).sum(-1).mean()
    assert float(penalty) > 1e-3
    assert float(loss - objective) == pytest.approx(float(penalty), rel=1e-5)

    # With b = B, HSM's gradients equal the baseline's, penalty included ...
    penalised = copy.deepcopy(model)
    gb, gh, _ = baseline_and_hsm_grads(penalised, train_data)
    for k in gb:
        torch.testing.assert_close(gh[k], gb[k], rtol=1e-4, atol=1e-7, msg=k)
    # ... and the penalty does move them (so the comparison above could fail without it).
    unpenalised = copy.deepcopy(model)
    unpenalised.latent_penalty = 0.0
    g0, _, _ = baseline_and_hsm_grads(unpenalised, train_data)
    encoder = [k for k in gb if k.startswith("field.encoder")]
    assert max(float((gb[k] - g0[k]).abs().max() / g0[k].abs().max()) for k in encoder) > 1e-2


# ---------------------------------------------------------------------------- 4-5. level losses


def test_coarse_level_loss_is_photometric_on_the_composited_coarse_render(scene, train_data):
    model = build(scene, train_data, "nerf-small",
                  {"nerf.width": 32, "nerf.sampler.n_coarse": 8, "nerf.sampler.n_fine": 16,
                   "nerf.sampler.coarse_weight": 0.3})
    batch = ray_batch(model, train_data, seed=7)
    (level,) = batch.samples.levels
    n = batch.samples.n_rays
    with torch.no_grad():
        loss, _ = loss_from_raw(model, raw_of(model, batch), batch, photometric_objective(l2))
        # Fine level rendered densely from the fine network.
        s = batch.samples
        sigma, rgb = model.field.activate(raw_of(model, batch))
        fine, _, _ = dense_render(sigma, rgb, s.t_starts, s.t_ends, n, batch.background)
        # Coarse level: the coarse network on the level's bins, rendered without background.
        coarse = packed_from_bins(level.s)
        c_sigma, c_rgb = model.coarse_field.activate(
            model.coarse_field.raw(*model.field_inputs(batch.rays, coarse)))
        c_colour, c_opacity, _ = dense_render(c_sigma, c_rgb, coarse.t_starts, coarse.t_ends, n)
    torch.testing.assert_close(level.rgb.detach(), c_colour, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(level.opacity.detach(), c_opacity, rtol=1e-5, atol=1e-6)
    assert level.weight == 0.3
    c_composited = c_colour + (1 - c_opacity)[:, None] * batch.background
    expected = ((fine - batch.target) ** 2).mean() + 0.3 * ((c_composited - batch.target) ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_nerfacto_interlevel_term_and_where_its_gradient_goes(scene, train_data):
    preset, overrides = HIER["nerfacto"]
    model = build(scene, train_data, preset, overrides)
    dist_w = 0.002  # the nerfacto preset's distortion weight
    objective = photometric_objective(l2, distortion_weight=dist_w)
    n = 32

    # The value: objective - photometric - distortion = sum of the proposal levels' interlevel.
    batch = ray_batch(model, train_data, seed=11, n_rays=n)
    s = batch.samples
    with torch.no_grad():
        loss, out = loss_from_raw(model, raw_of(model, batch), batch, objective)
        sigma, rgb = model.field.activate(raw_of(model, batch))
        colour, _, w = dense_render(sigma, rgb, s.t_starts, s.t_ends, n, batch.background)
    torch.testing.assert_close(out.weights.view(n, -1), w, rtol=1e-4, atol=1e-6)
    photometric = ((colour - batch.target) ** 2).mean()
    distortion = brute_force_distortion(w, s.s_starts.view(n, -1), s.s_ends.view(n, -1))
    final_s = torch.cat([s.s_starts.view(n, -1), s.s_ends.view(n, -1)[:, -1:]], dim=-1)
    assert len(s.levels) == 2
    with torch.no_grad():
        interlevel = sum(interlevel_loss(final_s, w, lv.s, lv.weights) for lv in s.levels)
    rest = float(loss - photometric - dist_w * distortion)
    print(f"interlevel {float(interlevel):.4e}, objective - photometric - distortion {rest:.4e}")
    # float32 sums of terms ~0.1: a tolerance of 1e-7, against an interlevel term of ~3e-5.
    assert float(interlevel) > 1e-5
    assert rest == pytest.approx(float(interlevel), rel=0, abs=1e-7)

    # The gradients: with the interlevel weight at 0 the main field's gradients are unchanged
    # and the proposal networks get none; with weight 1 theirs are the interlevel term's alone.
    def step(interlevel_weight):
        m = copy.deepcopy(model)
        m.config.interlevel_weight = interlevel_weight
        baseline_step(m, ray_batch(m, train_data, seed=13, n_rays=n), objective)
        return grads_of(m)

    g1, g0 = step(1.0), step(0.0)
    main = [k for k in g1 if k.startswith("field.")]
    assert main and all(k in g0 for k in main)
    for k in main:
        torch.testing.assert_close(g0[k], g1[k], rtol=1e-5, atol=1e-9, msg=k)
    assert not any(k.startswith("proposals.") and g0[k].abs().max() > 0 for k in g0)
    only = copy.deepcopy(model)
    b = ray_batch(only, train_data, seed=13, n_rays=n)
    with torch.no_grad():
        _, out = loss_from_raw(only, raw_of(only, b), b, objective)
    fs = torch.cat([b.samples.s_starts.view(n, -1), b.samples.s_ends.view(n, -1)[:, -1:]], dim=-1)
    sum(interlevel_loss(fs, out.weights.view(n, -1), lv.s, lv.weights) for lv in b.samples.levels).backward()
    g_inter = grads_of(only)
    proposals = [k for k in g1 if k.startswith("proposals.")]
    assert proposals and max(float(g1[k].abs().max()) for k in proposals) > 1e-6
    for k in proposals:
        torch.testing.assert_close(g1[k], g_inter[k], rtol=1e-4, atol=1e-9, msg=k)


# ---------------------------------------------------------------------------- 6. backgrounds


def test_opaque_last_weights_by_hand():
    # Ray 0: sigma = ln 2 on [0, 1] -> alpha 0.5; the last sample is opaque -> w = (0.5, 0.5).
    # Ray 1: sigma = ln 4 on [1, 2] -> alpha 0.75, w = (0.75, 0.25), whatever the last sigma.
    sigma = torch.tensor([math.log(2), math.log(2), math.log(4), 0.0])
    t0 = torch.tensor([0.0, 1.0, 1.0, 2.0])
    t1 = torch.tensor([1.0, 2.0, 2.0, 3.0])
    ri = torch.tensor([0, 0, 1, 1])
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]])
    bg = torch.tensor([0.3, 0.6, 0.9])
    w, _, _ = render_weights(sigma, t0, t1, ri, 2, opaque_last=True)
    torch.testing.assert_close(w, torch.tensor([0.5, 0.5, 0.75, 0.25]))
    out = render(sigma, rgb, t0, t1, ri, 2, bg, opaque_last=True)
    torch.testing.assert_close(out.rgb, torch.tensor([[0.5, 0.5, 0.0], [0.25, 0.25, 1.0]]))
    torch.testing.assert_close(out.opacity, torch.ones(2))
    # Without it the background shows through: ray 0 opacity 0.75, colour + 0.25 bg.
    plain = render(sigma, rgb, t0, t1, ri, 2, bg)
    torch.testing.assert_close(plain.rgb[0], torch.tensor([0.5, 0.25, 0.0]) + 0.25 * bg)


TINY = {"tiny.width": 16, "tiny.sampler.n_coarse": 16, "tiny.optim.target_samples": 1024}


@pytest.mark.parametrize("hsm", [False, True], ids=["baseline", "hsm"])
def test_learned_background_trains(scene, tmp_path, hsm):
    config = make_config(scene, "tiny", {**TINY, "train.background": "learned"})
    config.train.hsm.enabled = hsm
    trainer = make_trainer(config, tmp_path / "run")
    assert isinstance(trainer.model.background, LearnedBackground)
    before = {k: v.clone() for k, v in trainer.model.background.state_dict().items()}
    trainer.train_step()
    grads = [p.grad for p in trainer.model.background.parameters()]
    assert all(g is not None for g in grads) and max(float(g.abs().max()) for g in grads) > 1e-6
    after = trainer.model.background.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_last_sample_background_through_the_trainer(scene, tmp_path):
    trainer = make_trainer(make_config(scene, "tiny", {**TINY, "train.background": "last_sample"}),
                           tmp_path / "run")
    assert trainer.model.opaque_last and trainer.model.background is None
    batch = trainer.make_batch(64)
    with torch.no_grad():
        _, out = loss_from_raw(trainer.model, raw_of(trainer.model, batch), batch, trainer.objective)
    torch.testing.assert_close(out.opacity, torch.ones(64))
    result = trainer.train_step()
    assert math.isfinite(result.loss) and result.n_samples > 0


# ---------------------------------------------------------------------------- 7. mip-NeRF


def test_mipnerf_thin_frustum_inputs(scene, train_data):
    cams = train_data.cameras
    g = torch.Generator().manual_seed(0)
    n_rays, per_ray = 6, 5
    rays = pixel_rays(cams, torch.randint(0, len(cams), (n_rays,), generator=g),
                      torch.randint(0, SIZE, (n_rays,), generator=g),
                      torch.randint(0, SIZE, (n_rays,), generator=g))
    t0 = 2.5 + 3 * torch.rand(n_rays * per_ray, generator=g)
    t1 = t0 + 1e-4
    ri = torch.arange(n_rays).repeat_interleave(per_ray)
    samples = Samples(t0, t1, ri, n_rays)

    inputs = {}
    for shape in ("cone", "cylinder"):
        model = build(scene, train_data, "mipnerf-small", {"mipnerf.width": 16, "mipnerf.shape": shape})
        assert isinstance(model, MipNeRFModel)
        inputs[shape] = model.field_inputs(rays, samples)
        assert model.field.raw(*inputs[shape]).shape == (n_rays * per_ray, 4)

    d, radius, t = rays.directions[ri], rays.get("radii")[ri], (t0 + t1) / 2
    mean, var, dirs = inputs["cone"]
    torch.testing.assert_close(mean, rays.origins[ri] + t[:, None] * d, rtol=0, atol=1e-4)
    torch.testing.assert_close(dirs, d)
    # Across the ray a thin cone is a disc of radius t R: per-axis variance (t R)^2 / 4 (1 - d^2);
    # along it, (t1 - t0)^2 / 12 ~ 1e-9 (negligible).
    torch.testing.assert_close(var, ((t * radius) ** 2 / 4)[:, None] * (1 - d ** 2), rtol=1e-3, atol=1e-9)
    ref_mean, ref_var = conical_frustum_to_gaussian(d, t0, t1, radius)
    torch.testing.assert_close(mean, rays.origins[ri] + ref_mean)
    torch.testing.assert_close(var, ref_var)
    # The cylinder keeps the radius R at every t: variance R^2 / 4 (1 - d^2), t^2 times smaller.
    c_mean, c_var, _ = inputs["cylinder"]
    torch.testing.assert_close(c_var, cylinder_to_gaussian(d, t0, t1, radius)[1])
    torch.testing.assert_close(c_var, (radius ** 2 / 4)[:, None] * (1 - d ** 2), rtol=1e-3, atol=1e-10)
    torch.testing.assert_close(c_mean, mean, rtol=0, atol=1e-4)
    assert (var.sum(-1) / c_var.sum(-1)).min() > 2.5 ** 2 * 0.99
    with pytest.raises(RadfieldError, match="mipnerf.shape"):
        build(scene, train_data, "mipnerf-small", {"mipnerf.width": 16, "mipnerf.shape": "sphere"})


# ---------------------------------------------------------------------------- 8. patches


def test_patch_batches_are_crops_of_the_training_images(scene, tmp_path):
    config = make_config(scene, "tiny", {**TINY, "train.loss": "l2+0.1*ssim", "train.patch_size": 8,
                                         "train.background": "white"})
    trainer = make_trainer(config, tmp_path / "run")
    batch = trainer.make_batch(4 * 64)
    assert batch.patch_size == 8 and len(batch.rays) == 4 * 64
    data = trainer.data
    targets = batch.target.view(4, 8, 8, 3)
    for k in range(4):
        rays = batch.rays[k * 64:(k + 1) * 64]
        (cam,) = rays.get("camera_index").unique().tolist()
        # Recover each ray's pixel by projecting a point on it into its camera.
        uv, _ = project(data.cameras, cam, rays.origins + 3.0 * rays.directions)
        ij = (uv - 0.5).round()
        torch.testing.assert_close(uv, ij + 0.5, rtol=0, atol=1e-3)
        col, row = ij[:, 0].long().view(8, 8), ij[:, 1].long().view(8, 8)
        left, top = int(col[0, 0]), int(row[0, 0])
        assert torch.equal(col, left + torch.arange(8).expand(8, 8))  # row-major patch
        assert torch.equal(row, top + torch.arange(8)[:, None].expand(8, 8))
        crop = data.composited(cam, WHITE)[top:top + 8, left:left + 8]
        torch.testing.assert_close(targets[k], crop, rtol=0, atol=1e-6)
    trainer.train_step()  # the patch loss trains


# ---------------------------------------------------------------------------- 9. schedule


def test_log_linear_learning_rate_in_the_trainer(scene, tmp_path):
    lr, lr_final, warmup, steps = 2e-3, 1e-4, 5, 20
    config = make_config(scene, "tiny", {**TINY, **optim("tiny", 1024, lr=lr, lr_final=lr_final,
                                                             warmup_steps=warmup)}, steps)
    assert config.optim.schedule == "log_linear"
    trainer = make_trainer(config, tmp_path / "run")
    for k in (3, 9):  # inside and after the warm-up
        trainer.train(stop=lambda step, k=k: step >= k)
        assert trainer.state.step == k
        last = k - 1  # the step that just ran
        expected = log_linear_lr_at(last / steps, last, lr, lr_final, warmup)
        warm = 0.01 + 0.99 * math.sin(math.pi / 2 * min(last / warmup, 1.0))
        by_hand = warm * lr ** (1 - last / steps) * lr_final ** (last / steps)
        assert expected == pytest.approx(by_hand, rel=1e-9)
        for group in trainer.optimizer.param_groups:
            assert group["lr"] == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------- 10. multi-scale


@pytest.fixture(scope="module")
def multiscale32(scene, tmp_path_factory):
    return make_multiscale(scene, tmp_path_factory.mktemp("ms") / "ms32", progress=False)


def _scale_of_rays(rays, fx_full: float) -> torch.Tensor:
    """The scale f of each ray from its pixel footprint: radii = z_per_t / (fx / f) * 2/sqrt(12)."""
    return (rays.get("radii") / rays.z_per_t * fx_full * math.sqrt(12) / 2).round().long()


def test_multiscale_groups_and_balanced_batches(multiscale32, tmp_path):
    config = make_config(multiscale32, "tiny", TINY)
    trainer = make_trainer(config, tmp_path / "run")
    assert len(trainer.groups) == 4
    assert [g.cameras.width for g in trainer.groups] == [32, 16, 8, 4]
    batch = trainer.make_batch(4 * 50)
    scale = _scale_of_rays(batch.rays, float(trainer.groups[0].cameras.fx[0]))
    assert sorted(scale.unique().tolist()) == [1, 2, 4, 8]
    assert torch.bincount(scale, minlength=9)[[1, 2, 4, 8]].tolist() == [50] * 4
    trainer.train_step()


def _check_per_scale(run_dir, scales):
    metrics = evaluate_run(run_dir, "test", save_renders=False, progress=False)
    per_scale = metrics["per_scale"]
    assert per_scale is not None and sorted(per_scale, key=int) == [str(f) for f in scales]
    for m in per_scale.values():
        assert m["n_images"] == N_TEST and math.isfinite(m["psnr"])
    assert metrics["n_images"] == 4 * N_TEST


def test_multiscale_evaluation_reports_every_scale_of_a_small_scene(multiscale32, tmp_path):
    trainer = make_trainer(make_config(multiscale32, "tiny", TINY, steps=1), tmp_path / "run")
    trainer.train()
    _check_per_scale(tmp_path / "run", (1, 2, 4, 8))


def test_multiscale_evaluation_reports_every_scale(tmp_path):
    # 88 px: the 1/8 scale is 11 px, the smallest image SSIM's 11x11 window accepts.
    src = make_scene(tmp_path / "src", n_train=2, n_val=0, n_test=N_TEST, size=88)
    data = make_multiscale(src, tmp_path / "ms", progress=False)
    trainer = make_trainer(make_config(data, "tiny", TINY, steps=1), tmp_path / "run")
    assert len(trainer.groups) == 4
    trainer.train()
    _check_per_scale(tmp_path / "run", (1, 2, 4, 8))


# ---------------------------------------------------------------------------- 11. CLI


def test_cli_train_with_set_and_loss(scene, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", str(scene), "--preset", "tiny", "--set", "tiny.width=32", "--loss", "l1",
               "--max-steps", "5", "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["tiny"]["width"] == 32 and saved["train"]["loss"] == "l1"
    assert saved["model"] == "tiny" and saved["train"]["max_steps"] == 5
    _, model = load_run(out)  # the network itself has width 32
    assert [layer.out_features for layer in model.field.trunk.layers] == [32] * 4


@pytest.mark.parametrize("args,words", [
    (["--preset", "tiny", "--set", "tiny.nosuch=3"], ["tiny.nosuch"]),
    (["--preset", "tiny", "--set", "foo"], ["foo", "KEY=VALUE"]),
    (["--model", "ngp", "--preset", "nerf"], ["nerf", "ngp"]),
    (["--preset", "bogus"], ["--preset", "unknown preset 'bogus'", "ngp-small"]),
    (["--preset", "tiny", "--set", "tiny.optim.schedule=bogus"], ["tiny.optim.schedule", "'bogus'", "log_linear"]),
    (["--preset", "tiny", "--set", "data.depth_source=bogus"], ["data.depth_source", "'bogus'", "sparse"]),
    (["--preset", "mipnerf", "--set", "mipnerf.shape=bogus"], ["mipnerf.shape", "'bogus'", "cone"]),
    (["--preset", "volsdf", "--set", "volsdf.eikonal_gradient=bogus"], ["volsdf.eikonal_gradient", "'bogus'"]),
    (["--preset", "volsdf", "--set", "volsdf.field.backbone=bogus"], ["volsdf.field.backbone", "'bogus'"]),
], ids=["unknown-key", "malformed-set", "model-preset-mismatch", "unknown-preset", "unknown-schedule",
        "unknown-depth-source", "unknown-frustum", "unknown-eikonal", "unknown-sdf-backbone"])
def test_cli_bad_options_exit_2_with_one_line(scene, tmp_path, capsys, args, words):
    out = tmp_path / "run"
    rc = main(["train", str(scene), *args, "--out", str(out), "--no-progress", "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("radfield: error:"), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------- 12. appearance protocol


def test_fit_left_appearance_protocol(scene, tmp_path, monkeypatch):
    """nerfacto's held-out-appearance protocol: the code fitted on an image's left half lowers
    the left-half error below the mean embedding's, and eval scores the right half only."""
    from radfield.evaluation.evaluate import evaluate_run, fit_appearance_left
    from radfield.rendering.backgrounds import background_color

    overrides = {**TRAIN_RUNS["nerfacto-small"][1], "nerfacto.appearance_dim": 4}
    make_trainer(make_config(scene, "nerfacto-small", overrides, steps=40), tmp_path / "run").train()
    _, model = load_run(tmp_path / "run")
    test = load_scene(scene, "test")
    bg = background_color("white", "cpu")
    gt = test.composited(0, bg)
    half = gt.shape[1] // 2

    def left_mse(code):
        r = render_image(model, test.cameras, 0, bg, appearance_code=code)
        return float(((r.rgb[:, :half] - gt[:, :half]) ** 2).mean())

    mean_code = model.field.appearance.weight.detach().mean(0)
    fitted = fit_appearance_left(model, test.cameras, 0, gt, bg, steps=30, rays_per_step=256, lr=5e-2)
    assert not torch.equal(fitted, mean_code)
    assert left_mse(fitted) < left_mse(mean_code)
    fit = {"steps": 20, "rays_per_step": 256, "lr": 5e-2}
    monkeypatch.setattr("radfield.evaluation.evaluate.FIT_OPTIONS", fit)
    metrics = evaluate_run(tmp_path / "run", "test", save_renders=False, progress=False, every=N_TEST,
                           appearance="fit-left")
    assert metrics["appearance"].startswith("code fitted on the left half")
    # the right half of image 0 is what was scored
    code = fit_appearance_left(model, test.cameras, 0, gt, bg, **fit)
    r = render_image(model, test.cameras, 0, bg, appearance_code=code)
    assert metrics["per_image"][0]["psnr"] == pytest.approx(psnr(r.rgb[:, half:], gt[:, half:]), abs=1e-4)
