"""The model surface: per-ray attributes, the one render path, model hooks, one home per default.

Ground truth used here, independent of the code under test: attributes checked element by
element against the tensors they were built from; renders against a dense ``cumprod``
reference with the background MLP evaluated directly; HSM with ``b = B`` against the baseline
step; learning rates against the schedule written out by hand; configurations built by the
command line against the same built from Python.
"""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch

from radfield.cameras import Cameras, Rays, generate_rays, image_rays, look_at
from radfield.cli import build_parser, main, run_config_from_args
from radfield.config import HSMConfig, PRESETS, RunConfig, apply_overrides
from radfield.data import load_scene
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.losses import l2
from radfield.models import REGISTRY, SceneInfo, build_model
from radfield.models.ngp import NGPModel
from radfield.rendering.images import render_image
from radfield.rendering.pipeline import render_samples
from radfield.samplers.samples import Samples
from radfield.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_run, save_checkpoint
from radfield.training.steps import HardSampleMiner, StepBatch, baseline_step, photometric_objective
from radfield.training.trainer import Trainer
from conftest import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN, SIZE = 6, 16


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=N_TRAIN, n_val=1, n_test=2, size=SIZE)


def config_for(scene, preset: str, overrides: dict | None = None, steps: int = 3) -> RunConfig:
    return make_config(scene, preset, overrides, steps)


def trainer_for(config, run_dir) -> Trainer:
    return Trainer(config, run_dir, progress=False, log_tensorboard=False)


TINY = {"tiny.width": 16, "tiny.sampler.n_coarse": 8, "tiny.optim.target_samples": 512}


# ---------------------------------------------------------------------------- 1. per-ray attributes


def test_rays_carry_any_attribute_through_selection_cat_chunks_and_moves():
    g = torch.Generator().manual_seed(0)
    n = 10
    rays = Rays(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g), torch.rand(n, generator=g),
                {"times": torch.rand(n, generator=g), "foo": torch.randn(n, 2, generator=g)})
    idx = torch.tensor([7, 2, 2, 9])
    sub = rays[idx]
    assert set(sub.attrs) == {"times", "foo"}
    for name in ("times", "foo"):
        assert torch.equal(sub.get(name), rays.get(name)[idx])
    both = Rays.cat([rays[:4], rays[4:]])
    for name in ("times", "foo"):
        assert torch.equal(both.get(name), rays.get(name))
    assert torch.equal(both.origins, rays.origins)
    pieces = list(rays.chunks(3))
    assert [len(p) for p in pieces] == [3, 3, 3, 1]
    assert torch.equal(torch.cat([p.get("foo") for p in pieces]), rays.get("foo"))
    assert torch.equal(rays.to("cpu").get("times"), rays.get("times"))
    assert rays.get("nothing") is None
    assert rays.with_attrs(foo=None).get("foo") is None and "foo" in rays.attrs  # a copy
    with pytest.raises(ValueError, match="different attributes"):
        Rays.cat([rays, rays.with_attrs(times=None)])


def test_generated_rays_carry_their_cameras_attributes():
    c2w = torch.stack([look_at(torch.tensor([0.0, -4, 1]), torch.zeros(3)),
                       look_at(torch.tensor([4.0, 0, 1]), torch.zeros(3))])
    ones = torch.ones(2)
    cams = Cameras(c2w, 20 * ones, 20 * ones, 8 * ones, 8 * ones, 16, 16,
                   {"times": torch.tensor([0.25, 0.75]), "code": torch.tensor([[1.0, 2.0], [3.0, 4.0]])})
    cam = torch.tensor([1, 0, 1])
    rays = generate_rays(cams, cam, torch.tensor([0.5, 3.5, 8.0]), torch.tensor([1.5, 2.5, 8.0]))
    assert torch.equal(rays.get("camera_index"), cam)
    assert torch.equal(rays.get("times"), torch.tensor([0.75, 0.25, 0.75]))
    assert torch.equal(rays.get("code"), torch.tensor([[3.0, 4.0], [1.0, 2.0], [3.0, 4.0]]))
    # camera subsets and moves keep the attributes aligned with the cameras
    assert torch.equal(cams[[1]].attrs["times"], torch.tensor([0.75]))
    assert torch.equal(cams.downscaled(2).attrs["code"], cams.attrs["code"])
    full = image_rays(cams, 1)
    assert torch.equal(full.get("times"), torch.full((16 * 16,), 0.75))


