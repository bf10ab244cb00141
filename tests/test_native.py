"""radfield.native: the allocator setting that spares a training step its page faults."""

import os
import subprocess
import sys

import pytest

from radfield import native

PROBE = """
import resource, torch
from radfield.native import keep_freed_memory
kept = keep_freed_memory()
torch.manual_seed(0)
mlp = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                          torch.nn.Linear(64, 3))
x = torch.rand(1 << 15, 32)
def step():  # a training step in miniature: 8 MiB activations, made and freed every step
    mlp(x).square().mean().backward()
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _probe(keep: str) -> tuple[bool, int]:
    env = {**os.environ, "RADFIELD_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    kept, faults = out.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_freed_memory_is_reused_without_page_faults():
    kept, faults_kept = _probe("1")
    returned, faults_returned = _probe("0")
    if not kept:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert returned is False
    block = (8 << 20) // os.sysconf("SC_PAGE_SIZE")  # pages in one 8 MiB activation
    # Returned, glibc hands freed activations back and the next step faults them in afresh (3 to
    # 5 blocks' worth in 10 steps, measured); kept, the steps reuse them (0 to 3 blocks' worth in
    # all, measured under pytest).
    assert faults_returned >= 2 * block
    assert faults_kept <= faults_returned / 4


def test_keep_freed_memory_is_idempotent():
    first = native.keep_freed_memory()
    assert native.keep_freed_memory() == first


@pytest.mark.parametrize("env, expected", [
    ({}, ("PASSIVE", "1000")),
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", None)),
    ({"GOMP_SPINCOUNT": "50"}, ("PASSIVE", "50")),
])
def test_openmp_wait_defaults_leave_the_users_own(env, expected):
    """Importing radfield sets OpenMP's wait (passive, 1000 spins first) only where the user set
    no wait policy, and never overrides a spin count of theirs."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", "import os, radfield; print(os.environ.get('OMP_WAIT_POLICY'), "
                          "os.environ.get('GOMP_SPINCOUNT'))"], env={**clean, **env}, capture_output=True,
                         text=True, check=True).stdout.split()
    assert tuple(None if v == "None" else v for v in out) == expected
