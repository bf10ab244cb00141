"""A copy of a Blender-format dataset whose poses are perturbed by known amounts: the noisy
captures that pose refinement (``--pose-opt``) is measured on.

The copy holds only ``transforms_{split}.json`` files: every frame's ``file_path`` becomes the
absolute path of the original image (no image is copied), depth files are dropped (they belong
to the true poses), and the frames of the perturbed split get
:func:`radfield.poses.corrections.perturb_poses` of their ``transform_matrix`` (each turned by
exactly ``rotation_deg`` about its own centre and moved by exactly ``translation``, random axis
and direction from ``seed``). The other splits keep their true poses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from radfield.data.files import image_file, read_json
from radfield.errors import RadfieldError
from radfield.io import atomic_write
from radfield.poses.corrections import perturb_poses


def write_perturbed_copy(source: str | Path, out: str | Path, rotation_deg: float, translation: float,
                         seed: int = 0, split: str = "train") -> Tensor:
    """Write the copy (module docstring) of the Blender-format dataset ``source`` into ``out``;
    returns the true poses ``(n, 3, 4)`` float64 of ``split`` in the order of its json (readers
    sort frames by ``file_path``: compare with the reader's cameras of ``source``)."""
    source, out = Path(source), Path(out)
    truth = None
    for name in ("train", "val", "test"):
        file = source / f"transforms_{name}.json"
        if not file.is_file():
            continue
        meta = read_json(file)
        for frame in meta["frames"]:
            frame["file_path"] = str(image_file(source, str(frame["file_path"])).resolve())
            frame.pop("depth_file_path", None)
        if name == split:
            truth = torch.tensor([f["transform_matrix"] for f in meta["frames"]], dtype=torch.float64)[:, :3]
            moved = perturb_poses(truth, rotation_deg, translation, torch.Generator().manual_seed(seed))
            for frame, pose in zip(meta["frames"], moved):
                frame["transform_matrix"] = pose.tolist() + [[0.0, 0.0, 0.0, 1.0]]
        with atomic_write(out / file.name) as tmp:
            tmp.write_text(json.dumps(meta, indent=1))
    if truth is None:
        raise RadfieldError(f"{source}: no transforms_{split}.json to perturb (a Blender-format dataset)")
    return truth
