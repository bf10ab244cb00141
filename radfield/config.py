"""Typed configuration: one dataclass per component, one home for each default.

A run is described by a :class:`RunConfig` (saved as ``RUN_DIR/config.json``). Named presets
(:data:`PRESETS`) override a few fields of the defaults for a whole method; nothing else
overrides a default silently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field as dc_field

from radfield.errors import RadfieldError
from radfield.fields.dnerf import DeformationConfig, DNeRFMLPConfig
from radfield.fields.encodings import EncodingConfig
from radfield.fields.hashgrid import HashGridConfig
from radfield.fields.merf import MerfFieldConfig
from radfield.fields.ngp import NGPFieldConfig
from radfield.fields.pixelnerf import PixelNeRFFieldConfig
from radfield.fields.volsdf import SDFFieldConfig
from radfield.fields.voxels import VoxelFieldConfig
from radfield.losses.depth import DepthConfig
from radfield.samplers.occupancy import OccupancyGridConfig

LR_SCHEDULES = ("step", "log_linear")


@dataclass
class OptimConfig:
    """A model's training recipe: optimiser, learning-rate schedule and sample budget. Every model
    section of :class:`RunConfig` has one (``nerf.optim.lr``, ...), so each model trains with its
    own defaults whether it is built from the command line or from Python."""

    lr: float = 1e-2
    """Base learning rate; a model's parameter groups may scale it (their own ``lr``), and the
    schedule multiplies every group's rate by the same factor."""
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15
    weight_decay: float = 1e-6
    """L2 on the MLP weights only (Instant-NGP)."""
    schedule: str = "step"
    """``step``: warm-up then ``lr *= gamma`` at each milestone; ``log_linear``: mip-NeRF 360's
    sine warm-up then log-linear decay from ``lr`` to ``lr_final``."""
    warmup_steps: int = 100
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)
    """Fractions of the run (of max_steps or max_time, whichever is nearer) where lr *= gamma."""
    gamma: float = 0.33
    lr_final: float = 1e-4
    """``log_linear``: the learning rate at the end of the run."""
    target_samples: int = 1 << 16
    """Adaptive ray count: rays per step are adjusted so a step has about this many samples."""
    early_stop: bool = True
    """Prune samples behind transmittance 1e-4 with a no-grad density pass (samplers that can;
    under --hsm as ``train.hsm.early_stop`` says)."""
    distortion_weight: float = 0.0
    """Weight of the mip-NeRF 360 distortion loss on the sample weights (0 = off)."""
    weight_average: float = 0.0
    """Instant-NGP's weight averaging (:mod:`radfield.training.averaging`): validation and the
    checkpoint's model (what ``eval``, ``render`` and the exporters load) use a moving average of
    the weights with this decay, updated after every step; training steps the raw weights. 0 = off."""
    sparse_tables: bool = False
    """Instant-NGP's Adam step for hash tables (:mod:`radfield.training.adam`): an entry whose
    gradient is zero keeps its value and moments, and each entry counts its own steps for the
    bias correction. False: torch's Adam moves every entry every step."""


def mlp_optim(**overrides) -> OptimConfig:
    """Adam as the MLP papers use it (eps 1e-8, no weight decay), log-linear decay, every sample
    kept; ``overrides`` set the rest."""
    return OptimConfig(**{"schedule": "log_linear", "eps": 1e-8, "weight_decay": 0.0,
                          "early_stop": False, **overrides})


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
    final_min_fraction: float | None = None
    """Variant: the lower clamp rises linearly over the run from ``min_fraction`` to this (the
    kept fraction no longer falls as the field converges); None = a fixed ``min_fraction``."""
    importance_weights: bool = False
    """Variant: scale each kept sample's injected gradient by ``1 / min(1, b p_i)`` (the inverse
    of its inclusion probability, Horvitz-Thompson), an unbiased estimate of the full gradient
    instead of the paper's mining."""
    early_stop: bool = True
    """Keep early ray termination (the model's ``optim.early_stop``) before the first pass, so it
    mines the samples that count and the step sees as many rays as the baseline's; False: the
    paper's step, whose first pass takes every marched sample. On tabletop with ``ngp``: the
    baseline's final validation PSNR in 0.34x its time at 20 minutes and +0.37 dB on test, where
    the paper's step ended 0.23 dB below the baseline in 5 minutes (``bench/RESULTS.md``,
    2026-12-06)."""
    first_pass_samples: float = 1.0
    """Variant: the adaptive ray count aims the first pass at this times ``optim.target_samples``
    samples (more rays per step for the same back-propagated work)."""


