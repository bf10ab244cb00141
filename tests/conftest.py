"""Shared fixtures and helpers of the test suite."""

from __future__ import annotations

import pytest
import torch

from radfield.config import PRESETS, RunConfig, apply_overrides


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: on 2 shared, busy cores intra-op threading only slows small batches
    down (measured 67 s vs 11 s for 40 NGP steps). Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_config(scene, preset: str, overrides: dict | None = None, steps: int = 5) -> RunConfig:
    """A short run of ``preset`` on ``scene``: ``steps`` steps, no mid-run validation, one
    validation image, 64 rays in the first step, then ``overrides``."""
    config = apply_overrides(RunConfig(), PRESETS[preset])
    config.data.path = str(scene)
    config.train.max_steps = steps
    config.train.eval_every = 1e9
    config.train.val_images = 1
    config.train.init_rays = 64  # the first step would otherwise carry 1024 rays
    return apply_overrides(config, overrides or {})
