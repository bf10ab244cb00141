"""Camera paths for videos: an orbit around the scene, or the test cameras in order."""

from __future__ import annotations

import torch

from radfield.cameras import Cameras, orbit_poses
from radfield.data import SceneData


def orbit_path(train: SceneData, n_frames: int = 120, elevation_deg: float = 30.0) -> Cameras:
    """A circle around the scene-box centre at the training cameras' mean distance, world z up,
    with the training cameras' intrinsics (those of camera 0)."""
    cams = train.cameras
    centre = ((train.aabb[:3] + train.aabb[3:]) / 2)
    radius = (cams.centers - centre).norm(dim=-1).mean().item()
    c2w = orbit_poses(n_frames, radius, elevation_deg, tuple(centre.tolist()))
    ones = torch.ones(n_frames)
    return Cameras(c2w, cams.fx[0] * ones, cams.fy[0] * ones, cams.cx[0] * ones, cams.cy[0] * ones,
                   cams.width, cams.height)
