"""Data-parallel training on ``torch.distributed``: one process per device, each drawing its own rays.

``torchrun --nproc-per-node N -m radfield train ...`` starts N processes and tells each, through
environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``),
who it is and where to meet the others; :func:`process_group` turns that into a process group
(gloo on the CPU; on CUDA, NCCL for tensors on the GPU and gloo for the small CPU tensors of
bookkeeping and for object collectives).

Vocabulary: the *world* is the processes of one run, ``N`` of them; a process's *rank* ``r`` is
its index ``0 .. N - 1``; rank 0 alone writes (config, checkpoints, history, TensorBoard,
progress bar, validation). :class:`World` is one process's view; ``World()`` is a single process,
for which every method is the identity and talks to no one, so a one-process run executes
exactly the code it executed before distributed training existed.

What the ranks share, and how:

* **gradients**: after a rank's backward pass(es), before the optimiser step,
  ``g <- (1 / N) sum_r g_r`` (:meth:`World.average_step`: one all-reduce of one flat buffer per
  dtype). With ``n`` rays on every rank and a per-ray mean loss ``L_r``, the mean of the ``L_r``
  is the mean loss over all ``N n`` rays, so the averaged gradient is the gradient of one step on
  the union of the ranks' rays. Example: ranks with ``L_0 = 0.2`` and ``L_1 = 0.4`` on 64 rays
  each train on the 128-ray loss ``0.3``. Identical gradients and identical optimiser states keep
  the parameters identical on every rank;
* **random streams**: each rank draws its rays, jitter and HSM samples from its own generator,
  seeded by :func:`rank_seed`; model updates that draw random numbers (the occupancy grid's
  random cells) draw from a generator that every rank seeds alike, so with identical parameters
  they give identical grids (:meth:`World.generators`);
* **bookkeeping**: the sample count that adapts the ray count (summed, so every rank draws the
  same number of rays next step), the step time (the slowest rank's, so ``--max-time`` and the
  learning-rate schedule see the same clock everywhere), and "stop" / "checkpoint now" / "paused"
  flags (any rank's), one small all-reduce each;
* **checkpoints**: every rank's generator state and HSM ``tau`` are gathered into rank 0's
  checkpoint (:meth:`World.gather_streams`), so a resumed run with as many processes continues
  exactly; with a different number it continues from re-derived streams (:meth:`World.restore_streams`).

Why an explicit all-reduce and not ``DistributedDataParallel``: radfield's training steps
(:mod:`radfield.training.steps`) call the field through ``model.field.raw`` rather than a
module's ``forward``, and the hard-sample-mining step runs a forward without a graph, a backward
through a tiny graph that never reaches the field (but does reach proposal networks and a learned
background), then a second forward of a subset and a second backward. DDP reduces gradients from
hooks during backward and expects one backward per forward of the wrapped module that touches
its parameters: it would need ``no_sync`` around the first backward, ``find_unused_parameters``
for the parameters a pass leaves alone, and the calls routed through the wrapper. Averaging once,
after whatever step ran and before ``optimizer.step``, reduces exactly the gradients the
optimiser will use, with no knowledge of the step. The price is that communication does not
overlap the backward pass (DDP's bucketed overlap); ``bench/RESULTS.md`` measures and estimates it.
With gradient scaling (CUDA), every rank scales by the same factor; an inf or nan on one rank
reaches every rank through the sum, so all skip the same steps and the scalers stay equal.

Failures: a collective that fails (a peer process died: its sockets close at once; or a peer
stopped answering for ``timeout_s``) raises :class:`radfield.errors.PeerLost` with a one-line
message; the trainer adds which checkpoint is kept, and the command line prints it and exits 1.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from radfield.errors import PeerLost, RadfieldError, RankZeroError
from radfield.training.steps import StepResult

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 300.0
"""How long a process waits for the others in one collective before the run ends. Rank 0
validates and writes checkpoints while the others wait at their next collective, so this must
exceed the longest validation; a peer that *dies* is noticed at once (its sockets close)."""

_timeout_s = DEFAULT_TIMEOUT_S


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of rank ``rank``'s own generator: 64 bits of numpy's ``SeedSequence(seed,
    spawn_key=(rank, step))``, the standard way to derive independent streams for workers.
    ``step`` is nonzero only when a run resumes with another number of processes."""
    sequence = np.random.SeedSequence(seed % 2 ** 64, spawn_key=(rank, step))
    return int(sequence.generate_state(1, np.uint64)[0])


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _reason(exc: BaseException) -> str:
    """The first line of a backend error, without gloo's ``[.../pair.cc:534]`` source prefix
    and its advice to check the logs of the remote worker."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = re.sub(r"\.\s+This is typically caused by.*$", "", text)  # gloo's advice
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h|hpp):\d+\]\s*", "", text)


@dataclasses.dataclass
class World:
    """The processes of a run as seen from one of them (``World()``: a single process).

    ``bytes_reduced`` and ``collectives`` count what this process has all-reduced so far (the
    payload, not the protocol's traffic), for ``bench/distributed.py``.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    timeout_s: float = DEFAULT_TIMEOUT_S
    bytes_reduced: int = 0
    collectives: int = 0

    @classmethod
    def from_env(cls, timeout_s: float = DEFAULT_TIMEOUT_S) -> "World":
        """From torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (a single process when unset)."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError:
            raise RadfieldError("WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)") from None
        if size < 1 or not 0 <= rank < size:
            raise RadfieldError(f"RANK={rank} and WORLD_SIZE={size}: need 0 <= RANK < WORLD_SIZE")
        return cls(rank, size, local_rank, timeout_s)

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes."""
        return self.rank == 0

    def local_device(self, device: str) -> str:
        """``cuda`` -> this process's GPU, ``cuda:LOCAL_RANK``, under torchrun; else ``device``."""
        return f"cuda:{self.local_rank}" if self.size > 1 and device == "cuda" else device

    # ------------------------------------------------------------------ talking
    @contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """Turns a failed collective into :class:`PeerLost` with a one-line message."""
        try:
            yield
        except (RuntimeError, ConnectionError) as exc:  # DistBackendError, DistNetworkError, ...
            reason = _reason(exc)
            if "timed out" in reason.lower() or "timeout" in reason.lower():
                cause = f"no answer from the other processes within {self.timeout_s:g} s"
            else:
                cause = "another process of the run died or cannot be reached"
            raise PeerLost(f"rank {self.rank} of {self.size}: {what} failed: {cause} ({reason})") from None

    def _all_reduce(self, tensor: Tensor, op, what: str) -> None:
        with self._talking(what):
            dist.all_reduce(tensor, op=op)
        self.bytes_reduced += tensor.numel() * tensor.element_size()
        self.collectives += 1

    def _scalars(self, values: list[float], op, what: str) -> list[float]:
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        self._all_reduce(t, op, what)
        return t.tolist()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sums over the ranks (one all-reduce of a small CPU tensor)."""
        return values if self.size == 1 else self._scalars(values, dist.ReduceOp.SUM, "summing step figures")

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maxima over the ranks: the slowest rank's step time, any rank's flag."""
        return values if self.size == 1 else self._scalars(values, dist.ReduceOp.MAX, "agreeing on the step")

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one of them."""
        return flag if self.size == 1 else self.max([float(flag)])[0] > 0

    def on_rank0(self, fn: Callable[[], T]) -> T:
        """``fn()`` run by rank 0 alone (reading a checkpoint, checking the run directory), its
        result handed to every rank. A :class:`RadfieldError` from it is raised on rank 0 and as
        :class:`RankZeroError` (same message, printed by rank 0 only) on the others."""
        if self.size == 1:
            return fn()
        box: list = [None]
        error = None
        if self.rank == 0:
            try:
                box = [("ok", fn())]
            except RadfieldError as exc:
                error, box = exc, [("error", str(exc))]
        with self._talking("receiving rank 0's result"):
            dist.broadcast_object_list(box, src=0)
        if error is not None:
            raise error
        kind, value = box[0]
        if kind == "error":
            raise RankZeroError(value)
        return value

    def broadcast_module(self, module: nn.Module) -> None:
        """Every parameter and buffer from rank 0 (DDP does the same at construction): the ranks
        start from one model even if building it were not deterministic."""
        if self.size == 1:
            return
        with self._talking("receiving rank 0's model"), torch.no_grad():
            for t in [*module.parameters(), *module.buffers()]:
                dist.broadcast(t.data.view(torch.uint8) if t.dtype == torch.bool else t.data, src=0)

    # ------------------------------------------------------------------ a training step
    def average_step(self, params: Iterable[Tensor], result: StepResult) -> StepResult:
        """After a step's backward pass(es): every parameter's gradient becomes the mean over the
        ranks, ``g <- (1 / N) sum_r g_r`` (a rank without a gradient for it counts as zero; a
        parameter no rank has a gradient for keeps ``grad = None``, as in one process, so Adam
        skips it). Returns ``result`` with the ranks' sample counts added and losses averaged.

        One flat buffer per (dtype, device), ``[g_1, ..., g_k, has_grad_1, ..., has_grad_k]``,
        all-reduced with SUM; ``params`` must come in the same order on every rank.
        """
        if self.size == 1:
            return result
        t0 = time.perf_counter()
        buckets: dict[tuple, list[Tensor]] = defaultdict(list)
        for p in params:
            if p.requires_grad:
                buckets[(p.dtype, p.device)].append(p)
        for (dtype, device), group in buckets.items():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in group]
            has = torch.tensor([p.grad is not None for p in group], dtype=dtype, device=device)
            flat = torch.cat([g.reshape(-1) for g in grads] + [has])
            self._all_reduce(flat, dist.ReduceOp.SUM, "averaging gradients")
            flat[:-len(group)] /= self.size
            offset = 0
            for p, seen in zip(group, flat[-len(group):].tolist()):
                n = p.numel()
                p.grad = flat[offset:offset + n].view_as(p) if seen > 0 else None
                offset += n
        n, b, loss, mse = self.sum([result.n_samples, result.n_backward, result.loss, result.mse])
        timings = {**result.timings, "all_reduce": time.perf_counter() - t0}
        return dataclasses.replace(result, loss=loss / self.size, mse=mse / self.size,
                                   n_samples=int(n), n_backward=int(b), timings=timings)

    # ------------------------------------------------------------------ random streams
    def generators(self, device: torch.device, seed: int) -> tuple[torch.Generator, torch.Generator]:
        """``(own, shared)``: this rank's generator (rays, jitter, HSM draws) and the one every
        rank seeds alike (model updates). One process: the same generator twice, seeded with
        ``seed``, as before distributed training existed."""
        own = torch.Generator(device).manual_seed(seed)
        if self.size == 1:
            return own, own
        own.manual_seed(rank_seed(seed, self.rank))
        return own, torch.Generator(device).manual_seed(seed)

    def gather_streams(self, own: torch.Generator, shared: torch.Generator, tau: float) -> dict | None:
        """Every rank's generator state and HSM ``tau``, gathered on rank 0 for its checkpoint:
        ``{"world_size", "generators": [N states], "hsm_tau": [N floats], "shared_generator"}``
        (None on the other ranks and in a single process). Collective: every rank calls it."""
        if self.size == 1:
            return None
        mine = (own.get_state(), float(tau))
        gathered = [None] * self.size if self.rank == 0 else None
        with self._talking("gathering the ranks' random states"):
            dist.gather_object(mine, gathered, dst=0)
        if self.rank != 0:
            return None
        return {"world_size": self.size, "generators": [g for g, _ in gathered],
                "hsm_tau": [t for _, t in gathered], "shared_generator": shared.get_state()}

    def restore_streams(self, saved: dict | None, own: torch.Generator, shared: torch.Generator,
                        seed: int, step: int, tau: float) -> float:
        """The inverse of :meth:`gather_streams` at resume; returns this rank's HSM ``tau``.

        ``saved`` is the checkpoint's ``"distributed"`` entry (None when one process wrote it;
        ``own`` then holds that process's generator, which also served as the shared one). With
        as many processes as wrote it the run continues exactly; otherwise the shared stream is
        kept, each rank's own stream is re-derived from ``(seed, rank, step)`` and every rank
        starts from the saved ``tau`` (rank 0's), with a note on rank 0.
        """
        if saved is not None and saved["world_size"] == self.size:
            own.set_state(saved["generators"][self.rank].cpu())
            shared.set_state(saved["shared_generator"].cpu())
            return float(saved["hsm_tau"][self.rank])
        written_by = 1 if saved is None else saved["world_size"]
        if written_by == self.size:  # one process wrote it and one resumes it: as before
            return tau
        if own is not shared:  # one process keeps the stream it restored (rank 0's)
            shared.set_state(own.get_state() if saved is None else saved["shared_generator"].cpu())
            own.manual_seed(rank_seed(seed, self.rank, step))
        if self.rank == 0:
            print(f"radfield: note: the checkpoint was written by {_processes(written_by)} and is "
                  f"resumed by {_processes(self.size)}: each process's random stream is re-derived "
                  f"from the seed and the step (the run continues, though not as it would have "
                  f"with {_processes(written_by)})", file=sys.stderr)
        return tau


def current_world() -> World:
    """This process's :class:`World`: the initialised default process group, else one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                 _timeout_s)


@contextmanager
def process_group(device: str = "cpu", timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[World]:
    """Join the other processes that torchrun started (nothing to join when ``WORLD_SIZE`` is
    unset or 1, or when a process group already exists); leave the group at the end.

    ``device`` ``cuda``: this process uses GPU ``LOCAL_RANK``, NCCL for GPU tensors and gloo for
    CPU ones; otherwise gloo. ``timeout_s`` bounds every wait for the other processes.
    """
    global _timeout_s
    world = World.from_env(timeout_s)
    if world.size == 1 or dist.is_initialized():
        yield current_world() if dist.is_initialized() else world
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise RadfieldError("--device cuda: CUDA is not available on this machine")
        torch.cuda.set_device(world.local_rank)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    try:
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError, ConnectionError) as exc:
        raise PeerLost(f"rank {world.rank} of {world.size}: could not join the other processes "
                       f"at {where} ({_reason(exc)})") from None
    _timeout_s = timeout_s
    try:
        yield world
    finally:
        _timeout_s = DEFAULT_TIMEOUT_S
        try:
            dist.destroy_process_group()
        except (RuntimeError, ValueError):  # after a lost peer: keep the error that ended the run
            pass
