"""Models: a field plus the sampler that feeds it, built from a :class:`RunConfig`.

The surface every model offers training, evaluation and export is described in
:mod:`radfield.models.base`.
"""

from __future__ import annotations

from torch import Tensor

from radfield.config import MODELS, RunConfig
from radfield.errors import RadfieldError
from radfield.models.base import Model
from radfield.models.nerf import MipNeRFModel, NeRFAEModel, NeRFModel, TinyNeRFModel
from radfield.models.nerfacto import NerfactoModel
from radfield.models.ngp import NGPModel

REGISTRY = {"ngp": NGPModel, "nerfacto": NerfactoModel, "nerf": NeRFModel, "mipnerf": MipNeRFModel,
            "tiny": TinyNeRFModel, "nerfae": NeRFAEModel}
assert tuple(REGISTRY) == MODELS

__all__ = ["Model", "build_model", "REGISTRY"]


def build_model(config: RunConfig, aabb: Tensor, n_images: int = 0) -> Model:
    """The model ``config.model`` over the scene box ``aabb``; ``n_images`` training images (for
    per-image appearance embeddings)."""
    if config.model not in REGISTRY:
        raise RadfieldError(f"unknown model {config.model!r} (choose from: {', '.join(MODELS)})")
    return REGISTRY[config.model](config, aabb, n_images)
