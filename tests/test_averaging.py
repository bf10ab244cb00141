"""Instant-NGP's weight averaging (radfield.training.averaging): the recursion against a hand
computation, the swap in and out, and a training run's average, checkpoint and resume against
the raw weights recorded step by step."""

from __future__ import annotations

import pytest
import torch

from conftest import make_config
from radfield.data.synthetic import make_scene
from radfield.errors import RadfieldError
from radfield.training.averaging import WeightAverage
from radfield.training.checkpoint import load_checkpoint
from radfield.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=6, n_val=1, n_test=1, size=16)


def decay_at(n: int, decay: float) -> float:
    """The n-th update's decay (from 0), TensorFlow's rule written out again."""
    return min(decay, (1 + n) / (10 + n))


def test_average_of_a_step_and_of_a_sequence():
    """Decay 0.2, a weight stepped from 0 to 1 and held: the decays 0.1, 2/11, then 0.2, and
    the average 0.9, 0.98182, 0.99636, 0.99927 by hand; a random sequence against the recursion
    in float64."""
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.zero_()
    average = WeightAverage(layer, 0.2)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    for decay, value in zip((0.1, 2 / 11, 0.2, 0.2), (0.9, 0.98181818, 0.99636364, 0.99927273)):
        assert average.current_decay() == pytest.approx(decay)
        average.update()
        torch.testing.assert_close(average.values[0], torch.full((2, 3), value), rtol=0, atol=1e-7)

    gen = torch.Generator().manual_seed(0)
    expected = layer.bias.detach().double().clone()
    average = WeightAverage(layer, 0.9)
    for n in range(40):
        with torch.no_grad():
            layer.bias.copy_(torch.randn(2, generator=gen))
        average.update()
        d = decay_at(n, 0.9)
        expected = d * expected + (1 - d) * layer.bias.detach().double()
    torch.testing.assert_close(average.values[1].double(), expected, rtol=0, atol=1e-6)


def test_applied_swaps_the_average_in_and_the_raw_weights_back():
    layer = torch.nn.Linear(2, 1)
    average = WeightAverage(layer, 0.5)
    raw = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(2.0)
    average.update()  # the first update's decay is 0.1: the average is raw + 1.8
    x = torch.ones(1, 2)
    with average.applied():
        torch.testing.assert_close(layer.weight.detach(), raw + 1.8)
        inside = layer(x)
    torch.testing.assert_close(layer.weight.detach(), raw + 2.0)
    torch.testing.assert_close(inside, x @ (raw + 1.8).T + layer.bias.detach())


def test_bad_decay_is_a_one_line_error(scene, tmp_path):
    with pytest.raises(RadfieldError, match="weight_average: must be in"):
        Trainer(make_config(scene, "ngp-small", {"ngp.optim.weight_average": 1.0}), tmp_path / "run",
                progress=False, log_tensorboard=False)


def _run(scene, run_dir, steps, resume=False, stop=None):
    config = make_config(scene, "ngp-small", {"ngp.optim.weight_average": 0.8}, steps=steps)
    trainer = Trainer(config, run_dir, resume=resume, progress=False, log_tensorboard=False)
    trainer.train(stop=stop)
    return trainer


def test_a_run_averages_its_raw_weights_and_resumes_exactly(scene, tmp_path):
    """The checkpoint's model is the recursion over the raw weights recorded after every step;
    its raw weights are the model's; a run stopped at step 6 and resumed ends where an
    uninterrupted one ends, raw weights and average alike."""
    # The average starts at the initial weights: record them before the first step.
    config = make_config(scene, "ngp-small", {"ngp.optim.weight_average": 0.8}, steps=12)
    full = Trainer(config, tmp_path / "full", progress=False, log_tensorboard=False)
    expected = {n: p.detach().double().clone() for n, p in full.model.named_parameters()}

    def step(trainer, result, seconds):
        d = decay_at(trainer.state.step - 1, 0.8)
        for n, p in trainer.model.named_parameters():
            expected[n] = d * expected[n] + (1 - d) * p.detach().double()

    full.train(on_step=step)
    ck = load_checkpoint(tmp_path / "full")
    moved = 0
    for name, p in full.model.named_parameters():
        torch.testing.assert_close(ck["model"][name].double(), expected[name], rtol=0, atol=1e-5)
        assert torch.equal(ck["train_params"][name], p.detach())
        moved += int(not torch.allclose(ck["model"][name], p.detach()))
    assert moved > 0  # the average is not the raw weights
    # Buffers (the occupancy grid) are the model's own.
    assert torch.equal(ck["model"]["grid.density"], full.model.grid.density)

    half = tmp_path / "half"
    _run(scene, half, 12, stop=lambda s: s == 6)
    resumed = _run(scene, half, 12, resume=True)
    assert resumed.state.step == 12 and resumed.average.n_updates == 12
    for name, p in full.model.named_parameters():
        torch.testing.assert_close(dict(resumed.model.named_parameters())[name], p, rtol=0, atol=1e-6)
    for a, b in zip(full.average.values, resumed.average.values):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
