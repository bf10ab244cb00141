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
from radfield.fields.encodings import EncodingConfig
from radfield.fields.hashgrid import HashGridConfig
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
    lr_schedule: str = "step"
    """``step``: warm-up then ``lr *= lr_gamma`` at each milestone; ``log_linear``: mip-NeRF 360's
    sine warm-up then log-linear decay from ``lr`` to ``lr_final``."""
    warmup_steps: int = 100
    lr_milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of the run (of max_steps or max_time, whichever is nearer) where lr *= lr_gamma."""
    lr_gamma: float = 0.33
    lr_final: float = 1e-4
    """``log_linear``: the learning rate at the end of the run."""
    loss: str = "l2"
    """Photometric loss spec, e.g. ``l2``, ``l1+0.2*ssim`` (names: l2, l1, rmse, charbonnier,
    ssim, fft; ssim and fft train on square patches of ``patch_size``)."""
    loss_colour_space: str = "rgb"
    """Compare colours in ``rgb``, ``luminance``, ``hsv`` or ``xyz``."""
    loss_tonemap: bool = False
    """Apply ``x / (1 + x)`` to both colours before the loss."""
    loss_gamma: float | None = None
    """Apply ``x^(1/gamma)`` to both colours before the loss (after tone mapping)."""
    patch_size: int = 16
    """Side of the square pixel patches drawn when the loss needs patches."""
    distortion_weight: float = 0.0
    """Weight of the mip-NeRF 360 distortion loss on the sample weights (0 = off)."""
    target_samples: int = 1 << 16
    """Adaptive ray count: rays per step are adjusted so a step has about this many samples."""
    init_rays: int = 1024
    max_rays: int = 1 << 15
    background: str = "random"
    """random (per ray, RGBA data), white, black, learned (an MLP on the direction) or
    last_sample (the last interval is opaque); see :mod:`radfield.rendering.backgrounds`."""
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
    colmap_model: str | None = None
    """COLMAP datasets: the ``sparse/`` model folder to read (default: the one with the most images)."""
    eval_background: str = "white"
    """Background the RGBA test images are composited over for evaluation."""


@dataclass
class HierarchicalConfig:
    """Stratified samples between the ray's entry and exit of the scene box, then inverse-CDF
    resampling from the coarse weights (NeRF / mip-NeRF)."""

    n_coarse: int = 64
    n_fine: int = 128
    """0 = one level only (TinyNeRF)."""
    union: bool = True
    """Fine level = coarse and resampled endpoints together (NeRF) or resampled only (mip-NeRF)."""
    padding: float = 0.0
    """Added to the coarse weights before resampling (mip-NeRF: 0.01)."""
    coarse_weight: float = 1.0
    """Weight of the coarse level's photometric loss."""


def _positional(n_freqs: int) -> EncodingConfig:
    return EncodingConfig(name="positional", n_freqs=n_freqs)


@dataclass
class NeRFConfig:
    """Vanilla NeRF: positional encoding, 8 x 256 MLP with a skip at layer 4, separate coarse and
    fine networks. TinyNeRF (``RunConfig.tiny``) is the same model with one small network, no view
    dependence and one level of samples."""

    encoding: EncodingConfig = dc_field(default_factory=lambda: _positional(10))
    direction_freqs: int = 4
    """Positional-encoding frequencies of the view direction; 0 = no view dependence."""
    depth: int = 8
    width: int = 256
    skip: int = 4
    """Layer that gets the encoded input again (-1 = none)."""
    density_activation: str = "relu"
    sampler: HierarchicalConfig = dc_field(default_factory=HierarchicalConfig)
    separate_coarse: bool = True
    """A second network for the coarse level (NeRF); False queries the same one twice."""


