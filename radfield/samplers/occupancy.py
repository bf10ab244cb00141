"""Occupancy-grid sampling (Instant-NGP): march rays through a box, skip empty cells.

The grid covers the scene box ``aabb`` with ``resolution^3`` cells. Each cell keeps an
exponential moving average of the field's density at jittered points inside it; a cell is
*occupied* when its opacity over one marching step, ``density * step_size``, exceeds
``min(threshold, mean over cells)``. Rays are marched at a fixed ``step_size`` between their box
entry and exit, samples in unoccupied cells are dropped, and (optionally) samples behind the point
where the transmittance falls below ``early_stop_eps`` are dropped using a no-grad density pass.

Output: packed samples (see :mod:`radfield.rendering.volume`) in a :class:`Samples`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.rendering.volume import render_weights


@dataclass
class Samples:
    """Packed samples along a batch of rays (layout: :mod:`radfield.rendering.volume`).

    Attributes:
        t_starts, t_ends: ``(n_samples,)``.
        ray_indices: ``(n_samples,)`` long, sorted.
        n_rays: number of rays in the batch.
    """

    t_starts: Tensor
    t_ends: Tensor
    ray_indices: Tensor
    n_rays: int

    def __len__(self) -> int:
        return self.t_starts.shape[0]

    def positions(self, rays: Rays) -> Tensor:
        """``(n_samples, 3)`` interval midpoints ``o + t d`` (differentiable in the rays)."""
        t_mid = (self.t_starts + self.t_ends) / 2
        return rays.origins[self.ray_indices] + t_mid[:, None] * rays.directions[self.ray_indices]

    def directions(self, rays: Rays) -> Tensor:
        return rays.directions[self.ray_indices]

    def select(self, mask_or_index: Tensor) -> "Samples":
        """The subset of samples picked by a boolean mask or a sorted index tensor."""
        return Samples(self.t_starts[mask_or_index], self.t_ends[mask_or_index],
                       self.ray_indices[mask_or_index], self.n_rays)


def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test. Returns ``(t_near, t_far)``, ``(n_rays,)``; rays missing the box get
    ``t_near > t_far``. ``t_near`` may be negative when the origin is inside the box."""
    inv_d = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0 = (aabb[:3] - origins) * inv_d
    t1 = (aabb[3:] - origins) * inv_d
    t_near = torch.minimum(t0, t1).amax(dim=-1)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far


@dataclass
class OccupancyGridConfig:
    resolution: int = 64
    """Cells per axis. Instant-NGP uses 128 on a GPU; 64 keeps the CPU update cheap."""
    update_every: int = 16
    decay: float = 0.95
    threshold: float = 0.01
    """Opacity per step (``density * step_size``) above which a cell is occupied."""
    warmup_steps: int = 256
    """Before this step every update visits all cells; afterwards a quarter of all cells at random
    plus a quarter drawn from the occupied ones (Instant-NGP's schedule)."""
    steps_per_diagonal: int = 1024
    """Marching step = box diagonal / this (Instant-NGP: sqrt(3) * 2 * bound / 1024)."""
    early_stop_eps: float = 1e-4
    max_points_per_chunk: int = 1 << 21


