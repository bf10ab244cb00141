"""The command line end to end, exact resume, clean bad-input errors and atomic checkpoints.

Ground truth used here, independent of the code under test:

* ``psnr_uint8`` is recomputed with numpy from the written ``*_rgb.png`` and the dataset's RGBA
  PNG composited over white by hand;
* the ``--path test`` video's frames are matched, in order, against the eval renders;
* resuming is checked against an uninterrupted run of the same length (bit-for-bit), with a
  control showing that a resume which does not restore the random generator is detected;
* error cases check the exit code, the one-line message naming the file or option, and that
  no file was created or changed (byte comparison / directory listing).

Runs use ``--preset ngp-small`` on a 32x32 scene with a few dozen steps: about a minute on 2
busy CPU cores.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from conftest import read_video
from radfield.cli import main
from radfield.config import PRESETS, RunConfig, apply_overrides, parse_override
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.models import REGISTRY
from radfield.training.checkpoint import CHECKPOINT_NAME, REQUIRED_KEYS, load_checkpoint, save_checkpoint
from radfield.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL, N_TEST, SIZE = 8, 2, 2, 32
COMMON = ["--preset", "ngp-small", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=N_TRAIN, n_val=N_VAL,
                      n_test=N_TEST, size=SIZE)


def listing(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes); {} when ``root`` does not exist."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------- --help


HELP_OPTIONS = {
    None: ["train", "eval", "render", "demo"],
    "train": ["--model", "--preset", "--downscale", "--out", "--max-steps", "--max-time",
              "--device", "--resume", "--hsm", "--seed", "--eval-every", "--no-progress"],
    "eval": ["run_dir", "--split", "--device", "--no-renders"],
    "render": ["run_dir", "--path", "--out", "--frames", "--fps", "--device"],
    "demo": ["--out", "--max-time", "--device", "--hsm"],
    "process": ["images", "video", "--out", "--frames", "--matcher", "--overwrite"],
    "multiscale": ["source", "--out", "--overwrite"],
}


@pytest.mark.parametrize("command", list(HELP_OPTIONS))
def test_help_lists_options(command, capsys):
    argv = ([command] if command else []) + ["--help"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: radfield")
    for option in HELP_OPTIONS[command]:
        assert option in out, f"{option} missing from `radfield {' '.join(argv)}`"
    if command == "train":
        text = "".join(out.split())  # argparse wraps the description (also at hyphens)
        assert "Models:" + ",".join(REGISTRY) in text
        assert "Presets:" + ",".join(PRESETS) in text
    if command == "render":
        assert "orbit" in out and "test" in out


def test_python_m_radfield_exit_code():
    """The real process: ``python3 -m radfield`` returns main()'s 2 and prints one line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    bad = subprocess.run([sys.executable, "-m", "radfield", "eval", "no-such-run-dir"], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("radfield: error: no-such-run-dir"), lines


# ---------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained_run(scene, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("e2e") / "run"
    rc = main(["train", str(scene), "--out", str(run), "--max-steps", "40", *COMMON])
    assert rc == 0
    return run


@pytest.fixture(scope="module")
def evaluated_run(trained_run) -> Path:
    assert main(["eval", str(trained_run), "--device", "cpu"]) == 0
    return trained_run


def test_train_writes_run(trained_run, scene):
    for name in ("checkpoint.pt", "config.json", "history.json"):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["data"]["path"] == str(scene.resolve())
    assert config["train"]["max_steps"] == 40
    assert config["ngp"]["grid"]["log2_table_size"] == 17  # the ngp-small preset
    ck = load_checkpoint(trained_run)
    assert ck["state"]["step"] == 40
    history = json.loads((trained_run / "history.json").read_text())
    assert history[-1]["step"] == 40 and "psnr" in history[-1]  # final validation
    # no temporary files of the atomic writes left behind
    assert not [p.name for p in trained_run.iterdir() if p.name.startswith(".")]


def _composite_white_uint8(rgba: np.ndarray) -> np.ndarray:
    x = rgba.astype(np.float64) / 255.0
    rgb = x[..., :3] * x[..., 3:] + 1.0 * (1.0 - x[..., 3:])
    return np.round(np.clip(rgb, 0, 1) * 255.0)