@dataclass
class PoseOptConfig:
    """Camera-pose refinement while training (``--pose-opt``, BARF / nerfstudio's camera
    optimiser; :mod:`radfield.training.pose_refinement`): one SE(3) correction per training
    image, trained with the field by its own Adam."""

    enabled: bool = False
    lr: float = 6e-4
    """Adam's rate on the corrections: rotation in radians, translation in units of the scene's
    size (the box's largest side over ``aabb_scale``); nerfstudio's rate. Measured (no window,
    300 s): on tabletop with 2-degree / 2 % noise, 6e-4 scored 29.97 dB against 3e-3's 29.10
    (pose errors 0.48 / 0.42 degrees); on garden-colmap's SfM poses (150 s), 3e-3 moved the
    poses 1.1 degrees on average and lost 5 dB, 6e-4 moved them 0.23 degrees."""
    lr_final: float = 3e-5
    """Log-linear decay from ``lr`` to this over the run."""
    warmup: float = 0.1
    """Fraction of the run over which the rate ramps linearly from 0 (the field first takes shape:
    with Adam, the corrections would otherwise move at the full rate on the noise of a random
    field)."""
    widen: float = 0.0
    """Samplers that skip empty space (occupancy grids) also keep samples within this fraction of
    the scene's size of occupied space (``Model.widened_sampling``), so rays just off the scene
    carry the gradient that pulls it toward them."""
    coarse_to_fine: tuple[float, float] | None = None
    """Fractions of the run over which BARF's window opens the bands of the model's position
    encoding (frequencies, or hash-grid levels) from the coarsest to all; None (the default): no
    window. BARF's window is for poses far off (it trades detail early for a wide basin); on
    poses a few degrees off it cost more than it gave (measured: garden-colmap, nerfacto, 150 s,
    the window (0.1, 0.5) moved the SfM poses 3.4 degrees on average at 3e-3 and 1.0 at 6e-4,
    and scored 17.0 / 19.1 dB on the given test poses against 19.9 / 24.4 without it)."""
    orbit: bool = True
    """Each correction also gets an orbit: a turn about the point of the optical axis at the depth
    of the scene's centre (the region of interest's), beside the turn about the camera's centre
    and the shift (:class:`radfield.poses.PoseCorrections`). A turn about the centre shifts the
    whole image, an orbit shows only as parallax, and with both as coordinates of their own Adam
    corrects each at its own pace. Measured 2026-12-04 (one machine, ``ngp-small``, 300 s, mean
    pose errors after a similarity alignment, from 2.01 degrees / 1.98 % of the size; tabletop at
    step 1500): without the orbit 0.75 degrees / 1.66 % (stalled: 0.74 / 1.64 at the end), the
    orbit alone (every turn about the pivot) 0.39 / 0.74, both 0.35 / 0.65; on the built-in scene
    (the unit test: 24 views, 300 steps) both reach 1.43 degrees at 32 x 32 and 1.00 at 64 x 64,
    the orbit alone 1.96 / 1.94, none 1.32 / 1.23. False: BARF's and nerfstudio's correction
    (turns about the camera's centre only)."""
    rot_penalty: float = 0.0
    trans_penalty: float = 0.0
    """nerfstudio's regulariser on the corrections (its ``rot_l2_penalty`` 1e-3 and
    ``trans_l2_penalty`` 1e-2): ``rot_penalty * mean |turn| + trans_penalty * mean |shift|`` (radians
    and fractions of the scene's size, :meth:`radfield.poses.PoseCorrections.penalty`), added to
    each step's loss. It anchors poses that are already right (SfM) to where they are."""
    test_fit_steps: int = 30
    """``eval``: steps of pose fitting of each test view to the frozen field before it is
    scored (as evaluations of pose-refining methods do); 0 scores the given poses."""


