"""Mesh and point-cloud export against analytic ground truth: marching cubes of an analytic
sphere, slab stitching against one slab, world coordinates against the normalisation, and the
exports of a trained run against the built-in scene's true surfaces (its sphere and box SDF)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from radfield.cli import main
from radfield.data.synthetic import TEXTURED_SPHERE, CHECKER_BOX, make_scene, signed_distance
from radfield.export.mesh import density_normals, marching_cubes, to_world
from radfield.training.trainer import Trainer
from conftest import make_config

pytestmark = pytest.mark.usefixtures("one_thread")

BOX = torch.tensor([-1.0, -1.0, -1.0, 1.0, 1.0, 1.0])


def sphere_density(radius: float, level: float):
    """A density equal to ``level`` exactly on the sphere ``|x| = radius``, larger inside."""
    return lambda x: level + 20.0 * (radius - x.norm(dim=-1))


def test_marching_cubes_of_an_analytic_sphere():
    r, level = 0.6, 10.0
    verts, faces = marching_cubes(sphere_density(r, level), BOX, resolution=48, level=level, slab=7)
    dist = np.linalg.norm(verts, axis=-1)
    cell = 2.0 / 47
    assert np.abs(dist - r).max() < 0.05 * cell  # a linear field: vertices on the sphere
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight  # the slabs are stitched: no seam
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.02)
    # the same surface as one slab
    one_v, one_f = marching_cubes(sphere_density(r, level), BOX, resolution=48, level=level, slab=1000)
    assert len(one_v) == len(verts) and len(one_f) == len(faces)
    np.testing.assert_allclose(np.sort(one_v, axis=0), np.sort(verts, axis=0), atol=1e-9)


def test_density_normals_point_out_of_a_ball_in_any_chunking():
    """Density ``1 - |x|`` (a ball): the outward normal at ``x`` is ``x / |x|``; central
    differences of a linear-in-radius field recover it, the same in chunks of 7 as in one."""
    x = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)), dim=-1) * 0.5
    ball = lambda p: 1 - p.norm(dim=-1)  # noqa: E731
    whole = density_normals(ball, x, 1e-3)
    torch.testing.assert_close(whole, x / x.norm(dim=-1, keepdim=True), atol=1e-3, rtol=0)
    torch.testing.assert_close(density_normals(ball, x, 1e-3, chunk=7), whole)
    assert density_normals(ball, x[:0], 1e-3).shape == (0, 3)


def test_world_coordinates_undo_the_normalisation():
    norm = {"center": [1.0, -2.0, 3.0], "scale": 0.25}
    world = torch.tensor([[1.0, 2.0, 3.0], [-4.0, 0.5, 10.0]])
    scene = (world - torch.tensor(norm["center"])) * norm["scale"]
    torch.testing.assert_close(to_world(scene, norm), world)
    assert torch.equal(to_world(scene, None), scene)


def scene_sdf(p: np.ndarray) -> np.ndarray:
    """Distance to the built-in scene's surfaces (two spheres and a box), in numpy."""
    return signed_distance(torch.from_numpy(np.asarray(p, dtype=np.float32))).numpy()


def test_scene_signed_distance_by_hand():
    centre = torch.tensor(TEXTURED_SPHERE.centre)
    p = torch.stack([centre, centre + torch.tensor([TEXTURED_SPHERE.radius + 0.1, 0, 0]),
                     torch.tensor(CHECKER_BOX.hi) + torch.tensor([0.0, 0.0, 0.2])])
    d = signed_distance(p)
    assert float(d[0]) == pytest.approx(-TEXTURED_SPHERE.radius)
    assert float(d[1]) == pytest.approx(0.1, abs=1e-6)  # the nearest other object is 0.215 away
    assert float(d[2]) == pytest.approx(0.2, abs=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    scene = make_scene(root / "scene", n_train=30, n_val=1, n_test=1, size=32)
    config = make_config(scene, "ngp-small", {"ngp.optim.target_samples": 8192, "ngp.occupancy.resolution": 32,
                                               "ngp.optim.warmup_steps": 10}, steps=300)
    Trainer(config, root / "run", progress=False, log_tensorboard=False).train()
    return root / "run"


def test_exported_mesh_lies_on_the_true_surfaces(trained, tmp_path, capsys):
    out = tmp_path / "mesh.ply"
    assert main(["export", "mesh", str(trained), "--out", str(out), "--resolution", "96", "--device", "cpu"]) == 0
    assert "world coordinates" in capsys.readouterr().out
    mesh = trimesh.load(out, process=False)
    d = np.abs(scene_sdf(np.asarray(mesh.vertices)))
    print(f"mesh: {len(mesh.vertices)} vertices, distance to the true surfaces: median {np.median(d):.4f}, "
          f"90th percentile {np.percentile(d, 90):.4f}")
    assert len(mesh.faces) > 1000
    # A short training (300 steps at 32 px) leaves the density soft, so its level set lies a little
    # off the true surfaces: measured median 0.072 at level 10. Points spread over the box lie
    # ~0.4 away, so this bounds something.
    rand = np.random.default_rng(0).uniform(-1.5, 1.5, (10000, 3))
    assert np.median(np.abs(scene_sdf(rand))) > 0.3
    assert np.median(d) < 0.1
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    for fmt in ("obj", "glb"):
        assert main(["export", "mesh", str(trained), "--out", str(tmp_path / f"m.{fmt}"), "--resolution", "24",
                     "--device", "cpu"]) == 0
        assert len(trimesh.load(tmp_path / f"m.{fmt}", force="mesh").faces) > 0


def test_exported_point_cloud_lies_on_the_true_surfaces(trained, tmp_path):
    out = tmp_path / "points.ply"
    assert main(["export", "pointcloud", str(trained), "--out", str(out), "--views", "4", "--device", "cpu"]) == 0
    cloud = trimesh.load(out)
    assert b"property float nx" not in out.read_bytes()[:1000]  # a density field has no normals
    d = np.abs(scene_sdf(np.asarray(cloud.vertices)))
    print(f"point cloud: {len(d)} points, distance to the true surfaces: median {np.median(d):.4f}")
    assert len(d) > 500 and np.median(d) < 0.1  # measured 0.061 (soft density after a short run)


@pytest.mark.parametrize("args,words", [
    (["mesh", "--out", "x.stl"], [".stl", "unsupported"]),
    (["pointcloud", "--out", "x.obj"], [".obj", "unsupported"]),
    (["mesh", "--out", "no/such/dir/m.ply"], ["no such folder"]),
    (["mesh", "--out", "m.ply", "--level", "1e9"], ["no surface"]),
], ids=["mesh-format", "cloud-format", "folder", "empty"])
def test_export_bad_input_is_one_line(trained, tmp_path, capsys, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    kind, rest = args[0], args[1:]
    rc = main(["export", kind, str(trained), *rest, "--resolution", "16", "--device", "cpu"]
              if kind == "mesh" else ["export", kind, str(trained), *rest, "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if "%|" not in line]  # no bars
    assert rc == 2 and len(err) == 1 and all(w in err[0] for w in words), err
    assert not list(tmp_path.glob("*.ply")) and not list(tmp_path.glob(".*ply"))