@pytest.mark.parametrize("eps", [0.3, 0.6])
def test_training_pruning_in_rounds_keeps_the_one_pass_samples_and_encodings(trained_run, scene, eps):
    """The trained NGP run's early-termination pass (training's ``prune_occluded`` with the hash
    encodings as features): in rounds of 16, 32, ... samples and in one pass over every marched
    sample, the same samples are kept with the same encodings, bit for bit, and the rounds
    evaluate fewer samples. (After 40 steps the field is thin: rays terminate at transmittance
    0.3 or 0.6, not at 1e-4.)"""
    from radfield.cameras import image_rays
    from radfield.data import load_scene
    from radfield.rendering import pipeline
    from radfield.training.checkpoint import load_run

    _, model = load_run(trained_run)
    rays = image_rays(load_scene(scene, "test").cameras, 0)
    density = model.occlusion_density(rays)
    evaluated = []

    def counting(x, ray_indices):
        evaluated.append(len(x))
        return density(x, ray_indices)

    with torch.no_grad():
        full = model.sample(rays, training=False, early_stop=False)
        one = pipeline.prune_occluded(rays, full, counting, eps)
        n_one = sum(evaluated)
        rounds = pipeline.prune_occluded(rays, full, counting, eps, first_round=16)
    assert len(one) < len(full)  # something is occluded
    assert torch.equal(rounds.t_starts, one.t_starts) and torch.equal(rounds.ray_indices, one.ray_indices)
    assert rounds.features is not None and torch.equal(rounds.features, one.features)
    assert n_one == len(full) and len(one) <= sum(evaluated) - n_one < len(full)


@pytest.mark.parametrize("eps", [1e-4, 0.3])
def test_image_renders_terminate_early_in_rounds_with_the_two_pass_pixels(trained_run, scene, eps):
    """The trained NGP run: prune then render (two passes) and the rounds of
    ``render_samples_in_rounds`` (what ``render_image`` uses) give the same pixels, and the rounds
    evaluate fewer samples than the two passes together. After 40 steps the field is still thin:
    transmittance 0.3 is where its rays terminate. With ``colour_eps`` the rounds colour only the
    samples of weight above it, and each pixel moves by at most ``colour_eps`` per sample."""
    from radfield.cameras import image_rays
    from radfield.data import load_scene
    from radfield.rendering import pipeline
    from radfield.training.checkpoint import load_run
    _, model = load_run(trained_run)
    rays = image_rays(load_scene(scene, "test").cameras, 0)
    bg = torch.ones(3)
    evaluated, coloured = [], []
    field_staged = pipeline.field_staged

    def counting(model, rays, samples):
        evaluated.append(len(samples))
        sigma, colour = field_staged(model, rays, samples)
        return sigma, lambda index: coloured.append(len(index)) or colour(index)

    with torch.no_grad():
        full = model.sample(rays, training=False, early_stop=False)
        pruned = pipeline.prune_occluded(rays, full, model.occlusion_density(rays), eps)
        two = pipeline.render_samples(model, rays, pruned, bg)
        skip = float(two.weights.median())  # about half the samples weigh no more
        pipeline.field_staged = counting
        try:
            one, _ = pipeline.render_samples_in_rounds(model, rays, full, bg, eps=eps, colour_eps=0.0)
            n_all = sum(coloured)
            coarse, _ = pipeline.render_samples_in_rounds(model, rays, full, bg, eps=eps, colour_eps=skip)
            n_coarse = sum(coloured) - n_all
        finally:
            pipeline.field_staged = field_staged
    assert len(full) > len(pruned) or eps < 0.01  # something is occluded
    assert 0 < sum(evaluated) / 2 < len(full) + len(pruned)
    assert n_all <= len(pruned) and n_coarse < n_all
    assert torch.allclose(one.rgb, two.rgb, atol=1e-5)
    assert torch.allclose(one.depth, two.depth, atol=1e-4)
    assert torch.allclose(one.opacity, two.opacity, atol=1e-5)
    per_ray = torch.bincount(pruned.ray_indices, minlength=len(rays)).float()
    assert ((coarse.rgb - two.rgb).abs().amax(-1) <= skip * per_ray + 1e-5).all()
    assert torch.equal(coarse.opacity, one.opacity) and torch.equal(coarse.depth, one.depth)


