"""``radfield export baked``: a trained MeRF run as PNG atlases plus a JSON description, and the
reader that turns them back into a model that renders (:func:`load_baked`), so ``radfield eval
RUN_DIR --baked DIR`` scores the baked model beside the trained one.

Files in the output folder (every one written atomically):

* ``baked.json``: the description (format ``radfield-merf-baked-v1``): ``channels`` (the 8
  pre-activation channels: density, diffuse r g b, features 0-3), ``quantisation`` (``bits`` 8,
  per-channel ``min`` / ``max``; a byte decodes to ``byte / 255 * (max - min) + min``, the
  squashed vertex value), ``grid`` (``resolution`` R cells per axis, ``R + 1`` vertices,
  ``tiles_per_row``, ``files``), ``planes`` (``xy``, ``xz``, ``yz``: ``axes``, ``resolution``,
  ``files``), ``mapping`` (world -> unit cube: ``box`` normalisation of ``aabb`` or nerfacto's
  ``contraction`` with its ``norm``), ``activations``, ``deferred_mlp`` (layers of ``weight``
  ``(out, in)`` and ``bias``, ReLU between them; input ``[D (3), F (4), SH(d) (16)]``; colour
  ``D + opacity * mlp``), ``sampler`` (the baked renderer's: ``bounded``, ``spacing``,
  ``near``, ``far`` in lengths of ``unit``, the scene radius, ``coarse_samples``,
  ``fine_samples``), ``opaque_last``, and where it came from (``run``, ``step``).
* ``grid_0.png``, ``grid_1.png``: channels 0-3 and 4-7 of the 3D grid as RGBA, an atlas of its
  ``R + 1`` z-slices: slice ``k`` is the tile at row ``k // tiles_per_row``, column
  ``k % tiles_per_row``, and pixel ``[j, i]`` of a tile is vertex ``(i, j, k)``.
* ``plane_xy_0.png``, ``plane_xy_1.png``, ... : plane ``(a, b)``'s pixel ``[v_b, v_a]`` is its
  vertex ``(v_a, v_b)``.

Sizes: ``8 ((R + 1)^3 + 3 (R_p + 1)^2)`` bytes before PNG compression (MeRF-small, 64 and 512:
8.4 MB).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from radfield.errors import RadfieldError
from radfield.fields.merf import CHANNELS, PLANES, BakedMerfField, DeferredShader, UnitCube
from radfield.io import atomic_write, save_png
from radfield.models.merf import BakedMerfModel
from radfield.training.checkpoint import load_checkpoint, load_run

FORMAT = "radfield-merf-baked-v1"
DESCRIPTION = "baked.json"


def atlas(data: np.ndarray, n: int, tiles_per_row: int) -> np.ndarray:
    """``(rows n, tiles_per_row n, C)``: the ``n`` slices of ``data (n, n, n, C)`` (slice-major)
    tiled row by row, unused tiles zero."""
    rows = math.ceil(n / tiles_per_row)
    image = np.zeros((rows * n, tiles_per_row * n, data.shape[-1]), dtype=data.dtype)
    for k in range(n):
        r, c = divmod(k, tiles_per_row)
        image[r * n:(r + 1) * n, c * n:(c + 1) * n] = data[k]
    return image


def unatlas(image: np.ndarray, n: int, tiles_per_row: int) -> np.ndarray:
    """The inverse of :func:`atlas`: ``(n, n, n, C)``."""
    return np.stack([image[(k // tiles_per_row) * n:(k // tiles_per_row + 1) * n,
                           (k % tiles_per_row) * n:(k % tiles_per_row + 1) * n] for k in range(n)])


def _write_rgba(folder: Path, stem: str, data: np.ndarray) -> list[str]:
    """``data (H, W, 8)`` uint8 as ``stem_0.png`` (channels 0-3) and ``stem_1.png`` (4-7)."""
    names = []
    for part in range(len(CHANNELS) // 4):
        name = f"{stem}_{part}.png"
        save_png(folder / name, np.ascontiguousarray(data[..., 4 * part:4 * part + 4]))
        names.append(name)
    return names


def export_baked(run_dir: str | Path, out: str | Path, device: str = "cpu") -> dict:
    """Bake the MeRF run ``run_dir`` into the folder ``out`` (module docstring). Returns
    ``{"path", "files", "bytes"}`` (``bytes``: the grids' size before compression)."""
    run_dir, out = Path(run_dir), Path(out)
    ck = load_checkpoint(run_dir)
    model_name = json.loads(ck["config"]).get("model")
    if model_name != "merf":
        raise RadfieldError(f"{run_dir}: export baked needs a merf run (this run's model is {model_name!r})")
    config, model = load_run(run_dir, device)
    if model.background is not None:
        raise RadfieldError(f"{run_dir}: a learned background (train.background=learned) cannot be baked")
    if out.exists() and not out.is_dir():
        raise RadfieldError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    cfg, field = config.merf, model.field
    m = cfg.field.quant_range
    description = {
        "format": FORMAT, "channels": list(CHANNELS),
        "quantisation": {"bits": 8, "min": [-m] * len(CHANNELS), "max": [m] * len(CHANNELS),
                         "decode": "value = byte / 255 * (max - min) + min"},
        "mapping": field.to_unit.describe(),
        "activations": {"density": "exp", "diffuse": "sigmoid", "features": "sigmoid",
                        "sum": "grid + plane xy + plane xz + plane yz, before the activations"},
        "deferred_mlp": {"layers": field.shader.describe(), "activation": "relu",
                         "input": "accumulated diffuse (3), accumulated features (4), SH degree 4 of the "
                                  "view direction (16)",
                         "output": "colour = diffuse + opacity * mlp, then + (1 - opacity) * background"},
        "sampler": {"bounded": bool(cfg.bounded), "spacing": cfg.spacing, "near": cfg.near, "far": cfg.far,
                    "unit": model.frame.bounds_unit, "coarse_samples": cfg.baked_samples[0],
                    "fine_samples": cfg.baked_samples[1]},
        "opaque_last": bool(model.opaque_last),
        "run": str(run_dir.resolve()), "step": int(ck["state"]["step"]),
    }
    files, total = [], 0
    n = cfg.field.grid_resolution + 1
    grid = field.baked_bytes("grid").numpy().reshape(n, n, n, len(CHANNELS))  # (z, y, x, C)
    tiles = math.ceil(math.sqrt(n))
    names = _write_rgba(out, "grid", atlas(grid, n, tiles))
    description["grid"] = {"resolution": n - 1, "vertices": n, "tiles_per_row": tiles, "files": names}
    files += names
    total += grid.size
    description["planes"] = {}
    np_ = cfg.field.plane_resolution + 1
    for name, axes in PLANES.items():
        plane = field.baked_bytes(name).numpy().reshape(np_, np_, len(CHANNELS))  # (v_b, v_a, C)
        names = _write_rgba(out, f"plane_{name}", plane)
        description["planes"][name] = {"axes": list(axes), "resolution": np_ - 1, "vertices": np_, "files": names}
        files += names
        total += plane.size
    with atomic_write(out / DESCRIPTION) as tmp:
        tmp.write_text(json.dumps(description, indent=1))
    return {"path": out, "files": [DESCRIPTION] + files, "bytes": total}


def _read_rgba(folder: Path, names: list[str], shape: tuple[int, int]) -> np.ndarray:
    import imageio.v3 as iio

    parts = []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise RadfieldError(f"{path}: missing (the bake is incomplete)")
        try:
            image = np.asarray(iio.imread(path))
        except Exception as exc:
            raise RadfieldError(f"{path}: unreadable PNG ({type(exc).__name__})") from None
        if image.dtype != np.uint8 or image.shape != (*shape, 4):
            raise RadfieldError(f"{path}: expected an 8-bit RGBA image of {shape[1]} x {shape[0]}, got "
                                f"{image.dtype} {image.shape}")
        parts.append(image)
    return np.concatenate(parts, axis=-1)


def load_baked(folder: str | Path, device: str | torch.device = "cpu") -> BakedMerfModel:
    """The model of a baked MeRF folder (module docstring), in eval mode on ``device``; a missing
    or malformed file is a one-line RadfieldError naming it."""
    folder = Path(folder)
    path = folder / DESCRIPTION
    if not path.is_file():
        raise RadfieldError(f"{folder}: not a baked MeRF folder (no {DESCRIPTION})")
    try:
        d = json.loads(path.read_text())
        if d.get("format") != FORMAT:
            raise RadfieldError(f"{path}: not a {FORMAT} description")
        m = float(d["quantisation"]["max"][0])
        g, planes, mapping, sampler = d["grid"], d["planes"], d["mapping"], dict(d["sampler"])
        sampler["unit"] = float(sampler["unit"])
        n = int(g["vertices"])
        grid = unatlas(_read_rgba(folder, g["files"], (math.ceil(n / g["tiles_per_row"]) * n,
                                                        g["tiles_per_row"] * n)), n, g["tiles_per_row"])
        grids = {"grid": torch.from_numpy(grid.reshape(-1, len(CHANNELS)).copy())}
        resolutions = {"grid": n - 1}
        for name in PLANES:
            p = planes[name]
            k = int(p["vertices"])
            grids[name] = torch.from_numpy(_read_rgba(folder, p["files"], (k, k)).reshape(-1, len(CHANNELS)).copy())
            resolutions[name] = k - 1
        layers = d["deferred_mlp"]["layers"]
        shader = DeferredShader(len(layers[0]["bias"]), len(layers) - 1)
        linears = [layer for layer in shader.mlp if isinstance(layer, torch.nn.Linear)]
        with torch.no_grad():
            for linear, layer in zip(linears, layers):
                linear.weight.copy_(torch.tensor(layer["weight"]))
                linear.bias.copy_(torch.tensor(layer["bias"]))
        to_unit = UnitCube(torch.tensor(mapping["aabb"]), mapping["kind"] == "box", mapping.get("norm", "inf"))
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as exc:
        reason = (str(exc).splitlines() or [""])[0]
        raise RadfieldError(f"{path}: malformed description ({type(exc).__name__}: {reason})") from None
    field = BakedMerfField(grids, resolutions, m, to_unit)
    return BakedMerfModel(field, shader, sampler, d.get("opaque_last", False)).to(device).eval()
