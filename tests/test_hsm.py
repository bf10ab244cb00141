"""Hard sample mining: the step against the baseline step and hand-computed values."""

import math

import pytest
import torch

from radfield.cameras import Rays
from radfield.config import HSMConfig
from radfield.errors import RadfieldError
from radfield.config import RunConfig, apply_overrides
from radfield.models import SceneInfo
from radfield.models.ngp import NGPModel
from radfield.losses import l2
from radfield.losses.regularisers import distortion
from radfield.samplers.samples import Samples
from radfield.training.steps import (HardSampleMiner, StepBatch, baseline_step, draw_without_replacement,
                                     loss_from_raw, photometric_objective, scale_near_gradients)

AABB = torch.tensor([-1.0, -1, -1, 1, 1, 1])
# Photometric loss plus a loss on all sample weights: HSM must keep the latter's gradient too.
OBJECTIVE = photometric_objective(l2, distortion_weight=0.01)


def small_field(seed=0) -> NGPModel:
    """A small Instant-NGP model (the steps take a model: its field, inputs and hooks)."""
    torch.manual_seed(seed)
    config = apply_overrides(RunConfig(model="ngp"), {"ngp.grid.n_levels": 4, "ngp.grid.log2_table_size": 12,
                                                      "ngp.grid.max_resolution": 64})
    model = NGPModel(config, SceneInfo(AABB))
    for t in model.field.grid.tables:  # larger table values so the gradients are not tiny
        torch.nn.init.uniform_(t, -0.5, 0.5)
    return model


def random_batch(n_rays=24, per_ray=10, seed=1) -> StepBatch:
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n_rays, 3, generator=g) * 0.1 + torch.tensor([0.0, 0.0, -2.0])
    d = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=g) * 0.2 + torch.tensor([0.0, 0, 1]), dim=-1)
    counts = torch.randint(0, per_ray + 1, (n_rays,), generator=g)
    counts[3] = 0  # a ray without samples
    ray_indices = torch.repeat_interleave(torch.arange(n_rays), counts)
    k = torch.cat([torch.arange(c) for c in counts.tolist()])
    t_starts = 1.2 + 0.15 * k.float()
    samples = Samples(t_starts, t_starts + 0.15, ray_indices, n_rays)
    target = torch.rand(n_rays, 3, generator=g)
    bg = torch.rand(n_rays, 3, generator=g)
    rays = Rays(o, d, torch.ones(n_rays))
    return StepBatch(rays, samples, target, bg)


def grads(field):
    return {n: p.grad.clone() for n, p in field.named_parameters() if p.grad is not None}


def test_injected_gradient_equals_autograd_through_full_graph():
    field, batch = small_field(), random_batch()
    x, d = batch.samples.positions(batch.rays), batch.samples.directions(batch.rays)
    raw = field.field.raw(x, d)
    raw.retain_grad()
    loss, _ = loss_from_raw(field, raw, batch, OBJECTIVE)
    loss.backward()
    raw_leaf = raw.detach().requires_grad_()
    loss2, _ = loss_from_raw(field, raw_leaf, batch, OBJECTIVE)
    (g,) = torch.autograd.grad(loss2, raw_leaf)
    assert g.abs().max() > 0
    torch.testing.assert_close(g, raw.grad, rtol=1e-6, atol=1e-9)


def test_hsm_without_pruning_matches_baseline_gradients():
    batch = random_batch()
    base = small_field()
    baseline_step(base, batch, OBJECTIVE)
    hsm_field = small_field()
    miner = HardSampleMiner(HSMConfig(enabled=True, min_fraction=1.0, max_fraction=1.0))
    result = miner.step(hsm_field, batch, OBJECTIVE)
    assert result.n_backward == result.n_samples == len(batch.samples)
    gb, gh = grads(base), grads(hsm_field)
    assert gb.keys() == gh.keys() and len(gb) > 0
    for name in gb:
        torch.testing.assert_close(gh[name], gb[name], rtol=1e-4, atol=1e-8, msg=name)
        if name.startswith("field.color_mlp"):
            assert gb[name].abs().max() > 1e-6  # the comparison is not between zeros


