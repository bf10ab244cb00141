"""Killed and stopped runs: checkpoints by time, SIGTERM, and resume after repeated SIGKILLs.

Real processes (``python -m radfield train``) are killed at random moments; ground truth is the
checkpoint on disk: it must always load, and the resumed run must always reach its step limit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radfield.data.synthetic import make_scene
from radfield.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
STEPS = 1500


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=4, n_val=1, n_test=1, size=16)


def command(scene: Path, run: Path, resume: bool, steps: int = STEPS) -> list[str]:
    return [sys.executable, "-m", "radfield", "train", str(scene), "--out", str(run), "--preset", "tiny",
            "--set", "tiny.width=16", "--set", "tiny.sampler.n_coarse=8",
            "--set", "tiny.optim.target_samples=256", "--set", "train.init_rays=32",
            "--set", "train.checkpoint_every_s=0.2", "--max-steps", str(steps), "--eval-every", "1e9",
            "--no-progress", "--device", "cpu"] + (["--resume"] if resume else [])


ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def start(scene: Path, run: Path, resume: bool) -> subprocess.Popen:
    return subprocess.Popen(command(scene, run, resume), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not path.exists() and proc.poll() is None:
        assert time.monotonic() - t0 < timeout, f"{path} never appeared"
        time.sleep(0.05)


def test_repeated_sigkills_always_resume(scene, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(1)
    steps_seen = []
    for k in range(5):
        proc = start(scene, run, resume=k > 0)
        wait_for(run / "config.json", proc)
        time.sleep(rng.uniform(0.0, 1.5) if k else 0.0)  # the first kill: before any checkpoint
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        if (run / "checkpoint.pt").exists():  # never half-written
            steps_seen.append(load_checkpoint(run)["state"]["step"])
    final = subprocess.run(command(scene, run, resume=True), cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    assert f"trained {STEPS} steps" in final.stdout
    assert load_checkpoint(run)["state"]["step"] == STEPS
    assert steps_seen == sorted(steps_seen)  # progress is never lost backwards
    print(f"checkpoint steps after each kill: {steps_seen}")


def test_started_run_without_checkpoint_restarts_with_a_note(scene, tmp_path):
    run = tmp_path / "run"
    proc = start(scene, run, resume=False)
    wait_for(run / "config.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    if (run / "checkpoint.pt").exists():  # it got as far as a checkpoint: remove it
        (run / "checkpoint.pt").unlink()
    done = subprocess.run(command(scene, run, resume=True, steps=5), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no checkpoint yet" in done.stderr and "afresh" in done.stderr
    assert load_checkpoint(run)["state"]["step"] == 5


def test_resume_of_a_folder_that_is_not_a_run_is_an_error(scene, tmp_path):
    (tmp_path / "empty").mkdir()
    res = subprocess.run(command(scene, tmp_path / "empty", resume=True), cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "not a run directory" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_sigterm_saves_a_checkpoint_and_exits(scene, tmp_path):
    run = tmp_path / "run"
    proc = start(scene, run, resume=False)
    wait_for(run / "checkpoint.pt", proc)  # training is under way
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGTERM" in err
    step = load_checkpoint(run)["state"]["step"]
    assert 0 < step < STEPS
    assert f"trained {step} steps" in out
