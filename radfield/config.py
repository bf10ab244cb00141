"""Typed configuration: one dataclass per component, one home for each default.

A run is described by a :class:`RunConfig` (saved as ``RUN_DIR/config.json``). Named presets
(:data:`PRESETS`) override a few fields of the defaults for a whole method; nothing else
overrides a default silently.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field as dc_field

from radfield.errors import RadfieldError
from radfield.fields.ngp import NGPFieldConfig
from radfield.samplers.occupancy import OccupancyGridConfig


@dataclass
class HSMConfig:
    """Hard sample mining (``shared/specs/hard-sample-mining.md``)."""

    enabled: bool = False
    min_fraction: float = 0.05
    """Lower clamp of the kept fraction b / B."""
    max_fraction: float = 0.5
    """Upper clamp of the kept fraction b / B."""
    ema: float = 0.99
    """``tau <- ema * tau + (1 - ema) * tau_now`` whenever ``tau_now > 1``."""


@dataclass
class TrainConfig:
    max_steps: int = 20000
    max_time: float | None = None
    """Wall-clock training budget in seconds (validation time excluded); None = no limit."""
    lr: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 1e-6
    """L2 on the MLP weights only (Instant-NGP)."""
    warmup_steps: int = 100
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of the run (of max_steps or max_time, whichever is nearer) where lr *= lr_gamma."""
    lr_gamma: float = 0.33
    loss: str = "l2"
    distortion_weight: float = 0.0
    """Weight of the mip-NeRF 360 distortion loss on the sample weights (0 = off)."""
    target_samples: int = 1 << 16
    """Adaptive ray count: rays per step are adjusted so a step has about this many samples."""
    init_rays: int = 1024
    max_rays: int = 1 << 15
    background: str = "random"
    """Training background for RGBA data: random (per ray), white or black."""
    early_stop: bool = True
    """Prune samples behind transmittance 1e-4 with a no-grad density pass (off under --hsm,
    whose first pass sees those samples anyway)."""
    eval_every: float = 30.0
    """Seconds of training between validation renders."""
    val_images: int = 2
    checkpoint_every: int = 2000
    seed: int = 0
    mixed_precision: bool = True
    """float16 autocast and gradient scaling on CUDA (ignored on the CPU)."""
    hsm: HSMConfig = dc_field(default_factory=HSMConfig)


@dataclass
class DataConfig:
    path: str = ""
    downscale: int = 1
    eval_background: str = "white"
    """Background the RGBA test images are composited over for evaluation."""


@dataclass
class RunConfig:
    model: str = "ngp"
    data: DataConfig = dc_field(default_factory=DataConfig)
    field: NGPFieldConfig = dc_field(default_factory=NGPFieldConfig)
    grid: OccupancyGridConfig = dc_field(default_factory=OccupancyGridConfig)
    train: TrainConfig = dc_field(default_factory=TrainConfig)


def _from_dict(cls, data: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def run_config_from_dict(data: dict) -> RunConfig:
    return _from_dict(RunConfig, data)


def run_config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


MODELS = ("ngp",)

PRESETS: dict[str, dict] = {
    # Instant-NGP as in the paper: tables of 2^19 per level, 64^3 occupancy grid.
    "ngp": {},
    # A small, fast configuration for CPU demos and tests.
    "ngp-small": {"field.grid.log2_table_size": 17, "field.grid.max_resolution": 512,
                  "train.target_samples": 1 << 15},
}


def apply_overrides(config: RunConfig, overrides: dict) -> RunConfig:
    """Set dotted fields, e.g. ``{"train.lr": 1e-3}``; unknown names raise RadfieldError."""
    for dotted, value in overrides.items():
        obj, *path, leaf = [config] + dotted.split(".")
        for name in path:
            obj = getattr(obj, name)
        if not hasattr(obj, leaf):
            raise RadfieldError(f"unknown option {dotted!r}")
        setattr(obj, leaf, value)
    return config
