"""Training-curve plots and depth colourisation.

Plots are drawn with matplotlib's object API on an Agg canvas (no global backend switch, no
display needed) and written atomically through :func:`radfield.io.atomic_write`.

Vocabulary: a *curve* is a list of ``(time_s, psnr)`` points, wall-clock seconds since the
start of training and test PSNR in dB; a *history* is a list of dicts with keys ``"time_s"``,
``"step"``, ``"psnr"`` and optionally ``"label"`` (the run it belongs to).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import torch
from torch import Tensor

from radfield.io import atomic_write

__all__ = ["plot_curves", "plot_training_curve", "colorize_depth"]


def plot_curves(curves: Mapping[str, Sequence[tuple[float, float]]], out_png: str | os.PathLike,
                title: str = "PSNR vs wall-clock time") -> None:
    """Plot one line per label, PSNR (dB) against wall-clock time (s), to a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, points in curves.items():
        points = sorted(points)
        ax.plot([t for t, _ in points], [p for _, p in points], marker=".", label=label)
    ax.set_xlabel("wall-clock time (s)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend()
    fig.tight_layout()
    with atomic_write(out_png) as tmp:
        fig.savefig(tmp, format="png")


def plot_training_curve(history: Sequence[Mapping], out_png: str | os.PathLike,
                        title: str = "PSNR vs wall-clock time") -> None:
    """Plot a history (dicts with ``time_s``, ``step``, ``psnr``, optional ``label``).

    Entries are grouped by ``label`` (default ``"run"``) into curves for :func:`plot_curves`.
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    for entry in history:
        curves.setdefault(str(entry.get("label", "run")), []).append(
            (float(entry["time_s"]), float(entry["psnr"])))
    plot_curves(curves, out_png, title)


def colorize_depth(depth: Tensor, near: float | None = None, far: float | None = None,
                   opacity: Tensor | None = None, min_opacity: float = 1e-3) -> Tensor:
    """Map a depth image ``(H, W)`` to ``(H, W, 3)`` float colours with matplotlib's turbo map.

    ``t = clip((depth - near) / (far - near), 0, 1)`` indexes the 256-entry turbo table
    (near is blue, far is red). ``near`` / ``far`` default to the min / max of the valid depths.
    A pixel is invalid, and black, when its depth is not finite or ``<= 0``, or when
    ``opacity`` (``(H, W)`` accumulated weight) is given and ``< min_opacity``.

    Example: depths ``[1, 2, 3]`` with the defaults map to ``t = [0, 0.5, 1]``.
    """
    from matplotlib import colormaps

    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got {tuple(depth.shape)}")
    depth = depth.detach().double()
    valid = torch.isfinite(depth) & (depth > 0)
    if opacity is not None:
        valid &= opacity.detach().to(depth.device).reshape(depth.shape) >= min_opacity
    lut = torch.tensor(colormaps["turbo"](torch.linspace(0, 1, 256).numpy())[:, :3],
                       dtype=torch.float32, device=depth.device)
    if not valid.any():
        return torch.zeros(*depth.shape, 3, dtype=torch.float32, device=depth.device)
    near = float(depth[valid].min()) if near is None else near
    far = float(depth[valid].max()) if far is None else far
    t = ((depth - near) / max(far - near, 1e-12)).nan_to_num(0.0).clamp(0, 1)
    rgb = lut[torch.round(t * 255).long()]
    return rgb * valid[..., None]
