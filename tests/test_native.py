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
x = torch.ones(1 << 21)  # 8 MiB, well over glibc's default 128 KiB mmap threshold
del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    x = torch.ones(1 << 21)
    del x
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
    block = (8 << 20) // os.sysconf("SC_PAGE_SIZE")  # pages in one fresh 8 MiB block
    # Returned, glibc hands back and faults in a block now and then (8 of the 20 here); kept, at
    # most once (on the first reuse of a block just past the heap's top).
    assert faults_returned >= 4 * block
    assert faults_kept <= block


def test_keep_freed_memory_is_idempotent():
    first = native.keep_freed_memory()
    assert native.keep_freed_memory() == first
