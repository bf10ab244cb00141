"""Seen space (``nerfacto.seen_space``): the distance to the training frusta, by hand and against
the brute-force test of every point against every camera; the nerfacto field's density is zero
outside it and unchanged inside; a trained run keeps it in its checkpoint."""

from __future__ import annotations

import math

import pytest
import torch

from radfield.cameras import Cameras, frustum_distance, orbit_poses, pinhole_from_fov
from radfield.data import load_scene
from radfield.data.synthetic import make_scene
from radfield.fields.nerfacto import EMPTY, Contraction
from radfield.fields.seen import SeenSpace
from radfield.geometry import contract, uncontract
from radfield.models import SceneInfo, build_model
from radfield.training.checkpoint import load_run
from radfield.training.trainer import Trainer
from conftest import make_config

SMALL = {"nerfacto.bounded": False, "nerfacto.far": 4.0, "nerfacto.grid.log2_table_size": 12,
         "nerfacto.grid.max_resolution": 128, "nerfacto.proposal_samples": (16, 12), "nerfacto.n_samples": 8,
         "nerfacto.seen_space": True, "nerfacto.seen_resolution": 48}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=6, n_val=1, n_test=1, size=24)


def test_frustum_distance_by_hand():
    """A pinhole at the origin looking down -z, slopes +-0.5 (fx = 100 on a 100 px image): the
    side planes ``x = +-0.5 f`` are ``1 / sqrt(1.25)`` per unit of ``x`` away."""
    cam = Cameras(torch.eye(4)[None, :3], torch.tensor([100.0]), torch.tensor([100.0]), torch.tensor([50.0]),
                  torch.tensor([50.0]), 100, 100)
    pts = torch.tensor([[0.0, 0, -5], [0.0, 0, 5], [4.0, 0, -5], [0.0, 2.0, -5], [0.0, 0, -0.1]])
    k = 1 / math.sqrt(1.25)
    want = torch.tensor([5 * 0.5 * k, -5.0, -(4 - 2.5) * k, (2.5 - 2) * k, 0.1 * 0.5 * k])
    torch.testing.assert_close(frustum_distance(pts, cam), want, rtol=1e-5, atol=1e-5)


def test_uncontract_inverts_contract():
    x = torch.randn(2000, 3, dtype=torch.float64) * 10
    for norm in ("l2", "inf"):
        torch.testing.assert_close(uncontract(contract(x, norm), norm), x, rtol=1e-8, atol=1e-8)


def test_seen_space_agrees_with_every_point_against_every_camera():
    """Inside the unit region the lattice is exact more than a cell from the frusta's faces and
    edges, and wrong on at most 0.1 % of points anywhere; far out (contracted space) likewise
    for points clearly in or out. Unmarked, everything is seen."""
    g = torch.Generator().manual_seed(0)
    cams = pinhole_from_fov(orbit_poses(6, 1.0, 20.0), torch.full((6,), 0.8), 40, 30)
    contraction = Contraction(torch.tensor([-1.0, -1, -1, 1, 1, 1]))
    seen = SeenSpace(48)
    x = (torch.rand(50000, 3, generator=g) * 2 - 1) * 1.2
    assert seen(contraction(x)).all()
    seen.mark(cams, contraction.centre, contraction.radius)
    truth = frustum_distance(x, cams)
    got = seen(contraction(x))
    cell = 4.0 / 48 * math.sqrt(3)
    assert 0.2 < float((truth > 0).float().mean()) < 0.8  # both kinds of point are there
    clear = truth.abs() > cell
    assert torch.equal(got[clear], truth[clear] > 0)
    assert float((got == (truth > 0)).float().mean()) > 0.999
    far = torch.randn(50000, 3, generator=g) * 20
    truth, got = frustum_distance(far, cams), seen(contraction(far))
    clear = truth.abs() > 0.2 * far.norm(dim=-1)
    assert torch.equal(got[clear], truth[clear] > 0)


def test_nerfacto_density_is_zero_outside_the_training_frusta_and_unchanged_inside(scene):
    data = load_scene(scene, "train")
    config = make_config(scene, "nerfacto-small", SMALL)
    torch.manual_seed(0)
    model = build_model(config, SceneInfo.from_data(data))
    field = model.field
    for table in field.grid.tables:  # a field with density everywhere
        torch.nn.init.uniform_(table, -1.0, 1.0)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(4000, 3, generator=g) * 2 - 1) * 5.0
    d = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    codes = field.appearance_code(torch.zeros(4000, dtype=torch.long))
    truth = frustum_distance(x, data.cameras) > 0
    keep = model.seen(field.contraction(x))
    assert 0.05 < float(truth.float().mean()) < 0.95
    assert float((keep == truth).float().mean()) > 0.99
    with torch.no_grad():
        free, masked = field.raw(x, d, codes), field.raw(x, d, codes, keep)
    torch.testing.assert_close(masked[keep], free[keep], rtol=0, atol=0)
    assert torch.all(masked[~keep, 0] == EMPTY) and torch.equal(masked[~keep, 1:], free[~keep, 1:])
    assert float(field.activate(masked[~keep])[0].max()) < 1e-12


def test_seen_space_trains_and_is_kept_in_the_checkpoint(scene, tmp_path):
    config = make_config(scene, "nerfacto-small", SMALL, steps=3)
    trainer = Trainer(config, tmp_path / "run", progress=False, log_tensorboard=False)
    trainer.train()
    marked = trainer.model.seen.distance.clone()
    assert (marked > 0).any() and (marked < 0).any()
    _, loaded = load_run(tmp_path / "run")
    torch.testing.assert_close(loaded.seen.distance, marked, rtol=0, atol=0)
    off = make_config(scene, "nerfacto-small", {k: v for k, v in SMALL.items() if "seen" not in k})
    assert build_model(off, SceneInfo.from_data(load_scene(scene, "train"))).seen is None
