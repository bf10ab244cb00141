"""Camera-pose refinement while training (``--pose-opt``): BARF's and nerfstudio's camera
optimiser, for every model.

* Every training image ``i`` has a correction ``xi_i`` (:class:`radfield.poses.PoseCorrections`,
  zero at the start): its rays come from ``c2w_i Exp(xi_i)``. Sampling and the background see
  the rays without their graph; the field sees the samples at ``o + t d`` with it
  (:mod:`radfield.rendering.differentiable`), so the photometric loss reaches ``xi`` through
  the sample positions and directions, in the baseline step and the HSM step alike. With
  ``pose_opt.orbit`` (the default) each correction also has an orbit about the point of its
  camera's axis at the depth of the scene's centre (:meth:`PoseRefinement.centre_depths`).
* Optionally nerfstudio's regulariser, a pull of every correction toward zero
  (``pose_opt.rot_penalty``, ``pose_opt.trans_penalty``), its gradient added after the step's.
* Its own Adam (no weight decay), learning rate log-linear from ``pose_opt.lr`` to
  ``pose_opt.lr_final`` over the run (the run's progress, as the model's schedule sees it).
* Coarse to fine (``pose_opt.coarse_to_fine = (start, end)``): BARF's window
  ``alpha = clamp((progress - start) / (end - start), 0, 1)`` on the model's position encodings
  (:meth:`radfield.models.Model.set_coarse_to_fine`: frequencies of positional encodings,
  degrees of mip-NeRF's, hash-grid levels), set before every step; from ``end`` on every band
  is open and the model renders exactly as one trained without the window.
* The corrections and their optimiser's state are in the checkpoint (``--resume`` continues
  exactly); the corrected training poses are written to ``RUN_DIR/transforms.json`` with every
  checkpoint, in the dataset's own world coordinates (:func:`write_refined_transforms`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from radfield.cameras import Cameras
from radfield.config import PoseOptConfig
from radfield.data import SceneData
from radfield.errors import RadfieldError
from radfield.fields.window import check_window, window_alpha
from radfield.io import atomic_write
from radfield.lens import COEFFICIENTS
from radfield.poses.corrections import PoseCorrections, to_world
from radfield.training.schedules import log_linear_lr_at

TRANSFORMS_NAME = "transforms.json"


class PoseRefinement:
    """The corrections of ``n_images`` training images, their optimiser and schedule."""

    def __init__(self, config: PoseOptConfig, n_images: int, size: float, device: torch.device,
                 pivot: torch.Tensor | None = None):
        check_window("train.pose_opt.coarse_to_fine", config.coarse_to_fine)
        if not (config.lr > 0 and config.lr_final > 0):
            raise RadfieldError(f"train.pose_opt.lr and lr_final must be positive, got {config.lr} "
                                f"and {config.lr_final}")
        if not (config.rot_penalty >= 0 and config.trans_penalty >= 0):  # also rejects NaN
            raise RadfieldError(f"train.pose_opt.rot_penalty and trans_penalty must be >= 0, got "
                                f"{config.rot_penalty} and {config.trans_penalty}")
        self.config = config
        self.corrections = PoseCorrections(n_images, size, pivot if config.orbit else None).to(device)
        self.optimizer = torch.optim.Adam(self.corrections.parameters(), lr=config.lr, eps=1e-15)

    @staticmethod
    def centre_depths(cameras: Cameras, centre: torch.Tensor) -> torch.Tensor:
        """``(n,)`` the depth of the point ``centre`` ``(3,)`` along each camera's optical axis
        (``-z`` of its frame; 0 where the point is behind the camera): the ``pivot`` distances."""
        c2w = cameras.c2w.detach()
        offset = centre.to(c2w) - c2w[:, :, 3]
        return (-(offset[:, None, :] @ c2w[:, :, 2:3])[:, 0, 0]).clamp(min=0.0)

    def parameters(self) -> list[torch.Tensor]:
        return list(self.corrections.parameters())

    def schedule(self, model, progress: float, step: int) -> None:
        """Set this step's learning rate and the model's coarse-to-fine window."""
        cfg = self.config
        lr = log_linear_lr_at(progress, step, cfg.lr, cfg.lr_final, warmup_steps=0)
        if cfg.warmup > 0:
            lr *= min(progress / cfg.warmup, 1.0)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        alpha = window_alpha(progress, cfg.coarse_to_fine)
        if alpha is not None:
            model.set_coarse_to_fine(alpha)

    def add_penalty_gradient(self, scale=lambda loss: loss) -> torch.Tensor | None:
        """Add the gradient of ``pose_opt``'s penalty (:meth:`PoseCorrections.penalty`; ``scale``:
        the step's loss scaler) to the corrections' gradients; its value (a detached tensor: no
        device sync in the step), or None when it is off."""
        cfg = self.config
        if cfg.rot_penalty == 0 and cfg.trans_penalty == 0:
            return None
        penalty = self.corrections.penalty(cfg.rot_penalty, cfg.trans_penalty)
        scale(penalty).backward()
        return penalty.detach()

    def cameras(self, cameras: Cameras) -> Cameras:
        """``cameras`` (each carrying ``train_index``) with corrected poses, with their graph."""
        return replace(cameras, c2w=self.corrections(cameras.c2w, cameras.attrs["train_index"]))

    def corrected_poses(self, cameras: Cameras) -> torch.Tensor:
        """``(n, 3, 4)`` the corrected poses of ``cameras``, without a graph."""
        with torch.no_grad():
            return self.cameras(cameras).c2w

    def log_scalars(self) -> dict[str, float]:
        rot, trans = self.corrections.magnitudes()
        return {"rotation_deg": float(rot.mean()), "translation": float(trans.mean())}

    def state_dict(self) -> dict:
        return {"corrections": self.corrections.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.corrections.load_state_dict(state["corrections"])
        saved = state["optimizer"]["param_groups"][0]["params"]
        if len(saved) != len(self.optimizer.param_groups[0]["params"]):  # a run from before the orbit
            print("radfield: warning: the checkpoint's pose corrections have no orbit (an older run); "
                  "their Adam moments start again", file=sys.stderr)
            return
        self.optimizer.load_state_dict(state["optimizer"])


def write_refined_transforms(path: Path, data: SceneData, c2w: torch.Tensor, downscale: int,
                             refinement: PoseRefinement) -> None:
    """Write the corrected training poses as an Instant-NGP / nerfstudio ``transforms.json``:
    per frame ``file_path`` (the image, absolute), ``transform_matrix`` (4 x 4 camera-to-world,
    OpenGL axes, in the dataset's world: a reader's normalisation undone), the intrinsics of the
    full-resolution image ``fl_x fl_y cx cy w h`` (and the lens, when there is one), and the
    correction's size, ``correction_deg`` and ``correction_translation`` (world units)."""
    cams = data.cameras
    norm = data.meta.get("normalization")
    world = to_world(c2w.detach().double().cpu(), norm)
    rot, trans = refinement.corrections.magnitudes()
    trans = trans.cpu() / float(norm["scale"]) if norm else trans.cpu()
    frames = []
    for i, name in enumerate(data.names):
        pose = torch.eye(4, dtype=torch.float64)
        pose[:3] = world[i]
        frame = {"file_path": str(Path(name).resolve()), "transform_matrix": pose.tolist(),
                 "fl_x": float(cams.fx[i]) * downscale, "fl_y": float(cams.fy[i]) * downscale,
                 "cx": float(cams.cx[i]) * downscale, "cy": float(cams.cy[i]) * downscale,
                 "w": cams.width * downscale, "h": cams.height * downscale,
                 "correction_deg": float(rot[i]), "correction_translation": float(trans[i])}
        if cams.lens is not None:
            frame["camera_model"] = "OPENCV_FISHEYE" if bool(cams.lens.fisheye[i]) else "OPENCV"
            frame.update({k: float(v) for k, v in zip(COEFFICIENTS, cams.lens.coeffs[i])})
        frames.append(frame)
    doc = {"note": "radfield --pose-opt: refined training poses (transform_matrix) of the images "
                   "in file_path, in the dataset's world coordinates",
           "frames": frames}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
