"""Checkpoints: written atomically, read without executing code.

A checkpoint is a dict of tensors and plain values saved with ``torch.save`` through
:func:`radfield.io.atomic_write` (a temporary file moved into place with ``os.replace``), so a crash never leaves a
truncated file. It is read with ``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from radfield.config import RunConfig, run_config_from_dict
from radfield.errors import RadfieldError
from radfield.io import atomic_write
from radfield.models import Model, SceneInfo, build_model

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.json"
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
        if (Path(run_dir) / CONFIG_NAME).is_file():
            raise RadfieldError(f"{path}: no checkpoint yet (the run was stopped before its first one)")
        raise RadfieldError(f"{run_dir}: not a run directory (no {CHECKPOINT_NAME} or {CONFIG_NAME})")
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


def load_run(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[RunConfig, Model]:
    """``(config, model)`` of a trained run, the model in eval mode on ``device``, rebuilt from
    the config and the build arguments the model saved (``Model.build_args``)."""
    ck = load_checkpoint(Path(run_dir), map_location=device)
    if "build" not in ck:
        raise RadfieldError(f"{Path(run_dir) / CHECKPOINT_NAME}: written by an older radfield "
                            "(no build arguments); train the run again")
    config = run_config_from_dict(json.loads(ck["config"]))
    model = build_model(config, SceneInfo.from_dict(json.loads(ck["build"])))
    model.load_state_dict(ck["model"])
    return config, model.to(device).eval()
