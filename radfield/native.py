"""C kernels compiled at first use: gcc -> a shared library in a cache directory -> ctypes.

Each kernel is one C source file next to the Python module that calls it (the hash grid's
``radfield/fields/_hashgrid_cpu.c``, the occupancy marcher's ``radfield/samplers/_march_cpu.c``),
wrapped in a :class:`NativeLibrary` that builds it once per (source, flags, gcc, CPU) into
``$RADFIELD_CACHE`` (default ``~/.cache/radfield``) and loads it. The flags include
``-march=native``, so the cached library's name hashes the host CPU too: a cache shared between
machines must not hand one CPU another's build (SIGILL). Every kernel has a PyTorch reference that
runs instead when the library cannot be had: ``RADFIELD_NO_KERNEL=1``, no gcc on PATH, a failed
build or one over ``GCC_TIMEOUT_S`` seconds (then one warning per library).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

CFLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math"]
"""``-ffp-contract=off``: no fused multiply-adds, so the kernels round as PyTorch's references do.
``-fno-trapping-math``: no floating-point traps to preserve, so loops with float comparisons
(clamps, selects) vectorise; every operation still rounds as IEEE says."""

GCC_TIMEOUT_S = 180
"""Seconds for one gcc call; past it the PyTorch reference runs."""

_CPUINFO_KEYS = ("model name", "flags", "Features", "CPU implementer", "CPU part")


def cache_dir() -> Path:
    root = os.environ.get("RADFIELD_CACHE") or os.path.join(Path.home(), ".cache", "radfield")
    return Path(root)


def cpu_identity() -> str:
    """The host CPU as the compiler's ``-march=native`` sees it: ``platform.machine()`` plus the
    first ``model name``, ``flags`` (x86) or ``Features``, ``CPU implementer``, ``CPU part``
    (ARM) lines of /proc/cpuinfo where it exists (else ``platform.processor()``)."""
    parts = [platform.machine()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            seen: dict[str, str] = {}
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in _CPUINFO_KEYS and key not in seen:
                    seen[key] = " ".join(value.split())
        parts += [f"{key}={seen[key]}" for key in _CPUINFO_KEYS if key in seen]
    except OSError:
        parts.append(platform.processor())
    return "\n".join(parts)


def gcc_version() -> str:
    """First line of ``gcc --version``; RuntimeError when gcc is missing or fails."""
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc not found on PATH")
    try:
        proc = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=GCC_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RuntimeError(f"gcc --version failed ({err})") from None
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RuntimeError(f"gcc --version failed: {proc.stderr.strip()}")
    return proc.stdout.splitlines()[0].strip()


class NativeLibrary:
    """One C source, built at first :meth:`load` and then held.

    Args:
        source: the C file.
        signatures: ``{function name: ctypes argument types}``; every function returns void.
        what: how the one warning names it, e.g. ``"hash grid CPU kernel"``.
        fallback: what runs instead, for the warning, e.g. ``"the PyTorch reference"``.
    """

    def __init__(self, source: Path, signatures: dict[str, list], what: str, fallback: str,
                 extra_flags: tuple[str, ...] = ()):
        self.source, self.signatures, self.what, self.fallback = source, signatures, what, fallback
        self.flags = [*CFLAGS, *extra_flags]  # later flags win: "-ffp-contract=fast" for FMAs
        self.lib: ctypes.CDLL | None = None
        self.failed = False
        self._lock = threading.Lock()

    def path(self) -> Path:
        """``cache_dir() / <source stem>_<key>.so``, ``key`` a hash of everything the compiled
        code depends on: the C source, the flags, the gcc version and the CPU."""
        digest = hashlib.sha256()
        for part in (self.source.read_bytes(), " ".join(self.flags).encode(), gcc_version().encode(),
                     cpu_identity().encode()):
            digest.update(len(part).to_bytes(8, "little") + part)
        return cache_dir() / f"{self.source.stem.lstrip('_')}_{digest.hexdigest()[:16]}.so"

    def _build(self) -> ctypes.CDLL:
        """Compile into the cache (atomically: concurrent builders never see a partial file) unless
        it is there, and load; RuntimeError when gcc is missing, fails or runs too long."""
        target = self.path()
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=target.parent)
            os.close(fd)
            try:
                cmd = ["gcc", *self.flags, str(self.source), "-o", tmp, "-lm"]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=GCC_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    raise RuntimeError(f"{' '.join(cmd)} timed out after {GCC_TIMEOUT_S} s") from None
                if proc.returncode != 0:
                    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr.strip()}")
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        lib = ctypes.CDLL(str(target))
        for name, argtypes in self.signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, None
        return lib

    def load(self) -> ctypes.CDLL | None:
        """The loaded library, or None (``RADFIELD_NO_KERNEL=1``, or the build failed: warned
        once)."""
        if os.environ.get("RADFIELD_NO_KERNEL", "") not in ("", "0"):
            return None
        if self.lib is not None or self.failed:
            return self.lib
        with self._lock:
            if self.lib is None and not self.failed:
                try:
                    self.lib = self._build()
                except Exception as err:  # no compiler, no OpenMP, unwritable cache, ...
                    self.failed = True
                    warnings.warn(f"radfield: {self.what} unavailable, using {self.fallback} ({err})",
                                  RuntimeWarning, stacklevel=3)
        return self.lib


class TritonModule:
    """A module of Triton kernels (a GPU path), imported at first use: :meth:`load` returns it,
    or None when ``RADFIELD_NO_KERNEL=1`` or the ``triton`` package is missing or fails to import
    (then one warning, and the PyTorch path runs). Example:
    ``TritonModule("radfield.rendering.volume_triton", "volume rendering")``."""

    def __init__(self, module: str, what: str):
        self.module, self.what = module, what
        self.loaded = None
        self.failed = False

    def load(self):
        if os.environ.get("RADFIELD_NO_KERNEL", "") not in ("", "0"):
            return None
        if self.loaded is None and not self.failed:
            try:
                self.loaded = importlib.import_module(self.module)
            except Exception as exc:  # not installed, or a broken install
                self.failed = True
                warnings.warn(f"radfield: no Triton kernels for {self.what} ({type(exc).__name__}: {exc}); "
                              "the PyTorch path runs on this GPU", RuntimeWarning, stacklevel=3)
        return self.loaded


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (glibc's malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # the largest value glibc accepts on 64-bit machines


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to keep freed blocks of up to 32 MiB for reuse, instead of handing
    them back to the kernel at every ``free``: a training step's activations and gradient tables
    (a few MiB each, allocated and freed every step) are then not page-faulted and zero-filled
    afresh each time. Measured on the ngp step: 2.3 M -> 0.34 M page faults in 400 steps, system
    time 6.7 s -> 1.3 s, a step 12 % faster (``bench/RESULTS.md``). Freed memory is held for reuse
    rather than returned, so the process's resident size stays near its peak. Tried once per
    process (the answer is cached); False where the C library is not glibc (macOS, musl) or
    ``RADFIELD_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("RADFIELD_KEEP_FREED_MEMORY", "") == "0" or platform.system() != "Linux":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))


def addresses(tensors: Sequence[Tensor | None]) -> Tensor:
    """The ``(n,)`` int64 array of the tensors' data addresses (0 for None), which a kernel reads
    as an array of pointers: one argument for a list of tables, of any length."""
    return torch.tensor([0 if t is None else t.data_ptr() for t in tensors], dtype=torch.int64)