def test_training_batches_carry_train_index(scene, tmp_path):
    trainer = trainer_for(config_for(scene, "tiny", TINY), tmp_path / "run")
    batch = trainer.make_batch(256)
    index, camera = batch.rays.get("train_index"), batch.rays.get("camera_index")
    assert index is not None and torch.equal(index, camera)
    assert index.min() >= 0 and index.max() < N_TRAIN and len(index.unique()) > 1


# ---------------------------------------------------------------------------- 2. one render path


def dense_reference(model, rays: Rays, samples: Samples, background):
    """``C = sum_i T_i alpha_i c_i + T_end * background`` with ``T`` from ``cumprod``."""
    n = len(rays)
    with torch.no_grad():
        sigma, rgb = model.field.activate(model.field.raw(*model.field_inputs(rays, samples)))
    per_ray = samples.per_ray
    sigma, rgb = sigma.view(n, per_ray), rgb.view(n, per_ray, 3)
    delta = (samples.t_ends - samples.t_starts).view(n, per_ray)
    alpha = 1 - torch.exp(-sigma * delta)
    trans = torch.cumprod(torch.cat([torch.ones(n, 1), 1 - alpha[:, :-1]], dim=-1), dim=-1)
    w = trans * alpha
    return (w[..., None] * rgb).sum(1) + (1 - w.sum(1))[:, None] * background


def test_learned_background_is_used_by_image_renders_and_fit_left(scene, tmp_path, monkeypatch):
    config = config_for(scene, "tiny", {**TINY, "train.background": "learned"})
    trainer = trainer_for(config, tmp_path / "run")
    model = trainer.model.eval()
    for p in model.background.parameters():  # a background far from white
        torch.nn.init.uniform_(p, -2.0, 2.0)
    data = load_scene(scene, "test")
    white = torch.ones(3)
    image = render_image(model, data.cameras, 0, white)
    rays = image_rays(data.cameras, 0)
    samples = model.sample(rays, training=False)
    with torch.no_grad():
        expected = dense_reference(model, rays, samples, model.background(rays))
    torch.testing.assert_close(image.rgb.reshape(-1, 3), expected.clamp(0, 1), rtol=0, atol=1e-5)
    assert (expected - white).abs().max() > 0.1  # the background matters in this comparison

    # fit-left renders through the same path, with the model's background
    from radfield.evaluation import evaluate

    seen = []

    def spy(model_, rays_, samples_, background, **kw):
        seen.append((rays_, background.detach()))
        return render_samples(model_, rays_, samples_, background, **kw)

    monkeypatch.setattr(evaluate, "render_samples", spy)
    monkeypatch.setattr(type(model), "appearance_codes", lambda self: torch.zeros(1, 2))
    evaluate.fit_appearance_left(model, data.cameras, 0, data.composited(0, white), white, steps=1,
                                 rays_per_step=32)
    (seen_rays, bg), = seen
    torch.testing.assert_close(bg, model.background(seen_rays).detach())


