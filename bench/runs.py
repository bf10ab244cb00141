"""What the benchmarks share: a preset trained for a budget of training time, in a fresh folder.

Importing this module puts the checkout it lies in first on ``sys.path``, so a benchmark run
from a clone (``git clone . /tmp/b && python /tmp/b/bench/zoo.py``) measures that clone's code,
whether or not radfield is installed, and from wherever it is installed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
DATA = ROOT.parent / "shared" / "data"
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))

from radfield.config import PRESETS, RunConfig, apply_overrides  # noqa: E402


def budgeted_config(preset: str, data: str | Path, budget: float, eval_every: float | None = None,
                    val_images: int | None = 1, overrides: dict | None = None) -> RunConfig:
    """``preset`` on ``data`` for ``budget`` seconds of training time (validation excluded) and
    no step limit; validation every ``eval_every`` seconds of training (default: once, at the
    end; ``1e12``: never) on ``val_images`` images (``None``: the preset's); then
    ``overrides``. Example: ``budgeted_config("ngp", "../shared/data/tabletop", 300)``."""
    config = apply_overrides(RunConfig(), PRESETS[preset])
    config.data.path = str(Path(data).resolve())
    config.train.max_time, config.train.max_steps = budget, 10 ** 9
    config.train.eval_every = budget if eval_every is None else eval_every
    if val_images is not None:
        config.train.val_images = val_images
    return apply_overrides(config, overrides or {})


def fresh(run_dir: Path) -> Path:
    """``run_dir``, emptied: every benchmark run trains from scratch."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def trained_run(run_dir: str | Path, split: str = "test"):
    """A trained run as ``radfield eval`` loads it: ``(config, model, data, background)``, with
    ``data`` the run's ``split`` (its first group) and ``background`` ``(3,)`` its evaluation
    background (:func:`radfield.evaluation.evaluate.load_for_evaluation`)."""
    from radfield.evaluation.evaluate import load_for_evaluation

    config, model, groups, background = load_for_evaluation(run_dir, split)
    return config, model, groups[0], background


def time_to_reach(history: list[dict], target: float) -> float | None:
    """Training time at which the validation PSNR first reaches ``target`` (linear interpolation)."""
    prev = (0.0, 0.0)
    for h in history:
        if "psnr" not in h:
            continue
        if h["psnr"] >= target:
            (t0, p0), t1, p1 = prev, h["time_s"], h["psnr"]
            return t1 if p1 == p0 else t0 + (target - p0) / (p1 - p0) * (t1 - t0)
        prev = (h["time_s"], h["psnr"])
    return None