class OccupancyGrid(nn.Module):
    """Instant-NGP's occupancy grid and ray marcher.

    Buffers (saved in checkpoints): ``density`` ``(R^3,)`` EMA of density, ``occupied``
    ``(R^3,)`` bool. Cells are indexed ``x * R^2 + y * R + z``.
    """

    def __init__(self, aabb: Tensor, config: OccupancyGridConfig = OccupancyGridConfig()):
        super().__init__()
        self.config = config
        res = config.resolution
        self.register_buffer("aabb", aabb.float().clone())
        self.register_buffer("density", torch.zeros(res ** 3))
        self.register_buffer("occupied", torch.ones(res ** 3, dtype=torch.bool))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.long))
        ijk = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("cell_ijk", ijk, persistent=False)

    @property
    def step_size(self) -> float:
        diag = (self.aabb[3:] - self.aabb[:3]).norm().item()
        return diag / self.config.steps_per_diagonal

    def cell_index(self, x: Tensor) -> Tensor:
        """Flat cell index of points ``x`` ``(n, 3)`` (clamped into the grid)."""
        res = self.config.resolution
        u = (x - self.aabb[:3]) / (self.aabb[3:] - self.aabb[:3])
        ijk = (u * res).long().clamp_(0, res - 1)
        return (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]

    @torch.no_grad()
    def update(self, density_fn: Callable[[Tensor], Tensor], generator: torch.Generator | None = None,
               chunk: int = 1 << 17) -> None:
        """One EMA update: ``density <- max(decay * density, density_fn(jittered cell point))``
        on the visited cells, then re-threshold ``occupied``."""
        cfg, res = self.config, self.config.resolution
        n_cells = res ** 3
        dev = self.density.device
        if self.n_updates.item() < cfg.warmup_steps // cfg.update_every:
            cells = torch.arange(n_cells, device=dev)
        else:
            rand = torch.randint(0, n_cells, (n_cells // 4,), device=dev, generator=generator)
            occ = self.occupied.nonzero().squeeze(-1)
            if occ.numel() > 0:
                pick = torch.randint(0, occ.numel(), (n_cells // 4,), device=dev, generator=generator)
                cells = torch.cat([rand, occ[pick]])
            else:
                cells = rand
        jitter = torch.rand(cells.shape[0], 3, device=dev, generator=generator)
        u = (self.cell_ijk[cells].float() + jitter) / res
        x = self.aabb[:3] + u * (self.aabb[3:] - self.aabb[:3])
        new = torch.cat([density_fn(x[i:i + chunk]).float() for i in range(0, x.shape[0], chunk)])
        decayed = self.density * cfg.decay
        decayed[cells] = torch.maximum(decayed[cells], new)  # repeated cells: one of them wins
        self.density.copy_(decayed)
        opacity = self.density * self.step_size
        self.occupied.copy_(opacity > min(cfg.threshold, opacity.mean().item()))
        self.n_updates += 1

    @torch.no_grad()
    def sample(self, rays: Rays, near: float = 0.0, jitter_generator: torch.Generator | None = None,
               jitter: bool = False, sigma_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Samples:
        """March ``rays`` through the box; keep samples in occupied cells.

        Args:
            near: minimum ray distance.
            jitter: shift each ray's sample positions by one random fraction of a step (training).
            sigma_fn: optional ``(positions, ray_indices) -> densities`` evaluated without grad; when
                given, samples behind the point where transmittance drops below ``early_stop_eps``
                are dropped.
        Returns:
            Packed :class:`Samples`, each an interval of length ``step_size``.
        """
        dt = self.step_size
        o, d = rays.origins.detach(), rays.directions.detach()
        n_rays, dev = o.shape[0], o.device
        t_near, t_far = ray_aabb_intersect(o, d, self.aabb)
        t_near = t_near.clamp(min=near)
        hit = t_far > t_near
        offset = (torch.rand(n_rays, device=dev, generator=jitter_generator) if jitter
                  else torch.full((n_rays,), 0.5, device=dev))
        n_steps = int(((t_far - t_near).clamp(min=0).max().item() / dt) + 2) if n_rays and hit.any() else 0
        starts, rays_out = [], []
        rays_per_chunk = max(1, self.config.max_points_per_chunk // max(n_steps, 1))
        steps = torch.arange(n_steps, device=dev, dtype=o.dtype)
        for r0 in range(0, n_rays if n_steps else 0, rays_per_chunk):
            sl = slice(r0, r0 + rays_per_chunk)
            t_mid = t_near[sl, None] + (steps[None, :] + offset[sl, None]) * dt
            inside = (t_mid < t_far[sl, None]) & hit[sl, None]
            x = o[sl, None, :] + t_mid[..., None] * d[sl, None, :]
            keep = inside.reshape(-1)
            keep[keep.clone()] = self.occupied[self.cell_index(x.reshape(-1, 3)[keep])]
            ray_i, step_i = keep.reshape(inside.shape).nonzero(as_tuple=True)
            starts.append(t_mid[ray_i, step_i] - dt / 2)
            rays_out.append(ray_i + r0)
        if starts:
            t_starts, ray_indices = torch.cat(starts), torch.cat(rays_out)
        else:
            t_starts = torch.zeros(0, device=dev)
            ray_indices = torch.zeros(0, dtype=torch.long, device=dev)
        samples = Samples(t_starts, t_starts + dt, ray_indices, n_rays)
        if sigma_fn is not None and len(samples) > 0:
            sigmas = sigma_fn(samples.positions(rays).detach(), samples.ray_indices)
            _, trans, _ = render_weights(sigmas.float(), samples.t_starts, samples.t_ends,
                                         samples.ray_indices, n_rays)
            samples = samples.select(trans > self.config.early_stop_eps)
        return samples

    def occupancy_fraction(self) -> float:
        return self.occupied.float().mean().item()
