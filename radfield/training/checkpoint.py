"""Checkpoints: written atomically, read without executing code.

A checkpoint is a dict of tensors and plain values saved with ``torch.save`` through
:func:`radfield.io.atomic_write` (a temporary file moved into place with ``os.replace``), so a crash never leaves a
truncated file. It is read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from radfield.errors import RadfieldError
from radfield.io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "radfield-checkpoint-v1"
REQUIRED_KEYS = ("config", "model", "optimizer", "generator", "state", "history")


def save_checkpoint(path: Path, state: dict) -> None:
    with atomic_write(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict:
    """Load ``RUN_DIR/checkpoint.pt``; a missing or foreign file is a one-line RadfieldError."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not Path(run_dir).is_dir():
        raise RadfieldError(f"{run_dir}: no such run directory")
    if not path.is_file():
        raise RadfieldError(f"{path}: no checkpoint (train first, or check the run directory)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, foreign pickle, ...
        raise RadfieldError(f"{path}: unreadable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RadfieldError(f"{path}: not a radfield checkpoint")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise RadfieldError(f"{path}: incomplete checkpoint (missing {', '.join(missing)})")
    return state
