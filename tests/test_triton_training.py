"""Instant-NGP training steps with every Triton kernel in the path (the hash grid, the occupancy
march, volume rendering), run on the CPU under Triton's interpreter: the integration a first GPU
run exercises. The steps must give the losses of the CPU path's steps (the same batches: the
march is bit for bit, the encodings and renders agree to float32 rounding), the baseline step and
the hard-sample-mining step both."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[test]' installs it)")

from conftest import make_config  # noqa: E402
from radfield.data.synthetic import make_scene  # noqa: E402
from radfield.fields import hashgrid  # noqa: E402
from radfield.rendering import volume  # noqa: E402
from radfield.samplers import occupancy  # noqa: E402
from radfield.training.trainer import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _route_through_triton(monkeypatch) -> dict[str, int]:
    """Every selector hands out its Triton kernels on the CPU; returns the calls counted per kernel."""
    calls = {"hash grid": 0, "march": 0, "volume": 0}

    def counted(name, module):
        def select(_tensor):
            calls[name] += 1
            return module
        return select

    monkeypatch.setattr(hashgrid, "triton_for", counted("hash grid", hashgrid.triton_kernels()))
    monkeypatch.setattr(occupancy, "_triton_marcher", counted("march", occupancy._TRITON.load()))
    monkeypatch.setattr(volume, "_triton_for", counted("volume", volume._TRITON.load()))
    return calls


@pytest.mark.parametrize("hsm", [False, True])
def test_ngp_steps_through_the_triton_kernels_match_the_cpu_path(tmp_path, monkeypatch, hsm):
    scene = make_scene(tmp_path / "scene", n_train=4, n_val=1, n_test=1, size=16)
    small = {"train.hsm.enabled": hsm, "ngp.grid.log2_table_size": 10, "ngp.grid.n_levels": 4,
             "ngp.occupancy.resolution": 8, "ngp.optim.target_samples": 1024}  # the interpreter is slow
    config = make_config(scene, "ngp-small", small, steps=3)
    losses = {}
    for path in ("cpu", "triton"):
        calls = _route_through_triton(monkeypatch) if path == "triton" else None
        torch.manual_seed(0)
        trainer = Trainer(config, tmp_path / path, device="cpu", progress=False, log_tensorboard=False)
        losses[path] = [trainer.train_step().loss for _ in range(3)]
        if calls is not None:
            assert all(n > 0 for n in calls.values()), calls
    assert losses["triton"][0] == pytest.approx(losses["cpu"][0], rel=1e-5)
    assert losses["triton"] == pytest.approx(losses["cpu"], rel=1e-3)