def test_eval_metrics_and_renders(evaluated_run, scene):
    metrics = json.loads((evaluated_run / "metrics.json").read_text())
    for key in ("split", "n_images", "psnr", "psnr_uint8", "ssim", "lpips", "per_image"):
        assert key in metrics, key
    assert metrics["split"] == "test"
    assert metrics["n_images"] == N_TEST and len(metrics["per_image"]) == N_TEST
    assert metrics["lpips"] is None  # the lpips package / weights are not installed here
    assert [row["name"] for row in metrics["per_image"]] == [f"r_{i}" for i in range(N_TEST)]
    assert json.loads((evaluated_run / "metrics_test.json").read_text()) == metrics
    for key in ("psnr", "psnr_uint8", "ssim"):
        mean = sum(row[key] for row in metrics["per_image"]) / N_TEST
        assert metrics[key] == pytest.approx(mean, rel=1e-12)
        assert all(row["lpips"] is None for row in metrics["per_image"])
    worst = sorted(metrics["per_image"], key=lambda row: row["psnr"])[0]
    assert metrics["worst"] == {"name": worst["name"], "psnr": worst["psnr"]}
    from radfield.evaluation.evaluate import format_table
    assert f"worst: {worst['name']}" in format_table(metrics)
    renders = evaluated_run / "renders" / "test"
    for row in metrics["per_image"]:
        name = row["name"]
        rgb = iio.imread(renders / f"{name}_rgb.png")
        depth = iio.imread(renders / f"{name}_depth.png")
        opacity = iio.imread(renders / f"{name}_opacity.png")
        assert rgb.shape == (SIZE, SIZE, 3) and depth.shape == (SIZE, SIZE, 3)
        assert opacity.shape == (SIZE, SIZE)
        # Independent PSNR of the saved 8-bit render against the hand-composited ground truth.
        gt = _composite_white_uint8(iio.imread(scene / "test" / f"{name}.png"))
        mse = np.mean(((rgb.astype(np.float64) - gt) / 255.0) ** 2)
        assert row["psnr_uint8"] == pytest.approx(-10 * np.log10(mse), abs=1e-3)
        assert np.isfinite(row["psnr"]) and -1.0 <= row["ssim"] <= 1.0


def test_render_test_path_video(evaluated_run, capsys):
    out = evaluated_run / "v.mp4"
    rc, stdout, _ = run_cli(["render", evaluated_run, "--path", "test", "--out", out,
                             "--device", "cpu"], capsys)
    assert rc == 0 and f"({N_TEST} frames)" in stdout
    frames = read_video(out)
    assert len(frames) == N_TEST
    pngs = [iio.imread(evaluated_run / "renders" / "test" / f"r_{i}_rgb.png").astype(np.float64)
            for i in range(N_TEST)]
    for i, frame in enumerate(frames):
        assert frame.shape == (SIZE, SIZE, 3)
        diffs = [np.abs(frame.astype(np.float64) - png).mean() for png in pngs]
        # frame i is the render of test camera i (H.264 loses a little)
        assert diffs[i] < 6.0 and diffs[i] == min(diffs), diffs


def test_render_orbit_frames(trained_run, capsys, no_image_decoding):
    """The orbit is placed from the training cameras alone: no dataset image is decoded."""
    rc, stdout, _ = run_cli(["render", trained_run, "--path", "orbit", "--frames", "4",
                             "--device", "cpu"], capsys)
    assert rc == 0
    frames = read_video(trained_run / "orbit.mp4")
    assert len(frames) == 4 and frames[0].shape == (SIZE, SIZE, 3)


# ---------------------------------------------------------------------------- resume


def _config(scene: Path, max_steps: int) -> RunConfig:
    config = apply_overrides(RunConfig(), PRESETS["ngp-small"])
    config.data.path = str(scene)
    config.train.max_steps = max_steps
    config.train.eval_every = 1e9
    return config


def _trainer(scene: Path, run_dir: Path, resume: bool = False) -> Trainer:
    return Trainer(_config(scene, 40), run_dir, device="cpu", resume=resume, progress=False,
                   log_tensorboard=False)


