"""VolSDF against its formulas and the built-in scene's true surfaces: the Laplace-CDF density
by hand, the SDF gradient (autograd and central differences) against an analytic SDF and each
other, the geometric initialisation against a sphere's SDF, HSM with b = B (the eikonal term is an
extra loss on the field), and the zero level set after training against the analytic scene."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import trimesh

from radfield.cli import main
from radfield.config import HSMConfig, RunConfig, apply_overrides
from radfield.data.synthetic import make_scene
from radfield.evaluation.evaluate import evaluate_run
from radfield.fields.volsdf import eikonal_loss, laplace_density, sdf_gradient
from radfield.models import SceneInfo, build_model
from radfield.training.trainer import Trainer
from conftest import make_config
from test_export import scene_sdf

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = torch.tensor([-1.5, -1.5, -1.5, 1.5, 1.5, 1.5])


def model_for(overrides: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    config = apply_overrides(RunConfig(model="volsdf"), overrides or {})
    return build_model(config, SceneInfo(BOX, 4, True))


def test_laplace_density_by_hand():
    beta = torch.tensor(0.1)
    d = torch.tensor([0.0, 0.1, -0.1, 5.0, -5.0])
    e = math.exp(-1.0)
    expected = torch.tensor([5.0, 10 * 0.5 * e, 10 * (1 - 0.5 * e), 10 * 0.5 * math.exp(-50), 10.0])
    torch.testing.assert_close(laplace_density(d, beta), expected, rtol=1e-6, atol=1e-12)
    # its derivative in d is -(1 / beta) * the Laplace pdf: finite differences
    x = torch.tensor([0.03, -0.07], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(laplace_density(x, torch.tensor(0.1, dtype=torch.float64)).sum(), x)
    pdf = torch.exp(-x.detach().abs() / 0.1) / (2 * 0.1)
    torch.testing.assert_close(g, -pdf / 0.1)


def test_sdf_gradient_and_eikonal_on_an_analytic_field():
    sdf = lambda x: 2.0 * x.norm(dim=-1) - 1.0  # noqa: E731  |grad| = 2 everywhere
    x = torch.tensor([[0.3, -0.2, 0.5], [1.0, 0.0, 0.0], [-0.4, 0.4, 0.1]])
    for eps in (None, 1e-3):
        g = sdf_gradient(sdf, x, eps)
        torch.testing.assert_close(g, 2.0 * x / x.norm(dim=-1, keepdim=True), rtol=1e-3, atol=1e-4)
        assert float(eikonal_loss(g).detach()) == pytest.approx(1.0, rel=1e-3)  # (2 - 1)^2


def test_numerical_gradient_matches_autograd_on_the_mlp_field():
    model = model_for({"volsdf.field.backbone": "mlp", "volsdf.field.width": 32})
    x = (torch.rand(64, 3, generator=torch.Generator().manual_seed(0)) - 0.5) * 2
    auto = sdf_gradient(model.field.sdf, x)
    numeric = sdf_gradient(model.field.sdf, x, 1e-3)
    torch.testing.assert_close(numeric, auto, rtol=2e-2, atol=2e-3)
    # and gradients reach the parameters through both
    for g in (auto, numeric):
        model.zero_grad()
        eikonal_loss(g).backward(retain_graph=True)
        assert model.field.layers[0].weight.grad.abs().max() > 0


@pytest.mark.parametrize("backbone", ["hash", "mlp"])
def test_geometric_initialisation_is_a_sphere(backbone):
    model = model_for({"volsdf.field.backbone": backbone, "volsdf.field.width": 256})
    x = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1)) * 0.6
    with torch.no_grad():
        d = model.field.sdf(x)
        true = x.norm(dim=-1) - 0.5 * 1.5  # radius 0.5 in box-normalised units, half size 1.5
        assert torch.corrcoef(torch.stack([d, true]))[0, 1] > 0.95
        assert float(model.field.sdf(torch.zeros(1, 3))) < 0 < float(model.field.sdf(torch.full((1, 3), 1.4)))


def test_hsm_with_b_equal_B_keeps_the_eikonal_term(tmp_path):
    from radfield.cameras import pixel_rays
    from radfield.data import load_scene
    from radfield.losses import l2
    from radfield.training.steps import HardSampleMiner, StepBatch, baseline_step, photometric_objective

    scene = make_scene(tmp_path / "s", n_train=2, n_val=0, n_test=0, size=12)
    data = load_scene(scene, "train")
    model = model_for({"volsdf.sampler.n_coarse": 8, "volsdf.sampler.n_fine": 8, "volsdf.eikonal_weight": 0.5})
    g = torch.Generator().manual_seed(3)
    n = 32
    rays = pixel_rays(data.cameras, torch.randint(0, 2, (n,), generator=g), torch.randint(0, 12, (n,), generator=g),
                      torch.randint(0, 12, (n,), generator=g))
    objective = photometric_objective(l2)

    def grads(m):
        batch = StepBatch(rays, m.sample(rays, training=True, generator=torch.Generator().manual_seed(4)),
                          torch.full((n, 3), 0.5), torch.ones(n, 3))
        return batch

    base, twin, plain = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    baseline_step(base, grads(base), objective)
    HardSampleMiner(HSMConfig(enabled=True, min_fraction=1.0, max_fraction=1.0)).step(twin, grads(twin), objective)
    gb = {k: p.grad for k, p in base.named_parameters() if p.grad is not None}
    gh = {k: p.grad for k, p in twin.named_parameters() if p.grad is not None}
    assert gb.keys() == gh.keys() and "field.beta_param" in gb
    for k in gb:
        torch.testing.assert_close(gh[k], gb[k], rtol=1e-4, atol=1e-7, msg=k)
    plain.config.eikonal_weight = 0.0  # the eikonal term is in those gradients
    baseline_step(plain, grads(plain), objective)
    g0 = {k: p.grad for k, p in plain.named_parameters() if p.grad is not None}
    assert max(float((gb[k] - g0[k]).abs().max()) for k in g0) > 1e-4


def test_volsdf_learns_the_scene_surfaces(tmp_path, capsys):
    """400 steps on the built-in scene (32 px): the SDF's zero level lies on the analytic
    surfaces (measured while writing this, 1000 steps: median 0.044, 90th percentile 0.066)."""
    scene = make_scene(tmp_path / "scene", n_train=30, n_val=1, n_test=2, size=32)
    overrides = {"volsdf.optim.target_samples": 4096, "volsdf.sampler.n_coarse": 32,
                 "volsdf.sampler.n_fine": 32, "volsdf.optim.warmup_steps": 10, "volsdf.eikonal_points": 512}
    Trainer(make_config(scene, "volsdf", overrides, steps=400), tmp_path / "run", progress=False,
            log_tensorboard=False).train()
    metrics = evaluate_run(tmp_path / "run", "test", save_renders=False, progress=False)
    assert main(["export", "mesh", str(tmp_path / "run"), "--out", str(tmp_path / "m.ply"), "--resolution", "64",
                 "--device", "cpu"]) == 0
    mesh = trimesh.load(tmp_path / "m.ply", process=False)
    d = np.abs(scene_sdf(np.asarray(mesh.vertices)))
    print(f"volsdf: test PSNR {metrics['psnr']:.2f} dB; mesh {len(mesh.vertices)} vertices, distance to the "
          f"true surfaces median {np.median(d):.4f}, 90th percentile {np.percentile(d, 90):.4f}")
    assert metrics["psnr"] > 17.0
    assert np.median(d) < 0.08 and np.percentile(d, 90) < 0.2

    # the point cloud carries the SDF's normals: against the true surfaces' normals (the
    # analytic SDF's gradient by central differences at each point)
    assert main(["export", "pointcloud", str(tmp_path / "run"), "--out", str(tmp_path / "p.ply"), "--views", "4",
                 "--device", "cpu"]) == 0
    cloud = trimesh.load(tmp_path / "p.ply", process=False)
    raw = cloud.metadata["_ply_raw"]["vertex"]["data"]
    points = np.asarray(cloud.vertices)
    normals = np.stack([raw["nx"], raw["ny"], raw["nz"]], 1)
    eps = 1e-3
    true = np.stack([scene_sdf(points + eps * e) - scene_sdf(points - eps * e) for e in np.eye(3)], 1)
    true /= np.linalg.norm(true, axis=1, keepdims=True)
    cos = (normals * true).sum(1)
    print(f"point cloud: {len(points)} points, normal cosine to the true normals: median {np.median(cos):.3f}")
    assert len(points) > 200 and np.median(cos) > 0.9


def test_normal_maps_of_the_initial_sphere():
    """At initialisation the SDF is (about) a sphere around the box centre: the rendered normal of
    each opaque pixel points along the position of its expected surface point."""
    from radfield.cameras import Cameras, look_at
    from radfield.rendering.images import render_image

    model = model_for({"volsdf.field.width": 256}).eval()
    c2w = look_at(torch.tensor([0.0, -3.5, 1.0]), torch.zeros(3))[None]
    ones = torch.ones(1)
    cams = Cameras(c2w, 30 * ones, 30 * ones, 16 * ones, 16 * ones, 32, 32)
    r = render_image(model, cams, 0, torch.ones(3))
    assert r.normal is not None and r.normal.shape == (32, 32, 3)
    from radfield.cameras import image_rays
    rays = image_rays(cams, 0)
    opaque = r.opacity.reshape(-1) > 0.9
    t = r.depth.reshape(-1) / rays.z_per_t  # planar depth back to ray distance
    p = rays.origins + t[:, None] * rays.directions
    n = torch.nn.functional.normalize(r.normal.reshape(-1, 3), dim=-1)
    cos = (n * torch.nn.functional.normalize(p, dim=-1)).sum(-1)[opaque]
    assert opaque.sum() > 50 and float(cos.mean()) > 0.95
    assert r.normal.reshape(-1, 3)[~(r.opacity.reshape(-1) > 1e-3)].abs().max() < 1e-2  # empty: ~0


def test_viewer_offers_normals_for_models_that_have_them():
    from radfield.viewer.render_loop import colour_image, render_modes

    assert "normal" in render_modes(model_for())
    ngp = build_model(apply_overrides(RunConfig(model="ngp"), {"ngp.grid.log2_table_size": 10}), SceneInfo(BOX))
    assert "normal" not in render_modes(ngp) and "depth" in render_modes(ngp)
    n = torch.tensor([[[1.0, 0.0, -1.0]]])
    image = colour_image("normal", torch.zeros(1, 1, 3), torch.zeros(1, 1), torch.ones(1, 1), n)
    assert image.tolist() == [[[255, 128, 0]]]  # (n + 1) / 2 -> (1, 0.5, 0)


def test_far_sphere_distance_by_hand():
    from radfield.rendering.backgrounds import far_sphere_distance

    o = torch.tensor([[0.0, 0.0, 0.0], [-4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    t = far_sphere_distance(o, d, torch.zeros(3), torch.tensor([2.0, 1.0, 1.0]))
    # inside: exits at 2; from x = -4 through the unit sphere: exits at x = 1 (t = 5); a miss:
    # the point of closest approach (t = 0)
    torch.testing.assert_close(t, torch.tensor([2.0, 5.0, 0.0]))


def test_outside_sphere_background_samples_and_composite():
    """The field sees points on each ray beyond the sphere at inverse distances ``1 - (i + 0.5)
    / k``; the colour is the hand-composited sum ``T_i alpha_i c_i`` with an opaque last interval."""
    from radfield.cameras import Rays
    from radfield.rendering.backgrounds import OutsideSphereBackground

    torch.manual_seed(0)
    center, radius, k = torch.tensor([0.2, -0.1, 0.3]), 1.5, 8
    bg = OutsideSphereBackground(center, radius, n_samples=k).eval()
    n = 5
    dirs = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1)
    origins = center + dirs * torch.tensor([0.0, 0.5, 1.2, 4.0, 6.0])[:, None]  # 3 inside, 2 outside
    directions = torch.nn.functional.normalize(torch.randn(n, 3), dim=-1) * 1.7  # not unit
    rays = Rays(origins, directions, torch.ones(n))
    seen = {}
    bg.encoding.register_forward_hook(lambda m, args, out: seen.__setitem__("x", args[0].detach()))
    bg.density_head.register_forward_hook(lambda m, args, out: seen.__setitem__("density", out.detach()))
    bg.colour_head.register_forward_hook(lambda m, args, out: seen.__setitem__("colour", out.detach()))
    with torch.no_grad():
        colour = bg(rays)

    x = seen["x"].reshape(n, k, 4)
    s = x[..., 3]
    inside = (origins - center).norm(dim=-1) < radius
    assert 0 < inside.sum() < n
    torch.testing.assert_close(s[inside], (1.0 - (torch.arange(k) + 0.5) / k).expand(int(inside.sum()), k))
    points = center + x[..., :3] * (radius / s)[..., None]  # back to 3D
    d = torch.nn.functional.normalize(directions, dim=-1)
    rel = points - origins[:, None]
    t = (rel * d[:, None]).sum(-1)
    assert float((rel - t[..., None] * d[:, None]).norm(dim=-1).max()) < 1e-4  # on the ray
    assert (t[inside] > 0).all() and (t[inside, 1:] > t[inside, :-1]).all()  # in front, in order

    sigma = torch.nn.functional.softplus(seen["density"][:, 0] - 1.0).reshape(n, k).double()
    rgb = torch.sigmoid(seen["colour"]).reshape(n, k, 3).double()
    expected = torch.zeros(n, 3, dtype=torch.float64)
    for r in range(n):
        trans = 1.0
        for i in range(k):
            alpha = 1.0 if i == k - 1 else 1.0 - math.exp(-float(sigma[r, i]) * float(t[r, i + 1] - t[r, i]))
            expected[r] += trans * alpha * rgb[r, i]
            trans *= 1.0 - alpha
    torch.testing.assert_close(colour.double(), expected, rtol=0, atol=1e-4)


def test_volsdf_background_field_trains_and_reloads(tmp_path):
    """With ``volsdf.background_field`` the model's background is the outside field: training
    steps (baseline and HSM) move its parameters, and a reloaded run renders the same image."""
    from radfield.data import load_scene
    from radfield.rendering.backgrounds import OutsideSphereBackground
    from radfield.rendering.images import render_image
    from radfield.training.checkpoint import load_run

    scene = make_scene(tmp_path / "s", n_train=4, n_val=0, n_test=1, size=12)
    overrides = {"volsdf.background_field": True, "volsdf.background_samples": 8, "volsdf.sampler.n_coarse": 8,
                 "volsdf.sampler.n_fine": 8, "volsdf.optim.target_samples": 1024, "volsdf.eikonal_points": 64,
                 "train.background": "white"}
    for hsm in (False, True):
        config = make_config(scene, "volsdf", {**overrides, "train.hsm.enabled": hsm}, steps=3)
        trainer = Trainer(config, tmp_path / f"run{hsm}", progress=False, log_tensorboard=False)
        bg = trainer.model.background
        assert isinstance(bg, OutsideSphereBackground)
        before = [p.detach().clone() for p in bg.parameters()]
        trainer.train()
        assert any(float((p.detach() - q).abs().max()) > 0 for p, q in zip(bg.parameters(), before))
    _, model = load_run(tmp_path / "runTrue", "cpu")
    cams = load_scene(scene, "test").cameras
    a = render_image(trainer.model.eval(), cams, 0, torch.ones(3))
    b = render_image(model, cams, 0, torch.ones(3))
    torch.testing.assert_close(a.rgb, b.rgb)
