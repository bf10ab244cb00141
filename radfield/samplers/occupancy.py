"""Occupancy-grid sampling (Instant-NGP): march rays through a box, skip empty cells.

The grid covers the scene box ``aabb`` with ``resolution^3`` cells. Each cell keeps an
exponential moving average of the field's density at jittered points inside it; a cell is
*occupied* when its opacity over one marching step, ``density * step_size``, exceeds
``min(threshold, mean over cells)``. Rays are marched at a fixed ``step_size`` between their box
entry and exit and samples in unoccupied cells are dropped. (Early ray termination, which needs
the field, is the model's: :func:`radfield.rendering.pipeline.prune_occluded` with
``early_stop_eps``.)

Output: packed samples (see :mod:`radfield.rendering.volume`) in a :class:`Samples`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from radfield.cameras import Rays
from radfield.geometry import ray_aabb_intersect
from radfield.samplers.samples import Samples

__all__ = ["OccupancyGrid", "OccupancyGridConfig", "Samples"]


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
        self._dilated: Tensor | None = None
        self._dilated_version = None

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
        """One EMA update, then re-threshold ``occupied``: every visited cell ``c`` gets

        ``density_c <- max(decay * density_c, max_k density_fn(x_k))`` over all the jittered
        points ``x_k`` drawn in ``c`` this update (a cell may be drawn more than once); the
        others decay. Example: ``decay = 0.5``, ``density_c = 0.8``, two draws in ``c`` giving
        2 and 1 -> ``density_c = max(0.4, 2, 1) = 2``."""
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
        # A cell drawn several times keeps the max of all its draws (an amax scatter; plain
        # index assignment would keep an arbitrary one of them).
        decayed.scatter_reduce_(0, cells, new, reduce="amax", include_self=True)
        self.density.copy_(decayed)
        opacity = self.density * self.step_size
        self.occupied.copy_(opacity > min(cfg.threshold, opacity.mean().item()))
        self.n_updates += 1

    @torch.no_grad()
    def sample(self, rays: Rays, near: float = 0.0, jitter_generator: torch.Generator | None = None,
               jitter: bool = False) -> Samples:
        """March ``rays`` through the box; keep samples in occupied cells.

        Args:
            near: minimum ray distance.
            jitter: shift each ray's sample positions by one random fraction of a step (training).
        Returns:
            Packed :class:`Samples`, each an interval of length ``step_size``.
        """
        dt = self.step_size
        o, d = rays.origins.detach(), rays.directions.detach()
        n_rays, dev = o.shape[0], o.device
        t_near, t_far = ray_aabb_intersect(o, d, self.aabb)
        t_near = t_near.clamp(min=near)
        t_far = torch.where(t_far > t_near, t_far, t_near)  # misses: an empty range
        offset = (torch.rand(n_rays, device=dev, generator=jitter_generator) if jitter
                  else torch.full((n_rays,), 0.5, device=dev))
        # Coarse pass: segments of K fine steps, tested against the occupancy grid dilated by one
        # cell. K * dt / 2 <= cell size, so every fine sample of a segment lies in a cell adjacent
        # to the cell of the segment's midpoint: the pass never drops an occupied fine sample.
        k = self.coarse_factor
        seg_ray, seg_k = self._march(o, d, t_near + (k / 2 - 0.5 + offset) * dt, k * dt,
                                     t_far + (k / 2) * dt, self.dilated)
        # Fine pass: expand the kept segments into their K steps, test against the grid itself.
        step = seg_k[:, None] * k + torch.arange(k, device=dev)
        t_mid = t_near[seg_ray, None] + (step + offset[seg_ray, None]) * dt
        keep = t_mid < t_far[seg_ray, None]
        x = o[seg_ray, None, :] + t_mid[..., None] * d[seg_ray, None, :]
        keep &= self.occupied[self.cell_index(x.reshape(-1, 3))].reshape(keep.shape)
        t_starts = t_mid[keep] - dt / 2
        ray_indices = seg_ray[:, None].expand_as(keep)[keep]
        return Samples(t_starts, t_starts + dt, ray_indices, n_rays)

    def _march(self, o: Tensor, d: Tensor, t_first: Tensor, dt: float, t_end: Tensor,
               occupied: Tensor) -> tuple[Tensor, Tensor]:
        """Midpoints ``t_first + j dt < t_end`` (j = 0, 1, ...) of each ray that fall in
        ``occupied`` cells, as ``(ray index, j)`` pairs sorted by ray then j; in chunks of rays."""
        n_rays = o.shape[0]
        n_steps = int(((t_end - t_first).clamp(min=0).max().item() / dt) + 1) if n_rays else 0
        rays_out, steps_out = [torch.zeros(0, dtype=torch.long, device=o.device)], [
            torch.zeros(0, dtype=torch.long, device=o.device)]
        if n_steps == 0:
            return rays_out[0], steps_out[0]
        steps = torch.arange(n_steps, device=o.device, dtype=o.dtype)
        rays_per_chunk = max(1, self.config.max_points_per_chunk // n_steps)
        for r0 in range(0, n_rays, rays_per_chunk):
            sl = slice(r0, r0 + rays_per_chunk)
            t = t_first[sl, None] + steps * dt
            keep = t < t_end[sl, None]
            x = o[sl, None, :] + t[..., None] * d[sl, None, :]
            flat = keep.reshape(-1)
            flat[flat.clone()] = occupied[self.cell_index(x.reshape(-1, 3)[flat])]
            ray_i, step_i = keep.nonzero(as_tuple=True)
            rays_out.append(ray_i + r0)
            steps_out.append(step_i)
        return torch.cat(rays_out), torch.cat(steps_out)

    @property
    def coarse_factor(self) -> int:
        """Fine steps per coarse segment: the largest K with K * step / 2 <= cell size."""
        cell = ((self.aabb[3:] - self.aabb[:3]) / self.config.resolution).min().item()
        return max(1, int(2 * cell / self.step_size))

    @property
    def dilated(self) -> Tensor:
        """``occupied`` dilated by one cell (3 x 3 x 3 max filter)."""
        if self._dilated is None or self._dilated_version != self._occupied_version():
            res = self.config.resolution
            occ = self.occupied.reshape(1, 1, res, res, res).float()
            self._dilated = (torch.nn.functional.max_pool3d(occ, 3, 1, 1) > 0).reshape(-1)
            self._dilated_version = self._occupied_version()
        return self._dilated

    def _occupied_version(self) -> tuple[int, int]:
        return (self.occupied._version, self.occupied.data_ptr())

    def occupancy_fraction(self) -> float:
        return self.occupied.float().mean().item()
