"""Training across a folder of scenes, for models conditioned on source views (PixelNeRF,
``Model.multi_scene``).

``radfield train FOLDER --model pixelnerf``: FOLDER holds one Blender-format dataset per
subfolder (:mod:`radfield.data.scenes`; :func:`radfield.data.synthetic.make_scenes` writes as
many random scenes as wanted), or is one such dataset itself (a folder of one scene). Every
scene's training split is read once, into memory (uint8).

One step (:meth:`MultiSceneTrainer.make_batch`; the rest is :class:`Trainer`'s loop, so
checkpoints, ``--resume``, ``--max-time`` / ``--max-steps``, the progress bar, signals and the
learning-rate schedule are the same as for every model):

1. draw a scene uniformly, ``k`` uniform in ``1 .. min(max_sources, n_views - 1)`` and a random
   permutation of its training views (the trainer's seeded generator, saved in checkpoints: a
   resumed run draws what an uninterrupted one would);
2. the first ``k`` views of the permutation are the sources: composited over the evaluation
   background (white) and encoded with their cameras (``model.set_context``, with the
   encoder's graph);
3. ``n_rays`` random pixels of the other views of the same scene are the targets, composited
   over the training background (random per ray on RGBA data), as in single-scene training.

Validation renders ``train.val_images`` views of the first scene's validation split (else its
test split) from ``max_sources`` source views chosen as evaluation chooses them
(farthest-point sampling from view 0, :func:`radfield.data.views.farthest_point_views`).

Not supported (one-line errors): ``--hsm`` (the encoder's graph is shared by every sample, and
the HSM step back-propagates twice), ``--pose-opt``, depth losses, ``--train-views``, patch
losses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from radfield.cameras import Cameras, pixel_rays
from radfield.config import RunConfig
from radfield.data import SceneData, load_scene
from radfield.data.scene import over_background
from radfield.data.scenes import scene_folders
from radfield.data.views import farthest_point_views
from radfield.errors import MissingSplitError, RadfieldError
from radfield.evaluation.metrics import psnr
from radfield.models import model_class
from radfield.rendering.backgrounds import ray_background, training_colour
from radfield.rendering.images import render_image
from radfield.training.checkpoint import CONFIG_NAME
from radfield.training.steps import StepBatch
from radfield.training.trainer import Trainer

RENDER_CHUNK = 1024
"""Rays per chunk of validation and evaluation renders: every sample is evaluated once per
source view, so a chunk costs ``V`` times a single-scene model's."""


def composite(images: Tensor, background: Tensor) -> Tensor:
    """``(V, H, W, 3)`` float in [0, 1] from ``(V, H, W, 3 or 4)`` uint8 images (straight alpha)
    over ``background`` ``(3,)``."""
    x = images.float() / 255.0
    if x.shape[-1] == 3:
        return x
    return x[..., :3] * x[..., 3:] + background * (1.0 - x[..., 3:])


@dataclass
class TrainingScene:
    """One scene's training split on the device: ``images`` ``(n_views, H, W, C)`` uint8 and
    their ``cameras``."""

    name: str
    images: Tensor
    cameras: Cameras

    @classmethod
    def from_data(cls, folder: Path, data: SceneData, device: torch.device) -> "TrainingScene":
        if len(data) < 2:
            raise RadfieldError(f"{folder}: {len(data)} training view; a scene needs at least 2 "
                                "(source views and a view to supervise)")
        return cls(folder.name, data.images.to(device), data.cameras.to(device))


