"""Camera paths for videos: an orbit around the scene, or the test cameras in order."""

from __future__ import annotations

import math

import torch

from radfield.cameras import Cameras, look_at
from radfield.data import SceneData


def orbit_path(train: SceneData, n_frames: int = 120) -> Cameras:
    """A circle of cameras looking at the scene-box centre, with the training cameras' intrinsics
    (those of camera 0). The circle's axis is the training cameras' mean up vector (world z for
    Blender scenes, whatever structure-from-motion chose for captures); its radius and height
    above the centre are the training cameras' mean ones, so the orbit stays where the captured
    views were, which is what an unbounded scene can be rendered from. When the training cameras
    carry ``times`` (a dynamic scene), the path carries times too, sweeping their range, so the
    video plays the scene's motion while it orbits."""
    cams = train.cameras
    centre = (train.aabb[:3] + train.aabb[3:]) / 2
    up = cams.c2w[:, :3, 1].mean(0)
    up = up / up.norm()
    offsets = cams.centers - centre
    height = (offsets @ up).mean()
    radial = offsets - (offsets @ up)[:, None] * up
    radius = radial.norm(dim=-1).mean()
    e1 = radial[0] / radial[0].norm().clamp(min=1e-9)
    e2 = torch.linalg.cross(up, e1)
    c2w = []
    for k in range(n_frames):
        a = 2 * math.pi * k / n_frames
        eye = centre + height * up + radius * (math.cos(a) * e1 + math.sin(a) * e2)
        c2w.append(look_at(eye, centre, up))
    ones = torch.ones(n_frames)
    path = Cameras(torch.stack(c2w), cams.fx[0] * ones, cams.fy[0] * ones, cams.cx[0] * ones,
                   cams.cy[0] * ones, cams.width, cams.height)
    times = cams.attrs.get("times")
    if times is not None:  # a dynamic scene: the orbit sweeps its time range once
        path = path.with_attrs(times=torch.linspace(float(times.min()), float(times.max()), n_frames))
    return path
