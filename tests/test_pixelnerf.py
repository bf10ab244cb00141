"""PixelNeRF on the model surface (a field file, a model file, a config section, a registry line),
trained across a folder of generated scenes and evaluated on unseen ones. Ground truth:
projections of known points worked out by hand, feature maps written by hand (bilinear reads of
a linear map are exact), the views' independence before the mean pooling, and the training
loss on a fixed batch before and after a short run."""

from __future__ import annotations

import json

import pytest
import torch

from radfield.cameras import Cameras, image_rays
from radfield.cli import main
from radfield.config import PRESETS, RunConfig, apply_overrides
from radfield.data import load_scene
from radfield.data.synthetic import make_scenes
from radfield.data.views import farthest_point_views
from radfield.errors import RadfieldError
from radfield.fields.pixelnerf import Context, PixelNeRFField, PixelNeRFFieldConfig
from radfield.models import SceneInfo, build_model
from radfield.rendering.images import render_image
from radfield.training.checkpoint import load_run
from radfield.training.multiscene import composite
from conftest import assert_one_line_naming

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])
TINY = ["--set", "pixelnerf.field.encoder_channels=[8,16]", "--set", "pixelnerf.field.hidden=32",
        "--set", "pixelnerf.sampler.n_coarse=16", "--set", "pixelnerf.sampler.n_fine=8",
        "--set", "pixelnerf.optim.target_samples=4096", "--set", "pixelnerf.optim.lr=2e-3",
        "--set", "train.init_rays=256", "--set", "train.val_images=1", "--eval-every", "1e9"]
STEPS = 100
WHITE = torch.ones(3)


def hand_camera() -> Cameras:
    """A 16 x 16 camera at ``c = (1, 2, 3)`` whose right, up and backward axes are world y, z
    and x (it looks down world -x); ``fx = fy = 10``, ``cx = cy = 8``."""
    rot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: right, up, back
    c2w = torch.cat([rot, torch.tensor([[1.0], [2.0], [3.0]])], dim=1)[None]
    one = torch.ones(1)
    return Cameras(c2w, 10 * one, 10 * one, 8 * one, 8 * one, 16, 16)


def world_point(a: float, b: float, z: float) -> list[float]:
    """The world point at ``(a, b, -z)`` in :func:`hand_camera`'s frame: ``c + a y + b z - z x``."""
    return [1.0 - z, 2.0 + a, 3.0 + b]


def small_field(seed: int = 0, **overrides) -> PixelNeRFField:
    torch.manual_seed(seed)
    cfg = PixelNeRFFieldConfig(encoder_channels=(4, 8), hidden=16, position_freqs=2, **overrides)
    field = PixelNeRFField(BOX, cfg)
    for block in [*field.before_pool, *field.after_pool]:  # blocks that are not the identity
        torch.nn.init.normal_(block.fc2.weight, std=0.3)
    return field


def orbit_cameras(n: int) -> Cameras:
    from radfield.cameras import orbit_poses

    poses = orbit_poses(n, 4.0, 30.0)
    f = torch.full((n,), 20.0)
    return Cameras(poses, f, f.clone(), torch.full((n,), 8.0), torch.full((n,), 8.0), 16, 16)


def probe(n: int = 200, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g) - 0.5) * 2, torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)


# ---------------------------------------------------------------------------- projection and features


def test_points_project_to_hand_computed_pixels_and_read_the_feature_map_there():
    """In the camera's frame ``(0.2, 0.1, -2)``: ``u = 10 * 0.2 / 2 + 8 = 9``,
    ``v = 8 - 10 * 0.1 / 2 = 7.5``; on the 8 x 8 map that is the point ``(4.5, 3.75)``, index
    coordinates ``(col 4, row 3.25)``, so the linear channel ``10 row + col`` reads 36.5 (bilinear
    interpolation of a linear map is exact). ``(-0.6, -0.6, -2)`` projects to ``(5, 11)``, the
    centre of map pixel ``(col 2, row 5)``: every channel reads that pixel's value."""
    field = small_field()
    cams = hand_camera()
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    features = torch.stack([10 * rows + cols, torch.randn(8, 8), torch.randn(8, 8)])[None]  # (1, 3, 8, 8)
    field.context = Context(cams, features)
    x = torch.tensor([world_point(0.2, 0.1, 2.0), world_point(-0.6, -0.6, 2.0), world_point(0.0, 0.0, -2.0)])
    from radfield.cameras import project

    uv, z = project(cams, 0, x)
    torch.testing.assert_close(uv[:2], torch.tensor([[9.0, 7.5], [5.0, 11.0]]))
    torch.testing.assert_close(z, torch.tensor([2.0, 2.0, -2.0]))
    feats = field.view_inputs(x, torch.nn.functional.normalize(torch.ones(3, 3), dim=-1))[0, :, :3]
    assert feats[0, 0].item() == pytest.approx(36.5, abs=1e-4)
    torch.testing.assert_close(feats[1], features[0, :, 5, 2])
    assert torch.equal(feats[2], torch.zeros(3))  # behind the camera: no feature


