"""Writing output files atomically.

Every file radfield writes (images, plots, videos, checkpoints) goes through
:func:`atomic_write`: the data is written to a temporary file in the *same directory* and then
moved over the target with ``os.replace``, which is atomic on POSIX and Windows when source and
destination share a file system. A reader (or a crash, or Ctrl-C) therefore sees either the old
complete file or the new complete file, never a half-written one.

Images are ``(H, W, C)`` with ``C`` in ``{1, 3, 4}`` (or ``(H, W)``): float in ``[0, 1]``
(values outside are clipped) or ``uint8``; numpy arrays or torch tensors.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

__all__ = ["atomic_write", "save_png", "to_uint8"]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success ``os.replace`` it onto ``path``.

    The temporary name keeps ``path``'s suffix (``.png``, ``.mp4``), so writers that pick a
    format from the extension behave as for the final name. If the body raises, the temporary
    file is removed and ``path`` is left untouched (old content, or still absent). The new file
    gets the old file's permission bits, or ``0o644`` when there was no old file.

    Example::

        with atomic_write("out/curve.png") as tmp:
            fig.savefig(tmp)          # out/curve.png appears only now, complete
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def to_uint8(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float image in ``[0, 1]`` -> ``uint8`` by ``round(clip(x, 0, 1) * 255)``; uint8 passes through.

    Example: ``[0.0, 0.5, 1.0, 1.7] -> [0, 128, 255, 255]`` (0.5 * 255 = 127.5 rounds to 128).
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    if not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"image must be float in [0, 1] or uint8, got dtype {image.dtype}")
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(path: str | os.PathLike, image: np.ndarray | torch.Tensor) -> None:
    """Write ``image`` (``(H, W)`` or ``(H, W, C)``, C in {1, 3, 4}) to ``path`` as PNG, atomically."""
    import imageio.v3 as iio

    array = to_uint8(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in {{1, 3, 4}}, got {array.shape}")
    with atomic_write(path) as tmp:
        iio.imwrite(tmp, array, extension=".png")
