"""Dataset readers. Every reader returns a :class:`SceneData` (one split, radfield's camera
conventions); :func:`load_scene` picks the reader from what is on disk."""

from __future__ import annotations

from pathlib import Path

from radfield.data.blender import load_blender
from radfield.data.scene import SceneData
from radfield.errors import RadfieldError

__all__ = ["SceneData", "load_scene", "load_blender"]


def load_scene(path: str | Path, split: str = "train", downscale: int = 1) -> SceneData:
    """Read ``split`` of the dataset at ``path`` (a folder, or a ``transforms*.json`` file).

    Recognised formats: Blender / NeRF-synthetic (``transforms_{split}.json``) and Instant-NGP
    (``transforms.json``).
    """
    p = Path(path)
    if not p.exists():
        raise RadfieldError(f"{p}: no such file or folder")
    is_json = p.is_file() and p.suffix == ".json"
    if is_json or (p.is_dir() and any(p.glob("transforms*.json"))):
        return load_blender(p, split, downscale)
    raise RadfieldError(f"{p}: unrecognised dataset format "
                        "(expected transforms_<split>.json or transforms.json)")