def test_points_outside_the_image_read_the_border_or_zeros():
    """``(3, 0, -2)`` projects to ``u = 23`` (right of the 16-pixel image) at ``v = 8``, between
    map rows 3 and 4: ``border`` reads the last column's mean of those rows, ``zeros`` nothing."""
    cams = hand_camera()
    features = torch.arange(64.0).reshape(1, 1, 8, 8)
    x = torch.tensor([world_point(3.0, 0.0, 2.0)])
    d = torch.tensor([[0.0, 0.0, 1.0]])
    border, zeros = small_field(padding="border"), small_field(padding="zeros")
    border.context = zeros.context = Context(cams, features)
    assert border.view_inputs(x, d)[0, 0, 0].item() == pytest.approx((features[0, 0, 3, 7] + features[0, 0, 4, 7]).item() / 2)
    assert zeros.view_inputs(x, d)[0, 0, 0].item() == 0.0


def test_positions_and_directions_are_encoded_in_each_source_cameras_frame():
    field = small_field()
    cams = hand_camera()
    field.context = Context(cams, torch.zeros(1, 12, 8, 8))
    x = torch.tensor([world_point(0.3, -0.2, 1.5)])
    d = torch.tensor([[-1.0, 0.0, 0.0]])  # world -x: the camera's forward axis, (0, 0, -1) in its frame
    inputs = field.view_inputs(x, d)[0, 0]
    pe_x = field.position_encoding(torch.tensor([[0.3, -0.2, -1.5]]) / 1.5)[0]
    pe_d = field.direction_encoding(torch.tensor([[0.0, 0.0, -1.0]]))[0]
    torch.testing.assert_close(inputs[12:], torch.cat([pe_x, pe_d]))


# ---------------------------------------------------------------------------- pooling over views


def test_views_meet_only_in_the_mean_and_their_order_does_not_matter():
    field = small_field()
    cams = orbit_cameras(3)
    images = torch.rand(3, 16, 16, 3, generator=torch.Generator().manual_seed(2))
    x, d = probe()
    with torch.no_grad():
        hidden = []
        for v in range(3):  # each view alone, through the layers before the pooling
            field.set_context(images[v:v + 1], cams[v])
            hidden.append(field.per_view(field.view_inputs(x, d))[0])
        single = field.raw(x, d)  # context: view 2 alone
        torch.testing.assert_close(single, field.head(field.after_pool(hidden[2])))
        field.set_context(images, cams)
        together = field.raw(x, d)
        torch.testing.assert_close(together, field.after_pooling(torch.stack(hidden).mean(0)))
        order = [2, 0, 1]
        field.set_context(images[order], cams[order])
        torch.testing.assert_close(field.raw(x, d), together)
    assert (together - single).abs().max() > 1e-3  # the other views do matter


def test_duplicated_views_leave_the_mean_unchanged_only_when_every_view_is_repeated_alike():
    """Mean pooling: ``[a]`` = ``[a, a]`` and ``[a, b]`` = ``[a, b, b, a]``; ``[a, b, b]`` weighs
    ``b`` twice and differs."""
    field = small_field()
    cams = orbit_cameras(2)
    images = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(3))
    x, d = probe()

    def raw(order):
        field.set_context(images[order], cams[order])
        return field.raw(x, d)

    with torch.no_grad():
        torch.testing.assert_close(raw([0]), raw([0, 0]))
        torch.testing.assert_close(raw([0, 1]), raw([0, 1, 1, 0]))
        assert (raw([0, 1]) - raw([0, 1, 1])).abs().max() > 1e-3


def test_a_field_without_source_views_is_a_one_line_error():
    field = small_field()
    x, d = probe(4)
    with pytest.raises(RadfieldError, match="source views"):
        field.raw(x, d)


