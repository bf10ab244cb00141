"""Few-view training: which ``n`` of a split's views to keep (``data.train_views``,
``--train-views N``), spread over the capture and the same on every run.

Farthest-point sampling on the camera centres: start with view 0 (the first of the split's
order), then repeatedly add the view whose centre is farthest from every view kept so far (the
lowest index on a tie); the kept views are returned in the split's order. Deterministic: no
random draw, so a table of few-view runs can be reproduced on any dataset.
"""

from __future__ import annotations

import torch
from torch import Tensor

from radfield.data.scene import SceneData
from radfield.errors import RadfieldError


def farthest_point_views(centres: Tensor, n: int) -> list[int]:
    """Indices of ``n`` of the ``(n_views, 3)`` camera ``centres`` by farthest-point sampling
    from view 0 (see the module doc), sorted; all of them when ``n >= n_views``.

    Example: centres at ``x = 0, 1, 2, 3, 10`` and ``n = 3``: view 0, then view 4 (``x = 10``),
    then view 3 (``x = 3``, 3 away from both): ``[0, 3, 4]``.
    """
    m = centres.shape[0]
    if n >= m:
        return list(range(m))
    c = centres.double()
    chosen = [0]
    distance = (c - c[0]).norm(dim=-1)  # to the nearest kept view
    for _ in range(n - 1):
        nxt = int(torch.argmax(distance))  # argmax returns the first maximum: lowest index
        chosen.append(nxt)
        distance = torch.minimum(distance, (c - c[nxt]).norm(dim=-1))
    return sorted(chosen)


def select_train_views(scales: list[SceneData], n: int | None, where: str) -> list[SceneData]:
    """The training views of every scale (the same views: scales of one capture) cut to ``n``
    by :func:`farthest_point_views` on the first scale's cameras; ``None`` keeps them all.
    ``meta["train_views"]`` records the kept indices. ``n`` above the split's size or below 1 is
    a RadfieldError naming ``where`` (the dataset)."""
    if n is None:
        return scales
    total = len(scales[0])
    if not 1 <= n <= total:
        raise RadfieldError(f"{where}: --train-views {n}: the training split has {total} views")
    views = farthest_point_views(scales[0].cameras.centers, n)
    out = []
    for data in scales:
        kept = data.subset(views)
        kept.meta["train_views"] = views
        out.append(kept)
    return out
