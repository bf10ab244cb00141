"""The in-memory form of a posed-image dataset, whatever format it was read from."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from radfield.cameras import Cameras


@dataclass
class SceneData:
    """One split of a dataset.

    Attributes:
        images: ``(n_images, height, width, 3 or 4)`` uint8, kept on the CPU (hundreds of views
            fit); RGBA images have straight (not premultiplied) alpha.
        cameras: the images' cameras.
        names: ``n_images`` image paths, for error messages and per-image metrics.
        depths: optional ``(n_images, height, width)`` float32 planar camera z, 0 = no depth.
        times: optional ``(n_images,)`` float32 in [0, 1] (dynamic scenes).
        aabb: ``(6,)`` scene bounding box ``(xmin, ymin, zmin, xmax, ymax, zmax)`` that the field
            and the occupancy grid cover.
    """

    images: Tensor
    cameras: Cameras
    names: list[str]
    aabb: Tensor
    depths: Tensor | None = None
    times: Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def has_alpha(self) -> bool:
        return self.images.shape[-1] == 4

    def rgba_float(self, index: int) -> Tensor:
        """``(H, W, C)`` float32 image in [0, 1]."""
        return self.images[index].float() / 255.0

    def composited(self, index: int, background: Tensor) -> Tensor:
        """``(H, W, 3)`` float image composited over ``background`` (``(3,)``)."""
        img = self.rgba_float(index)
        if img.shape[-1] == 3:
            return img
        return img[..., :3] * img[..., 3:] + background * (1.0 - img[..., 3:])