class PerSampleField(torch.nn.Module):
    """A field with one parameter row per sample: ``raw_i = 3 tanh(W_i)``, ``W (n_samples, 4)``,
    evaluated at sample indices. Row ``i`` of ``W.grad`` is nonzero iff sample ``i`` was
    back-propagated, and then equals ``g_i * 3 (1 - tanh(W_i)^2)`` for the injected ``g_i``."""

    def __init__(self, n_samples: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(n_samples, 4, generator=g))

    def raw(self, index: torch.Tensor) -> torch.Tensor:
        return 3.0 * torch.tanh(self.weight[index])

    def activate(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.nn.functional.softplus(raw[:, 0]), torch.sigmoid(raw[:, 1:4])


class PerSampleModel(torch.nn.Module):
    """The smallest model around :class:`PerSampleField`: its inputs are the sample indices."""

    background, opaque_last = None, False

    def __init__(self, n_samples: int):
        super().__init__()
        self.field = PerSampleField(n_samples)

    def field_inputs(self, rays, samples):
        return (torch.arange(len(samples)),)

    def extra_losses(self, rays, samples, raw):
        return {}

    def shade(self, rays, values, opacity):
        return values


def test_hsm_back_propagates_exactly_the_b_drawn_samples():
    batch = random_batch(n_rays=64, per_ray=16)
    n = len(batch.samples)
    model = PerSampleModel(n)
    field = model.field
    miner = HardSampleMiner(HSMConfig(enabled=True, min_fraction=0.05, max_fraction=0.5))
    miner.tau = 4.0  # B / tau = B / 4 -> b = B // 4
    result = miner.step(model, batch, OBJECTIVE, generator=torch.Generator().manual_seed(0))
    b = result.n_backward
    assert b == int(min(max(n / miner.tau, 0.05 * n), 0.5 * n)) and 0 < b < n

    # g = d loss / d raw, through the activations and the render only (independent of the miner)
    raw = field.raw(torch.arange(n)).detach().requires_grad_()
    loss, _ = loss_from_raw(model, raw, batch, OBJECTIVE)
    (g,) = torch.autograd.grad(loss, raw)
    torch.testing.assert_close(result.hardness, g.norm(dim=-1), rtol=1e-6, atol=1e-12)

    # the b samples drawn from p = hardness / sum(hardness) with the step's generator
    p = result.hardness / result.hardness.sum()
    idx = draw_without_replacement(p, b, generator=torch.Generator().manual_seed(0))
    selected = torch.zeros(n, dtype=torch.bool)
    selected[idx] = True
    grad = field.weight.grad
    assert torch.equal(grad.abs().sum(-1) > 0, selected)  # nonzero exactly on the drawn rows
    assert (grad[~selected] == 0).all()  # the rest exactly zero
    w = field.weight.detach()[idx]
    expected = g[idx] * 3.0 * (1.0 - torch.tanh(w) ** 2)  # the chain rule through 3 tanh
    torch.testing.assert_close(grad[idx], expected, rtol=1e-5, atol=1e-9)


def test_draw_without_replacement_has_multinomials_inclusion_probabilities():
    """p = (0.4, 0.3, 0.2, 0.1, 0), b = 2. Sample i is drawn first with p_i, or second after j
    with p_j p_i / (1 - p_j): P(i in draw) = p_i (1 + sum_{j != i} p_j / (1 - p_j)), e.g. for
    0: 0.4 (1 + 0.3 / 0.7 + 0.2 / 0.8 + 0.1 / 0.9) = 0.7158. 40 000 draws of one generator
    match these within 0.01 (5 standard errors); the zero never comes, each draw is 2 distinct
    sorted indices."""
    p = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0])
    expected = [p[i] * (1 + sum(p[j] / (1 - p[j]) for j in range(5) if j != i)) for i in range(5)]
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(5)
    for _ in range(40_000):
        idx = draw_without_replacement(p, 2, g)
        assert len(idx) == 2 and idx[0] < idx[1]
        counts[idx] += 1
    assert counts[4] == 0 and counts.sum() == 80_000
    torch.testing.assert_close(counts / 40_000, torch.stack(expected), atol=0.01, rtol=0)


def test_dynamic_b_matches_hand_computation():
    # B = 4, p = (0.7, 0.1, 0.1, 0.1): sum p^2 = 0.52, tau_now = sqrt(4 * 0.52) = sqrt(2.08).
    miner = HardSampleMiner(HSMConfig(ema=0.99, min_fraction=0.05, max_fraction=0.5))
    tau_now = miner.update_tau(torch.tensor([0.7, 0.1, 0.1, 0.1]))
    assert tau_now == pytest.approx(math.sqrt(2.08), rel=1e-6)
    assert miner.tau == pytest.approx(0.99 + 0.01 * math.sqrt(2.08), rel=1e-9)  # 1.004422
    assert miner.n_keep(4) == 2  # int(clamp(4 / 1.0044, 0.2, 2.0)) = 2
    # Equal hardness: tau_now = 1 exactly, tau unchanged.
    miner2 = HardSampleMiner(HSMConfig())
    assert miner2.update_tau(torch.full((1000,), 1e-3)) == pytest.approx(1.0)
    assert miner2.tau == pytest.approx(1.0, abs=1e-8)
    assert miner2.n_keep(1000) == 500  # clamped to max_fraction
    miner2.tau = 100.0
    assert miner2.n_keep(1000) == 50  # clamped to min_fraction
    miner2.tau = 4.0
    assert miner2.n_keep(1000) == 250


