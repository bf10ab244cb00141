"""The NeRF family: stratified coarse samples, inverse-CDF fine samples, MLP fields.

* ``nerf``: separate coarse and fine NeRF networks; the fine level evaluates the coarse and the
  resampled bins together (64 + 128 by default).
* ``tiny``: one small network, one level of stratified samples.
* ``mipnerf``: one network on integrated positional encodings of conical frustums (or
  cylinders), queried for the coarse and the fine level (128 + 128, fine = resampled only).
* ``nerfae``: the NeRF auto-encoder field, one network queried twice.

Rays are sampled between their entry and exit of the scene box (``aabb``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.cameras import Rays
from radfield.config import HierarchicalConfig, OptimConfig, RunConfig
from radfield.errors import RadfieldError, check_choice
from radfield.fields.nerf import MipNeRFField, NeRFAEField, NeRFField
from radfield.fields.window import WindowedBands
from radfield.geometry import box_near_far
from radfield.models.base import Model, SceneInfo
from radfield.rendering.pipeline import render_samples
from radfield.samplers.frustums import conical_frustum_to_gaussian, cylinder_to_gaussian
from radfield.samplers.proposal import sample_pdf, uniform_bins
from radfield.samplers.samples import Level, Samples, packed_from_bins

FRUSTUM_SHAPES = {"cone": conical_frustum_to_gaussian, "cylinder": cylinder_to_gaussian}


class HierarchicalModel(Model):
    """Coarse-to-fine sampling (:class:`HierarchicalConfig`) around a coarse and a fine field
    (the same module when the model shares one network)."""

    sampler: HierarchicalConfig

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        cfg = self.sampler
        near, far = box_near_far(rays, self.aabb)
        t, _ = uniform_bins(near, far, cfg.n_coarse, "linear", jitter=training, generator=generator)
        if cfg.n_fine == 0:
            return packed_from_bins(t)
        coarse = packed_from_bins(t)
        with torch.set_grad_enabled(training and torch.is_grad_enabled()):
            out = render_samples(self, rays, coarse, None, field=self.coarse_field)
        w = out.weights.view(len(rays), -1)
        t_fine = sample_pdf(t, w, cfg.n_fine, cfg.padding, jitter=training, generator=generator)
        if cfg.union:
            t_fine = torch.sort(torch.cat([t, t_fine[:, 1:-1]], dim=-1), dim=-1).values
        levels = [Level(t, w, out.rgb, out.opacity, cfg.coarse_weight)] if training else []
        return packed_from_bins(t_fine, levels=levels)

    def position_encodings(self) -> list[WindowedBands]:
        """The position encodings of the field(s) that take a window: positional (NeRF, TinyNeRF;
        NeRF-AE with ``--set nerfae.encoding.name=positional``), integrated positional
        (mip-NeRF), hash grid; Fourier features and SIREN have no coarse-to-fine order."""
        fields = [self.field] if self.coarse_field is self.field else [self.field, self.coarse_field]
        return [f.position_encoding for f in fields if isinstance(f.position_encoding, WindowedBands)]

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        separate = self.coarse_field is not self.field
        return self.mlp_param_groups([self.field, self.coarse_field] if separate else [self.field], optim)


class NeRFModel(HierarchicalModel):
    """Vanilla NeRF (``config.nerf``) or TinyNeRF (``config.tiny``)."""

    section = "nerf"

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg, aabb = getattr(config, self.section), self.aabb
        self.sampler = cfg.sampler

        def make() -> NeRFField:
            return NeRFField(aabb, cfg.encoding, cfg.depth, cfg.width, cfg.skip, cfg.direction_freqs,
                             cfg.density_activation)

        self.field = make()
        self.coarse_field = make() if cfg.separate_coarse and cfg.sampler.n_fine > 0 else self.field


class TinyNeRFModel(NeRFModel):
    section = "tiny"


class MipNeRFModel(HierarchicalModel):
    """mip-NeRF: field inputs are the Gaussians of the samples' conical frustums (or cylinders)."""

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg, aabb = config.mipnerf, self.aabb
        check_choice("mipnerf.shape", cfg.shape, FRUSTUM_SHAPES, "shape")
        self.sampler = cfg.sampler
        self.to_gaussian = FRUSTUM_SHAPES[cfg.shape]
        self.field = MipNeRFField(aabb, cfg.min_deg, cfg.max_deg, cfg.depth, cfg.width, cfg.skip,
                                  cfg.direction_freqs)
        self.coarse_field = self.field

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(mean (n_samples, 3), diagonal variance (n_samples, 3), directions (n_samples, 3))``."""
        radii = rays.get("radii")
        if radii is None:
            raise RadfieldError("mipnerf needs rays with pixel radii (rays from radfield.cameras)")
        ri = samples.ray_indices
        d = rays.directions[ri]
        offset, var = self.to_gaussian(d, samples.t_starts, samples.t_ends, radii[ri])
        return rays.origins[ri] + offset, var, d


class NeRFAEModel(HierarchicalModel):
    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg = config.nerfae
        self.sampler = cfg.sampler
        self.latent_penalty = cfg.latent_penalty
        self.field = NeRFAEField(self.aabb, cfg.encoding, cfg.latent, cfg.encoder_depth, cfg.width,
                                 cfg.direction_freqs, cfg.normalize_latent)
        self.coarse_field = self.field

    def extra_losses(self, rays: Rays, samples: Samples, raw: Tensor) -> dict[str, Tensor]:
        """``latent_penalty * mean_i |z_i|^2`` over the final level's samples, from ``raw``'s
        column 4 (so hard sample mining sees the penalty per sample)."""
        if self.latent_penalty == 0 or raw.shape[0] == 0:
            return {}
        return {"latent": self.latent_penalty * raw[:, 4].float().mean()}