def _assert_states_equal(a: dict, b: dict, where: str = "") -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            _assert_states_equal(x, y, f"{where}.{key}")
        elif isinstance(x, torch.Tensor):
            if x.dtype.is_floating_point:
                torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=f"{where}.{key} differs")
            else:
                assert torch.equal(x, y), f"{where}.{key} differs"
        else:
            assert x == y, f"{where}.{key}: {x!r} != {y!r}"


def test_resume_matches_uninterrupted_run(scene, tmp_path):
    full = _trainer(scene, tmp_path / "full")
    full.train()

    half = tmp_path / "half"
    first = _trainer(scene, half)
    first.train(stop=lambda step: step == 20)
    assert first.state.step == 20 and load_checkpoint(half)["state"]["step"] == 20
    model_20 = copy.deepcopy(first.model.state_dict())
    shutil.copytree(half, tmp_path / "control")

    resumed = _trainer(scene, half, resume=True)
    assert resumed.state.step == 20
    resumed.train()
    assert resumed.state.step == 40

    # Steps 20..40 changed the model, so equal final states are not trivially equal.
    assert not torch.equal(model_20["field.density_mlp.0.weight"],
                           resumed.model.state_dict()["field.density_mlp.0.weight"])
    # In memory: parameters and buffers (occupancy grid density / occupied / n_updates),
    # optimiser moments, the random generator, the adaptive ray count.
    _assert_states_equal(full.model.state_dict(), resumed.model.state_dict(), "model")
    _assert_states_equal(full.optimizer.state_dict(), resumed.optimizer.state_dict(), "optimizer")
    assert torch.equal(full.generator.get_state(), resumed.generator.get_state())
    assert full.state.n_rays == resumed.state.n_rays
    assert [h["step"] for h in full.history] == [h["step"] for h in resumed.history] == [40]
    # On disk: the two final checkpoints hold the same model.
    ck_full, ck_resumed = load_checkpoint(tmp_path / "full"), load_checkpoint(half)
    assert ck_full["state"]["step"] == ck_resumed["state"]["step"] == 40
    _assert_states_equal(ck_full["model"], ck_resumed["model"], "checkpoint model")

    # Control: the same resume with the generator re-seeded instead of restored is caught.
    control = _trainer(scene, tmp_path / "control", resume=True)
    control.generator.manual_seed(control.config.train.seed)
    control.train()
    with pytest.raises(AssertionError):
        _assert_states_equal(full.model.state_dict(), control.model.state_dict(), "model")


def test_cli_resume_continues_from_checkpoint(scene, tmp_path, capsys):
    run = tmp_path / "run"
    # no time-based validation mid-run, so the history is exactly [step 20, step 40]
    rc, out, _ = run_cli(["train", scene, "--out", run, "--max-steps", "20", "--eval-every", "1e9",
                          *COMMON], capsys)
    assert rc == 0 and "trained 20 steps" in out
    ck_20 = load_checkpoint(run)
    assert ck_20["state"]["step"] == 20

    rc, out, _ = run_cli(["train", scene, "--out", run, "--max-steps", "40", "--resume", *COMMON],
                         capsys)
    assert rc == 0 and "trained 40 steps" in out
    ck_40 = load_checkpoint(run)
    assert ck_40["state"]["step"] == 40
    # Continued, not restarted: the step-20 validation entry is still in the history, and
    # Adam's step count went on to 40.
    assert [h["step"] for h in json.loads((run / "history.json").read_text())] == [20, 40]
    assert {float(s["step"]) for s in ck_40["optimizer"]["state"].values()} == {40.0}
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 40
    assert not torch.equal(ck_20["model"]["field.color_mlp.0.weight"],
                           ck_40["model"]["field.color_mlp.0.weight"])


# ---------------------------------------------------------------------------- bad input


