"""The training loop, short and explicit: batch -> samples -> step -> optimiser -> bookkeeping.

One step:

1. draw ``n_rays`` random pixels over all training images (a seeded generator), or square
   patches of pixels when the loss needs them (:func:`draw_pixels`); with masks
   (``SceneData.masks``) only unmasked pixels, and only patches without a masked pixel;
   multi-scale datasets give every scale the same number of rays (mip-NeRF's area-weighted loss,
   in expectation); the rays carry their cameras' attributes and ``train_index``, the training
   image they come from; with a depth loss (``train.depth``), ``train.depth.fraction`` of the
   rays are drawn from the pixels that have depth (:func:`draw_depth_pixels`; not with patch
   losses) and every ray carries its pixel's depth along the ray (0 = none);
2. composite RGBA targets over the training background (random per ray by default: forces
   empty space to zero density);
3. ``model.sample`` -> packed samples; ``baseline_step`` or the HSM step -> gradients (a model
   that grows new parameters before the step, ``Model.grow``, gets its optimiser rebuilt:
   :func:`make_optimizer`);
4. Adam step (Instant-NGP's for hash tables with ``optim.sparse_tables``), learning-rate schedule
   (one factor for every parameter group's own rate), the model's periodic update (e.g. the
   occupancy grid); with ``optim.weight_average`` the weights' moving average takes a step
   (:mod:`radfield.training.averaging`: validation and the checkpoint's model use it);
5. adapt ``n_rays`` so the next step has about the model's ``optim.target_samples`` samples,
   and early termination's pass at most ``train.marched_budget`` times that many marched ones.

With ``--pose-opt`` (:mod:`radfield.training.pose_refinement`) the rays of step 1 come from the
corrected poses of their images, sampling and the background see them without their graph, and
step 4 also steps the corrections' own optimiser; their learning rate and the model's
coarse-to-fine window are set before the batch.

The trainer knows no model: what a model needs from the data, adds to the loss or reports to the
log goes through its hooks (:mod:`radfield.models.base`).

Everything that decides the run's future (parameters and their average, optimiser moments,
gradient scaler, occupancy grid, random generator, ray count, HSM tau, step, training time,
history) goes into the checkpoint, so ``--resume`` continues a step-limited run exactly.
Checkpoints are written every ``checkpoint_every`` steps or ``checkpoint_every_s`` seconds,
whichever comes first, and when Ctrl-C or SIGTERM stops the run.

Under torchrun (:mod:`radfield.training.distributed`) every process runs this loop on its own
rays; ``self.world`` averages the gradients between backward and optimiser step, agrees on the
step time and on when to stop, pause and save, and gathers every rank's random state into the
checkpoint; rank 0 alone writes files and validates. In one process ``self.world`` does nothing.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from radfield.cameras import Cameras, LensDirections, Rays, lens_directions, pixel_rays
from radfield.config import (LR_SCHEDULES, OptimConfig, RunConfig, apply_overrides,
                             run_config_from_dict, run_config_to_dict)
from radfield.data import SceneData, load_scene_groups
from radfield.data.depth import DEPTH_SOURCES, drop_inconsistent_depth, with_depth
from radfield.data.scene import over_background
from radfield.data.views import select_train_views
from radfield.errors import MissingSplitError, PeerLost, RadfieldError, check_choice
from radfield.evaluation.metrics import psnr
from radfield.evaluation.plots import plot_training_curve
from radfield.io import atomic_write
from radfield.losses import PhotometricLoss
from radfield.losses.depth import (check_depth_config, depth_eps, depth_unit, depth_weight, for_depth_source,
                                   make_depth_loss, urf_window, weight_scale)
from radfield.models import SceneInfo, build_model
from radfield.native import keep_freed_memory
from radfield.rendering.backgrounds import background_color, ray_background, training_colour
from radfield.rendering.images import render_image
from radfield.training.adam import Adam
from radfield.training.averaging import WeightAverage, load_raw
from radfield.training.checkpoint import (CHECKPOINT_NAME, CONFIG_NAME, load_checkpoint,
                                          save_checkpoint)
from radfield.training.distributed import current_world
from radfield.training.pose_refinement import TRANSFORMS_NAME, PoseRefinement, write_refined_transforms
from radfield.training.schedules import log_linear_lr_at
from radfield.training.steps import (HardSampleMiner, StepBatch, StepResult, baseline_step,
                                     photometric_objective, with_depth_loss)


def learning_rate_factor(progress: float, step: int, warmup_steps: int,
                         milestones: tuple[float, ...], gamma: float) -> float:
    """Linear warm-up over ``warmup_steps``, then ``gamma^k`` after the k-th milestone
    (fractions of the run). Example: milestones (0.5, 0.75), gamma 0.33, progress 0.8 -> 0.1089."""
    warm = min(1.0, (step + 1) / max(warmup_steps, 1))
    return warm * gamma ** sum(progress >= m for m in milestones)


def make_optimizer(model, optim: OptimConfig, previous: torch.optim.Optimizer | None = None
                   ) -> Adam:
    """Adam over ``model.param_groups(optim)`` (torch's fused Adam; with ``optim.sparse_tables``
    Instant-NGP's step for the groups marked ``"tables"``, :mod:`radfield.training.adam`; each
    group's own rate kept as its ``base_lr``, which the schedule scales). With ``previous`` (the
    optimiser of the model before ``Model.grow`` replaced some of its parameters), every parameter
    ``previous`` also held keeps its state (moments, step count); the new parameters start afresh,
    as in a new Adam (DVGO restarts its optimiser at each growth, the MLP's moments included).
    """
    groups = model.param_groups(optim)
    for group in groups:  # the schedule scales each group's own rate
        group["base_lr"] = group.get("lr", optim.lr)
        group["sparse"] = bool(group.pop("tables", False) and optim.sparse_tables)
    optimizer = Adam(groups, lr=optim.lr, betas=optim.betas, eps=optim.eps)
    if previous is not None:
        kept = {p for group in groups for p in group["params"]}
        for p, state in previous.state.items():
            if p in kept:
                optimizer.state[p] = state
    return optimizer


@dataclass
class ImageGroup:
    """Training images of one size (one scale of a multi-scale dataset): cameras on the device,
    all pixels flattened, ``(n_images * H * W, C)`` uint8, and where the sampler may draw.

    A pixel's *flat index* is ``image * H * W + row * W + col``. ``starts`` (None: everywhere)
    are the flat indices the sampler draws from, ascending: the unmasked pixels, or for patches
    of ``P x P`` the top-left corners of the patches that lie in the image and hold no masked
    pixel. Example: one 2 x 3 image with mask ``[[T, T, F], [T, T, T]]``: pixels
    ``[0, 1, 3, 4, 5]``; 2 x 2 patches ``[0]`` (the patch at column 1 holds the masked pixel 2).

    With depth supervision: ``depths`` ``(n_pixels,)`` planar depth per flat index (0 = none),
    ``uncertainty`` ``(n_pixels,)`` its relative uncertainty (None = 1) and ``depth_starts``
    the flat indices of the unmasked pixels that have depth, ascending. ``directions``: the
    pixels' directions through the cameras' lens, looked up rather than undistorted every step
    (:func:`radfield.cameras.lens_directions`; None for pinholes).
    """

    cameras: Cameras
    pixels: Tensor
    starts: Tensor | None = None
    depths: Tensor | None = None
    uncertainty: Tensor | None = None
    depth_starts: Tensor | None = None
    directions: LensDirections | None = None

    @property
    def n_pixels(self) -> int:
        return self.pixels.shape[0]

    @classmethod
    def from_data(cls, data: SceneData, cameras: Cameras, patch: int | None,
                  device: torch.device, depth: bool = False) -> "ImageGroup":
        """The group of ``data``'s images with ``cameras``; ``patch``: the patch size ``P`` of
        a patch loss (None: single pixels); ``depth``: keep ``data.depths`` for depth
        supervision. RadfieldError when masks leave nothing to draw, or no drawable pixel has
        depth."""
        depths = uncertainty = depth_starts = None
        if depth:
            depths = data.depths.reshape(-1).float()
            has = depths > 0
            if data.masks is not None:
                has &= data.masks.reshape(-1)
            depth_starts = has.nonzero()[:, 0]
            if len(depth_starts) == 0:
                raise RadfieldError(f"{data.names[0]}: no training pixel has depth (the depth "
                                    "loss needs some)")
            depths, depth_starts = depths.to(device), depth_starts.to(device)
            if data.depth_uncertainty is not None:
                uncertainty = data.depth_uncertainty.reshape(-1).float().to(device)
        starts = None
        if data.masks is not None:
            allowed, what = data.masks, "pixel"
            if patch is not None:  # corner (r, c) is allowed iff the P x P block there is
                p = min(patch, allowed.shape[1], allowed.shape[2])
                blocked = torch.nn.functional.max_pool2d((~allowed)[:, None].float(), p, stride=1)
                allowed = torch.zeros_like(allowed)
                allowed[:, : blocked.shape[2], : blocked.shape[3]] = blocked[:, 0] == 0
                what = f"{p} x {p} patch"
            starts = allowed.reshape(-1).nonzero()[:, 0]
            if len(starts) == 0:
                raise RadfieldError(f"{data.names[0]}: the masks of the training images leave "
                                    f"no {what} to train on")
            if allowed.numel() < 2**31:  # half the memory of int64 (made long when drawn)
                starts = starts.int()
            starts = starts.to(device)
        cameras = cameras.to(device)
        return cls(cameras, data.images.reshape(-1, data.images.shape[-1]).to(device),
                   starts, depths, uncertainty, depth_starts, lens_directions(cameras))


def _flat_to_pixels(flat: Tensor, h: int, w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(flat, camera, column, row)`` of flat pixel indices of ``h x w`` images."""
    cam, pix = flat // (h * w), flat % (h * w)
    return flat, cam, pix % w, pix // w


def draw_depth_pixels(group: ImageGroup, n_rays: int, generator: torch.Generator
                      ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(flat pixel index, camera, column, row)`` of ``n_rays`` pixels drawn uniformly from the
    pixels that have depth (``group.depth_starts``)."""
    dev = group.pixels.device
    pick = torch.randint(0, len(group.depth_starts), (n_rays,), device=dev, generator=generator)
    return _flat_to_pixels(group.depth_starts[pick].long(), group.cameras.height, group.cameras.width)


def draw_pixels(group: ImageGroup, n_rays: int, patch: int | None, generator: torch.Generator
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(flat pixel index, camera, column, row)``, each ``(n_rays,)``, of ``n_rays`` random
    pixels, or (``patch = P``) of ``max(n_rays // P^2, 1)`` random ``P x P`` patches (row-major
    within each patch; ``P`` at most the image's sides). Uniform over ``group.starts`` (the
    unmasked pixels or patch corners, see :class:`ImageGroup`) when set, else over the images.
    """
    cams, gen, dev = group.cameras, generator, group.pixels.device
    n_img, h, w = len(cams), cams.height, cams.width
    if patch is not None:
        p = min(patch, h, w)
        n_patches = max(n_rays // (p * p), 1)
        if group.starts is not None:
            corner = group.starts[torch.randint(0, len(group.starts), (n_patches,), device=dev,
                                                generator=gen)].long()
            cam, top, left = corner // (h * w), corner % (h * w) // w, corner % w
        else:
            cam = torch.randint(0, n_img, (n_patches,), device=dev, generator=gen)
            top = torch.randint(0, h - p + 1, (n_patches,), device=dev, generator=gen)
            left = torch.randint(0, w - p + 1, (n_patches,), device=dev, generator=gen)
        dj, di = torch.meshgrid(torch.arange(p, device=dev), torch.arange(p, device=dev), indexing="ij")
        row = (top[:, None] + dj.reshape(1, -1)).reshape(-1)
        col = (left[:, None] + di.reshape(1, -1)).reshape(-1)
        cam = cam.repeat_interleave(p * p)
    else:
        if group.starts is not None:
            flat = group.starts[torch.randint(0, len(group.starts), (n_rays,), device=dev,
                                              generator=gen)].long()
        else:
            flat = torch.randint(0, n_img * h * w, (n_rays,), device=dev, generator=gen)
        return _flat_to_pixels(flat, h, w)
    return cam * h * w + row * w + col, cam, col, row


@dataclass
class TrainState:
    step: int = 0
    train_time: float = 0.0
    n_rays: int = 1024
    last_eval_time: float = 0.0
    wall_time: float = 0.0
    """Wall time of the training loop: steps, validation and checkpoint writing."""


class Trainer:
    """Trains one run. ``Trainer(config, run_dir).train()``.

    ``resume=True`` continues the run's checkpoint: its saved config wins and ``config`` is
    ignored, except for the dotted fields in ``overrides`` (e.g. ``{"train.max_steps": 40000}``).
    A run directory that was started but holds no checkpoint yet (killed in its first minute)
    starts afresh from its saved ``config.json``, with a note. Note that the learning-rate
    milestones are fractions of the run, so a new limit moves them.
    """

    def __init__(self, config: RunConfig | None, run_dir: str | Path, device: str = "cpu",
                 resume: bool = False, progress: bool = True, log_tensorboard: bool = True,
                 overrides: dict | None = None):
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        keep_freed_memory()  # a step's tensors reuse the last step's freed blocks, not fresh pages
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RadfieldError("--device cuda: CUDA is not available on this machine")
        self.world = current_world()  # one process, or this process's view of a torchrun world
        checkpoint = None
        if resume:  # rank 0 reads the run; every rank gets what it read
            checkpoint, saved = self.world.on_rank0(self._read_run)
            config = apply_overrides(run_config_from_dict(saved), overrides or {})
        self.config = config
        cfg, optim = config.train, config.optim
        check_choice(f"{config.model}.optim.schedule", optim.schedule, LR_SCHEDULES, "learning-rate schedule")
        if cfg.max_time is not None and not cfg.max_time > 0:
            raise RadfieldError(f"--max-time: must be positive, got {cfg.max_time}")
        if not 0 <= optim.weight_average < 1:
            raise RadfieldError(f"{config.model}.optim.weight_average: must be in [0, 1) (0 = off), "
                                f"got {optim.weight_average}")
        if not 0 < cfg.val_max_share <= 1:
            raise RadfieldError(f"train.val_max_share: must be in (0, 1], got {cfg.val_max_share}")
        self._eval_wait = cfg.eval_every  # training seconds between validations (val_max_share)
        self.loss = PhotometricLoss.from_spec(cfg.loss, cfg.loss_colour_space, cfg.loss_tonemap, cfg.loss_gamma)
        check_depth_config(cfg.depth)  # before the data is read
        self.depth_supervised = cfg.depth.loss != "none"
        check_choice("data.depth_source", config.data.depth_source, DEPTH_SOURCES, "depth source")
        self.patch_size = cfg.patch_size if self.loss.needs_patches else None
        self.eval_bg = background_color(config.data.eval_background, self.device)
        self.load_data()
        if self.depth_supervised:  # the choices left to the depth source, made (and saved)
            cfg.depth = for_depth_source(cfg.depth, self.data.meta.get("depth_source"))
        self.depth_loss = make_depth_loss(cfg.depth)
        self.objective = with_depth_loss(photometric_objective(self.loss, optim.distortion_weight),
                                         self.depth_loss, depth_weight(cfg.depth), cfg.depth.all_levels)

        torch.manual_seed(cfg.seed)
        self.model = build_model(config, SceneInfo.from_data(self.data)).to(self.device)
        self.optimizer = make_optimizer(self.model, optim)
        self.average = self._weight_average()
        self.poses = None
        if cfg.pose_opt.enabled:
            pivot = (PoseRefinement.centre_depths(self.data.cameras, self.model.scene.centre)
                     if cfg.pose_opt.orbit else None)
            self.poses = PoseRefinement(cfg.pose_opt, len(self.data), self.model.scene.size, self.device, pivot)
        if (self.poses is not None and cfg.pose_opt.coarse_to_fine is not None
                and not self.model.position_encodings() and self.world.is_main):
            print(f"radfield: note: {config.model} has no position encoding with a coarse-to-fine "
                  "order; --pose-opt refines the poses without the window", file=sys.stderr)
        self.amp = cfg.mixed_precision and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        # `generator`: rays, jitter, HSM draws (each rank its own); `shared_generator`: model
        # updates such as the occupancy grid's random cells (alike on every rank). One process:
        # one generator for both.
        self.generator, self.shared_generator = self.world.generators(self.device, cfg.seed)
        self.miner = HardSampleMiner(cfg.hsm) if cfg.hsm.enabled else None
        self.state = TrainState(n_rays=cfg.init_rays)
        self.history: list[dict] = []
        self._saved_step: int | None = None
        if checkpoint is not None:
            self._restore(checkpoint)
        elif self.world.is_main:
            self._write_config()  # the run directory is a run from now on
        self.world.broadcast_module(self.model)
        self.progress = progress and self.world.is_main
        self.writer = self._tensorboard() if log_tensorboard and self.world.is_main else None
        self._stop_signal: str | None = None
        # For observers in other threads (a live viewer): steps run holding `lock`, so a render
        # between steps sees consistent parameters; while `paused` is set the loop waits (the
        # wait is not training time); `callbacks` are called like `on_step` after every step.
        self.lock = threading.RLock()
        self.paused = threading.Event()
        self.callbacks: list[Callable[["Trainer", StepResult, float], None]] = []

    def load_data(self) -> None:
        """Read the training data: ``self.data`` (the training split, full scale; the model is
        built for it), ``self.groups`` (the :class:`ImageGroup` of each scale), ``self.has_alpha``
        and ``self.val`` (the validation split, or None). Trainers of other data (a folder of
        scenes, :mod:`radfield.training.multiscene`) replace this with :meth:`make_batch`,
        :meth:`validate` and :meth:`scene_record`."""
        config = self.config
        scales = load_scene_groups(config.data.path, "train", config.data.downscale,
                                   colmap_model=config.data.colmap_model)
        if len(scales) > 1 and self.loss.needs_patches:
            raise RadfieldError(f"{config.data.path}: patch losses are not supported on multi-scale data")
        scales = select_train_views(scales, config.data.train_views, config.data.path)
        if self.depth_supervised:
            scales = [self._with_depths(d) for d in scales]
        self.data = scales[0]
        self.groups = [ImageGroup.from_data(d, self._training_cameras(d), self.patch_size, self.device,
                                            depth=self.depth_supervised)
                       for d in scales]
        self.has_alpha = self.data.has_alpha
        self.val = self._load_validation()

    def _with_depths(self, data: SceneData) -> SceneData:
        """``data`` with the depths of ``data.depth_source`` (:func:`radfield.data.depth.with_depth`);
        RadfieldError when there are none."""
        cfg = self.config.data
        root = Path(cfg.path) if Path(cfg.path).is_dir() else Path(cfg.path).parent
        mono = None if cfg.mono_depth is None else root / cfg.mono_depth
        out = with_depth(data, cfg.depth_source, cfg.path, mono)
        if out.depths is None:
            raise RadfieldError(f"{cfg.path}: --depth-loss {self.config.train.depth.loss}: the dataset has "
                                "no depth (no depth_file_path maps, no COLMAP points)")
        tolerance = self.config.train.depth.consistency
        if tolerance > 0:
            out, dropped = drop_inconsistent_depth(out, tolerance)
            if self.world.is_main:
                print(f"radfield: note: depth dropped at {dropped:.1%} of the pixels that have it, whose "
                      f"colour differs between views by more than {tolerance:g} (train.depth.consistency)",
                      file=sys.stderr)
        return out

    @staticmethod
    def _training_cameras(data: SceneData) -> Cameras:
        """The split's cameras, each carrying ``train_index``, the training image it is."""
        return data.cameras.with_attrs(train_index=torch.arange(len(data.cameras)))

    # ------------------------------------------------------------------ setup helpers
    def _read_run(self) -> tuple[dict | None, dict]:
        """``(checkpoint, saved config)`` of the run to resume; ``(None, config)`` for a run that
        was started but has no checkpoint yet."""
        if (self.run_dir / CHECKPOINT_NAME).exists() or not (self.run_dir / CONFIG_NAME).is_file():
            # Several processes: read onto the CPU, to be sent to the others.
            where = self.device if self.world.size == 1 else "cpu"
            checkpoint = load_checkpoint(self.run_dir, map_location=where)
            return checkpoint, json.loads(checkpoint["config"])
        print(f"radfield: note: {self.run_dir} has no checkpoint yet; starting the run afresh "
              "from its config.json", file=sys.stderr)
        try:
            return None, json.loads((self.run_dir / CONFIG_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise RadfieldError(f"{self.run_dir / CONFIG_NAME}: unreadable ({exc})") from None

    def _load_validation(self) -> SceneData | None:
        """The validation split (else the test split) at full scale."""
        for split in ("val", "test"):
            try:
                return load_scene_groups(self.config.data.path, split, self.config.data.downscale,
                                         colmap_model=self.config.data.colmap_model)[0]
            except MissingSplitError:
                continue
        return None

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is an optional extra
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _weight_average(self) -> WeightAverage | None:
        """The moving average of the model's current parameters (``optim.weight_average``), or None."""
        decay = self.config.optim.weight_average
        return WeightAverage(self.model, decay) if decay > 0 else None

    def _restore(self, ck: dict) -> None:
        self.model.load_state_dict(ck["model"])  # the averaged weights, where the run averaged them
        self.average = self._weight_average()
        if "train_params" in ck:  # the raw weights training steps
            load_raw(self.model, ck["train_params"])
            if self.average is not None:
                self.average.n_updates = int(ck["state"]["average_updates"])
        # A grown model (Model.grow) took the checkpoint's parameter shapes: optimise those.
        self.optimizer = make_optimizer(self.model, self.config.optim)
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.generator.set_state(ck["generator"].cpu())
        s = ck["state"]
        self.state = TrainState(int(s["step"]), float(s["train_time"]), int(s["n_rays"]),
                                float(s["last_eval_time"]), float(s.get("wall_time", s["train_time"])))
        tau = self.world.restore_streams(ck.get("distributed"), self.generator, self.shared_generator,
                                         self.config.train.seed, self.state.step, float(s["hsm_tau"]))
        if self.miner is not None:
            self.miner.tau = tau
        self.history = json.loads(ck["history"])
        if self.poses is not None:
            if "poses" not in ck:
                raise RadfieldError(f"{self.run_dir / CHECKPOINT_NAME}: no pose corrections in the "
                                    "checkpoint of a --pose-opt run")
            self.poses.load_state_dict(ck["poses"])
        self._saved_step = self.state.step

    def checkpoint_state(self) -> dict:
        s = self.state
        extra = {} if self.poses is None else {"poses": self.poses.state_dict()}
        model = self.model.state_dict()
        if self.average is not None:  # what the run's users load: the average; --resume: both
            extra["train_params"] = self.average.raw_state()
            model.update(self.average.averaged_state())
        return {**extra,
            "config": json.dumps(run_config_to_dict(self.config)),
            "build": json.dumps(self.model.build_args()),
            "model": model,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "state": {"step": s.step, "train_time": s.train_time, "n_rays": s.n_rays,
                      "last_eval_time": s.last_eval_time, "wall_time": s.wall_time,
                      "hsm_tau": self.miner.tau if self.miner else 1.0,
                      "average_updates": self.average.n_updates if self.average else 0},
            "history": json.dumps(self.history),
        }

    def _write_config(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.run_dir / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(run_config_to_dict(self.config), indent=2))

    def scene_record(self) -> dict:
        """What ``RUN_DIR/scene.json`` says of the training data."""
        return {"aabb": self.data.aabb.tolist(), "n_train_images": len(self.data),
                "normalization": self.data.meta.get("normalization"),
                "train_views": self.data.names if self.config.data.train_views else None,
                "depth_source": self.data.meta.get("depth_source")}

    def save(self) -> None:
        """Write the checkpoint and the run's files (rank 0; every rank calls it, to hand in its
        random state)."""
        streams = self.world.gather_streams(self.generator, self.shared_generator,
                                            self.miner.tau if self.miner else 1.0)
        self._saved_step = self.state.step
        if not self.world.is_main:
            self._last_save = time.monotonic()
            return
        self._write_config()
        with atomic_write(self.run_dir / "scene.json") as tmp:
            tmp.write_text(json.dumps(self.scene_record(), indent=1))
        state = self.checkpoint_state()
        if streams is not None:
            state["distributed"] = streams
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, state)
        with atomic_write(self.run_dir / "history.json") as tmp:
            tmp.write_text(json.dumps(self.history, indent=1))
        if self.poses is not None:
            cams = self._training_cameras(self.data).to(self.device)
            write_refined_transforms(self.run_dir / TRANSFORMS_NAME, self.data,
                                     self.poses.corrected_poses(cams), self.config.data.downscale, self.poses)
        if any("psnr" in h for h in self.history):
            plot_training_curve(self.history, self.run_dir / "training_curve.png",
                                title=f"{self.config.model}{' + HSM' if self.miner else ''}: validation PSNR")
        self._last_save = time.monotonic()

    # ------------------------------------------------------------------ one step
    def _draw(self, group: ImageGroup, n_rays: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The pixels of ``group`` for one step: :func:`draw_pixels`, with a depth loss (and no
        patch loss) ``round(fraction * n_rays)`` of them from the pixels that have depth."""
        fraction = self.config.train.depth.fraction
        if self.depth_loss is None or self.patch_size is not None or fraction == 0:
            return draw_pixels(group, n_rays, self.patch_size, self.generator)
        n_depth = int(round(fraction * n_rays))
        uniform = draw_pixels(group, n_rays - n_depth, None, self.generator)
        on_depth = draw_depth_pixels(group, n_depth, self.generator)
        return tuple(torch.cat([a, b]) for a, b in zip(uniform, on_depth))

    def _depth_targets(self, parts: list[tuple[Tensor, ...]], rays: Rays
                       ) -> tuple[Tensor | None, Tensor | None]:
        """Per ray: the pixel's depth along the ray (planar depth / ``z_per_t``; 0 = none) and the
        loss's uncertainty: :func:`depth_eps` (URF: its window at the run's progress) times the
        pixel's relative uncertainty."""
        if self.depth_loss is None:
            return None, None
        depth_cfg = self.config.train.depth
        base = urf_window(depth_cfg, self.run_progress()) if depth_cfg.loss == "urf" else depth_eps(depth_cfg)
        planar = torch.cat([g.depths[flat] for g, (flat, *_) in zip(self.groups, parts)])
        rel = torch.cat([torch.ones(len(flat), device=flat.device) if g.uncertainty is None
                         else g.uncertainty[flat] for g, (flat, *_) in zip(self.groups, parts)])
        return planar / rays.z_per_t, base * rel

    def make_batch(self, n_rays: int) -> StepBatch:
        cfg = self.config.train
        parts = [self._draw(g, max(n_rays // len(self.groups), 1)) for g in self.groups]
        cams = [g.cameras if self.poses is None else self.poses.cameras(g.cameras) for g in self.groups]
        rays = Rays.cat([pixel_rays(c, cam, col, row, g.directions)
                         for g, c, (_, cam, col, row) in zip(self.groups, cams, parts)])
        plain = rays.detach()  # what sampling and the background see (pose corrections: no graph)
        colour = torch.cat([g.pixels[flat] for g, (flat, *_) in zip(self.groups, parts)]).float() / 255.0
        bg = ray_background(self.model, plain, training_colour(
            cfg.background, self.has_alpha, colour.shape[0], self.eval_bg, self.generator))
        target = over_background(colour, bg.detach())
        early = self.config.optim.early_stop and (self.miner is None or cfg.hsm.early_stop)
        widen = 0.0 if self.poses is None else self.config.train.pose_opt.widen * self.model.scene.size
        with self.model.widened_sampling(widen) if widen > 0 else nullcontext():
            samples = self.model.sample(plain, training=True, generator=self.generator, early_stop=early)
        patch = min(cfg.patch_size, self.data.cameras.height, self.data.cameras.width)
        depth, depth_eps = self._depth_targets(parts, plain)
        scale = weight_scale(cfg.depth, self.run_progress()) if depth is not None else 1.0
        unit = depth_unit(cfg.depth, self.model.scene.meta.get("camera_radius"))
        return StepBatch(rays, samples, target, bg, patch if self.loss.needs_patches else None,
                         depth, depth_eps, scale, unit, self.near_gradient)

    @property
    def near_gradient(self) -> float:
        """``train.near_gradient`` as a distance (:attr:`StepBatch.near_gradient`): in units of
        the farthest training camera's distance from the box's centre, where the scene has one."""
        return self.config.train.near_gradient * self.model.scene.meta.get("camera_radius", 1.0)

    def run_progress(self) -> float:
        """How far the run is: the fraction of ``max_steps`` or of ``max_time`` done, whichever
        is larger (the learning-rate schedule's and URF's window's clock)."""
        cfg = self.config.train
        progress = self.state.step / cfg.max_steps
        if cfg.max_time:
            progress = max(progress, self.clock() / cfg.max_time)
        return progress

    def clock(self) -> float:
        """The seconds ``max_time`` counts: training steps only, or with ``max_time_wall`` the
        wall time of the loop (validation and checkpoint writing included)."""
        return self.state.wall_time if self.config.train.max_time_wall else self.state.train_time

    def lr_factor(self) -> float:
        """The schedule's factor on every parameter group's base rate at the current step."""
        optim = self.config.optim
        progress = self.run_progress()
        if optim.schedule == "log_linear":
            return log_linear_lr_at(progress, self.state.step, optim.lr, optim.lr_final,
                                    optim.warmup_steps) / optim.lr
        return learning_rate_factor(progress, self.state.step, optim.warmup_steps, optim.milestones,
                                    optim.gamma)

    def train_step(self):
        if self.model.grow(self.state.step):  # new parameters (coarse-to-fine grids)
            self.optimizer = make_optimizer(self.model, self.config.optim, self.optimizer)
            self.average = self._weight_average()  # restarts at the grown weights
        self.model.schedule(self.run_progress())
        self.model.update(self.state.step, self.shared_generator)
        factor = self.lr_factor()
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if self.poses is not None:
            self.poses.schedule(self.model, self.run_progress(), self.state.step)
            self.poses.optimizer.zero_grad(set_to_none=True)
        batch = self.make_batch(self.state.n_rays)
        self.optimizer.zero_grad(set_to_none=True)
        autocast = (lambda: torch.autocast("cuda", dtype=torch.float16)) if self.amp else nullcontext
        if self.miner is not None:
            self.miner.progress = self.run_progress()
            result = self.miner.step(self.model, batch, self.objective, self.generator,
                                     self.scaler.scale, autocast)
        else:
            result = baseline_step(self.model, batch, self.objective, self.scaler.scale, autocast)
        # Under torchrun: gradients averaged over the ranks, sample counts added up.
        pose_params = [] if self.poses is None else self.poses.parameters()
        result = self.world.average_step([*self.model.parameters(), *pose_params], result)
        self.scaler.step(self.optimizer)
        if self.poses is not None:
            self.poses.add_penalty_gradient(self.scaler.scale)  # the same on every rank: after averaging
            self.scaler.step(self.poses.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update()
        # Adaptive ray count: aim the next step at the model's target_samples samples (per rank),
        # with the early-termination pass's marched samples within marched_budget times that.
        cost = max(result.n_samples, 1)
        if batch.samples.n_marched is not None:
            cost = max(cost, batch.samples.n_marched * self.world.size / self.config.train.marched_budget)
        per_ray = cost / (batch.samples.n_rays * self.world.size)
        target = self.config.optim.target_samples
        if self.miner is not None:
            target *= self.config.train.hsm.first_pass_samples
        self.state.n_rays = int(min(max(target / per_ray, 64), self.config.train.max_rays))
        return result

    # ------------------------------------------------------------------ validation
    def validate(self) -> float | None:
        if self.val is None:
            return None
        self.model.eval()
        cams = self.val.cameras.to(self.device)
        n = min(self.config.train.val_images, len(self.val))
        idx = torch.linspace(0, len(self.val) - 1, n).round().long().tolist()
        idx = [i for i in idx if self.val.mask(i) is None or bool(self.val.mask(i).any())]
        scores = [psnr(render_image(self.model, cams, i, self.eval_bg).rgb,  # masked PSNR
                       self.val.composited(i, self.eval_bg.cpu()), self.val.mask(i)) for i in idx]
        self.model.train()
        return sum(scores) / len(scores) if scores else None

    # ------------------------------------------------------------------ the loop
    def averaged_weights(self):
        """A context in which the model holds its averaged weights (``optim.weight_average``;
        unchanged without it)."""
        return nullcontext() if self.average is None else self.average.applied()

    def _request_stop(self, signum, frame) -> None:
        """SIGINT / SIGTERM: finish the step under way, write a checkpoint and stop; a second
        signal stops at once (the last checkpoint stays usable: checkpoints are atomic)."""
        if self._stop_signal is not None:
            raise KeyboardInterrupt
        self._stop_signal = signal.Signals(signum).name

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}

    def train(self, stop: Callable[[int], bool] | None = None,
              on_step: Callable[["Trainer", StepResult, float], None] | None = None) -> list[dict]:
        """Run until ``max_steps`` or ``max_time``. ``stop(step)`` returning True, Ctrl-C or
        SIGTERM (what job schedulers send before a time limit) end the run early with a
        checkpoint written (``--resume`` continues it). ``on_step(trainer, result, seconds)`` is
        called after every step (benchmarks use it).

        Under torchrun, every rank calls this; a process that dies or stops answering ends the run
        on the others with :class:`PeerLost`, whose message names the checkpoint that is kept."""
        try:
            return self._train(stop, on_step)
        except PeerLost as exc:
            if self.writer is not None:
                self.writer.close()
            raise PeerLost(f"{exc}; {self._kept_checkpoint()}") from None

    def _kept_checkpoint(self) -> str:
        if self._saved_step is None:
            return f"no checkpoint was written yet (--resume restarts {self.run_dir} from its config.json)"
        return f"the checkpoint of step {self._saved_step} in {self.run_dir} is kept (--resume continues it)"

    def _train(self, stop: Callable[[int], bool] | None,
               on_step: Callable[["Trainer", StepResult, float], None] | None) -> list[dict]:
        cfg = self.config.train
        bar = None
        if self.progress:
            from tqdm import tqdm
            # A time-limited run shows its rate and elapsed time, not a bar towards max_steps.
            bar = tqdm(total=None if cfg.max_time else cfg.max_steps, initial=self.state.step,
                       unit="step", dynamic_ncols=True, file=sys.stderr)
        interrupted = False
        self._stop_signal = None
        self._last_save = time.monotonic()
        previous = self._install_signal_handlers()
        try:
            wall_mark = time.perf_counter()
            while self.state.step < cfg.max_steps and not (cfg.max_time and self.clock() >= cfg.max_time):
                paused_at = time.perf_counter()
                while self.world.any(self.paused.is_set() and self._stop_signal is None):
                    time.sleep(0.05)  # under torchrun the other ranks wait with rank 0
                wall_mark += time.perf_counter() - paused_at  # a pause (viewer) is not run time
                with self.lock:
                    t0 = time.perf_counter()
                    result = self.train_step()
                    dt = time.perf_counter() - t0
                self.state.step += 1
                self._log_step(result, dt, bar)
                for callback in ([on_step] if on_step is not None else []) + self.callbacks:
                    callback(self, result, dt)
                stop_now = self._stop_signal is not None or (stop is not None and stop(self.state.step))
                save_now = (self.state.step % cfg.checkpoint_every == 0
                            or time.monotonic() - self._last_save >= cfg.checkpoint_every_s)
                # Under torchrun every rank takes the slowest rank's step time (one clock for
                # --max-time and the schedule) and stops or saves when any rank would.
                now = time.perf_counter()  # the wall time since the last step's mark: this step,
                wall, wall_mark = now - wall_mark, now  # and the previous one's validation and saving
                dt, wall, stop_now, save_now = self.world.max([dt, wall, stop_now, save_now])
                self.state.train_time += dt
                self.state.wall_time += wall
                if stop_now:
                    interrupted = True
                    break
                if self.state.train_time - self.state.last_eval_time >= self._eval_wait:
                    self._evaluate_and_log()
                if save_now:
                    self.save()
        except KeyboardInterrupt:  # a second signal: the mid-step state is not saved
            print("\nradfield: stopped mid-step; the last checkpoint is kept", file=sys.stderr)
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if bar is not None:
                bar.close()
        if not interrupted and (not self.history or self.history[-1].get("step") != self.state.step):
            self._evaluate_and_log()
        self.save()
        if self._stop_signal is not None and self.world.is_main:
            print(f"[{self._stop_signal}] stopped at step {self.state.step}; checkpoint written "
                  f"(--resume continues)", file=sys.stderr)
        if self.writer is not None:
            self.writer.close()
        return self.history

    def _log_step(self, result, dt: float, bar) -> None:
        train_psnr = -10 * math.log10(max(result.mse, 1e-10))
        if bar is not None:
            bar.update(1)
            if self.state.step % 10 == 0 or self.state.step == 1:
                post = {"loss": f"{result.loss:.4f}", "psnr": f"{train_psnr:.2f}",
                        "samples/s": f"{result.n_samples / dt:,.0f}", "rays": self.state.n_rays}
                if self.miner is not None:
                    post["b/B"] = f"{result.n_backward / max(result.n_samples, 1):.2f}"
                bar.set_postfix(post, refresh=False)
        if self.writer is not None and self.state.step % 10 == 0:
            w, s = self.writer, self.state.step
            w.add_scalar("train/loss", result.loss, s)
            w.add_scalar("train/psnr", train_psnr, s)
            w.add_scalar("train/samples_per_s", result.n_samples / dt, s)
            w.add_scalar("train/rays", self.state.n_rays, s)
            for name, value in self.model.log_scalars().items():
                w.add_scalar(f"model/{name}", value, s)
            if self.poses is not None:
                for name, value in self.poses.log_scalars().items():
                    w.add_scalar(f"pose_correction/{name}", value, s)
            for k, v in result.timings.items():
                w.add_scalar(f"time/{k}", v, s)
            if self.miner is not None:
                w.add_scalar("hsm/kept_fraction", result.n_backward / max(result.n_samples, 1), s)
                w.add_scalar("hsm/tau", self.miner.tau, s)
                if result.hardness is not None and result.hardness.numel():
                    w.add_histogram("hsm/hardness", result.hardness.log10().clamp(min=-12), s)

    def _evaluate_and_log(self) -> None:
        self.state.last_eval_time = self.state.train_time
        if not self.world.is_main:  # rank 0 validates and keeps the history
            return
        start = time.perf_counter()
        with self.lock, self.averaged_weights():  # a live viewer's renders wait for the swap back
            val_psnr = self.validate()
        share = self.config.train.val_max_share
        self._eval_wait = max(self.config.train.eval_every, (time.perf_counter() - start) * (1 - share) / share)
        entry = {"step": self.state.step, "time_s": round(self.state.train_time, 3)}
        if val_psnr is not None:
            entry["psnr"] = round(val_psnr, 4)
            if self.writer is not None:
                self.writer.add_scalar("val/psnr", val_psnr, self.state.step)
        self.history.append(entry)
        if self.progress and val_psnr is not None:
            print(f"[validation] step {self.state.step}  time {self.state.train_time:.1f}s  "
                  f"PSNR {val_psnr:.2f} dB", file=sys.stderr)
