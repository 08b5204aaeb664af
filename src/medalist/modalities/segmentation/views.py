"""Test-time augmentation for masks: each view of the images is undone on the predicted masks.

A classifier's views can be merged as they come out; a segmentation model's prediction is itself
an image in the view's frame, so each mask is first brought back to the original frame (a
horizontal flip undone by the same flip, ``rot90`` by ``rot270``), then the views are averaged.
The views are the symmetries of :mod:`medalist.prediction.tta`: ``identity``, ``hflip``,
``vflip``, ``transpose``, ``antitranspose``, ``rot90``, ``rot180``, ``rot270``, and ``d4`` for
all eight. On a non-square image ``rot90``, ``rot270`` and the transposes swap height and width;
the undone mask has the image's shape again.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medalist.errors import ConfigError
from medalist.prediction.tta import D4, VIEWS

# view -> the view that undoes it
INVERSE = {
    "identity": "identity",
    "hflip": "hflip",
    "vflip": "vflip",
    "transpose": "transpose",
    "antitranspose": "antitranspose",
    "rot90": "rot270",
    "rot180": "rot180",
    "rot270": "rot90",
}


def expand_views(names: list[str] | None, key: str = "infer.tta") -> list[str]:
    """Check mask view names and expand ``d4``; none means the identity alone.

    Raises:
        ConfigError: a name that is not a symmetry of the square (zoom and scale views resize
            the image, which a mask cannot be undone from exactly), naming ``key``.
    """
    views: list[str] = []
    for name in names or ["identity"]:
        if name == "d4":
            views += D4
        elif name in INVERSE:
            views.append(name)
        else:
            raise ConfigError(
                f"{key}: '{name}' is not a segmentation view; known: {[*INVERSE, 'd4']}"
            )
    return views


def apply_view(name: str, images: torch.Tensor) -> torch.Tensor:
    """The view ``name`` of images (..., H, W)."""
    return VIEWS[name](images)


def undo_view(name: str, masks: torch.Tensor) -> torch.Tensor:
    """Masks (..., H, W) predicted on view ``name``, back in the original frame."""
    return VIEWS[INVERSE[name]](masks)


@torch.no_grad()
def predict_views(
    predict: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, names: list[str]
) -> torch.Tensor:
    """The mean over ``names`` of the masks predicted on each view, undone: (N, K, H, W).

    Views of the same shape go through ``predict`` as one concatenated batch (all of them on a
    square image; two passes on another, one per orientation). ``predict`` maps images
    (B, C, H, W) to masks (B, K, H, W); average probabilities, not logits.
    """
    if not names:
        raise ValueError("no view to predict; expand_views gives at least the identity")
    views = [apply_view(name, images) for name in names]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for index, viewed in enumerate(views):
        by_shape.setdefault(tuple(viewed.shape), []).append(index)
    total = None
    for indices in by_shape.values():
        preds = predict(torch.cat([views[i] for i in indices])).float()
        for i, pred in zip(indices, preds.chunk(len(indices)), strict=True):
            undone = undo_view(names[i], pred)
            total = undone if total is None else total + undone
    return total / len(names)
