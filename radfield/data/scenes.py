"""Folders of scenes, for models trained across scenes and evaluated on unseen ones (PixelNeRF).

A folder of scenes holds one Blender-format dataset per subfolder (``transforms_train.json``
beside ``transforms_test.json`` ...), as :func:`radfield.data.synthetic.make_scenes` writes them
(``scene_0000/``, ``scene_0001/``, ...); the scenes are taken in the sorted order of their
folder names. A folder that is itself such a dataset is a folder of one scene.
"""

from __future__ import annotations

from pathlib import Path

from radfield.errors import RadfieldError

SCENE_FILE = "transforms_train.json"


def scene_folders(path: str | Path) -> list[Path]:
    """The scenes of the folder ``path`` (module doc), sorted by name; a one-line RadfieldError
    when ``path`` is missing or holds no scene."""
    p = Path(path)
    if not p.is_dir():
        raise RadfieldError(f"{p}: no such folder of scenes")
    if (p / SCENE_FILE).is_file():
        return [p]
    scenes = sorted(q for q in p.iterdir() if q.is_dir() and (q / SCENE_FILE).is_file())
    if not scenes:
        raise RadfieldError(f"{p}: no scenes (expected subfolders with {SCENE_FILE}, e.g. written by "
                            "radfield.data.synthetic.make_scenes)")
    return scenes
