"""Models: a field plus the sampler that feeds it, built from a :class:`RunConfig`.

The surface every model offers training, evaluation and export is described in
:mod:`radfield.models.base`. A new model is its field (``radfield/fields/``), its model file
here, its section of :class:`radfield.config.RunConfig` and one line in :data:`REGISTRY`.
"""

from __future__ import annotations

from radfield.config import RunConfig
from radfield.errors import RadfieldError
from radfield.models.base import Model, SceneInfo
from radfield.models.dnerf import DNeRFModel
from radfield.models.merf import MerfModel
from radfield.models.nerf import MipNeRFModel, NeRFAEModel, NeRFModel, TinyNeRFModel
from radfield.models.nerfacto import NerfactoModel
from radfield.models.ngp import NGPModel
from radfield.models.pixelnerf import PixelNeRFModel
from radfield.models.volsdf import VolSDFModel
from radfield.models.voxels import VoxelsModel

REGISTRY: dict[str, type[Model]] = {
    "ngp": NGPModel,
    "nerfacto": NerfactoModel,
    "nerf": NeRFModel,
    "mipnerf": MipNeRFModel,
    "tiny": TinyNeRFModel,
    "nerfae": NeRFAEModel,
    "dnerf": DNeRFModel,
    "volsdf": VolSDFModel,
    "voxels": VoxelsModel,
    "merf": MerfModel,
    "pixelnerf": PixelNeRFModel,
}
"""Model name (``--model``, ``RunConfig.model``, the name of its config section) -> class."""

__all__ = ["Model", "SceneInfo", "build_model", "model_class", "REGISTRY"]


def model_class(name: str) -> type[Model]:
    if name not in REGISTRY:
        raise RadfieldError(f"unknown model {name!r} (choose from: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def build_model(config: RunConfig, scene: SceneInfo) -> Model:
    """The model ``config.model`` for ``scene``: the model first resolves the options the data
    decides (writing them into ``config``), then builds its networks."""
    cls = model_class(config.model)
    cls.configure(config, scene)
    if config.train.near_gradient is None:
        config.train.near_gradient = cls.default_near_gradient(config, scene)
    return cls(config, scene)
