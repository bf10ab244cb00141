"""Data-parallel training on torch.distributed: 2 gloo processes on the CPU.

Ground truth used here, independent of the code under test:

* gradients: the ranks' averaged gradients against one single-process step on the *union* of
  their rays (the same rays, backgrounds and samples, rebuilt from the ranks' seeds and
  concatenated into one batch of twice the rays), to float tolerance;
* occupancy grid and parameters: rank 0's against rank 1's, bit for bit, after steps in which the
  ranks drew different rays and the grid was updated from randomly drawn cells;
* resume: a 2-process ``--hsm`` run stopped and resumed against the same run uninterrupted, bit
  for bit on both ranks;
* end to end: a 2-process torchrun run on the built-in scene beats the best constant image by
  3 dB (the bar every model clears alone in tests/test_models.py), and an audit hook
  (``sys.addaudithook``) in rank 1 records every file it opens for writing: none;
* a killed rank: the survivor ends within a timeout with one line naming the problem and the
  checkpoint kept, and that checkpoint loads.

Processes start as torchrun starts them (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1``, ``MASTER_PORT``: a free port), or through torchrun itself for the
command line, with ``OMP_NUM_THREADS=1``; every wait is bounded. This file is also the worker
script: ``python tests/test_distributed.py SCENE OUT`` runs the in-process checks on one rank.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import make_config
from radfield.config import RunConfig
from radfield.data import load_scene
from radfield.data.synthetic import make_scene
from radfield.evaluation.evaluate import evaluate_run
from radfield.evaluation.metrics import psnr
from radfield.samplers.samples import Samples
from radfield.training.checkpoint import load_checkpoint
from radfield.training.distributed import process_group, rank_seed
from radfield.training.steps import StepBatch, baseline_step
from radfield.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "GLOO_SOCKET_IFNAME": "lo",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
WHITE = torch.ones(3)


# ---------------------------------------------------------------------------- the runs


def tiny_config(scene: Path) -> RunConfig:
    """One step of TinyNeRF, 64 rays per rank, random backgrounds (RGBA data)."""
    return make_config(scene, "tiny", {"tiny.width": 32, "tiny.sampler.n_coarse": 16}, steps=1)


def ngp_config(scene: Path, steps: int, hsm: bool = False) -> RunConfig:
    """Instant-NGP (preset ngp-small) with a 16^3 occupancy grid updated every 2nd step, from
    random cells after its 2-update warm-up."""
    config = make_config(scene, "ngp-small", {
        "ngp.occupancy.resolution": 16, "ngp.occupancy.update_every": 2, "ngp.occupancy.warmup_steps": 4,
        "ngp.occupancy.steps_per_diagonal": 1024,  # fine steps: low opacity per step, so 12 steps carve out space
        "ngp.optim.target_samples": 2048, "ngp.optim.warmup_steps": 2}, steps=steps)
    config.train.hsm.enabled = hsm
    return config


def worker(scene: Path, out: Path) -> None:
    """One rank of the in-process checks (run as a script, 2 processes); writes what it saw to
    ``out/*_<rank>.pt`` for the tests to compare."""
    torch.set_num_threads(1)
    quiet = {"progress": False, "log_tensorboard": False}
    with process_group("cpu", timeout_s=60) as world:
        r = world.rank
        # 1. One step of TinyNeRF: the averaged gradients and loss.
        trainer = Trainer(tiny_config(scene), out / "tiny", **quiet)
        result = trainer.train_step()
        torch.save({"grads": {n: p.grad for n, p in trainer.model.named_parameters()},
                    "loss": result.loss, "n_samples": result.n_samples}, out / f"tiny_{r}.pt")

        # 2. Twelve NGP steps: occupancy grid, parameters, streams, all-reduced bytes.
        trainer = Trainer(ngp_config(scene, 12), out / "ngp", **quiet)
        trainer.train()
        torch.save({"model": trainer.model.state_dict(), "generator": trainer.generator.get_state(),
                    "shared": trainer.shared_generator.get_state(), "bytes": trainer.world.bytes_reduced,
                    "collectives": trainer.world.collectives,
                    "n_params": sum(p.numel() for p in trainer.model.parameters()),
                    "n_tensors": len(list(trainer.model.parameters()))}, out / f"ngp_{r}.pt")

        # 3. --hsm, 8 steps uninterrupted against 5 steps, stopped, then resumed to 8.
        kept = []
        full = Trainer(ngp_config(scene, 8, hsm=True), out / "hsm_full", **quiet)
        full.train(on_step=lambda tr, res, dt: kept.append((res.n_backward, res.n_samples)))
        half = Trainer(ngp_config(scene, 8, hsm=True), out / "hsm_half", **quiet)
        half.train(stop=lambda step: step == 5)
        resumed = Trainer(None, out / "hsm_half", resume=True, **quiet)
        resumed_from = resumed.state.step
        resumed.train()
        torch.save({name: {"model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(),
                           "generator": t.generator.get_state(), "shared": t.shared_generator.get_state(),
                           "tau": t.miner.tau, "n_rays": t.state.n_rays, "step": t.state.step}
                    for name, t in (("full", full), ("resumed", resumed))}
                   | {"resumed_from": resumed_from, "kept": kept}, out / f"hsm_{r}.pt")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list, n: int = 2) -> list[subprocess.Popen]:
    """``python ARGS`` as ``n`` processes with the environment torchrun gives its workers."""
    port = str(free_port())
    procs = []
    for rank in range(n):
        env = {**ENV, "RANK": str(rank), "WORLD_SIZE": str(n), "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        procs.append(subprocess.Popen([sys.executable, *map(str, args)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """``(returncode, stdout, stderr)`` of each process; all are killed when one overruns."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return results


def torchrun(args: list, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m radfield ARGS`` on 127.0.0.1."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "-m", "radfield", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env or ENV, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    # tests/test_models.py's scene: large enough for the PSNR bar, small enough for 2 cores.
    return make_scene(tmp_path_factory.mktemp("scene"), n_train=20, n_val=1, n_test=3, size=32)


@pytest.fixture(scope="module")
def workers(scene, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("workers")
    results = finish(launch([Path(__file__), scene, out]), timeout=180)
    for rank, (rc, _, err) in enumerate(results):
        assert rc == 0, f"rank {rank}:\n{err}"
    return out


# ---------------------------------------------------------------------------- 1. gradients


def cat_batches(batches: list[StepBatch]) -> StepBatch:
    """One batch of all the rays of ``batches`` with exactly their samples (single-level
    samples; ray indices shifted by the rays before them)."""
    from radfield.cameras import Rays

    offsets = torch.tensor([0] + [b.samples.n_rays for b in batches[:-1]]).cumsum(0).tolist()
    assert all(not b.samples.levels and b.samples.s_starts is None for b in batches)
    samples = Samples(torch.cat([b.samples.t_starts for b in batches]),
                      torch.cat([b.samples.t_ends for b in batches]),
                      torch.cat([b.samples.ray_indices + o for b, o in zip(batches, offsets)]),
                      sum(b.samples.n_rays for b in batches), batches[0].samples.per_ray)
    return StepBatch(Rays.cat([b.rays for b in batches]), samples, torch.cat([b.target for b in batches]),
                     torch.cat([b.background for b in batches]))


def test_averaged_gradients_equal_one_step_on_the_union_of_rays(workers, scene, tmp_path):
    config = tiny_config(scene)
    trainer = Trainer(config, tmp_path / "union", progress=False, log_tensorboard=False)
    batches = []
    for rank in range(2):  # the batch each rank drew: same seed, same parameters, same draws
        trainer.generator.manual_seed(rank_seed(config.train.seed, rank))
        batches.append(trainer.make_batch(trainer.state.n_rays))
    assert [b.samples.n_rays for b in batches] == [64, 64]
    assert not torch.equal(batches[0].target, batches[1].target)  # the ranks drew different rays
    losses = [baseline_step(trainer.model, b, trainer.objective).loss for b in batches]
    trainer.optimizer.zero_grad(set_to_none=True)
    union = baseline_step(trainer.model, cat_batches(batches), trainer.objective)
    assert union.loss == pytest.approx(sum(losses) / 2, rel=1e-5)  # equal ray counts

    expected = {n: p.grad for n, p in trainer.model.named_parameters()}
    for rank in range(2):
        seen = torch.load(workers / f"tiny_{rank}.pt")
        assert seen["loss"] == pytest.approx(union.loss, rel=1e-5)
        assert seen["n_samples"] == len(cat_batches(batches).samples)
        assert seen["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            scale = grad.abs().max().item()
            assert scale > 0, name
            torch.testing.assert_close(seen["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale,
                                       msg=f"rank {rank}: {name}")


# ---------------------------------------------------------------------------- 2. shared state


def test_occupancy_grid_and_parameters_identical_across_ranks(workers):
    a, b = (torch.load(workers / f"ngp_{rank}.pt") for rank in range(2))
    # 12 steps, an update every 2nd: 6 updates, the last 4 from random cells.
    assert a["model"]["grid.n_updates"].item() == 6
    assert 0 < a["model"]["grid.occupied"].float().mean() < 1  # the grid has carved out space
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    # The ranks drew their rays from different streams and the grid's cells from the same one.
    assert not torch.equal(a["generator"], b["generator"])
    assert torch.equal(a["shared"], b["shared"])
    # The all-reduced payload per step: every gradient once (float32) plus one has-gradient
    # flag per tensor, and 9 float64 figures (4 counts, 4 agreed values: step time, wall time, stop,
    # save; the pause flag).
    per_step = 4 * (a["n_params"] + a["n_tensors"]) + 9 * 8
    assert a["bytes"] == b["bytes"] == 12 * per_step
    assert a["collectives"] == 12 * 4


def test_hsm_run_stopped_and_resumed_equals_uninterrupted(workers, tmp_path):
    for rank in range(2):
        seen = torch.load(workers / f"hsm_{rank}.pt")
        full, resumed = seen["full"], seen["resumed"]
        assert seen["resumed_from"] == 5 and full["step"] == resumed["step"] == 8
        assert all(0 < b < n for b, n in seen["kept"])  # samples were mined, on both ranks
        for name in full["model"]:
            assert torch.equal(full["model"][name], resumed["model"][name]), f"rank {rank}: {name}"
        for key, state in full["optimizer"]["state"].items():
            for k, v in state.items():
                assert torch.equal(v, resumed["optimizer"]["state"][key][k]), f"rank {rank}: Adam {key}.{k}"
        for key in ("generator", "shared"):
            assert torch.equal(full[key], resumed[key]), f"rank {rank}: {key}"
        assert full["tau"] == resumed["tau"] and full["n_rays"] == resumed["n_rays"]
    # The checkpoint holds both ranks' streams (different) and HSM taus.
    ck = load_checkpoint(workers / "hsm_half")
    streams = ck["distributed"]
    assert streams["world_size"] == 2 and len(streams["generators"]) == len(streams["hsm_tau"]) == 2
    assert not torch.equal(streams["generators"][0], streams["generators"][1])
    assert torch.equal(streams["generators"][0], ck["generator"])


# ---------------------------------------------------------------------------- 3. torchrun end to end

AUDIT = '''
import os, sys
if os.environ.get("RANK", "0") != "0":  # rank 0 writes; log what any other rank opens to write
    _log = open(os.environ["RADFIELD_TEST_WRITES"] + "." + os.environ["RANK"], "w", buffering=1)
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    def _hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (flags & _WRITE) if mode is None else any(c in str(mode) for c in "wax+")
            if writing:
                _log.write(f"open {path}\\n")
        elif event in ("os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.truncate", "os.symlink"):
            _log.write(f"{event} {args[0]}\\n")
    sys.addaudithook(_hook)
'''

STEPS = 100
NGP = ["--preset", "ngp-small", "--set", "ngp.optim.target_samples=2048", "--set", "ngp.optim.warmup_steps=10",
       "--set", "ngp.occupancy.resolution=32", "--set", "train.init_rays=64", "--set", "train.val_images=1",
       "--eval-every", "1e9", "--no-progress", "--device", "cpu", "--dist-timeout", "60"]


@pytest.fixture(scope="module")
def torchrun_run(scene, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, list[str]]:
    """A 2-process torchrun run of 100 NGP steps (tests/test_models.py's recipe for this scene),
    with rank 1's file writes logged."""
    root = tmp_path_factory.mktemp("torchrun")
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(AUDIT)
    env = {**ENV, "RADFIELD_TEST_WRITES": str(root / "writes"),
           "PYTHONPATH": os.pathsep.join([str(root / "site"), ENV["PYTHONPATH"]])}
    run = root / "run"
    proc = torchrun(["train", scene, "--out", run, "--max-steps", STEPS, *NGP], env=env)
    assert proc.returncode == 0, proc.stderr
    writes = (root / "writes.1").read_text().splitlines()  # exists: the hook ran in rank 1
    return run, proc, writes


def constant_image_psnr(scene: Path) -> float:
    """The best constant predictor's PSNR (each test image's own mean colour, over white)."""
    test = load_scene(scene, "test")
    imgs = [test.composited(i, WHITE) for i in range(len(test))]
    return max(psnr(img.mean(dim=(0, 1)).expand_as(img), img) for img in imgs)


def test_torchrun_two_processes_train_past_the_constant_image(torchrun_run, scene):
    run, proc, writes = torchrun_run
    assert proc.stdout.count(f"trained {STEPS} steps") == 1  # rank 0 alone reports
    # Only rank 0 wrote: rank 1 opened no file for writing (the kernel cache aside) and touched
    # nothing under the tests' temporary directory (torch and the kernel cache `mkdir` their
    # existing cache directories on import, which is allowed); the run directory holds one set of
    # files.
    cache = os.environ.get("RADFIELD_CACHE") or str(Path.home() / ".cache" / "radfield")
    assert [w for w in writes if w.startswith("open ") and cache not in w] == []
    assert [w for w in writes if str(run.parents[1]) in w] == []
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "config.json", "history.json",
                                                     "scene.json", "tensorboard", "training_curve.png"]
    assert len(list((run / "tensorboard").iterdir())) == 1  # one event file: one writer
    ck = load_checkpoint(run)
    assert ck["state"]["step"] == STEPS and ck["distributed"]["world_size"] == 2
    metrics = evaluate_run(run, "test", save_renders=False, progress=False)
    floor = constant_image_psnr(scene)
    print(f"2 processes: test PSNR {metrics['psnr']:.2f} dB, constant image {floor:.2f} dB")
    assert metrics["psnr"] > floor + 3.0


def test_torchrun_resume_continues_from_its_step(torchrun_run, scene):
    run, _, _ = torchrun_run
    ck_before = load_checkpoint(run)
    proc = torchrun(["train", scene, "--out", run, "--max-steps", STEPS + 10, "--resume", *NGP])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(f"trained {STEPS + 10} steps") == 1
    ck = load_checkpoint(run)
    assert ck["state"]["step"] == STEPS + 10
    # Continued, not restarted: Adam's step count went on, the history kept its first entry.
    assert {float(s["step"]) for s in ck["optimizer"]["state"].values()} == {STEPS + 10.0}
    assert [h["step"] for h in json.loads((run / "history.json").read_text())] == [STEPS, STEPS + 10]
    assert not torch.equal(ck_before["model"]["field.color_mlp.0.weight"], ck["model"]["field.color_mlp.0.weight"])


# ---------------------------------------------------------------------------- 4. a rank dies


def test_a_killed_rank_ends_the_run_with_one_line_and_a_usable_checkpoint(scene, tmp_path):
    run = tmp_path / "run"
    procs = launch(["-m", "radfield", "train", scene, "--out", run, "--preset", "tiny",
                    "--set", "tiny.width=16", "--set", "tiny.sampler.n_coarse=8",
                    "--set", "tiny.optim.target_samples=256", "--set", "train.init_rays=32",
                    "--set", "train.checkpoint_every=10", "--max-steps", "1000000", "--eval-every", "1e9",
                    "--no-progress", "--device", "cpu", "--dist-timeout", "60"])
    try:
        t0 = time.monotonic()
        while not (run / "checkpoint.pt").exists():
            assert all(p.poll() is None for p in procs), finish(procs, 10)
            assert time.monotonic() - t0 < 90, "no checkpoint within 90 s"
            time.sleep(0.05)
        time.sleep(0.5)  # mid-run
        procs[1].kill()
        (rc, out, err), _ = finish(procs, timeout=30)  # the survivor ends (no hang)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    lines = err.strip().splitlines()
    assert rc == 1 and "Traceback" not in err, err
    message = lines[-1]
    assert re.match(r"radfield: error: rank 0 of 2: .* failed: another process of the run died", message), message
    kept = int(re.search(r"the checkpoint of step (\d+) in .* is kept \(--resume continues it\)", message).group(1))
    ck = load_checkpoint(run)
    assert ck["state"]["step"] == kept and kept % 10 == 0 and kept > 0
    assert ck["distributed"]["world_size"] == 2


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
