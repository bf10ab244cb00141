"""Backgrounds: what a ray sees behind the last sample.

* ``white``, ``black``: a constant colour.
* ``random``: a random colour per ray and step, for training on RGBA data (transparent pixels
  then only fit when the density there is zero).
* ``learned``: :class:`LearnedBackground`, a small MLP on the ray direction (an environment
  map at infinity), trained with the field.
* :class:`OutsideSphereBackground` (a model option, e.g. ``volsdf.background_field``): a second
  radiance field beyond the scene's bounding sphere, in NeRF++'s inverted-sphere coordinates,
  for captures whose background is not at infinity.
* ``last_sample``: no background; the last interval of every ray extends to infinity and is
  opaque (the original NeRF code's behaviour, see :func:`radfield.rendering.volume.render_weights`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from radfield.errors import RadfieldError
from radfield.fields.encodings import PositionalEncoding
from radfield.fields.sh import sh_encode
from radfield.rendering.volume import render_weights

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
        return model.background(rays)
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
    ``hidden`` ReLU layers -> sigmoid. ``forward(rays) -> (n_rays, 3)``."""

    def __init__(self, hidden: int = 32, n_layers: int = 2):
        super().__init__()
        layers, width = [], 16
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Linear(width, 3))
        self.mlp = nn.Sequential(*layers)

    def forward(self, rays) -> Tensor:
        return torch.sigmoid(self.mlp(sh_encode(torch.nn.functional.normalize(rays.directions, dim=-1))))


def far_sphere_distance(origins: Tensor, directions: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """Ray distance ``t`` (``directions`` unit) of the far intersection of each ray with the
    sphere(s) ``radius`` (``(n,)`` or ``(n, k)``) about ``center``: the larger root of
    ``|o + t d - c|^2 = R^2``. A ray that misses the sphere gets its point of closest approach."""
    o = origins - center
    b = (o * directions).sum(-1)
    c = (o * o).sum(-1)
    if radius.dim() == 2:
        b, c = b[:, None], c[:, None]
    return -b + torch.sqrt((b * b - c + radius * radius).clamp(min=0.0))


class OutsideSphereBackground(nn.Module):
    """A radiance field outside the sphere ``|x - center| = radius`` (NeRF++, Zhang et al. 2020).

    A point at distance ``r > radius`` from the centre is the 4-vector ``(u, s)``: its unit
    direction ``u`` from the centre and its inverse distance ``s = radius / r in (0, 1]``, so all
    of space out to infinity is a bounded domain. Each ray takes ``n_samples`` points beyond the
    sphere at inverse distances evenly spread over ``(0, 1]`` (jittered while training) and
    volume-renders them (a ray from outside that misses a sphere gets its closest point to the
    centre instead, an empty interval); the last interval reaches infinity and is opaque, so the background
    always has a colour.

    Field: positional encoding of ``(u, s)`` (``frequencies``) -> ``hidden`` ReLU layers ->
    density (softplus) and a feature; feature + SH of the view direction -> colour (sigmoid).
    ``forward(rays) -> (n_rays, 3)``."""

    def __init__(self, center: Tensor, radius: float, n_samples: int = 32, hidden: int = 64,
                 n_layers: int = 2, frequencies: int = 6):
        super().__init__()
        self.register_buffer("center", center.float().clone())
        self.radius, self.n_samples = float(radius), int(n_samples)
        self.encoding = PositionalEncoding(4, frequencies)
        layers, width = [], self.encoding.n_out
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.density_head = nn.Linear(hidden, 1)
        self.colour_head = nn.Sequential(nn.Linear(hidden + 16, hidden // 2), nn.ReLU(inplace=True),
                                         nn.Linear(hidden // 2, 3))

    def inverse_distances(self, n_rays: int, device) -> Tensor:
        """``(n_rays, n_samples)`` decreasing in ``(0, 1]``: bin centres, jittered in training."""
        k = self.n_samples
        offset = torch.rand(n_rays, k, device=device) if self.training else torch.full((n_rays, k), 0.5, device=device)
        return 1.0 - (torch.arange(k, device=device) + offset) / k

    def forward(self, rays) -> Tensor:
        d = torch.nn.functional.normalize(rays.directions, dim=-1)
        n, k = d.shape[0], self.n_samples
        s = self.inverse_distances(n, d.device)
        t = far_sphere_distance(rays.origins, d, self.center, self.radius / s)  # (n, k), increasing
        x = rays.origins[:, None] + t[..., None] * d[:, None] - self.center
        r = x.norm(dim=-1, keepdim=True).clamp(min=1e-6)  # = radius / s unless the ray misses
        inverse = (self.radius / r).clamp(max=1.0)
        h = self.trunk(self.encoding(torch.cat([x / r, inverse], -1).reshape(n * k, 4)))
        sigma = torch.nn.functional.softplus(self.density_head(h)[:, 0] - 1.0)
        rgb = torch.sigmoid(self.colour_head(torch.cat([h, sh_encode(d).repeat_interleave(k, 0)], -1)))
        ends = torch.cat([t[:, 1:], t[:, -1:] + 1.0], 1)  # the last interval is made opaque below
        ray_indices = torch.arange(n, device=d.device).repeat_interleave(k)
        w, _, _ = render_weights(sigma, t.reshape(-1), ends.reshape(-1), ray_indices, n, opaque_last=True)
        return (w[:, None] * rgb).reshape(n, k, 3).sum(1)
