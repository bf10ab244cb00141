"""PixelNeRF's field: a radiance field conditioned on the image features of a few source views.

Vocabulary:
    V        source views of the scene being rendered (the *context*, set per scene with
             :meth:`PixelNeRFField.set_context`); any number, 1 to 3 in training.
    n        sample points (``n_samples``); ``x`` ``(n, 3)`` world positions, ``d`` ``(n, 3)`` unit
             directions.
    C        channels of the encoder's feature maps ``(V, C, h, w)``.
    uv       continuous pixel coordinates in a source image (pixel ``(i, j)`` covers
             ``[i, i+1) x [j, j+1)``, :mod:`radfield.cameras`), ``(V, n, 2)``.
    x_v, d_v a point and a direction in source camera ``v``'s frame (OpenGL axes: x right, y up,
             looking down -z): ``x_v = R_v^T (x - c_v)``, ``d_v = R_v^T d``.

The encoder (:class:`ImageEncoder`) is a small ResNet-like CNN trained from scratch (no
pretrained weights): strided convolution levels at 1/2, 1/4, 1/8 ... of the image size, each
level upsampled bilinearly to the first level's resolution and concatenated (PixelNeRF's
multi-scale feature pyramid, sized for a CPU).

The field, for each point and each source view ``v`` (PixelNeRF, Yu et al. 2021):

1. project ``x`` into view ``v`` (:func:`radfield.cameras.project`) and sample its feature map
   bilinearly at ``uv`` (:func:`sample_features`; outside the image: ``zeros`` or the
   ``border`` value; behind the camera: zero);
2. per-view input ``[feature, PE(x_v / s), PE(d_v)]`` (``s`` the scene box's half-size, so the
   encoding sees the same range whatever the units);
3. per-view MLP: a linear layer to ``hidden`` then ``blocks_before_pool`` residual blocks;
4. **mean over the views** (PixelNeRF's average pooling in the middle of its ResNet MLP);
5. ``blocks_after_pool`` residual blocks, then a linear head -> ``raw`` ``(n, 4)``.

``raw`` / ``activate`` are the contract of every field (:mod:`radfield.fields.base`): column 0 the
raw density (``density_activation``: mip-NeRF's shifted softplus by default, or ReLU), columns
1:4 the raw colour (sigmoid). Because of step 4 the output does not depend on the order of the
source views, and a context in which every view appears the same number of times (``[a]`` and
``[a, a]``, or ``[a, b]`` and ``[a, b, b, a]``) gives the same output; adding a duplicate of one
view only (``[a, b]`` -> ``[a, b, b]``) re-weights the mean and does change it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from radfield.cameras import Cameras, project
from radfield.errors import RadfieldError, check_choice
from radfield.fields.encodings import PositionalEncoding
from radfield.fields.nerf import DENSITY_ACTIVATIONS, activate_density

PADDING_MODES = ("zeros", "border")


@dataclass
class PixelNeRFFieldConfig:
    """The encoder and the conditioned MLP (PixelNeRF's ResNet MLP: 5 blocks of 512, the mean
    after block 3; CPU-sized here)."""

    encoder_channels: tuple[int, ...] = (32, 64, 64)
    """Channels of each encoder level (level ``l`` at ``1 / 2^(l+1)`` of the image size); the
    feature of a point has ``sum(encoder_channels)`` channels."""
    position_freqs: int = 6
    """Positional-encoding frequencies of ``x_v`` (PixelNeRF: 6)."""
    direction_freqs: int = 0
    """Positional-encoding frequencies of ``d_v`` (0: the direction itself)."""
    hidden: int = 128
    blocks_before_pool: int = 2
    blocks_after_pool: int = 1
    padding: str = "border"
    """``grid_sample`` outside a source image: ``border`` (PixelNeRF's) or ``zeros``."""
    density_activation: str = "softplus"
    """``softplus`` (``softplus(raw - 1)``) or ``relu``."""


class ResidualBlock(nn.Module):
    """``h + W2 relu(W1 relu(h))`` (PixelNeRF's ResnetBlockFC); ``(..., width) -> (..., width)``.
    The second layer starts at zero, so a block starts as the identity."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(F.relu(self.fc1(F.relu(h))))


class ConvBlock(nn.Module):
    """One encoder level: a 3x3 convolution of stride 2, then a residual pair of 3x3
    convolutions; ``(V, c_in, H, W) -> (V, c, ceil(H / 2), ceil(W / 2))``."""

    def __init__(self, c_in: int, c: int):
        super().__init__()
        self.down = nn.Conv2d(c_in, c, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.down(x))
        return F.relu(h + self.conv2(F.relu(self.conv1(h))))


class ImageEncoder(nn.Module):
    """``images (V, 3, H, W)`` in [0, 1] -> feature maps ``(V, C, h, w)`` at the first level's
    resolution (``h = ceil(H / 2)``), ``C = sum(channels)``: every level upsampled bilinearly
    to it and concatenated. Views are encoded independently (no normalisation across the batch)."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        if not channels or min(channels) < 1:
            raise RadfieldError(f"pixelnerf.field.encoder_channels: need at least one positive "
                                f"channel count, got {channels}")
        ins = (3,) + tuple(channels[:-1])
        self.levels = nn.ModuleList(ConvBlock(a, b) for a, b in zip(ins, channels))
        self.n_out = sum(channels)

    def forward(self, images: Tensor) -> Tensor:
        h = images * 2 - 1
        maps = []
        for level in self.levels:
            h = level(h)
            maps.append(h)
        size = maps[0].shape[-2:]
        return torch.cat([maps[0]] + [F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                                      for m in maps[1:]], dim=1)


def sample_features(features: Tensor, uv: Tensor, width: int, height: int,
                    padding: str = "border") -> Tensor:
    """``(V, n, C)`` bilinear samples of feature maps ``(V, C, h, w)`` covering ``width x
    height`` images at pixel coordinates ``uv`` ``(V, n, 2)``.

    The map spans the image: image point ``(u, v)`` is map point ``(u w / width, v h / height)``
    and map pixel ``(i, j)``'s value sits at its centre ``(i + 0.5, j + 0.5)`` (``grid_sample``
    with ``align_corners=False`` on ``2 u / width - 1``). Example: a 16 x 16 image, an 8 x 8 map:
    the image point ``(5, 3)`` reads map pixel ``(2, 1)`` (column, row) exactly.
    """
    grid = torch.stack([2 * uv[..., 0] / width - 1, 2 * uv[..., 1] / height - 1], dim=-1)
    out = F.grid_sample(features, grid[:, :, None].to(features.dtype), mode="bilinear",
                        padding_mode=padding, align_corners=False)  # (V, C, n, 1)
    return out[..., 0].transpose(1, 2)


def to_camera_frames(cameras: Cameras, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """``(x_v (V, n, 3), d_v (V, n, 3))``: points and directions in every camera's frame,
    ``x_v = R_v^T (x - c_v)``, ``d_v = R_v^T d`` (row-vector form ``(x - c) R``)."""
    rot, centres = cameras.c2w[:, :3, :3], cameras.c2w[:, :3, 3]
    x_v = torch.einsum("nk,vkj->vnj", x, rot) - torch.einsum("vk,vkj->vj", centres, rot)[:, None]
    return x_v, torch.einsum("nk,vkj->vnj", d, rot)


@dataclass
class Context:
    """The source views a :class:`PixelNeRFField` renders from: their cameras and feature maps
    ``(V, C, h, w)`` (with the encoder's graph when set with gradients on)."""

    cameras: Cameras
    features: Tensor

    def __len__(self) -> int:
        return len(self.cameras)


class PixelNeRFField(nn.Module):
    """PixelNeRF (module doc). ``set_context(images, cameras)`` first, then
    ``raw(x (n, 3), d (n, 3)) -> (n, 4)``."""

    def __init__(self, aabb: Tensor, config: PixelNeRFFieldConfig):
        super().__init__()
        check_choice("pixelnerf.field.padding", config.padding, PADDING_MODES, "mode")
        check_choice("pixelnerf.field.density_activation", config.density_activation, DENSITY_ACTIVATIONS,
                     "activation")
        self.config = config
        aabb = aabb.float()
        self.register_buffer("half_size", ((aabb[3:] - aabb[:3]) / 2).max())
        self.encoder = ImageEncoder(config.encoder_channels)
        self.position_encoding = PositionalEncoding(3, config.position_freqs)
        self.direction_encoding = PositionalEncoding(3, config.direction_freqs)
        n_in = self.encoder.n_out + self.position_encoding.n_out + self.direction_encoding.n_out
        width = config.hidden
        self.lin_in = nn.Linear(n_in, width)
        self.before_pool = nn.Sequential(*(ResidualBlock(width) for _ in range(config.blocks_before_pool)))
        self.after_pool = nn.Sequential(*(ResidualBlock(width) for _ in range(config.blocks_after_pool)))
        self.head = nn.Linear(width, 4)
        self.context: Context | None = None

    # ------------------------------------------------------------------ the source views
    def set_context(self, images: Tensor, cameras: Cameras) -> None:
        """Encode the source views: ``images`` ``(V, H, W, 3)`` float in [0, 1] (composited
        over a background), ``cameras`` their ``V`` cameras (same device). With gradients
        enabled the feature maps keep the encoder's graph, so a training loss reaches it."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] != len(cameras) or len(cameras) == 0:
            raise ValueError(f"set_context: need (V >= 1, H, W, 3) images for V cameras, got "
                             f"{tuple(images.shape)} for {len(cameras)}")
        if (images.shape[1], images.shape[2]) != (cameras.height, cameras.width):
            raise ValueError(f"set_context: images {images.shape[2]}x{images.shape[1]} do not match "
                             f"the cameras' {cameras.width}x{cameras.height}")
        self.context = Context(cameras, self.encoder(images.permute(0, 3, 1, 2).float()))

    def clear_context(self) -> None:
        self.context = None

    def _context(self) -> Context:
        if self.context is None:
            raise RadfieldError("pixelnerf renders a scene from its source views: none are set "
                                "(model.set_context(images, cameras); radfield eval RUN --scenes FOLDER)")
        return self.context

    # ------------------------------------------------------------------ the network
    def view_inputs(self, x: Tensor, d: Tensor) -> Tensor:
        """``(V, n, C + n_pe_x + n_pe_d)`` per-view inputs ``[feature, PE(x_v / s), PE(d_v)]``
        (module doc, steps 1-2)."""
        ctx = self._context()
        cams = ctx.cameras
        x_v, d_v = to_camera_frames(cams, x, d)
        uv = torch.stack([project(cams, v, x)[0] for v in range(len(cams))])  # (V, n, 2)
        feats = sample_features(ctx.features, uv, cams.width, cams.height, self.config.padding)
        feats = feats * (x_v[..., 2:] < 0).to(feats.dtype)  # behind a camera: no feature
        n_views, n = x_v.shape[:2]
        pe_x = self.position_encoding((x_v / self.half_size).reshape(-1, 3)).reshape(n_views, n, -1)
        pe_d = self.direction_encoding(d_v.reshape(-1, 3)).reshape(n_views, n, -1)
        return torch.cat([feats, pe_x.to(feats.dtype), pe_d.to(feats.dtype)], dim=-1)

    def per_view(self, inputs: Tensor) -> Tensor:
        """``(V, n, hidden)``: the MLP before the pooling (step 3)."""
        return self.before_pool(self.lin_in(inputs))

    def after_pooling(self, pooled: Tensor) -> Tensor:
        """``(n, 4)`` raw outputs from the pooled ``(n, hidden)`` (step 5)."""
        return self.head(self.after_pool(pooled))

    def raw(self, x: Tensor, d: Tensor) -> Tensor:
        return self.after_pooling(self.per_view(self.view_inputs(x, d)).mean(dim=0))

    def activate(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        return activate_density(raw[:, 0], self.config.density_activation), torch.sigmoid(raw[:, 1:4])

    def density(self, x: Tensor) -> Tensor:
        """``(n,)`` density seen along the direction from the first source camera to ``x`` (the
        per-view inputs include the direction, so the density depends on it a little)."""
        d = F.normalize(x - self._context().cameras.c2w[0, :3, 3], dim=-1)
        return self.activate(self.raw(x, d))[0]