@dataclass
class TrainConfig:
    """What a run does, whatever the model (the model's own recipe is its section's ``optim``)."""

    max_steps: int = 20000
    max_time: float | None = None
    """Time budget in seconds; None = no limit. By default the time spent in training steps,
    validation and checkpoint writing excluded (models compare at equal training time); with
    ``max_time_wall`` the wall time of the whole loop, validation and checkpoints included."""
    max_time_wall: bool = False
    """``max_time`` (and the schedules' progress) counts wall time (``--wall-time``)."""
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
    init_rays: int = 1024
    max_rays: int = 1 << 15
    marched_budget: float = 4.0
    """The adaptive ray count aims a step at the model's ``target_samples`` samples, and also keeps
    the samples an early-termination pass marched (and evaluated without a graph) within this
    many times that: where termination drops most samples, the ray count would otherwise grow
    until that pass dominates the step."""
    background: str = "random"
    """random (per ray, RGBA data), white, black, learned (an MLP on the direction) or
    last_sample (the last interval is opaque); see :mod:`radfield.rendering.backgrounds`."""
    eval_every: float = 30.0
    """Seconds of training between validation renders (at least; see ``val_max_share``)."""
    val_images: int = 2
    val_max_share: float = 0.1
    """Validation's largest share of the wall clock: after a validation that took ``V`` seconds
    the next one waits at least ``V (1 - share) / share`` seconds of training, so large images
    that render slowly on a CPU do not crowd out the training; 1 = every ``eval_every``."""
    checkpoint_every: int = 2000
    """Steps between checkpoints ..."""
    checkpoint_every_s: float = 60.0
    """... or seconds of wall-clock time since the last one, whichever comes first (a killed run
    loses at most this much)."""
    seed: int = 0
    near_gradient: float | None = None
    """Scale the gradient of samples nearer their camera than this many camera radii (the
    farthest training camera's distance from the box's centre) by ``(t / d)^2`` ("Floaters No
    More", nerfstudio's ``use_gradient_scaling``: 1 scene unit after its pose scaling); 0 = off.
    None: the model's choice (:meth:`radfield.models.base.Model.default_near_gradient`), made
    when it is built and saved in config.json: 1 for ``nerfacto`` on unbounded captures and for
    ``ngp`` on a capture with an ``aabb_scale`` (``bench/RESULTS.md``: floaters), else 0."""
    mixed_precision: bool = True
    """float16 autocast and gradient scaling on CUDA (ignored on the CPU)."""
    hsm: HSMConfig = dc_field(default_factory=HSMConfig)
    pose_opt: PoseOptConfig = dc_field(default_factory=PoseOptConfig)
    depth: DepthConfig = dc_field(default_factory=DepthConfig)
    """Depth supervision (``shared/specs/depth-supervision.md``); off by default."""


@dataclass
class DataConfig:
    path: str = ""
    downscale: int = 1
    colmap_model: str | None = None
    """COLMAP datasets: the ``sparse/`` model folder to read (default: the one with the most images)."""
    train_views: int | None = None
    """Few-view training: keep this many training views, chosen by farthest-point sampling on
    the camera centres (:mod:`radfield.data.views`); None = all."""
    depth_source: str = "auto"
    """Where depth supervision reads its depths: ``auto``, ``maps``, ``sparse`` or ``mono``
    (:mod:`radfield.data.depth`)."""
    mono_depth: str | None = None
    """``mono``: the folder of monocular depth maps ``<image stem>.npy`` (relative to the
    dataset folder, or absolute)."""
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
    optim: OptimConfig = dc_field(default_factory=lambda: mlp_optim(
        lr=5e-4, lr_final=5e-5, warmup_steps=0, target_samples=1 << 16))
    """Vanilla NeRF's: lr 5e-4 decaying to 5e-5."""


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
    optim: OptimConfig = dc_field(default_factory=lambda: mlp_optim(
        lr=5e-4, lr_final=5e-6, warmup_steps=512, target_samples=1 << 16))
    """mip-NeRF's: lr 5e-4 -> 5e-6 with a 512-step warm-up."""


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
    optim: OptimConfig = dc_field(default_factory=lambda: mlp_optim(
        lr=1e-3, lr_final=5e-5, warmup_steps=0, target_samples=1 << 14))