def test_the_encoder_gets_the_gradient_of_the_render():
    config = apply_overrides(RunConfig(), {**PRESETS["pixelnerf-small"], "pixelnerf.field.encoder_channels": (4, 8),
                                           "pixelnerf.field.hidden": 16, "pixelnerf.sampler.n_coarse": 8,
                                           "pixelnerf.sampler.n_fine": 4})
    model = build_model(config, SceneInfo(BOX, 2, True))
    cams = orbit_cameras(2)
    model.set_context(torch.rand(1, 16, 16, 3), cams[0])
    rays = image_rays(cams, 1)[:64]
    from radfield.rendering.pipeline import render_samples

    out = render_samples(model, rays, model.sample(rays, training=True), WHITE)
    out.rgb.sum().backward()
    grads = [p.grad for p in model.field.encoder.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------------------- across scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two training scenes (seeds 0, 1) and one unseen scene (seed 2), 16 x 16, 5 training views."""
    root = tmp_path_factory.mktemp("pixelnerf")
    make_scenes(root / "train", 2, 0, n_train=5, n_val=1, n_test=2, size=16)
    make_scenes(root / "unseen", 1, 2, n_train=5, n_val=0, n_test=2, size=16)
    return root


def fixed_batch_mse(model, scene) -> float:
    """MSE of the render of training view 4 from source view 0, over white."""
    data = load_scene(scene, "train")
    with torch.no_grad():
        model.set_context(composite(data.images[[0]], WHITE), data.cameras[0])
        rgb = render_image(model, data.cameras, 4, WHITE, chunk=1024).rgb
    return float(((rgb - data.composited(4, WHITE)) ** 2).mean())


@pytest.fixture(scope="module")
def run(scenes):
    """A short run through the command line."""
    out = scenes / "run"
    assert main(["train", str(scenes / "train"), "--model", "pixelnerf", "--out", str(out), "--max-steps",
                 str(STEPS), "--no-progress", "--device", "cpu", *TINY]) == 0
    return out


def test_training_across_scenes_lowers_the_loss_and_reloads_exactly(run, scenes):
    config, trained = load_run(run)
    assert config.model == "pixelnerf" and config.pixelnerf.field.hidden == 32
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ck["state"]["step"] == STEPS
    record = json.loads((run / "scene.json").read_text())
    assert record["scenes"] == ["scene_0000", "scene_0001"]
    torch.manual_seed(config.train.seed)  # the trainer builds the model after this seed
    initial = build_model(config, trained.scene).eval()
    scene = scenes / "train" / "scene_0001"
    before, after = fixed_batch_mse(initial, scene), fixed_batch_mse(trained, scene)
    assert after < 0.7 * before, (before, after)
    again = load_run(run)[1]
    assert fixed_batch_mse(again, scene) == after  # reloaded, it renders identically


def test_unseen_scenes_are_scored_from_one_two_and_three_views(run, scenes, capsys):
    assert main(["eval", str(run), "--scenes", str(scenes / "unseen"), "--sources", "1,2,3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "1 src" in printed and "3 src" in printed and "scene_0002" in printed
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["n_scenes"] == 1 and list(metrics["sources"]) == ["1", "2", "3"]
    data = load_scene(scenes / "unseen" / "scene_0002", "train")
    entry = metrics["per_scene"][0]
    for k in ("1", "2", "3"):
        views = farthest_point_views(data.cameras.centers, int(k))
        assert entry["sources"][k]["views"] == [data.names[v] for v in views]
        assert metrics["sources"][k]["psnr"] == entry["sources"][k]["psnr"]  # one scene: its own mean
        assert 5 < metrics["sources"][k]["psnr"] < 60 and 0 < metrics["sources"][k]["ssim"] <= 1
    assert (run / "renders" / "unseen" / "scene_0002" / "2src_r_1_rgb.png").is_file()
    # a single-scene evaluation of a pixelnerf run says how to evaluate it
    assert main(["eval", str(run), "--device", "cpu"]) == 2
    assert "--scenes FOLDER" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bad input


def test_bad_input_is_one_line(run, scenes, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", str(empty), "--model", "pixelnerf", "--out", str(tmp_path / "r1"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no scenes" in err
    assert_one_line_naming(err.strip(), empty)
    assert main(["eval", str(run), "--scenes", str(scenes / "unseen"), "--sources", "1,9", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--sources 9" in err and "has 5 views" in err
    assert_one_line_naming(err.strip(), scenes / "unseen" / "scene_0002")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", str(run), "--scenes", str(scenes / "unseen"), "--sources", "0,1"])
    assert exit_.value.code == 2 and "--sources" in capsys.readouterr().err
    assert main(["train", str(scenes / "train"), "--model", "pixelnerf", "--hsm", "--out", str(tmp_path / "r2")]) == 2
    assert "--hsm: not supported by pixelnerf" in capsys.readouterr().err
    with pytest.raises(RadfieldError, match="needs at least 2"):
        _trainer(one_view_scene(tmp_path), tmp_path)


def one_view_scene(tmp_path):
    folder = tmp_path / "one_view"
    make_scenes(folder, 1, 3, n_train=1, n_val=0, n_test=0, size=8)
    return folder


def test_multiscene_batches_carry_the_near_gradient(tmp_path):
    """``train.near_gradient`` reaches training across scenes too, in units of the first
    scene's farthest camera distance from the box's centre (computed here from its poses)."""
    folder = tmp_path / "scenes"
    make_scenes(folder, 2, 0, n_train=3, n_val=0, n_test=0, size=8)
    trainer = _trainer(folder, tmp_path, {"train.near_gradient": 0.5})
    aabb = trainer.data.aabb
    radius = (trainer.data.cameras.c2w[:, :3, 3] - (aabb[:3] + aabb[3:]) / 2).norm(dim=-1).max()
    assert trainer.make_batch(16).near_gradient == pytest.approx(0.5 * float(radius), rel=1e-5)


def _trainer(folder, tmp_path, overrides=None):
    from radfield.training.multiscene import MultiSceneTrainer

    config = apply_overrides(RunConfig(), {**PRESETS["pixelnerf-small"], **(overrides or {})})
    config.data.path = str(folder)
    return MultiSceneTrainer(config, tmp_path / "r", progress=False, log_tensorboard=False)