def _broken_copy(scene: Path, dest: Path, breakage: str) -> tuple[Path, list[str]]:
    """A copy of ``scene`` broken one way; returns it and the words the error must contain."""
    data = shutil.copytree(scene, dest)
    train_json = data / "transforms_train.json"
    meta = json.loads(train_json.read_text())
    if breakage == "missing folder":
        shutil.rmtree(data)
        return data, [str(data), "no such file or folder"]
    if breakage == "no frames":
        meta["frames"] = []
        train_json.write_text(json.dumps(meta))
        return data, [str(train_json), "no frames"]
    if breakage == "missing image":
        (data / "train" / "r_3.png").unlink()
        return data, [str(data / "train" / "r_3.png"), "not found"]
    if breakage == "image sizes differ":
        iio.imwrite(data / "train" / "r_1.png", np.zeros((16, 16, 4), np.uint8))
        return data, [str(data / "train" / "r_1.png"), "16x16", f"{SIZE}x{SIZE}"]
    if breakage == "non-rigid pose":
        m = np.array(meta["frames"][2]["transform_matrix"])
        m[:3, :3] *= 2.0  # a scaled rotation
        meta["frames"][2]["transform_matrix"] = m.tolist()
        train_json.write_text(json.dumps(meta))
        return data, [str(train_json), "frame 2", "rigid"]
    raise ValueError(breakage)


def assert_clean_error(rc: int, out: str, err: str, words: list[str]) -> None:
    assert rc == 2
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("radfield: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize("breakage", ["missing folder", "no frames", "missing image",
                                      "image sizes differ", "non-rigid pose"])
def test_train_bad_dataset(breakage, scene, tmp_path, capsys):
    data, words = _broken_copy(scene, tmp_path / "data", breakage)
    dataset_before = listing(data)
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", data, "--out", run, "--max-steps", "1", *COMMON], capsys)
    assert_clean_error(rc, out, err, words)
    assert not run.exists()  # no half-made run directory
    assert listing(data) == dataset_before


def test_train_unknown_model(scene, tmp_path, capsys):
    run = tmp_path / "run"
    rc, out, err = run_cli(["train", scene, "--out", run, "--model", "bogus", "--max-steps", "1",
                            "--no-progress", "--device", "cpu"], capsys)
    assert_clean_error(rc, out, err, ["--model", "'bogus'", "ngp"])
    assert not run.exists()


def test_process_and_multiscale_bad_input(tmp_path, capsys):
    missing = tmp_path / "no-such-folder"
    rc, out, err = run_cli(["process", "images", missing, "--out", tmp_path / "ds"], capsys)
    assert_clean_error(rc, out, err, [str(missing)])
    assert not (tmp_path / "ds" / "sparse").exists()
    rc, out, err = run_cli(["multiscale", missing, "--out", tmp_path / "ms"], capsys)
    assert_clean_error(rc, out, err, [str(missing)])
    assert not (tmp_path / "ms").exists()


def test_eval_without_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    before = listing(run)
    rc, out, err = run_cli(["eval", run, "--device", "cpu"], capsys)
    assert_clean_error(rc, out, err, [str(run / CHECKPOINT_NAME), "no checkpoint"])
    assert listing(run) == before  # no metrics.json, no renders/


