"""Dataset readers. Every reader returns a :class:`SceneData` (one split, radfield's camera
conventions); :func:`load_scene` picks the reader from what is on disk.

:func:`load_cameras` gives the same split's cameras as a :class:`SceneCameras` without decoding
an image; every reader is that plus the pixels (``load_scene = load_cameras + pixels``).
"""

from __future__ import annotations

from pathlib import Path

from radfield.data.blender import blender_cameras, load_blender
from radfield.data.colmap import colmap_cameras, load_colmap
from radfield.data.dtu import camera_file, dtu_cameras, load_dtu
from radfield.data.llff import llff_cameras, load_llff
from radfield.data.scene import SceneCameras, SceneData
from radfield.errors import RadfieldError

__all__ = ["SceneData", "SceneCameras", "load_scene", "load_scene_groups", "load_cameras",
           "load_blender", "load_colmap", "load_llff", "load_dtu"]


def _format(p: Path) -> str:
    """``"blender"``, ``"colmap"``, ``"llff"`` or ``"dtu"``: the format of the dataset at ``p``,
    tried in that order (see :func:`load_scene`); RadfieldError when none fits."""
    if not p.exists():
        raise RadfieldError(f"{p}: no such file or folder")
    is_json = p.is_file() and p.suffix == ".json"
    if is_json or (p.is_dir() and any(p.glob("transforms*.json"))):
        return "blender"
    if p.is_dir() and (p / "sparse").is_dir():
        return "colmap"
    if p.is_dir() and (p / "poses_bounds.npy").is_file():
        return "llff"
    if p.is_dir() and camera_file(p) is not None:
        return "dtu"
    raise RadfieldError(f"{p}: unrecognised dataset format (expected transforms_<split>.json, "
                        "transforms.json, a COLMAP sparse/ folder, poses_bounds.npy or a DTU "
                        "cameras.npz)")


def load_scene(path: str | Path, split: str = "train", downscale: int = 1, *,
               colmap_model: str | None = None) -> SceneData:
    """Read ``split`` of the dataset at ``path`` (a folder, or a ``transforms*.json`` file).

    Recognised formats, tried in this order: Blender / NeRF-synthetic
    (``transforms_{split}.json``) and Instant-NGP (``transforms.json``); COLMAP (a ``sparse/``
    folder beside ``images/``; ``colmap_model`` names the model folder, default the one with the
    most images); LLFF (``poses_bounds.npy``); DTU in the IDR / NeuS layout (``cameras.npz``
    beside ``image/`` and ``mask/``; the masks become ``SceneData.masks``).
    """
    p = Path(path)
    fmt = _format(p)
    if fmt == "blender":
        return load_blender(p, split, downscale)
    if fmt == "colmap":
        return load_colmap(p, split, downscale, model=colmap_model)
    if fmt == "dtu":
        return load_dtu(p, split, downscale)
    return load_llff(p, split, downscale)


def load_cameras(path: str | Path, split: str = "train", downscale: int = 1, *,
                 colmap_model: str | None = None) -> SceneCameras:
    """The cameras of ``split`` of the dataset at ``path``, without decoding any image.

    Exactly the ``cameras``, ``names``, ``aabb``, ``meta`` and ``times`` that
    :func:`load_scene` gives for the same arguments (same normalisation, same hold-out, same
    downscale). For a multi-scale dataset (:mod:`radfield.data.multiscale`): the cameras of its
    full-resolution scale (the smallest factor; that group of :func:`load_scene_groups`), with
    ``meta["scale"]``; such a dataset is not downscaled again.
    Image sizes come from the json's ``w`` / ``h`` (else the first image's header), the COLMAP
    camera (or the ``images_f`` headers), or the LLFF / DTU image headers.
    """
    from radfield.data.multiscale import multiscale_cameras

    p = Path(path)
    if _is_multiscale(p, downscale):
        return multiscale_cameras(p, split)
    fmt = _format(p)
    if fmt == "blender":
        return blender_cameras(p, split, downscale)
    if fmt == "colmap":
        return colmap_cameras(p, split, downscale, model=colmap_model)
    if fmt == "dtu":
        return dtu_cameras(p, split, downscale)
    return llff_cameras(p, split, downscale)


def load_scene_groups(path: str | Path, split: str = "train", downscale: int = 1, *,
                      colmap_model: str | None = None) -> list[SceneData]:
    """``split`` as a list of image groups of one size each: the scales of a multi-scale dataset
    (``multiscale.json``, see :mod:`radfield.data.multiscale`; full scale first), else
    ``[load_scene(path, split, downscale)]``."""
    from radfield.data.multiscale import load_multiscale

    if _is_multiscale(Path(path), downscale):
        return load_multiscale(path, split)
    return [load_scene(path, split, downscale, colmap_model=colmap_model)]


def _is_multiscale(path: Path, downscale: int) -> bool:
    """Whether ``path`` is a multi-scale dataset (which is never downscaled again)."""
    from radfield.data.multiscale import is_multiscale

    if not (path.exists() and is_multiscale(path)):
        return False
    if downscale != 1:
        raise RadfieldError(f"{path}: a multi-scale dataset is not downscaled again (use --downscale 1)")
    return True
