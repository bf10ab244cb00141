"""Instant-NGP's weight averaging: an exponential moving average of the parameters.

Training steps the raw weights; after every optimiser step the average moves towards them,
``avg <- d_n * avg + (1 - d_n) * w`` (torch's ``get_ema_multi_avg_fn``), starting from the
weights it is made from. ``d_n = min(decay, (1 + n) / (10 + n))`` at the ``n``-th update
(TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``): early on, while the weights
move fast, the average follows them closely, and a short run's average does not reach back over
a quarter of it. Validation, the checkpoint's ``model`` (what ``eval``, ``render`` and the
exporters load) and a run's reported scores use the average; the checkpoint also keeps the raw
weights, so ``--resume`` continues the run exactly.

Why: Adam at a high learning rate keeps the hash tables' entries jittering about where the data
wants them; the average removes that jitter without waiting for the schedule's decays. On tabletop
(``ngp``, 5 minutes, 10 validation images) an average over about 100 steps (decay 0.99) scored
0.2-0.6 dB above the raw weights before the first decay, and the same at the end, for about 1 ms a
step (``bench/RESULTS.md``, 2026-12-06).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class WeightAverage:
    """The moving average of ``model``'s parameters with ``decay`` (in (0, 1)).

    Example: decay 0.2, a weight stepped from 0 to 1 and held: ``d`` is 0.1, 0.18, then 0.2
    from the third update on; the average reads 0.9, 0.9818, 0.9964, 0.9993, ..."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"weight average decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.values = [p.detach().clone() for p in self.params]
        self.n_updates = 0

    def current_decay(self) -> float:
        """The next update's ``d_n`` (module doc)."""
        return min(self.decay, (1 + self.n_updates) / (10 + self.n_updates))

    @torch.no_grad()
    def update(self) -> None:
        """One step of the average towards the current weights."""
        if self.values:
            get_ema_multi_avg_fn(self.current_decay())(self.values, [p.detach() for p in self.params], None)
        self.n_updates += 1

    @contextmanager
    def applied(self):
        """The model's parameters hold the average inside the block (their storage is swapped,
        nothing is copied); the raw weights come back on leaving it."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for i, p in enumerate(self.params):
            p.data, self.values[i] = self.values[i], p.data

    def averaged_state(self) -> dict[str, Tensor]:
        """The averaged parameters by name (to put in place of the raw ones in a state dict)."""
        return {n: v.detach().clone() for n, v in zip(self.names, self.values)}

    def raw_state(self) -> dict[str, Tensor]:
        """The raw (training) parameters by name."""
        return {n: p.detach().clone() for n, p in zip(self.names, self.params)}


@torch.no_grad()
def load_raw(model: nn.Module, raw: dict[str, Tensor]) -> None:
    """Put :meth:`WeightAverage.raw_state`'s weights back into ``model``'s parameters."""
    for name, p in model.named_parameters():
        p.copy_(raw[name])