@dataclass
class ProposalPipelineConfig:
    """The sampling of the nerfacto-style proposal pipeline (``shared/specs/proposal-sampling.md``),
    shared by the models trained under it (``nerfacto``, ``merf``)."""

    contraction: str = "inf"
    """Scene contraction norm: ``inf`` (nerfacto) or ``l2`` (mip-NeRF 360)."""
    bounded: bool | None = None
    """Sample only inside the scene box, uniformly (object scenes with a transparent
    background), instead of ``[near, far]`` with the spacing function (unbounded captures).
    None: decided when training starts (True for RGBA data) and recorded in config.json."""
    spacing: str = "unbounded"
    near: float = 0.05
    far: float = 1000.0
    """Ray bounds in units of the farthest training camera's distance from the box's centre
    (runs saved without it, and MeRF: the scene radius, half the largest side of the box)."""
    proposal_samples: tuple[int, ...] = (256, 96)
    n_samples: int = 48
    proposal_grids: tuple[int, ...] = (128, 256)
    """Maximum resolution of each proposal network's hash grid (5 levels, 2^17 entries)."""
    proposal_hidden: int = 16
    interlevel_weight: float = 1.0
    proposal_anneal_steps: int = 0
    """nerfstudio's proposal weight annealing: over the first this many steps the weights each
    level resamples from are raised to a power rising from 0 (uniform: the proposals are
    ignored) to 1, ``bias(step / steps)`` with ``bias(x) = s x / ((s - 1) x + 1)``, ``s``
    ``proposal_anneal_slope``; so early, unformed proposals cannot starve regions of samples.
    0 = off (nerfstudio: 1000)."""
    proposal_anneal_slope: float = 10.0
    skip_unseen: bool = False
    """Space that no training camera sees has no density, in the field and the proposal
    networks (:class:`radfield.fields.nerfacto.SeenGrid`), as Instant-NGP's occupancy grid
    leaves untrained cells empty (MeRF: the proposal networks only). Off by default: on
    garden-colmap it lifts the view farthest from the training cameras by 0.79-0.97 dB, costs the
    horizon view 0.13-0.29 dB, and moves the mean by under 0.1 dB (``bench/RESULTS.md``)."""
    seen_resolution: int = 128
    """Cells per side of that grid over the contracted cube (even)."""


@dataclass
class NerfactoConfig(ProposalPipelineConfig):
    """The nerfacto-style proposal pipeline for unbounded scenes
    (``shared/specs/proposal-sampling.md``): the sampling (above) and its field."""

    grid: HashGridConfig = dc_field(default_factory=lambda: HashGridConfig(max_resolution=2048))
    hidden: int = 64
    geo_features: int = 15
    appearance_dim: int = 32
    """Per-training-image appearance embedding (0 = off); test images use the mean embedding."""
    view_dependent: bool = True
    """Colour depends on the viewing direction (its spherical harmonics feed the colour MLP);
    False: diffuse colour (only the constant harmonic), which few training views can constrain."""
    optim: OptimConfig = dc_field(default_factory=lambda: OptimConfig(
        schedule="log_linear", lr_final=1e-4, warmup_steps=512, target_samples=1 << 15,
        early_stop=False, distortion_weight=0.002))
    """nerfacto's: log-linear decay 1e-2 -> 1e-4, distortion loss 0.002 (in s), no pruning."""


@dataclass
class MerfConfig(ProposalPipelineConfig):
    """MeRF: a low-resolution 3D grid plus three high-resolution planes (``field``), features
    summed and quantised to 8 bits while training, deferred shading, trained under the proposal
    pipeline (the sampling above); ``radfield export baked`` writes the grids as PNG atlases."""

    field: MerfFieldConfig = dc_field(default_factory=MerfFieldConfig)
    grid_lr: float = 0.1
    """Learning rate of the grid's and planes' level tables (they hold the features themselves,
    with no network to scale them, like DVGO's grids); ``optim.lr`` is the rest's."""
    baked_samples: tuple[int, int] = (256, 128)
    """The baked renderer's samples per ray: uniform in the spacing coordinate, then resampled
    from their weights under the baked density (it has no proposal networks)."""
    optim: OptimConfig = dc_field(default_factory=lambda: OptimConfig(
        schedule="log_linear", lr_final=1e-4, warmup_steps=512, target_samples=1 << 15,
        early_stop=False, distortion_weight=0.002))
    """nerfacto's recipe for the proposal networks and the shader (1e-2 decaying to 1e-4; the
    tables start at ``grid_lr`` and decay alike)."""