class MultiSceneTrainer(Trainer):
    """:class:`Trainer` on a folder of scenes (module doc); same constructor and ``train()``."""

    def load_data(self) -> None:
        config = self.config
        unsupported = {"--hsm": config.train.hsm.enabled, "--pose-opt": config.train.pose_opt.enabled,
                       "--depth-loss": self.depth_supervised,
                       "--train-views": config.data.train_views is not None,
                       f"--loss {config.train.loss} (patches)": self.loss.needs_patches}
        for option, used in unsupported.items():
            if used:
                raise RadfieldError(f"{option}: not supported by {config.model} (trained across scenes)")
        folders = scene_folders(config.data.path)
        datas = [load_scene(f, "train", config.data.downscale) for f in folders]
        for folder, data in zip(folders[1:], datas[1:]):
            if not torch.equal(data.aabb, datas[0].aabb):  # the box the model samples
                raise RadfieldError(f"{folder}: scene box {data.aabb.tolist()} differs from {folders[0].name}'s "
                                    f"{datas[0].aabb.tolist()} (one model samples every scene in one box)")
        self.scenes = [TrainingScene.from_data(f, d, self.device) for f, d in zip(folders, datas)]
        self.data = datas[0]  # the model is built for its SceneInfo
        self.groups = []
        self.has_alpha = self.data.has_alpha
        self.val = self._load_validation_scene(folders[0])

    def _load_validation_scene(self, folder: Path) -> SceneData | None:
        for split in ("val", "test"):
            try:
                return load_scene(folder, split, self.config.data.downscale)
            except MissingSplitError:
                continue
        return None

    @property
    def max_sources(self) -> int:
        return self.config.section.max_sources

    def make_batch(self, n_rays: int) -> StepBatch:
        gen, dev = self.generator, self.device
        scene = self.scenes[int(torch.randint(len(self.scenes), (1,), device=dev, generator=gen))]
        n_views, h, w = scene.images.shape[:3]
        k_max = max(1, min(self.max_sources, n_views - 1))
        k = 1 + int(torch.randint(k_max, (1,), device=dev, generator=gen))
        order = torch.randperm(n_views, device=dev, generator=gen)
        sources, others = order[:k], order[k:]
        self.model.set_context(composite(scene.images[sources], self.eval_bg), scene.cameras[sources])
        cam = others[torch.randint(len(others), (n_rays,), device=dev, generator=gen)]
        flat = torch.randint(h * w, (n_rays,), device=dev, generator=gen)
        col, row = flat % w, flat // w
        rays = pixel_rays(scene.cameras, cam, col, row)
        colour = scene.images[cam, row, col].float() / 255.0
        bg = ray_background(self.model, rays, training_colour(
            self.config.train.background, self.has_alpha, n_rays, self.eval_bg, gen))
        target = over_background(colour, bg.detach())
        samples = self.model.sample(rays, training=True, generator=gen, early_stop=False)
        return StepBatch(rays, samples, target, bg, near_gradient=self.near_gradient)

    def validate(self) -> float | None:
        if self.val is None:
            return None
        first = self.scenes[0]
        views = torch.tensor(farthest_point_views(first.cameras.centers, self.max_sources), device=self.device)
        self.model.eval()
        with torch.no_grad():
            self.model.set_context(composite(first.images[views], self.eval_bg), first.cameras[views])
            cams = self.val.cameras.to(self.device)
            n = min(self.config.train.val_images, len(self.val))
            idx = torch.linspace(0, len(self.val) - 1, n).round().long().tolist()
            scores = [psnr(render_image(self.model, cams, i, self.eval_bg, chunk=RENDER_CHUNK).rgb,
                           self.val.composited(i, self.eval_bg.cpu())) for i in idx]
        self.model.train()
        return sum(scores) / len(scores) if scores else None

    def scene_record(self) -> dict:
        return {"aabb": self.data.aabb.tolist(), "scenes_folder": self.config.data.path,
                "scenes": [s.name for s in self.scenes],
                "n_train_images": [len(s.images) for s in self.scenes]}


def trainer_class(config: RunConfig, run_dir: str | Path, resume: bool = False) -> type[Trainer]:
    """:class:`MultiSceneTrainer` for models trained across scenes (``Model.multi_scene``), else
    :class:`Trainer`; a resumed run's model is the one in its ``config.json``."""
    name = config.model
    saved = Path(run_dir) / CONFIG_NAME
    if resume and saved.is_file():
        try:
            name = json.loads(saved.read_text()).get("model", name)
        except ValueError:
            pass  # the trainer reports the unreadable run
    return MultiSceneTrainer if model_class(name).multi_scene else Trainer
