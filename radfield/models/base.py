"""What every model offers training, evaluation and export (one surface for all of them).

A model is a field plus the sampler that feeds it, built for one scene:

* ``Model.configure(config, scene)`` (class method, before building): resolve the options the
  data decides (e.g. nerfacto samples inside the box on RGBA data) and write them into
  ``config``, so ``config.json`` records what ran;
* ``Model(config, scene)``: the networks; ``scene`` (:class:`SceneInfo`) is all a model may know
  of its data, and ``build_args()`` saves it in the checkpoint so a run rebuilds exactly;
* ``sample(rays, training, generator, early_stop) -> Samples``: packed samples of the final
  level; hierarchical samplers put their earlier levels (with graphs, when training) in
  ``samples.levels`` for the training loss;
* ``field_inputs(rays, samples) -> tuple``: the field's per-sample inputs, ``field.raw(*inputs)``;
* ``extra_losses(rays, samples, raw) -> dict``: weighted training losses beyond the shared
  objective, from the final level's pre-activation outputs ``raw`` (a per-sample penalty, which
  hard sample mining then sees per sample) or from the field itself with a graph of their own
  (an eikonal term on the field's spatial gradient, a smoothness term on a deformation; both
  training steps back-propagate those in full);
* ``update(step, generator)``: the sampler's periodic bookkeeping (e.g. an occupancy grid);
* ``grow(step) -> bool``: before ``step``, replace parameters by new ones of another shape
  (coarse-to-fine grids); True when it did, and the trainer then rebuilds its optimiser
  (:func:`radfield.training.trainer.make_optimizer`: parameters it still holds keep their
  Adam state, the new ones start afresh). A grown parameter must load from a checkpoint of any
  stage (its module takes the checkpoint's shape), so ``--resume`` continues exactly;
* ``shade(rays, values, opacity) -> rgb``: deferred shading, per ray, of the accumulated
  per-sample values ``sum_i w_i v_i`` that ``field.activate`` gives (the colour itself for
  every model but MeRF), before the background;
* ``param_groups(optim)``: optimiser parameter groups (a group may carry its own ``lr``, and
  ``"tables": True`` where it holds hash tables, for ``optim.sparse_tables``);
* ``log_scalars() -> dict``: the model's own figures for the training log;
* ``appearance_codes()``: per-image appearance codes (evaluation protocols fit held-out ones);
* ``level_set(level)``: the function whose level set is the surface (mesh export);
* ``normals(rays, samples)``: per-sample surface normals, or None (normal maps);
* ``schedule(progress)``: what changes over the run (e.g. D-NeRF's coarse-to-fine window);
* ``widened_sampling(distance)``: a context in which ``sample`` keeps samples near, not only
  in, occupied space (pose-gradient renders);
* ``position_encodings()``: the encodings of sample positions that take BARF's coarse-to-fine
  window (:mod:`radfield.fields.window`), which ``set_coarse_to_fine(alpha)`` sets (pose
  refinement);
* ``background``: a learned background module or None; ``opaque_last``: the "last sample"
  background (the last interval of each ray is opaque);
* ``multi_scene``: the model renders a scene from source views it is given per scene
  (``set_context(images, cameras)``, PixelNeRF), so it trains across a folder of scenes
  (:mod:`radfield.training.multiscene`) and is evaluated on unseen ones
  (:mod:`radfield.evaluation.unseen`); False for the per-scene models.

Rendering is not a model method: :func:`radfield.rendering.pipeline.render_samples` is the one
path from a model, rays and samples to pixels.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.config import OptimConfig, RunConfig
from radfield.fields.window import WindowedBands
from radfield.rendering.backgrounds import LearnedBackground, check_background
from radfield.samplers.samples import Samples


@dataclass
class SceneInfo:
    """What a model is built for: the scene box, the training images and what the data holds.

    Attributes:
        aabb: ``(6,)`` scene box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        n_images: training images (per-image embeddings, pose corrections, ...).
        has_alpha: the training images are RGBA (an object on a transparent background).
        time_range: ``(t_min, t_max)`` of a dynamic scene's frames, or None.
        meta: ``normalization`` (``{"center", "scale"}``, ``x_scene = (x_world - center) * scale``)
            when the reader normalised the scene, so exports can return to world coordinates;
            ``aabb_scale`` (Instant-NGP's) when the box is that many times larger than the
            region of interest, a cube of ``1 / aabb_scale`` the box's size about its centre
            (cascaded occupancy grids cover the region finely and the rest coarsely);
            ``camera_radius``, the farthest training camera's distance from the box's centre
            (the proposal pipeline measures unbounded scenes in it).
        cameras: the training cameras (:class:`radfield.cameras.Cameras`) when the model is
            built for training, else None (not saved: what a model derives from them, such as
            the occupancy grid's seen cells, is in its state).
    """

    aabb: Tensor
    n_images: int = 0
    has_alpha: bool = False
    time_range: tuple[float, float] | None = None
    meta: dict = field(default_factory=dict)
    cameras: object = field(default=None, repr=False, compare=False)

    @classmethod
    def from_data(cls, data) -> "SceneInfo":
        """From a :class:`radfield.data.SceneData` (the training split)."""
        times = data.cameras.attrs.get("times")
        meta = {k: data.meta[k] for k in ("normalization", "aabb_scale") if data.meta.get(k)}
        aabb = data.aabb.double()
        centres = data.cameras.centers.double()
        if len(centres):
            meta["camera_radius"] = float((centres - (aabb[:3] + aabb[3:]) / 2).norm(dim=-1).max())
        return cls(data.aabb.float().clone(), len(data), bool(data.has_alpha),
                   None if times is None else (float(times.min()), float(times.max())), meta, data.cameras)

    @property
    def aabb_scale(self) -> float:
        """``meta["aabb_scale"]``, 1 when absent (the box is the region of interest)."""
        return float(self.meta.get("aabb_scale", 1))

    @property
    def centre(self) -> Tensor:
        """``(3,)`` the box's centre (the region of interest's). Example: box ``[0, 2]^3`` -> ``(1, 1, 1)``."""
        return (self.aabb[:3] + self.aabb[3:]) / 2

    @property
    def size(self) -> float:
        """The scene's size: the largest side of the region of interest (the box's over
        ``aabb_scale``); pose corrections and errors measure translations in it. Example: box
        ``[-1.5, 1.5]^3`` -> 3."""
        return float((self.aabb[3:] - self.aabb[:3]).max()) / self.aabb_scale

    def to_dict(self) -> dict:
        d = asdict(replace(self, cameras=None))
        del d["cameras"]
        d["aabb"] = [float(v) for v in self.aabb.tolist()]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SceneInfo":
        time_range = d.get("time_range")
        return cls(torch.tensor(d["aabb"], dtype=torch.float32), int(d.get("n_images", 0)),
                   bool(d.get("has_alpha", False)), None if time_range is None else tuple(time_range),
                   dict(d.get("meta") or {}))


class Model(nn.Module):
    multi_scene: bool = False
    """Conditioned on per-scene source views (module doc)."""

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__()
        check_background(config.train.background)
        self.scene = scene
        self.register_buffer("aabb", scene.aabb.float().clone())
        self.background = LearnedBackground() if config.train.background == "learned" else None
        self.opaque_last = config.train.background == "last_sample"

    @classmethod
    def configure(cls, config: RunConfig, scene: SceneInfo) -> None:
        """Resolve the options of ``config.<model>`` that depend on the data (default: none)."""

    @classmethod
    def default_near_gradient(cls, config: RunConfig, scene: SceneInfo) -> float:
        """``train.near_gradient`` when the config leaves it None, after :meth:`configure`:
        :attr:`near_gradient_on_captures` where :meth:`is_capture`, else 0 (off)."""
        return cls.near_gradient_on_captures if cls.is_capture(config, scene) else 0.0

    near_gradient_on_captures = 0.0
    """Floaters No More's distance (camera radii) on captures; 0 for a model it is not measured on."""

    @classmethod
    def is_capture(cls, config: RunConfig, scene: SceneInfo) -> bool:
        """The scene reaches beyond the region of interest (default: no)."""
        return False

    def build_args(self) -> dict:
        """What rebuilds this model besides its config (saved in checkpoints)."""
        return self.scene.to_dict()

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        raise NotImplementedError

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(positions (n_samples, 3), unit directions (n_samples, 3))``."""
        directions = samples.directions(rays)
        return samples.positions(rays, directions), directions

    def extra_losses(self, rays: Rays, samples: Samples, raw: Tensor) -> dict[str, Tensor]:
        """Weighted losses added to the training objective (default: none)."""
        return {}

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        pass

    def schedule(self, progress: float) -> None:
        """Set what depends on the fraction ``progress`` of the run done, before each training
        step (default: nothing)."""

    def grow(self, step: int) -> bool:
        """Change the shape of parameters before ``step``; True when new parameters replaced
        old ones (default: never)."""
        return False

    def shade(self, rays: Rays, values: Tensor, opacity: Tensor) -> Tensor:
        """``(n_rays, 3)`` colour before the background from the rays' accumulated values
        ``(n_rays, C)`` (``sum_i w_i v_i`` of ``field.activate``'s colours) and opacity
        ``(n_rays,)``. Default: the values are the colour."""
        return values

    def normals(self, rays: Rays, samples: Samples) -> Tensor | None:
        """``(n_samples, 3)`` unit surface normals at the samples (rendered as normal maps), or
        None for models without a surface (default)."""
        return None

    def level_set(self, level: float):
        """``(fn, level)``: the surface of the model is ``fn(x) = level``, ``fn`` larger inside
        (mesh export). Default: the density at ``level``."""
        return self.field.density, level

    def position_encodings(self) -> list[WindowedBands]:
        """The encodings of sample positions whose bands (frequencies, degrees, hash-grid levels)
        take BARF's coarse-to-fine window during pose refinement; default none."""
        return []

    def widened_sampling(self, distance: float) -> AbstractContextManager:
        """A context in which :meth:`sample` also keeps samples in the empty space within
        ``distance`` (world units) of what it would keep: pose-gradient renders whose rays may
        move that far (a ray that misses the scene by a little then carries samples near it, so
        its gradient can pull the scene in; without them only rays already on the scene give a
        gradient, which pushes it out of view). Default: nothing to widen (samplers that place
        samples along the whole ray)."""
        return nullcontext()

    def set_coarse_to_fine(self, alpha: float | None) -> int:
        """Open the fraction ``alpha`` in [0, 1] of the bands of every encoding of
        :meth:`position_encodings` (None or 1: all, the model as without a window); returns how
        many encodings took it. A narrower window the model sets itself (its ``schedule``) still
        applies (:class:`~radfield.fields.window.WindowedBands`)."""
        encodings = self.position_encodings()
        for encoding in encodings:
            encoding.set_window(alpha, "pose")
        return len(encodings)

    def appearance_codes(self) -> Tensor | None:
        """``(n_images, k)`` per-training-image appearance codes, or None (no embeddings).
        Rays with an ``appearance`` attribute use that code instead."""
        return None

    def log_scalars(self) -> dict[str, float]:
        return {}

    def mlp_param_groups(self, modules: list[nn.Module], optim: OptimConfig) -> list[dict]:
        params = [p for m in modules for p in m.parameters()]
        if self.background is not None:
            params += list(self.background.parameters())
        return [{"params": params, "lr": optim.lr, "weight_decay": optim.weight_decay}]

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        raise NotImplementedError
