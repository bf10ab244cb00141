"""Dataset readers. Every reader returns a :class:`SceneData` (one split, radfield's camera
conventions); :func:`load_scene` picks the reader from what is on disk."""

from __future__ import annotations

from pathlib import Path

from radfield.data.blender import load_blender
from radfield.data.colmap import load_colmap
from radfield.data.llff import load_llff
from radfield.data.scene import SceneData
from radfield.errors import RadfieldError

__all__ = ["SceneData", "load_scene", "load_scene_groups", "load_blender", "load_colmap", "load_llff"]


def load_scene(path: str | Path, split: str = "train", downscale: int = 1, *,
               colmap_model: str | None = None) -> SceneData:
    """Read ``split`` of the dataset at ``path`` (a folder, or a ``transforms*.json`` file).

    Recognised formats, tried in this order: Blender / NeRF-synthetic
    (``transforms_{split}.json``) and Instant-NGP (``transforms.json``); COLMAP (a ``sparse/``
    folder beside ``images/``; ``colmap_model`` names the model folder, default the one with the
    most images); LLFF (``poses_bounds.npy``).
    """
    p = Path(path)
    if not p.exists():
        raise RadfieldError(f"{p}: no such file or folder")
    is_json = p.is_file() and p.suffix == ".json"
    if is_json or (p.is_dir() and any(p.glob("transforms*.json"))):
        return load_blender(p, split, downscale)
    if p.is_dir() and (p / "sparse").is_dir():
        return load_colmap(p, split, downscale, model=colmap_model)
    if p.is_dir() and (p / "poses_bounds.npy").is_file():
        return load_llff(p, split, downscale)
    raise RadfieldError(f"{p}: unrecognised dataset format (expected transforms_<split>.json, "
                        "transforms.json, a COLMAP sparse/ folder or poses_bounds.npy)")


def load_scene_groups(path: str | Path, split: str = "train", downscale: int = 1, *,
                      colmap_model: str | None = None) -> list[SceneData]:
    """``split`` as a list of image groups of one size each: the scales of a multi-scale dataset
    (``multiscale.json``, see :mod:`radfield.data.multiscale`; full scale first), else
    ``[load_scene(path, split, downscale)]``."""
    from radfield.data.multiscale import is_multiscale, load_multiscale

    if Path(path).exists() and is_multiscale(path):
        if downscale != 1:
            raise RadfieldError(f"{path}: a multi-scale dataset is not downscaled again (use --downscale 1)")
        return load_multiscale(path, split)
    return [load_scene(path, split, downscale, colmap_model=colmap_model)]