@dataclass
class MipNeRFConfig:
    """mip-NeRF: conical frustums (or cylinders) as Gaussians, integrated positional encoding,
    one MLP queried for the coarse and the fine level."""

    shape: str = "cone"
    """``cone`` or ``cylinder``."""
    min_deg: int = 0
    max_deg: int = 16
    direction_freqs: int = 4
    depth: int = 8
    width: int = 256
    skip: int = 4
    sampler: HierarchicalConfig = dc_field(default_factory=lambda: HierarchicalConfig(
        n_coarse=128, n_fine=128, union=False, padding=0.01, coarse_weight=0.1))


@dataclass
class NeRFAEConfig:
    """NeRF auto-encoder (NeRF Atlas): position -> latent material vector z -> density and
    features; colour from (z, features, view direction)."""

    encoding: EncodingConfig = dc_field(default_factory=lambda: EncodingConfig(
        name="fourier", n_features=128, scale=1.0))
    """Fourier features of the box-normalised position (scale 1: 20 dB after 200 steps on the
    built-in scene where scale 4 reached 11 dB, measured)."""
    latent: int = 32
    encoder_depth: int = 3
    width: int = 128
    direction_freqs: int = 4
    normalize_latent: bool = False
    """Scale z to unit L2 norm."""
    latent_penalty: float = 1e-3
    """Weight of mean ||z||^2 in the training loss (0 = off)."""
    sampler: HierarchicalConfig = dc_field(default_factory=lambda: HierarchicalConfig(
        n_coarse=64, n_fine=64, union=True, padding=0.01))


@dataclass
class NerfactoConfig:
    """The nerfacto-style proposal pipeline for unbounded scenes
    (``shared/specs/proposal-sampling.md``)."""

    grid: HashGridConfig = dc_field(default_factory=lambda: HashGridConfig(max_resolution=2048))
    hidden: int = 64
    geo_features: int = 15
    appearance_dim: int = 32
    """Per-training-image appearance embedding (0 = off); test images use the mean embedding."""
    contraction: str = "inf"
    """Scene contraction norm: ``inf`` (nerfacto) or ``l2`` (mip-NeRF 360)."""
    bounded: bool | None = None
    """Sample only inside the scene box, uniformly (object scenes with a transparent
    background), instead of ``[near, far]`` with the spacing function (unbounded captures).
    None: decided when training starts (True for RGBA data) and recorded in config.json."""
    spacing: str = "unbounded"
    near: float = 0.05
    far: float = 1000.0
    """Ray bounds in units of the scene radius (half the largest side of the scene box)."""
    proposal_samples: tuple[int, ...] = (256, 96)
    n_samples: int = 48
    proposal_grids: tuple[int, ...] = (128, 256)
    """Maximum resolution of each proposal network's hash grid (5 levels, 2^17 entries)."""
    proposal_hidden: int = 16
    interlevel_weight: float = 1.0


@dataclass
class RunConfig:
    model: str = "ngp"
    data: DataConfig = dc_field(default_factory=DataConfig)
    ngp: NGPFieldConfig = dc_field(default_factory=NGPFieldConfig)
    grid: OccupancyGridConfig = dc_field(default_factory=OccupancyGridConfig)
    nerf: NeRFConfig = dc_field(default_factory=NeRFConfig)
    tiny: NeRFConfig = dc_field(default_factory=lambda: NeRFConfig(
        encoding=_positional(6), direction_freqs=0, depth=4, width=128, skip=-1, separate_coarse=False,
        sampler=HierarchicalConfig(n_coarse=64, n_fine=0)))
    mipnerf: MipNeRFConfig = dc_field(default_factory=MipNeRFConfig)
    nerfae: NeRFAEConfig = dc_field(default_factory=NeRFAEConfig)
    nerfacto: NerfactoConfig = dc_field(default_factory=NerfactoConfig)
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
    if "field" in data and "ngp" not in data:  # runs written before the model zoo
        data = {**data, "ngp": data["field"]}
    return _from_dict(RunConfig, data)


def run_config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


