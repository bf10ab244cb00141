"""PixelNeRF: one network for every scene, rendering a scene from 1 to a few of its views.

The field (:class:`radfield.fields.pixelnerf.PixelNeRFField`) is conditioned on the encoded
source views of the scene being rendered, set with :meth:`PixelNeRFModel.set_context` before
sampling and rendering; through it the standard render path
(:func:`radfield.rendering.pipeline.render_samples`) works unchanged.

Sampling: the NeRF family's stratified coarse samples in the scene box plus inverse-CDF fine
samples evaluated together with the coarse ones (``pixelnerf.sampler``, 64 + 32 by default,
PixelNeRF's 64 coarse + 32 fine; ``pixelnerf-small``: 32 + 16), the **same network queried
twice** (as mip-NeRF; PixelNeRF has a second MLP for the fine level, which a CPU cannot afford
to train), the coarse level's photometric loss in the objective.

Training runs across many scenes (:mod:`radfield.training.multiscene`): each step one scene,
``k`` random source views of its training split (``k`` uniform in 1 .. ``pixelnerf.max_sources``)
and rays of its other training views. Evaluation renders unseen scenes from 1, 2 or 3 fixed
source views (:mod:`radfield.evaluation.unseen`).
"""

from __future__ import annotations

from torch import Tensor

from radfield.cameras import Cameras
from radfield.config import RunConfig
from radfield.fields.pixelnerf import PixelNeRFField
from radfield.models.base import SceneInfo
from radfield.models.nerf import HierarchicalModel


class PixelNeRFModel(HierarchicalModel):
    multi_scene = True

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg = config.pixelnerf
        self.sampler = cfg.sampler
        self.field = PixelNeRFField(self.aabb, cfg.field)
        self.coarse_field = self.field

    def set_context(self, images: Tensor, cameras: Cameras) -> None:
        """The source views the model renders from: ``images`` ``(V, H, W, 3)`` in [0, 1],
        ``cameras`` their ``V`` cameras (:meth:`PixelNeRFField.set_context`)."""
        self.field.set_context(images, cameras)

    def clear_context(self) -> None:
        self.field.clear_context()