@dataclass
class VolSDFConfig:
    """VolSDF: a signed-distance field (``field``: hash-grid backbone by default, ``mlp`` the
    paper's), coarse-to-fine sampling, the eikonal loss."""

    field: SDFFieldConfig = dc_field(default_factory=SDFFieldConfig)
    sampler: HierarchicalConfig = dc_field(default_factory=lambda: HierarchicalConfig(
        n_coarse=64, n_fine=64, union=True, padding=0.01, coarse_weight=0.0))
    eikonal_weight: float = 0.1
    eikonal_points: int = 2048
    eikonal_gradient: str = "auto"
    """``autograd``, ``numerical`` (central differences) or ``auto`` (numerical for ``hash``)."""
    background_field: bool = False
    """A second (NeRF++) field outside the scene box's bounding sphere, for captures with a
    background; it replaces ``train.background``."""
    background_samples: int = 32
    optim: OptimConfig = dc_field(default_factory=lambda: OptimConfig(
        schedule="log_linear", lr_final=1e-4, warmup_steps=100, target_samples=1 << 15, early_stop=False))


@dataclass
class NGPConfig(NGPFieldConfig):
    """Instant-NGP: the hash-grid field (``grid``, ``hidden``, ...) sampled through an occupancy
    grid (``occupancy``); Instant-NGP's Adam (eps 1e-15, weight decay 1e-6 on the MLPs)."""

    grid: HashGridConfig = dc_field(default_factory=lambda: HashGridConfig(log2_table_size=18, max_resolution=0))
    """Instant-NGP's hash grid with 2^18-row tables (2^19 in the paper); ``max_resolution`` 0 = auto:
    ``ROI_MAX_RESOLUTION`` across the region of interest, times ``aabb_scale`` across the box (Instant-NGP's
    2048 x ``aabb_scale`` for 800 px images)."""
    occupancy: OccupancyGridConfig = dc_field(default_factory=OccupancyGridConfig)
    """Steps ``steps_per_diagonal`` 0 = auto, from the training images' pixel footprint."""
    optim: OptimConfig = dc_field(default_factory=lambda: OptimConfig(target_samples=1 << 15, weight_average=0.99))
    """Instant-NGP's Adam and its moving average of the weights (over about 100 steps)."""


@dataclass
class DNeRFConfig(NGPConfig):
    """D-NeRF, fast variant: Instant-NGP's canonical field and sampler (the fields above) plus a
    hash-grid deformation ``dx(x, t)`` (``deformation``)."""

    grid: HashGridConfig = dc_field(default_factory=HashGridConfig)
    occupancy: OccupancyGridConfig = dc_field(default_factory=lambda: OccupancyGridConfig(steps_per_diagonal=1024))
    optim: OptimConfig = dc_field(default_factory=OptimConfig)
    """The canonical field's grid, march and recipe as D-NeRF's benchmarks measured them (Instant-NGP's:
    2^19 rows, finest level 2048, 1024 steps over the diagonal, 2^16 samples per step)."""
    deformation: DeformationConfig = dc_field(default_factory=DeformationConfig)
    backbone: str = "hash"
    """``hash`` (fast) or ``mlp`` (the paper's networks, ``mlp``; preset ``dnerf-mlp``)."""
    coarse_to_fine: tuple[float, float] | None = None
    """Nerfies' coarse-to-fine deformation: BARF's window (:mod:`radfield.fields.window`) opens
    the bands of the deformation's position encoding (hash-grid levels, or frequencies with the
    MLP backbone) between these fractions of the run; None: off."""
    coarse_to_fine_canonical: bool = False
    """The window also on the canonical field's position encoding."""
    mlp: DNeRFMLPConfig = dc_field(default_factory=DNeRFMLPConfig)


