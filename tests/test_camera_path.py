"""The orbit camera path follows the training cameras, whatever their up axis (captures)."""

import math

import torch

from radfield.cameras import Cameras, look_at
from radfield.data.scene import SceneData
from radfield.export.camera_path import orbit_path


def _ring_scene(up: torch.Tensor, centre: torch.Tensor, radius: float, height: float, n: int = 12) -> SceneData:
    up = up / up.norm()
    e1 = torch.linalg.cross(up, torch.tensor([0.3, -0.5, 0.8]))
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(up, e1)
    c2w = []
    for k in range(n):
        a = 2 * math.pi * (k + 0.3 * (k % 2)) / n  # uneven spacing
        eye = centre + height * up + radius * (math.cos(a) * e1 + math.sin(a) * e2)
        c2w.append(look_at(eye, centre, up))
    ones = torch.ones(n)
    cams = Cameras(torch.stack(c2w), 50 * ones, 50 * ones, 32 * ones, 24 * ones, 64, 48)
    aabb = torch.cat([centre - 0.5, centre + 0.5])
    return SceneData(torch.zeros(n, 48, 64, 3, dtype=torch.uint8), cams, [f"{k}" for k in range(n)], aabb)


def test_orbit_follows_tilted_capture_ring():
    up = torch.tensor([0.2, 0.9, -0.3])
    centre = torch.tensor([1.0, -2.0, 0.5])
    scene = _ring_scene(up, centre, radius=3.0, height=1.2)
    path = orbit_path(scene, n_frames=16)
    unit_up = up / up.norm()
    offsets = path.centers - centre
    # every orbit camera at the captures' height along their up axis and at their radius
    assert torch.allclose(offsets @ unit_up, torch.full((16,), 1.2), atol=1e-4)
    radial = offsets - (offsets @ unit_up)[:, None] * unit_up
    assert torch.allclose(radial.norm(dim=-1), torch.full((16,), 3.0), atol=1e-4)
    # looking at the centre: the optical axis (-z) points from the eye to the centre
    to_centre = -offsets / offsets.norm(dim=-1, keepdim=True)
    assert torch.allclose(-path.c2w[:, :, 2], to_centre, atol=1e-5)
    # consecutive frames are 360/16 degrees apart around the axis
    cos = (radial[1:] * radial[:-1]).sum(-1) / 9.0
    assert torch.allclose(cos, torch.full((15,), math.cos(2 * math.pi / 16)), atol=1e-4)
    assert path.width == 64 and float(path.fx[0]) == 50.0