MODELS = ("ngp", "nerfacto", "nerf", "mipnerf", "tiny", "nerfae")

# Adam as the MLP papers use it (eps 1e-8, no weight decay), log-linear decay, every sample kept.
_MLP_TRAINING = {"train.lr_schedule": "log_linear", "train.eps": 1e-8, "train.weight_decay": 0.0,
                 "train.early_stop": False}
# nerfacto: log-linear decay 1e-2 -> 1e-4, distortion loss 0.002 (in s), no sample pruning.
_NERFACTO = {"model": "nerfacto", "train.lr_schedule": "log_linear", "train.lr_final": 1e-4,
             "train.distortion_weight": 0.002, "train.early_stop": False}

PRESETS: dict[str, dict] = {
    # Instant-NGP as in the paper: tables of 2^19 per level, 64^3 occupancy grid.
    "ngp": {},
    # A small, fast configuration for CPU demos and tests.
    "ngp-small": {"ngp.grid.log2_table_size": 17, "ngp.grid.max_resolution": 512,
                  "train.target_samples": 1 << 15},
    "nerfacto": {**_NERFACTO, "train.warmup_steps": 512, "train.target_samples": 1 << 15},
    # nerfacto sized for a CPU: 128 -> 64 -> 32 samples, smaller tables.
    "nerfacto-small": {**_NERFACTO, "train.warmup_steps": 256, "train.target_samples": 1 << 14,
                       "nerfacto.grid.log2_table_size": 17, "nerfacto.grid.max_resolution": 1024,
                       "nerfacto.proposal_samples": (128, 64), "nerfacto.n_samples": 32},
    # Vanilla NeRF as in the paper: lr 5e-4 decaying to 5e-5.
    "nerf": {"model": "nerf", **_MLP_TRAINING, "train.lr": 5e-4, "train.lr_final": 5e-5,
             "train.warmup_steps": 0, "train.target_samples": 1 << 16},
    # NeRF sized for a CPU: 4 x 128 networks, 32 + 64 samples.
    "nerf-small": {"model": "nerf", **_MLP_TRAINING, "train.lr": 1e-3, "train.lr_final": 5e-5,
                   "train.warmup_steps": 0, "train.target_samples": 1 << 14,
                   "nerf.depth": 4, "nerf.width": 128, "nerf.skip": 2,
                   "nerf.sampler.n_coarse": 32, "nerf.sampler.n_fine": 64},
    # mip-NeRF as in the paper: lr 5e-4 -> 5e-6 with a 512-step warm-up.
    "mipnerf": {"model": "mipnerf", **_MLP_TRAINING, "train.lr": 5e-4, "train.lr_final": 5e-6,
                "train.warmup_steps": 512, "train.target_samples": 1 << 16},
    "mipnerf-small": {"model": "mipnerf", **_MLP_TRAINING, "train.lr": 1e-3, "train.lr_final": 5e-5,
                      "train.warmup_steps": 100, "train.target_samples": 1 << 14,
                      "mipnerf.depth": 4, "mipnerf.width": 128, "mipnerf.skip": 2,
                      "mipnerf.sampler.n_coarse": 48, "mipnerf.sampler.n_fine": 48},
    # TinyNeRF (its network lives in RunConfig.tiny: 4 x 128, 64 uniform samples, no view
    # dependence).
    "tiny": {"model": "tiny", **_MLP_TRAINING, "train.lr": 1e-3, "train.lr_final": 5e-5,
             "train.warmup_steps": 0, "train.target_samples": 1 << 14},
    "nerfae": {"model": "nerfae", **_MLP_TRAINING, "train.lr": 1e-3, "train.lr_final": 5e-5,
               "train.warmup_steps": 0, "train.target_samples": 1 << 14},
}
"""Named presets: dotted overrides of the defaults above, one per method. ``--model M`` alone
uses preset ``M``; a preset may set ``model`` itself."""


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
