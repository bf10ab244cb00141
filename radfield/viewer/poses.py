"""Camera poses between viser (the browser) and radfield.

viser's cameras use **OpenCV axes**: x right, y down, the camera looks down +z; a pose is
``wxyz`` (the rotation ``R_cv`` as a quaternion, :mod:`radfield.rotations`) and ``position``,
with ``p_world = R_cv p_camera + position``. radfield's ``c2w`` uses **OpenGL axes**: x right,
y up, the camera looks down -z. The two cameras share the centre and the x axis and have y and
z flipped, so

    ``R_gl = R_cv @ diag(1, -1, -1)``  and  ``R_cv = R_gl @ diag(1, -1, -1)``.

Example: the identity ``wxyz = (1, 0, 0, 0)`` is a camera looking down world +z with its image
"up" along world -y; in OpenGL axes its ``c2w`` rotation is ``diag(1, -1, -1)``.

viser's ``fov`` is the vertical field of view in radians of the browser's canvas (width /
height = ``aspect``); :func:`radfield.cameras.pinhole_from_fov` makes the matching pinhole.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras, pinhole_from_fov
from radfield.rotations import matrix_to_quaternion, quaternion_to_matrix

FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))


def opengl_c2w_from_opencv(wxyz, position) -> Tensor:
    """``(3, 4)`` float64 OpenGL camera-to-world matrix of a viser pose (``wxyz`` ``(4,)``,
    ``position`` ``(3,)``, OpenCV axes)."""
    rot_cv = quaternion_to_matrix(torch.as_tensor(np.asarray(wxyz), dtype=torch.float64))
    centre = torch.as_tensor(np.asarray(position), dtype=torch.float64)
    return torch.cat([rot_cv @ FLIP_YZ, centre[:, None]], dim=1)


def opencv_from_opengl_c2w(c2w: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(wxyz (4,), position (3,))`` float64 numpy viser pose (OpenCV axes) of an OpenGL
    camera-to-world matrix ``c2w`` ``(3, 4)`` or ``(4, 4)``."""
    c2w = torch.as_tensor(c2w, dtype=torch.float64)
    rot_cv = c2w[:3, :3] @ FLIP_YZ
    return matrix_to_quaternion(rot_cv).numpy(), c2w[:3, 3].numpy().copy()


def view_camera(c2w: Tensor, fov_y: float, width: int, height: int, time: float | None = None) -> Cameras:
    """One float32 pinhole camera (``c2w`` ``(3, 4)`` OpenGL, ``fov_y`` radians) rendering
    ``width x height``; a ``time`` is carried by its rays (``times``) for dynamic scenes."""
    cams = pinhole_from_fov(c2w[None].float(), torch.tensor([fov_y], dtype=torch.float32), width, height)
    if time is not None:
        cams = cams.with_attrs(times=torch.tensor([time], dtype=torch.float32))
    return cams