@dataclass
class VoxelsConfig(VoxelFieldConfig):
    """DVGO's recipe: dense density and feature grids (the fields above), growing coarse to fine,
    a colour MLP, a total-variation term, free space skipped through Instant-NGP's occupancy grid
    (``occupancy``); with frame times, 4D grids over ``(x, t)`` (``time_slices``)."""

    occupancy: OccupancyGridConfig = dc_field(default_factory=lambda: OccupancyGridConfig(steps_per_diagonal=512))
    """Steps of about half a voxel of the final grid at resolution 160 (DVGO's 0.5)."""
    occupancy_from: int = 100
    """The occupancy grid is updated (every ``occupancy.update_every`` steps) from this step on;
    until its first update every step through the box is sampled (DVGO's coarse stage also sees
    all of space first): an untrained grid is uniform, and a uniform density has no cell above
    the mean to keep."""
    grid_lr: float = 0.1
    """Learning rate of the grids (DVGO's); ``optim.lr`` is the colour MLP's."""
    tv_density: float = 1e-4
    """Weight of the total variation of the density grid (0 = off)."""
    tv_features: float = 1e-5
    """Weight of the total variation of the feature grid (0 = off)."""
    tv_points: int = 4096
    """The total variation is taken over the cells of this many of the batch's samples (where
    rays are being fitted; one pass over every voxel per step would cost more than the step);
    0 = over the whole grids."""
    optim: OptimConfig = dc_field(default_factory=lambda: OptimConfig(
        lr=1e-3, schedule="log_linear", lr_final=1e-4, warmup_steps=0, eps=1e-8, weight_decay=0.0,
        target_samples=1 << 16))
    """DVGO's: Adam, the MLP at 1e-3 (the grids at ``grid_lr``), every rate decaying 10x over the run."""


@dataclass
class PixelNeRFConfig:
    """PixelNeRF: a CNN encoder over the source views, image features projected to every sample
    and mean-pooled over the views inside the MLP (``field``); coarse + fine samples in the box
    from one network; trained across scenes, ``1 .. max_sources`` source views per step."""

    field: PixelNeRFFieldConfig = dc_field(default_factory=PixelNeRFFieldConfig)
    sampler: HierarchicalConfig = dc_field(default_factory=lambda: HierarchicalConfig(
        n_coarse=64, n_fine=32, union=True, padding=0.01))
    max_sources: int = 3
    """Each training step conditions on ``k`` source views, ``k`` uniform in ``1 .. max_sources``
    (fewer when a scene has fewer training views: at least one is left to supervise)."""
    optim: OptimConfig = dc_field(default_factory=lambda: mlp_optim(
        lr=5e-4, lr_final=5e-5, warmup_steps=100, target_samples=1 << 14))
    """PixelNeRF's Adam trains at 1e-4 for days; short CPU budgets start higher and decay."""


@dataclass
class RunConfig:
    """Everything a run does. ``model`` names the model (a key of
    :data:`radfield.models.REGISTRY`); its settings, training recipe included, are the section of
    the same name."""

    model: str = "ngp"
    data: DataConfig = dc_field(default_factory=DataConfig)
    ngp: NGPConfig = dc_field(default_factory=NGPConfig)
    nerf: NeRFConfig = dc_field(default_factory=NeRFConfig)
    tiny: NeRFConfig = dc_field(default_factory=lambda: NeRFConfig(
        encoding=_positional(6), direction_freqs=0, depth=4, width=128, skip=-1, separate_coarse=False,
        sampler=HierarchicalConfig(n_coarse=64, n_fine=0),
        optim=mlp_optim(lr=1e-3, lr_final=5e-5, warmup_steps=0, target_samples=1 << 14)))
    mipnerf: MipNeRFConfig = dc_field(default_factory=MipNeRFConfig)
    nerfae: NeRFAEConfig = dc_field(default_factory=NeRFAEConfig)
    nerfacto: NerfactoConfig = dc_field(default_factory=NerfactoConfig)
    dnerf: DNeRFConfig = dc_field(default_factory=DNeRFConfig)
    volsdf: VolSDFConfig = dc_field(default_factory=VolSDFConfig)
    voxels: VoxelsConfig = dc_field(default_factory=VoxelsConfig)
    merf: MerfConfig = dc_field(default_factory=MerfConfig)
    pixelnerf: PixelNeRFConfig = dc_field(default_factory=PixelNeRFConfig)
    train: TrainConfig = dc_field(default_factory=TrainConfig)

    @property
    def section(self):
        """The model's own section (``self.ngp`` for ``model="ngp"``, ...)."""
        if not hasattr(self, self.model) or not hasattr(getattr(self, self.model), "optim"):
            raise RadfieldError(f"model {self.model!r} has no configuration section")
        return getattr(self, self.model)

    @property
    def optim(self) -> OptimConfig:
        """The model's training recipe, ``self.section.optim``."""
        return self.section.optim


