"""The in-memory form of a posed-image dataset, whatever format it was read from.

:class:`SceneCameras` is what a reader knows without decoding an image (cameras, image names,
scene box, metadata); :class:`SceneData` adds the pixels. Every reader is built so:
``load_X = X_cameras + reading the pixels`` (:meth:`SceneCameras.with_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from radfield.cameras import Cameras
from radfield.data.files import channels_alike


def over_background(colour: Tensor, background: Tensor | float) -> Tensor:
    """``(..., 3)`` float colours ``(..., 3 | 4)`` in [0, 1], RGBA ones composited over
    ``background`` (broadcastable to ``(..., 3)``); RGB ones returned as they are."""
    if colour.shape[-1] == 3:
        return colour
    return colour[..., :3] * colour[..., 3:] + background * (1.0 - colour[..., 3:])


@dataclass
class SceneCameras:
    """The cameras of one split of a dataset, read without decoding its images.

    Attributes:
        cameras: ``n_images`` cameras (after any downscale).
        names: ``n_images`` image paths.
        aabb: ``(6,)`` scene bounding box ``(xmin, ymin, zmin, xmax, ymax, zmax)``.
        meta: the reader's metadata (``format``, ``normalization``, ``near``, ``far``, ...).
        times: optional ``(n_images,)`` float32 in [0, 1] (dynamic scenes); the cameras carry
            them too (``cameras.attrs["times"]``), so every ray of theirs does.
    """

    cameras: Cameras
    names: list[str]
    aabb: Tensor
    meta: dict = field(default_factory=dict)
    times: Tensor | None = None

    def __post_init__(self) -> None:
        # Every ray of a camera carries its time (per-ray attribute ``times``).
        if self.times is not None and "times" not in self.cameras.attrs:
            self.cameras = self.cameras.with_attrs(times=self.times.float())

    def __len__(self) -> int:
        return len(self.cameras)

    def with_images(self, images: list[np.ndarray], depths: Tensor | None = None,
                    masks: list[np.ndarray] | None = None) -> SceneData:
        """The :class:`SceneData` of these cameras and their ``(H, W, 3 or 4)`` uint8 images
        (given in camera order, all of the cameras' size; if any has alpha all get 4 channels,
        see :func:`radfield.data.files.channels_alike`), optional depths and optional
        ``(H, W)`` bool masks (True = the pixel is used)."""
        size = (self.cameras.height, self.cameras.width)
        for what, arrays in (("image", images), ("mask", masks)):
            if arrays is None:
                continue
            if len(arrays) != len(self):
                raise ValueError(f"{len(arrays)} {what}s for {len(self)} cameras")
            for name, array in zip(self.names, arrays):
                if array.shape[:2] != size:
                    raise ValueError(f"{name}: {what} {array.shape[1]}x{array.shape[0]} does not "
                                     f"match its camera {size[1]}x{size[0]}")
        return SceneData(images=torch.from_numpy(np.stack(channels_alike(images))),
                         cameras=self.cameras, names=self.names, aabb=self.aabb, depths=depths,
                         times=self.times, meta=self.meta,
                         masks=None if masks is None else torch.from_numpy(np.stack(masks)).bool())


@dataclass
class SceneData:
    """One split of a dataset.

    Attributes:
        images: ``(n_images, height, width, 3 or 4)`` uint8, kept on the CPU (hundreds of views
            fit); RGBA images have straight (not premultiplied) alpha.
        cameras: the images' cameras.
        names: ``n_images`` image paths, for error messages and per-image metrics.
        depths: optional ``(n_images, height, width)`` float32 planar camera z, 0 = no depth.
        times: optional ``(n_images,)`` float32 in [0, 1] (dynamic scenes); the cameras carry
            them too (``cameras.attrs["times"]``), so every ray of theirs does.
        aabb: ``(6,)`` scene bounding box ``(xmin, ymin, zmin, xmax, ymax, zmax)`` that the field
            and the occupancy grid cover.
        masks: optional ``(n_images, height, width)`` bool, True = the pixel is used: masked
            (False) pixels are neither trained on nor scored. None: every pixel is used.
        depth_uncertainty: optional ``(n_images, height, width)`` float32, the relative
            uncertainty of each depth (it multiplies ``train.depth.eps``); None = 1 everywhere.
            Set with sparse SfM depths (:mod:`radfield.data.depth`).
    """

    images: Tensor
    cameras: Cameras
    names: list[str]
    aabb: Tensor
    depths: Tensor | None = None
    times: Tensor | None = None
    meta: dict = field(default_factory=dict)
    masks: Tensor | None = None
    depth_uncertainty: Tensor | None = None

    def __post_init__(self) -> None:
        # Every ray of a camera carries its time (per-ray attribute ``times``).
        if self.times is not None and "times" not in self.cameras.attrs:
            self.cameras = self.cameras.with_attrs(times=self.times.float())

        if self.masks is not None and self.masks.shape != self.images.shape[:3]:
            raise ValueError(f"masks {tuple(self.masks.shape)} do not match images "
                             f"{tuple(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, indices: list[int]) -> "SceneData":
        """The images ``indices`` (in that order) with everything that is per image: pixels,
        cameras, names, depths, masks, times; ``meta["observations"]`` (sparse points seen by
        each image, see :mod:`radfield.data.colmap`) keeps the rows of those images, renumbered."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        meta = dict(self.meta)
        if meta.get("observations") is not None:
            obs = meta["observations"]
            new_index = torch.full((len(self),), -1, dtype=torch.long)
            new_index[idx] = torch.arange(len(idx))
            kept = obs[new_index[obs[:, 0]] >= 0]
            meta["observations"] = torch.stack([new_index[kept[:, 0]], kept[:, 1]], dim=-1)
        return SceneData(images=self.images[idx], cameras=self.cameras[idx],
                         names=[self.names[i] for i in idx.tolist()], aabb=self.aabb,
                         depths=pick(self.depths), times=pick(self.times), meta=meta,
                         masks=pick(self.masks), depth_uncertainty=pick(self.depth_uncertainty))

    @property
    def has_alpha(self) -> bool:
        return self.images.shape[-1] == 4

    def rgba_float(self, index: int) -> Tensor:
        """``(H, W, C)`` float32 image in [0, 1]."""
        return self.images[index].float() / 255.0

    def mask(self, index: int) -> Tensor | None:
        """``(H, W)`` bool mask of image ``index`` (True = used), or None when every pixel is."""
        return None if self.masks is None else self.masks[index]

    def composited(self, index: int, background: Tensor) -> Tensor:
        """``(H, W, 3)`` float image composited over ``background`` (``(3,)``)."""
        return over_background(self.rgba_float(index), background)
