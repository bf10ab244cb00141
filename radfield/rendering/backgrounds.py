"""Backgrounds: what a ray sees behind the last sample.

* ``white``, ``black``: a constant colour.
* ``random``: a random colour per ray and step, for training on RGBA data (transparent pixels
  then only fit when the density there is zero).
* ``learned``: :class:`LearnedBackground`, a small MLP on the ray direction (an environment
  map at infinity), trained with the field.
* ``last_sample``: no background; the last interval of every ray extends to infinity and is
  opaque (the original NeRF code's behaviour, see :func:`radfield.rendering.volume.render_weights`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.errors import RadfieldError
from radfield.fields.sh import sh_encode

BACKGROUNDS = ("random", "white", "black", "learned", "last_sample")
CONSTANT_BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def background_color(name: str, device) -> Tensor:
    """``(3,)`` colour of a constant background (``white`` or ``black``)."""
    if name not in CONSTANT_BACKGROUNDS:
        raise RadfieldError(f"unknown background colour {name!r} "
                            f"(choose from: {', '.join(CONSTANT_BACKGROUNDS)})")
    return torch.tensor(CONSTANT_BACKGROUNDS[name], device=device)


def ray_background(model, rays, colour: Tensor | None) -> Tensor | None:
    """What the rays of ``model`` see behind their last sample: the model's learned background
    on the ray directions when it has one, else ``colour`` (``(3,)``, ``(n_rays, 3)`` or None
    for none). Every render path asks this function, so a learned background is used
    everywhere or nowhere."""
    if getattr(model, "background", None) is not None:
        return model.background(rays.directions)
    return colour


def training_colour(kind: str, has_alpha: bool, n_rays: int, eval_colour: Tensor,
                    generator: torch.Generator | None = None) -> Tensor:
    """The colour training targets are composited over for ``train.background = kind``: a random
    colour per ray for ``random`` on RGBA data, the constant for ``white`` / ``black``, else the
    evaluation colour (``random`` on opaque data, ``last_sample``, ``learned``, which
    :func:`ray_background` then replaces with the model's own)."""
    if kind == "random" and has_alpha:
        return torch.rand(n_rays, 3, device=eval_colour.device, generator=generator)
    if kind in CONSTANT_BACKGROUNDS:
        return background_color(kind, eval_colour.device).expand(n_rays, 3)
    return eval_colour.expand(n_rays, 3)


def check_background(name: str) -> None:
    if name not in BACKGROUNDS:
        raise RadfieldError(f"unknown background {name!r} (choose from: {', '.join(BACKGROUNDS)})")


class LearnedBackground(nn.Module):
    """Background colour as a function of the ray direction: degree-4 SH encoding (16) ->
    ``hidden`` ReLU layers -> sigmoid. ``forward(directions (n_rays, 3)) -> (n_rays, 3)``."""

    def __init__(self, hidden: int = 32, n_layers: int = 2):
        super().__init__()
        layers, width = [], 16
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, 3))
        self.mlp = nn.Sequential(*layers)

    def forward(self, directions: Tensor) -> Tensor:
        return torch.sigmoid(self.mlp(sh_encode(directions)))