def _from_dict(cls, data: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, hint = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(hint):
            value = _from_dict(hint, value)
        elif typing.get_origin(hint) is tuple or (
                isinstance(value, list) and tuple in map(typing.get_origin, typing.get_args(hint))):
            value = tuple(value)  # tuples, and optional ones (``tuple[...] | None``) given a list
        kwargs[f.name] = value
    return cls(**kwargs)


def run_config_from_dict(data: dict) -> RunConfig:
    return _from_dict(RunConfig, data)


def run_config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


PRESETS: dict[str, dict] = {
    # One preset per model, named after it, setting the model alone: the defaults of its section
    # are the method as published (RunConfig(model=M) trains exactly as --model M).
    "ngp": {"model": "ngp"},
    "nerfacto": {"model": "nerfacto"},
    "nerf": {"model": "nerf"},
    "mipnerf": {"model": "mipnerf"},
    "tiny": {"model": "tiny"},
    "nerfae": {"model": "nerfae"},
    "dnerf": {"model": "dnerf"},
    "volsdf": {"model": "volsdf"},
    "voxels": {"model": "voxels"},
    "merf": {"model": "merf"},
    "pixelnerf": {"model": "pixelnerf"},
    # D-NeRF's own networks (8 x 256 MLPs for the deformation and the canonical NeRF), lr 5e-4
    # -> 5e-5 (the sampler stays the occupancy grid).
    "dnerf-mlp": {"model": "dnerf", "dnerf.backbone": "mlp", "dnerf.optim.lr": 5e-4,
                  "dnerf.optim.lr_final": 5e-5, "dnerf.optim.schedule": "log_linear", "dnerf.optim.eps": 1e-8,
                  "dnerf.optim.weight_decay": 0.0},
    # VolSDF as in the paper: an 8 x 256 MLP on positional encodings, lr 5e-4 -> 5e-5.
    "volsdf-mlp": {"model": "volsdf", "volsdf.field.backbone": "mlp", "volsdf.field.depth": 8,
                   "volsdf.field.width": 256, "volsdf.optim.lr": 5e-4, "volsdf.optim.lr_final": 5e-5,
                   "volsdf.optim.eps": 1e-8, "volsdf.optim.weight_decay": 0.0},
    # Sized for a CPU.
    "ngp-small": {"model": "ngp", "ngp.grid.log2_table_size": 17, "ngp.grid.max_resolution": 512,
                  "ngp.optim.target_samples": 1 << 15},
    # nerfacto: 128 -> 64 -> 32 samples, smaller tables.
    "nerfacto-small": {"model": "nerfacto", "nerfacto.optim.warmup_steps": 256,
                       "nerfacto.optim.target_samples": 1 << 14,
                       "nerfacto.grid.log2_table_size": 17, "nerfacto.grid.max_resolution": 1024,
                       "nerfacto.proposal_samples": (128, 64), "nerfacto.n_samples": 32},
    # NeRF: 4 x 128 networks, 32 + 64 samples.
    "nerf-small": {"model": "nerf", "nerf.optim.lr": 1e-3, "nerf.optim.target_samples": 1 << 14,
                   "nerf.depth": 4, "nerf.width": 128, "nerf.skip": 2,
                   "nerf.sampler.n_coarse": 32, "nerf.sampler.n_fine": 64},
    "mipnerf-small": {"model": "mipnerf", "mipnerf.optim.lr": 1e-3, "mipnerf.optim.lr_final": 5e-5,
                      "mipnerf.optim.warmup_steps": 100, "mipnerf.optim.target_samples": 1 << 14,
                      "mipnerf.depth": 4, "mipnerf.width": 128, "mipnerf.skip": 2,
                      "mipnerf.sampler.n_coarse": 48, "mipnerf.sampler.n_fine": 48},
    # DVGO on a CPU: 96 vertices per side once grown (from 48, doubling the voxels at 250, 500
    # and 1000 steps), 8 feature channels, a 64-wide colour MLP.
    "voxels-small": {"model": "voxels", "voxels.resolution": 96, "voxels.upsample_steps": (250, 500, 1000),
                     "voxels.features": 8, "voxels.hidden": 64, "voxels.optim.target_samples": 1 << 15},
    # MeRF on a CPU: a 64^3 grid (3 levels), 512^2 planes (4 levels, dense tables), nerfacto-small's
    # samples.
    "merf-small": {"model": "merf", "merf.field.grid_resolution": 64, "merf.field.grid_levels": 3,
                   "merf.field.plane_resolution": 512, "merf.field.plane_levels": 4,
                   "merf.optim.warmup_steps": 256, "merf.optim.target_samples": 1 << 14,
                   "merf.proposal_samples": (128, 64), "merf.n_samples": 32},
    # PixelNeRF on a CPU: a 16-32-32 encoder, a 64-wide MLP, 32 + 16 samples.
    "pixelnerf-small": {"model": "pixelnerf", "pixelnerf.field.encoder_channels": (16, 32, 32),
                        "pixelnerf.field.hidden": 64, "pixelnerf.sampler.n_coarse": 32,
                        "pixelnerf.sampler.n_fine": 16},
}
"""Named presets: dotted overrides of the defaults above. ``--model M`` alone uses preset ``M``,
which sets only ``model``; every preset sets its model."""


def _type_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_value(dotted: str, value, hint):
    """``value`` as a field of type ``hint`` takes it (ints widen to floats, lists become
    tuples), else a RadfieldError naming the option, the type and the value."""
    def bad():
        return RadfieldError(f"option {dotted!r}: expected {_type_name(hint)}, got {value!r}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_value(dotted, value, arg)
            except RadfieldError:
                continue
        raise bad()
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(dotted, v, args[0]) for v in value)
        if len(value) != len(args):
            raise bad()
        return tuple(check_value(dotted, v, a) for v, a in zip(value, args))
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    raise bad()


def apply_overrides(config: RunConfig, overrides: dict) -> RunConfig:
    """Set dotted fields, e.g. ``{"nerf.optim.lr": 1e-3}``. An unknown name, a whole section or a
    value of the wrong type is a RadfieldError (one line, naming the option)."""
    for dotted, value in overrides.items():
        obj, *path, leaf = [config] + dotted.split(".")
        for depth, name in enumerate(path + [leaf]):
            if not dataclasses.is_dataclass(obj) or name not in {f.name for f in dataclasses.fields(obj)}:
                where = ".".join(path[:depth]) or "the configuration"
                known = ", ".join(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else ""
                raise RadfieldError(f"unknown option {dotted!r}" + (f" ({where} has: {known})" if known else ""))
            if name != leaf or depth < len(path):
                obj = getattr(obj, name)
        hint = typing.get_type_hints(type(obj))[leaf]
        if dataclasses.is_dataclass(hint):
            raise RadfieldError(f"option {dotted!r} is a section: set its fields "
                                f"(e.g. {dotted}.{dataclasses.fields(hint)[0].name})")
        setattr(obj, leaf, check_value(dotted, value, hint))
    return config


def parse_override(item: str) -> tuple[str, object]:
    """One ``KEY=VALUE`` override as typed on a command line (``--set``): the value is JSON when
    it parses (numbers, true/false, null, lists), ``None`` as in Python, else a string."""
    import json

    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise RadfieldError(f"--set {item!r}: expected KEY=VALUE")
    text = text.strip()
    try:
        return key.strip(), json.loads(text)
    except ValueError:
        return key.strip(), None if text == "None" else text