def test_importance_weights_divide_each_kept_gradient_by_its_inclusion_probability():
    """The variant injects ``g_i / min(1, b p_i)`` on the same drawn rows: the per-sample field's
    gradient rows are the plain step's divided by that factor."""
    batch = random_batch(n_rays=64, per_ray=16)
    n = len(batch.samples)
    rows = {}
    for weighted in (False, True):
        model = PerSampleModel(n)
        miner = HardSampleMiner(HSMConfig(enabled=True, importance_weights=weighted))
        miner.tau = 4.0
        result = miner.step(model, batch, OBJECTIVE, generator=torch.Generator().manual_seed(0))
        rows[weighted] = model.field.weight.grad
    b = result.n_backward
    p = result.hardness / result.hardness.sum()
    kept = rows[False].abs().sum(-1) > 0
    assert torch.equal(kept, rows[True].abs().sum(-1) > 0) and int(kept.sum()) == b
    factor = (b * p[kept]).clamp(max=1.0)
    assert (factor < 1).any() and (factor == 1).any()  # both kinds of rows occur
    torch.testing.assert_close(rows[True][kept], rows[False][kept] / factor[:, None], rtol=1e-5, atol=1e-9)


def test_rising_min_fraction_follows_the_run():
    """0.05 -> 0.5 over the run: at progress 0.4 the clamp is 0.05 + 0.4 * 0.45 = 0.23, so with
    tau = 100 (B / tau = 1 % of B) 230 of 1000 samples are kept; at the end 500."""
    miner = HardSampleMiner(HSMConfig(min_fraction=0.05, max_fraction=0.5, final_min_fraction=0.5))
    miner.tau = 100.0
    assert miner.n_keep(1000) == 50
    miner.progress = 0.4
    assert miner.min_fraction() == pytest.approx(0.23) and miner.n_keep(1000) == 230
    miner.progress = 1.0
    assert miner.n_keep(1000) == 500
    above = HardSampleMiner(HSMConfig(max_fraction=0.5, final_min_fraction=0.8))
    above.progress, above.tau = 1.0, 100.0
    assert above.n_keep(1000) == 800  # the lower clamp wins over a smaller upper one
    with pytest.raises(RadfieldError, match="final_min_fraction"):
        HardSampleMiner(HSMConfig(final_min_fraction=1.5))


def raw_gradient(model, batch: StepBatch, objective) -> torch.Tensor:
    """``g = d loss / d raw`` of ``objective`` at the model's no-grad outputs: what HSM injects."""
    x, d = batch.samples.positions(batch.rays), batch.samples.directions(batch.rays)
    with torch.no_grad():
        leaf = model.field.raw(x, d).requires_grad_()
    loss, _ = loss_from_raw(model, leaf, batch, objective)
    return torch.autograd.grad(loss, leaf)[0]


