"""radfield: neural radiance fields that train fast on CPU and CUDA."""

import os

# OpenMP's wait between parallel regions; set before torch loads its OpenMP runtime, and only
# where the user set no wait policy of their own. Threads that spin long (OMP_WAIT_POLICY=ACTIVE,
# or GNU OpenMP's default of 300 000 spins) make every small tensor op several times slower as soon
# as another process holds a core (13.5 ms against 4.4 ms an op on 2 busy cores). Threads that sleep
# at once (PASSIVE alone) cost the ngp training step 14-21 % of its speed on a machine of its own,
# where it calls many short compiled kernels. So: PASSIVE, with 1000 spins (about 10 us) before
# sleeping in GNU OpenMP (torch's on Linux; an explicit GOMP_SPINCOUNT overrides the policy's
# count), bench/RESULTS.md, 2026-12-06.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("GOMP_SPINCOUNT", "1000")

__version__ = "0.1.0"