def test_render_path_equals_the_training_steps_render(scene, tmp_path):
    trainer = trainer_for(config_for(scene, "tiny", TINY), tmp_path / "run")
    batch = trainer.make_batch(128)
    model = trainer.model
    out = render_samples(model, batch.rays, batch.samples, batch.background)
    expected = dense_reference(model, batch.rays, batch.samples, batch.background)
    torch.testing.assert_close(out.rgb.detach(), expected, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------- 3. model hooks


def test_models_configure_themselves_from_the_data():
    box = torch.tensor([-1.0, -1, -1, 1, 1, 1])
    for alpha in (True, False):
        config = RunConfig(model="nerfacto")
        assert config.nerfacto.bounded is None
        build_model(apply_overrides(config, {"nerfacto.grid.log2_table_size": 10}),
                    SceneInfo(box, 3, has_alpha=alpha))
        assert config.nerfacto.bounded is alpha
    config = apply_overrides(RunConfig(model="nerfacto"), {"nerfacto.bounded": False,
                                                           "nerfacto.grid.log2_table_size": 10})
    build_model(config, SceneInfo(box, 3, has_alpha=True))
    assert config.nerfacto.bounded is False  # an explicit choice stands


class SmoothNGP(NGPModel):
    """An NGP model with a training loss on the field itself (as an eikonal or deformation
    smoothness term would be): ``weight * mean density(x)^2`` at fixed points, with its own graph."""

    weight = 0.3

    def extra_losses(self, rays, samples, raw):
        x = torch.linspace(-0.5, 0.5, 24).view(8, 3)
        return {"smooth": self.weight * (self.field.density(x) ** 2).mean()}


def test_extra_losses_on_the_field_work_under_hsm():
    torch.manual_seed(0)
    config = apply_overrides(RunConfig(model="ngp"), {"ngp.grid.log2_table_size": 10, "ngp.grid.n_levels": 4,
                                                      "ngp.grid.max_resolution": 64})
    model = SmoothNGP(config, SceneInfo(torch.tensor([-1.0, -1, -1, 1, 1, 1])))
    for t in model.field.grid.tables:
        torch.nn.init.uniform_(t, -0.5, 0.5)
    g = torch.Generator().manual_seed(1)
    n = 16
    o = torch.tensor([0.0, 0.0, -3.0]).expand(n, 3) + 0.1 * torch.randn(n, 3, generator=g)
    d = torch.nn.functional.normalize(torch.tensor([0.0, 0, 1]) + 0.1 * torch.randn(n, 3, generator=g), dim=-1)
    rays = Rays(o, d, torch.ones(n))
    t = torch.linspace(2.0, 4.0, 9)
    samples = Samples(t[:-1].repeat(n), t[1:].repeat(n), torch.arange(n).repeat_interleave(8), n, 8)
    batch = StepBatch(rays, samples, torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g))
    objective = photometric_objective(l2)

    def grads(m):
        return {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    base, twin, plain = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    r_base = baseline_step(base, batch, objective)
    r_hsm = HardSampleMiner(HSMConfig(enabled=True, min_fraction=1.0, max_fraction=1.0)).step(
        twin, batch, objective)
    assert r_hsm.loss == pytest.approx(r_base.loss, rel=1e-6)
    gb, gh = grads(base), grads(twin)
    assert gb.keys() == gh.keys()
    for k in gb:
        torch.testing.assert_close(gh[k], gb[k], rtol=1e-4, atol=1e-8, msg=k)
    # ... and the extra loss is in those gradients: without it they differ.
    plain.weight = 0.0
    baseline_step(plain, batch, objective)
    g0 = grads(plain)
    assert max(float((gb[k] - g0[k]).abs().max()) for k in gb) > 1e-4


def test_model_scalars_reach_the_log(scene, tmp_path):
    config = config_for(scene, "ngp-small", {"ngp.optim.target_samples": 1024,
                                             "ngp.occupancy.resolution": 16}, steps=10)
    trainer = trainer_for(config, tmp_path / "run")
    logged = {}

    class Writer:
        def add_scalar(self, name, value, step):
            logged[name] = value

        def add_histogram(self, *a):
            pass

        def close(self):
            pass

    trainer.writer = Writer()
    trainer.train()
    assert logged["model/occupancy"] == pytest.approx(trainer.model.grid.occupied.float().mean().item())


def test_runs_rebuild_from_their_saved_build_arguments(scene, tmp_path):
    overrides = {"nerfacto.grid.log2_table_size": 10, "nerfacto.proposal_samples": (16, 8),
                 "nerfacto.n_samples": 8, "nerfacto.optim.target_samples": 512}
    trainer = trainer_for(config_for(scene, "nerfacto-small", overrides, steps=2), tmp_path / "run")
    trainer.train()
    ck = load_checkpoint(tmp_path / "run")
    build = json.loads(ck["build"])
    assert build["n_images"] == N_TRAIN and build["has_alpha"] is True
    torch.testing.assert_close(torch.tensor(build["aabb"]), trainer.data.aabb.float())
    config, model = load_run(tmp_path / "run")
    assert model.field.appearance.num_embeddings == N_TRAIN
    assert config.nerfacto.bounded is True  # resolved at the start and recorded
    assert torch.equal(model.aabb, trainer.model.aabb)
    # A checkpoint without build arguments is refused with one clear line.
    del ck["build"]
    save_checkpoint(tmp_path / "run" / CHECKPOINT_NAME, {k: v for k, v in ck.items() if k != "format"})
    with pytest.raises(RadfieldError, match="older radfield"):
        load_run(tmp_path / "run")


# ---------------------------------------------------------------------------- 4. one home per default


@pytest.mark.parametrize("model", list(REGISTRY))
def test_python_api_trains_as_the_command_line(model, scene):
    args = build_parser().parse_args(["train", str(scene), "--model", model])
    from_cli = run_config_from_args(args)
    from_python = RunConfig(model=model)
    from_python.data.path = from_cli.data.path
    assert from_cli == from_python
    # the model's own recipe, not another model's
    assert from_python.optim is getattr(from_python, model).optim


def test_every_preset_names_a_registered_model():
    for name, preset in PRESETS.items():
        assert preset.get("model") in REGISTRY, name
        config = apply_overrides(RunConfig(), preset)
        if name in REGISTRY:
            assert preset == {"model": name} and config == RunConfig(model=name)


def test_model_recipes_reach_the_optimiser(scene, tmp_path):
    trainer = trainer_for(config_for(scene, "tiny", TINY), tmp_path / "run")
    assert trainer.config.optim.lr == 1e-3 and trainer.config.optim.eps == 1e-8
    for group in trainer.optimizer.param_groups:
        assert group["eps"] == 1e-8 and group["weight_decay"] == 0.0 and group["base_lr"] == 1e-3


def test_schedule_keeps_each_groups_own_rate(scene, tmp_path, monkeypatch):
    from radfield.models.nerf import TinyNeRFModel

    def two_groups(self, optim):
        params = list(self.field.parameters())
        return [{"params": params[:1], "lr": optim.lr * 10, "weight_decay": 0.0},
                {"params": params[1:], "lr": optim.lr, "weight_decay": 0.0}]

    monkeypatch.setattr(TinyNeRFModel, "param_groups", two_groups)
    lr, lr_final, steps = 2e-3, 2e-4, 10
    config = config_for(scene, "tiny", {**TINY, "tiny.optim.lr": lr, "tiny.optim.lr_final": lr_final,
                                        "tiny.optim.warmup_steps": 0}, steps=steps)
    trainer = trainer_for(config, tmp_path / "run")
    trainer.train(stop=lambda step: step >= 4)
    last = 3
    by_hand = lr ** (1 - last / steps) * lr_final ** (last / steps)
    fast, slow = trainer.optimizer.param_groups
    assert slow["lr"] == pytest.approx(by_hand, rel=1e-9)
    assert fast["lr"] == pytest.approx(10 * by_hand, rel=1e-9)


@pytest.mark.parametrize("setting,words", [
    ("tiny.width=abc", ["tiny.width", "int", "abc"]),
    ("train.max_steps=1.5", ["train.max_steps", "int"]),
    ("train.hsm.enabled=yes", ["train.hsm.enabled", "bool"]),
    ("tiny=3", ["tiny", "section"]),
    ("tiny.optim.nosuch=1", ["tiny.optim.nosuch", "unknown"]),
    ("nerfacto.proposal_samples=[1,\"a\"]", ["nerfacto.proposal_samples"]),
], ids=["str-for-int", "float-for-int", "str-for-bool", "section", "unknown", "tuple-item"])
def test_set_checks_keys_and_types(scene, tmp_path, capsys, setting, words):
    out = tmp_path / "run"
    rc = main(["train", str(scene), "--preset", "tiny", "--set", setting, "--out", str(out),
               "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("radfield: error:"), err
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()


def test_set_accepts_well_typed_values():
    config = apply_overrides(RunConfig(), {"train.max_time": 5, "nerfacto.proposal_samples": [8, 4],
                                           "train.loss_gamma": None, "tiny.optim.lr": 1})
    assert config.train.max_time == 5.0 and isinstance(config.train.max_time, float)
    assert config.nerfacto.proposal_samples == (8, 4) and config.tiny.optim.lr == 1.0


# ---------------------------------------------------------------------------- 6. command-line mends


def test_help_states_no_empty_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "default: None" not in text and "default: False" not in text
    assert "(default: 1)" in text  # --downscale's real default is still stated
    assert "validation" in " ".join(text.split())  # --max-time says what it excludes


@pytest.mark.parametrize("value", ["-5", "0", "nan"])
def test_non_positive_max_time_is_refused(scene, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(scene), "--preset", "tiny", "--max-time", value, "--out", str(tmp_path / "r"),
              "--no-progress"])
    rc = exc.value.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--max-time" in err[0]
    assert not (tmp_path / "r").exists()


def test_wall_time_budget_counts_validation_and_training_time_does_not(scene, tmp_path):
    """With validation after every step, ``--max-time 1.5`` stops after 1.5 s of steps alone by
    default, and after 1.5 s of wall time (steps and validations) with ``--wall-time``: fewer
    steps, and the wall clock, not the step clock, is what crossed the budget (and is the
    schedules' progress)."""
    runs = {}
    for wall in (False, True):
        config = config_for(scene, "tiny", {**TINY, "train.max_time": 1.5, "train.max_time_wall": wall,
                                            "train.eval_every": 0.0, "train.val_max_share": 1.0},
                            steps=10 ** 6)
        trainer = trainer_for(config, tmp_path / f"run-{wall}")
        trainer.train()
        runs[wall] = trainer
        st = trainer.state
        assert st.wall_time > st.train_time > 0  # validations take time on the wall clock only
        assert trainer.clock() == (st.wall_time if wall else st.train_time) >= 1.5
        assert trainer.run_progress() == pytest.approx(trainer.clock() / 1.5)
    assert runs[True].state.step < runs[False].state.step
    assert runs[True].state.train_time < 1.5  # stopped before the steps alone reached the budget
    ck = torch.load(tmp_path / "run-True" / "checkpoint.pt", weights_only=False)
    assert ck["state"]["wall_time"] == runs[True].state.wall_time


def test_validation_takes_at_most_its_share_of_the_wall_clock(scene, tmp_path):
    """A validation that takes 0.2 s (a stand-in that sleeps) with ``val_max_share`` 0.25 is
    followed by at least 0.2 * 0.75 / 0.25 = 0.6 s of training before the next, although
    ``eval_every`` asks for one after every step; share 1 validates after every step; a share
    outside (0, 1] is a one-line error."""
    counts = {}
    for share in (0.25, 1.0):
        config = config_for(scene, "tiny", {**TINY, "train.max_time": 2.0, "train.eval_every": 0.0,
                                            "train.val_max_share": share}, steps=10 ** 6)
        trainer = trainer_for(config, tmp_path / f"run-{share}")
        trainer.validate = lambda: (time.sleep(0.2 if share < 1 else 0.0), 10.0)[1]
        trainer.train()
        times = [h["time_s"] for h in trainer.history]
        counts[share] = len(times)
        if share < 1:  # every gap but the last (the end-of-run validation) is at least 0.6 s
            assert all(b - a >= 0.6 - 1e-3 for a, b in zip(times[:-2], times[1:-1]))
            assert 2 <= len(times) <= 2.0 / 0.6 + 2
    assert counts[1.0] > 3 * counts[0.25]
    for bad in (0.0, 1.5):
        with pytest.raises(RadfieldError, match="train.val_max_share"):
            trainer_for(config_for(scene, "tiny", {**TINY, "train.val_max_share": bad}, steps=1),
                        tmp_path / f"bad-{bad}")


def test_wall_time_flag_sets_the_clock(scene, tmp_path):
    main(["train", str(scene), "--preset", "tiny", "--max-steps", "1", "--max-time", "100", "--wall-time",
          "--out", str(tmp_path / "r"), "--no-progress"])
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert saved["train"]["max_time_wall"] is True and saved["train"]["max_time"] == 100.0


def test_gradient_scaler_state_is_in_the_checkpoint(scene, tmp_path, monkeypatch):
    """Resume under mixed precision is exact only if the loss scale comes back: an enabled
    scaler (on the CPU here, as CUDA's would be) whose scale grows every step."""
    real = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler",
                        lambda device, enabled: real("cpu", init_scale=256.0, growth_interval=1))
    trainer = trainer_for(config_for(scene, "tiny", TINY, steps=3), tmp_path / "run")
    trainer.train()
    scale = trainer.scaler.get_scale()
    assert scale == 256.0 * 2 ** 3  # grown once per step (no overflow in these steps)
    resumed = Trainer(None, tmp_path / "run", resume=True, progress=False, log_tensorboard=False)
    assert resumed.scaler.get_scale() == scale  # not the fresh 256


def test_training_pauses_and_calls_observers(scene, tmp_path):
    """What a live viewer uses: `paused` holds the loop between steps (not counted as training
    time), `callbacks` see every step."""
    import threading
    import time

    trainer = trainer_for(config_for(scene, "tiny", TINY, steps=5), tmp_path / "run")
    seen = []
    trainer.callbacks.append(lambda tr, result, dt: seen.append(tr.state.step))
    trainer.paused.set()
    worker = threading.Thread(target=trainer.train)
    worker.start()
    time.sleep(0.5)
    assert trainer.state.step == 0 and seen == []
    trainer.paused.clear()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert seen == [1, 2, 3, 4, 5]
    assert trainer.state.train_time < 0.5  # the pause is not training time


@pytest.fixture(scope="module")
def timed_scene(tmp_path_factory):
    """The built-in scene with a ``time`` per frame (the D-NeRF format): frame k of a split of
    n frames at time k / (n - 1)."""
    root = make_scene(tmp_path_factory.mktemp("timed"), n_train=N_TRAIN, n_val=1, n_test=3, size=SIZE)
    for split in ("train", "val", "test"):
        file = root / f"transforms_{split}.json"
        meta = json.loads(file.read_text())
        n = len(meta["frames"])
        for k, frame in enumerate(meta["frames"]):
            frame["time"] = k / max(n - 1, 1)
        file.write_text(json.dumps(meta))
    return root


def test_times_travel_from_the_data_to_every_ray(timed_scene, tmp_path):
    from radfield.data import load_cameras
    from radfield.export.camera_path import orbit_path

    test = load_scene(timed_scene, "test")
    assert torch.equal(test.cameras.attrs["times"], torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(load_cameras(timed_scene, "test").cameras.attrs["times"], test.cameras.attrs["times"])
    rays = image_rays(test.cameras, 1)
    assert torch.equal(rays.get("times"), torch.full((SIZE * SIZE,), 0.5))
    # training batches: each ray has its image's time
    trainer = trainer_for(config_for(timed_scene, "tiny", TINY), tmp_path / "run")
    batch = trainer.make_batch(128)
    expected = batch.rays.get("train_index").float() / (N_TRAIN - 1)
    torch.testing.assert_close(batch.rays.get("times"), expected)
    assert trainer.model.scene.time_range == (0.0, 1.0)
    # an orbit of a dynamic scene sweeps its time range
    path = orbit_path(load_cameras(timed_scene, "train"), 5)
    torch.testing.assert_close(path.attrs["times"], torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