def test_train_into_existing_run_without_resume(trained_run, scene, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = listing(run)
    rc, out, err = run_cli(["train", scene, "--out", run, "--max-steps", "1", *COMMON], capsys)
    assert_clean_error(rc, out, err, [str(run), "--resume"])
    assert listing(run) == before  # checkpoint.pt (and everything else) byte-for-byte unchanged


@pytest.mark.parametrize("command", ["render", "eval"])
@pytest.mark.parametrize("corruption", ["random bytes", "truncated"])
def test_corrupt_checkpoint(command, corruption, trained_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained_run / "config.json", run / "config.json")
    good = (trained_run / CHECKPOINT_NAME).read_bytes()
    if corruption == "random bytes":
        bad = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    else:
        bad = good[: len(good) // 2]
    (run / CHECKPOINT_NAME).write_bytes(bad)
    before = listing(run)
    argv = [command, run, "--device", "cpu"]
    if command == "render":
        argv += ["--path", "orbit", "--frames", "2", "--out", run / "v.mp4"]
    rc, out, err = run_cli(argv, capsys)
    assert_clean_error(rc, out, err, [str(run / CHECKPOINT_NAME), "unreadable checkpoint"])
    assert listing(run) == before  # no video, metrics or temporary files


# ---------------------------------------------------------------------------- atomic checkpoints


FILLER = {key: "" for key in REQUIRED_KEYS}  # load_checkpoint insists on a complete checkpoint


@pytest.mark.parametrize("failure", [OSError, KeyboardInterrupt])
def test_checkpoint_write_is_atomic(failure, tmp_path, monkeypatch):
    path = tmp_path / CHECKPOINT_NAME
    save_checkpoint(path, {**FILLER, "step": 1, "weights": torch.arange(1000.0)})
    before = path.read_bytes()
    real_save = torch.save
    targets = []

    def save_half_then_fail(obj, f, *args, **kwargs):
        """Write the first half of the real serialisation to ``f``, then fail (disk full, ^C)."""
        buffer = io.BytesIO()
        real_save(obj, buffer)
        targets.append(Path(f))
        Path(f).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise failure("interrupted mid-write")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(failure):
        save_checkpoint(path, {**FILLER, "step": 2, "weights": torch.zeros(1000)})
    monkeypatch.undo()

    # The partial file went to a temporary beside the target (same file system: os.replace is
    # atomic), never to the target itself; the old checkpoint is intact and no temp remains.
    assert len(targets) == 1 and targets[0] != path and targets[0].parent == path.parent
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]
    ck = load_checkpoint(tmp_path)
    assert ck["step"] == 1 and torch.equal(ck["weights"], torch.arange(1000.0))


# ---------------------------------------------------------------------------- regressions


def test_bad_option_value_is_one_line(capsys):
    """cli.py's docstring: an unknown option value is one line ``radfield: error: ...``, exit 2."""
    try:
        rc = main(["render", "some-run", "--path", "bogus"])
    except SystemExit as exc:
        rc = exc.code
    assert_clean_error(rc, *capsys.readouterr(), ["--path", "bogus"])


@pytest.mark.parametrize("item,expected", [
    ("train.pose_opt.lr=6e-4", ("train.pose_opt.lr", 6e-4)),
    (" train.hsm.enabled = true", ("train.hsm.enabled", True)),
    ("train.pose_opt.coarse_to_fine=None", ("train.pose_opt.coarse_to_fine", None)),
    ("train.pose_opt.coarse_to_fine=[0.1, 0.5]", ("train.pose_opt.coarse_to_fine", [0.1, 0.5])),
    ("data.path=a=b", ("data.path", "a=b")),
])
def test_parse_override(item, expected):
    """``--set KEY=VALUE`` (the CLI's and the benchmarks'): JSON values, Python's None, else text."""
    assert parse_override(item) == expected


@pytest.mark.parametrize("item", ["train.max_time", "=3"])
def test_parse_override_needs_key_and_value(item):
    with pytest.raises(RadfieldError, match="expected KEY=VALUE"):
        parse_override(item)


def test_resume_keeps_saved_step_limit(trained_run):
    """``train DATA --out RUN --resume`` of a 40-step run must not turn it into a 20000-step one
    (Trainer: 'its saved config wins, except max_steps / max_time given anew')."""
    from radfield.cli import build_parser, run_config_from_args

    args = build_parser().parse_args(["train", "unused", "--out", str(trained_run), "--resume"])
    trainer = Trainer(run_config_from_args(args), trained_run, device="cpu", resume=True,
                      progress=False, log_tensorboard=False)  # constructing it writes nothing
    assert trainer.config.train.max_steps == 40


def test_resume_of_finished_run_adds_no_history(trained_run, scene, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = json.loads((run / "history.json").read_text())
    rc, _, _ = run_cli(["train", scene, "--out", run, "--max-steps", "40", "--resume", *COMMON],
                       capsys)
    assert rc == 0 and load_checkpoint(run)["state"]["step"] == 40
    assert json.loads((run / "history.json").read_text()) == before


def test_malformed_val_split_is_an_error(scene, tmp_path):
    data = shutil.copytree(scene, tmp_path / "data")
    (data / "val" / "r_0.png").unlink()
    config = _config(data, 1)
    with pytest.raises(RadfieldError, match="r_0.png"):
        Trainer(config, tmp_path / "run", device="cpu", progress=False, log_tensorboard=False)
