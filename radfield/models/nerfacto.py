"""nerfacto-style proposal sampling for unbounded scenes (``shared/specs/proposal-sampling.md``).

Sampling chain per ray, in the normalised coordinate ``s`` of the spacing function between
``near`` and ``far``: 256 bins uniform in ``s`` -> proposal network 1 -> weights -> 96 bins by
inverse-CDF resampling -> proposal network 2 -> weights -> 48 bins -> the main field. Resampled
bins are detached; each proposal level is kept (weights with their graph) for the interlevel loss,
and the distortion loss is computed in ``s``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.config import OptimConfig, RunConfig
from radfield.errors import RadfieldError
from radfield.fields.nerfacto import Contraction, NerfactoField, ProposalDensityField, SeenGrid
from radfield.fields.window import WindowedBands
from radfield.geometry import box_near_far
from radfield.models.base import Model, SceneInfo
from radfield.rendering.volume import render_weights
from radfield.samplers.proposal import s_to_t, sample_pdf, uniform_bins
from radfield.samplers.samples import Level, Samples, packed_from_bins


def ray_bounds(rays: Rays, aabb: Tensor, bounded: bool, near: float, far: float,
               unit: float) -> tuple[Tensor, Tensor]:
    """``(near, far)`` ``(n_rays,)`` of the proposal pipeline: the box's entry and exit
    (``bounded``), else ``near`` and ``far`` times ``unit`` (:attr:`SceneFrame.bounds_unit`).
    Example: unbounded, near 0.05, far 1000, unit 2: ``(0.1, 2000)``."""
    if bounded:
        return box_near_far(rays, aabb)
    ones = torch.ones(len(rays), device=rays.origins.device)
    return ones * (near * unit), ones * (far * unit)


class SceneFrame(NamedTuple):
    """Where the proposal pipeline measures a scene: ``box`` is the contraction box, ``unit`` the
    length in which the spacing function sees distances and densities are given (sigma per
    ``unit``), ``bounds_unit`` the length that ``near`` and ``far`` multiply."""

    box: Tensor
    unit: float
    bounds_unit: float


class NerfactoModel(Model):
    section = "nerfacto"
    """The config section this model reads (a :class:`ProposalPipelineConfig`; subclasses
    trained under the same pipeline change it and ``make_field``)."""

    @classmethod
    def configure(cls, config: RunConfig, scene: SceneInfo) -> None:
        """``bounded`` unset: sample inside the box on RGBA data (an object scene)."""
        cfg = getattr(config, cls.section)
        if cfg.bounded is None:
            cfg.bounded = scene.has_alpha

    @classmethod
    def is_capture(cls, config: RunConfig, scene: SceneInfo) -> bool:
        """Unbounded scenes (not ``bounded``)."""
        return not getattr(config, cls.section).bounded

    near_gradient_on_captures = 1.0
    """Floaters No More on unbounded captures: on garden-colmap, 10 minutes, three seeds, +1.2 to
    +2.8 dB on the mean and +4.1 to +7.6 dB on the worst view (``bench/RESULTS.md``; MeRF: 0, not
    measured)."""

    def __init__(self, config: RunConfig, scene: SceneInfo):
        super().__init__(config, scene)
        cfg = self.config = getattr(config, self.section)
        if len(cfg.proposal_grids) != len(cfg.proposal_samples):
            raise RadfieldError(f"{self.section}: proposal_grids and proposal_samples need one entry per "
                                "proposal level")
        self.frame = self.scene_frame(scene)
        # the exponent of the proposal weights (ProposalPipelineConfig.proposal_anneal_steps): set
        # from the step by update() each training step, so not saved; a loaded model renders with 1
        self.anneal = 1.0
        self.seen = None
        if cfg.skip_unseen:
            self.seen = SeenGrid(cfg.seen_resolution, f"{self.section}.seen_resolution")
            if scene.cameras is not None:
                self.seen.mark(Contraction(self.frame.box, cfg.contraction), scene.cameras)
        self.field = self.make_field(cfg, scene)
        self.proposals = nn.ModuleList(
            ProposalDensityField(self.frame.box, res, cfg.proposal_hidden, cfg.contraction, self.frame.unit,
                                 self.seen)
            for res in cfg.proposal_grids)

    def box_frame(self) -> SceneFrame:
        """The scene box as the contraction box, raw lengths, ``near`` / ``far`` in units of the
        box's radius (half its largest side)."""
        return SceneFrame(self.aabb, 1.0, float(((self.aabb[3:] - self.aabb[:3]) / 2).max()))

    def scene_frame(self, scene: SceneInfo) -> SceneFrame:
        """The :class:`SceneFrame` of an unbounded scene, as nerfstudio's is after
        it scales the cameras into the unit cube: distances (``near``, ``far``, the spacing
        function's linear part) in units of the farthest camera's distance from the box's centre,
        and a contraction that starts no closer than the cameras, so the space between them and
        the scene keeps full resolution; densities per unit too. Without it, scenes kept in their
        capture's units (Blender, Instant-NGP ``transforms.json``: cameras 4 units from the
        object) trained 4.5 dB worse than scaled ones (``bench/RESULTS.md``). Bounded scenes,
        and runs saved without ``camera_radius``: :meth:`box_frame`.
        Example: box ``[-1.5, 1.5]^3``, cameras at 4: a cube of half-size 4, unit 4."""
        radius = scene.meta.get("camera_radius")
        if self.config.bounded or not radius:
            return self.box_frame()
        centre, half = (self.aabb[:3] + self.aabb[3:]) / 2, ((self.aabb[3:] - self.aabb[:3]) / 2).max()
        half = torch.clamp(half, min=radius)
        return SceneFrame(torch.cat([centre - half, centre + half]), float(radius), float(radius))

    def make_field(self, cfg, scene: SceneInfo) -> nn.Module:
        return NerfactoField(self.frame.box, cfg.grid, cfg.hidden, cfg.geo_features, cfg.appearance_dim,
                             scene.n_images, cfg.contraction, self.frame.unit, cfg.view_dependent, self.seen)

    @property
    def spacing(self) -> str:
        return "linear" if self.config.bounded else self.config.spacing

    def update(self, step: int, generator: torch.Generator | None = None) -> None:
        """The proposal weights' annealing exponent at ``step`` (1 once the annealing is over)."""
        steps, slope = self.config.proposal_anneal_steps, self.config.proposal_anneal_slope
        x = min(step / steps, 1.0) if steps > 0 else 1.0
        self.anneal = slope * x / ((slope - 1) * x + 1)

    def near_far(self, rays: Rays) -> tuple[Tensor, Tensor]:
        """The scene box's entry and exit (bounded), else ``near`` and ``far`` units of
        :meth:`scene_frame`."""
        cfg = self.config
        return ray_bounds(rays, self.aabb, cfg.bounded, cfg.near, cfg.far, self.frame.bounds_unit)

    def sample(self, rays: Rays, training: bool, generator: torch.Generator | None = None,
               early_stop: bool = True) -> Samples:
        cfg, n_rays, spacing = self.config, len(rays), self.spacing
        unit = self.frame.unit  # the spacing function sees distances in this unit
        near, far = (bound / unit for bound in self.near_far(rays))
        t, s = uniform_bins(near, far, cfg.proposal_samples[0], spacing, jitter=training,
                            generator=generator)
        t = t * unit
        levels = []
        n_next = list(cfg.proposal_samples[1:]) + [cfg.n_samples]
        for proposal, n in zip(self.proposals, n_next):
            bins = packed_from_bins(t)
            with torch.set_grad_enabled(training and torch.is_grad_enabled()):
                sigma = proposal.density(bins.positions(rays))
                w = render_weights(sigma, bins.t_starts, bins.t_ends, bins.ray_indices, n_rays)[0]
            w = w.view(n_rays, -1)
            levels.append(Level(s, w, weight=cfg.interlevel_weight, t=t))
            s = sample_pdf(s, w if self.anneal == 1.0 else w.detach().pow(self.anneal), n, jitter=training,
                           generator=generator)
            t = s_to_t(s, near, far, spacing) * unit
        return packed_from_bins(t, s, levels if training else [])

    def field_inputs(self, rays: Rays, samples: Samples) -> tuple[Tensor, ...]:
        """``(positions, directions, appearance code)`` per sample: the rays' own ``appearance``
        codes when they carry them, else the embedding of their ``train_index`` (the mean one
        for rays of other views)."""
        ri = samples.ray_indices
        codes = rays.get("appearance")
        if codes is None:
            index = rays.get("train_index")
            if index is None:
                index = torch.full((len(rays),), -1, dtype=torch.long, device=rays.origins.device)
            codes = self.field.appearance_code(index)
        return samples.positions(rays), rays.directions[ri], codes[ri]

    def position_encodings(self) -> list[WindowedBands]:
        """The main field's hash grid and the proposal networks' grids."""
        return [self.field.grid] + [proposal.grid for proposal in self.proposals]

    def appearance_codes(self) -> Tensor | None:
        return self.field.appearance.weight if self.field.appearance_dim else None

    def param_groups(self, optim: OptimConfig) -> list[dict]:
        grids = list(self.field.grid.parameters()) + [p for prop in self.proposals for p in prop.grid.parameters()]
        mlps = [self.field.density_mlp, self.field.color_mlp, self.field.appearance] + \
               [prop.mlp for prop in self.proposals]
        groups = [{"params": grids, "lr": optim.lr, "weight_decay": 0.0, "tables": True}]
        return groups + self.mlp_param_groups(mlps, optim)