def test_injected_gradient_includes_the_distortion_loss():
    """The gradient HSM injects differs from the photometric-only one by exactly the distortion
    term's gradient: losses on all weights are kept, not dropped."""
    field, batch = small_field(), random_batch()
    g_photo = raw_gradient(field, batch, photometric_objective(l2))
    g_both = raw_gradient(field, batch, photometric_objective(l2, distortion_weight=0.5))
    g_dist = raw_gradient(field, batch, lambda out, b: 0.5 * distortion(
        out.weights, b.samples.t_starts, b.samples.t_ends, b.samples.ray_indices, b.samples.n_rays))
    assert g_dist.abs().max() > 1e-6
    torch.testing.assert_close(g_both, g_photo + g_dist, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("early_stop, first_pass", [(False, 1.0), (True, 2.0)])
def test_trainer_variants_reach_sampling_and_the_ray_count(tmp_path, early_stop, first_pass):
    """``train.hsm.early_stop`` reaches the sampler (the paper's step samples without early
    termination); ``first_pass_samples`` scales the adaptive ray count's target: the next step
    has ``target * factor / samples per ray`` rays."""
    from conftest import make_config
    from radfield.data.synthetic import make_scene
    from radfield.training.trainer import Trainer

    scene = make_scene(tmp_path / "scene", n_train=4, n_val=1, n_test=1, size=16)
    config = make_config(scene, "ngp-small", {"train.hsm.enabled": True, "train.hsm.early_stop": early_stop,
                                              "train.hsm.first_pass_samples": first_pass}, steps=1)
    trainer = Trainer(config, tmp_path / "run", device="cpu", progress=False, log_tensorboard=False)
    seen = []
    sample = trainer.model.sample
    trainer.model.sample = lambda *a, **kw: seen.append(kw["early_stop"]) or sample(*a, **kw)
    n_rays = trainer.state.n_rays
    result = trainer.train_step()
    assert seen == [early_stop]
    per_ray = result.n_samples / n_rays
    expect = int(min(max(config.ngp.optim.target_samples * first_pass / per_ray, 64), config.train.max_rays))
    assert trainer.state.n_rays == expect


def test_near_gradients_scaled_by_squared_distance():
    """Floaters No More: a sample at distance t < d keeps (t / d)^2 of its gradient, the rest all
    of it; the forward value is untouched. Hand-computed for d = 2: midpoints 0.5, 1, 3."""
    samples = Samples(t_starts=torch.tensor([0.25, 0.75, 2.5]), t_ends=torch.tensor([0.75, 1.25, 3.5]),
                      ray_indices=torch.zeros(3, dtype=torch.long), n_rays=1)
    raw = torch.tensor([[1.0, -2.0], [0.5, 0.0], [3.0, 4.0]], requires_grad=True)
    weights = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    out = scale_near_gradients(raw, samples, 2.0)
    assert torch.equal(out, raw)
    (out * weights).sum().backward()
    expected = weights * torch.tensor([[1 / 16], [1 / 4], [1.0]])
    torch.testing.assert_close(raw.grad, expected, rtol=0, atol=1e-7)
    assert scale_near_gradients(raw, samples, 0.0) is raw  # off


def test_near_gradient_reaches_the_batch_in_camera_radius_units(tmp_path):
    """``train.near_gradient`` 0.5 on the built-in scene: the batch's distance is half the
    farthest training camera's distance from the box's centre (computed here from the poses)."""
    from conftest import make_config
    from radfield.data.synthetic import make_scene
    from radfield.training.trainer import Trainer

    scene = make_scene(tmp_path / "scene", n_train=4, n_val=1, n_test=1, size=16)
    config = make_config(scene, "ngp-small", {"train.near_gradient": 0.5}, steps=1)
    trainer = Trainer(config, tmp_path / "run", device="cpu", progress=False, log_tensorboard=False)
    aabb = trainer.data.aabb
    radius = (trainer.data.cameras.c2w[:, :3, 3] - (aabb[:3] + aabb[3:]) / 2).norm(dim=-1).max()
    assert trainer.make_batch(64).near_gradient == pytest.approx(0.5 * float(radius), rel=1e-5)


@pytest.mark.parametrize("preset,changes,aabb_scale,expected", [
    ("nerfacto-small", {"nerfacto.bounded": False}, 1, 1.0),     # a capture: Floaters No More on
    ("nerfacto-small", {"nerfacto.bounded": True}, 1, 0.0),      # an object in its box: off
    ("nerfacto-small", {"train.near_gradient": 0.25}, 1, 0.25),  # the user's value is kept
    ("merf-small", {"merf.bounded": False}, 1, 0.0),             # not measured on MeRF: off
    ("ngp-small", {}, 1, 0.0),                                   # the box is the region of interest: off
    ("ngp-small", {}, 4, 1.0),                                   # an Instant-NGP capture's large box: on
    ("ngp-small", {"train.near_gradient": 0.0}, 4, 0.0),         # turned off by the user
    ("voxels", {}, 4, 0.0)])                                     # not measured on the voxel grid: off
def test_near_gradient_default_is_the_models_choice(preset, changes, aabb_scale, expected):
    """``train.near_gradient`` None is resolved when the model is built: 1 camera radius for
    nerfacto on an unbounded scene and for ngp in a box grown by an ``aabb_scale``, 0 otherwise,
    and a value the user set stays."""
    from radfield.config import PRESETS
    from radfield.models import build_model

    config = apply_overrides(RunConfig(), {**PRESETS[preset], **changes})
    assert config.train.near_gradient == changes.get("train.near_gradient")
    meta = {"camera_radius": 4.0, **({"aabb_scale": aabb_scale} if aabb_scale > 1 else {})}
    build_model(config, SceneInfo(torch.tensor([-1.0] * 3 + [1.0] * 3), n_images=2, meta=meta))
    assert config.train.near_gradient == expected
