"""Tiled prediction of images larger than the model's input, with overlapping, blended tiles.

Along each axis the tiles start every ``tile - overlap`` pixels from 0, and the last one ends
flush with the border, so every pixel is covered and no tile reads past the image; an image
smaller than a tile is padded (bottom and right) up to one tile and the padding cut off again.
A network sees the least context at a tile's edges, so each tile's prediction is weighted by a
window that is largest in its middle and small, never zero, at its border; each pixel's result is
the weighted sum over the tiles covering it divided by the sum of their weights::

    out[p] = sum_t w_t(p) * pred_t(p) / sum_t w_t(p)

A per-pixel model therefore gives back its own per-pixel result, whatever the tile, overlap or
image size. Tiles go through the model ``batch_size`` at a time; on a CPU, at most
``CPU_FORWARD_VALUES`` input values per pass, as TTA's views (:mod:`medalist.prediction.tta`):
there a batch that outgrows the caches runs slower than its tiles one by one (a small U-Net on
nine 256 px tiles: 0.7 times the speed of the plain loop, one thread).

Windows: ``hann`` (default), ``sin^2(pi (i + 0.5) / tile)`` along each axis, smooth and
strictly positive; ``flat``, every pixel of a tile weighted alike (a plain mean of the tiles).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from medalist.prediction.tta import CPU_FORWARD_VALUES

WINDOWS = ("hann", "flat")


def _check(tile: int, overlap: int) -> None:
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"a tile of {tile} px needs 0 <= overlap < tile, got overlap {overlap}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles start along one axis of ``length`` pixels; the last ends at ``length``.

    >>> tile_starts(10, 4, 1)
    [0, 3, 6]
    """
    _check(tile, overlap)
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap), length - tile]


def tile_boxes(height: int, width: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """The (top, left) corner of every tile, row by row."""
    return [
        (top, left)
        for top in tile_starts(height, tile, overlap)
        for left in tile_starts(width, tile, overlap)
    ]


def window(tile: int, kind: str = "hann") -> torch.Tensor:
    """A tile's blending weights (tile, tile), float32, > 0 everywhere, 1 at most."""
    if kind not in WINDOWS:
        raise ValueError(f"window must be one of {WINDOWS}, got {kind!r}")
    if kind == "flat":
        return torch.ones(tile, tile)
    centres = torch.arange(tile, dtype=torch.float64) + 0.5
    line = torch.sin(math.pi * centres / tile) ** 2
    return torch.outer(line, line).float()


def coverage(height: int, width: int, tile: int, overlap: int, kind: str = "hann") -> torch.Tensor:
    """The summed weights of the tiles over an image (height, width): the divisor of the blend."""
    weights = window(tile, kind)
    total = torch.zeros(max(height, tile), max(width, tile))
    for top, left in tile_boxes(*total.shape, tile, overlap):
        total[top : top + tile, left : left + tile] += weights
    return total[:height, :width]


@torch.no_grad()
def predict_tiled(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: int,
    overlap: int,
    *,
    batch_size: int = 8,
    kind: str = "hann",
    pad_mode: str = "constant",
) -> torch.Tensor:
    """The blended prediction (K, H, W) of an image (C, H, W), tile by overlapping tile.

    Args:
        predict: tiles (B, C, tile, tile) -> predictions (B, K, tile, tile); blend probabilities
            (a model followed by its sigmoid or softmax), which stay probabilities when averaged.
            TTA per tile: :func:`medalist.modalities.segmentation.views.predict_views`.
        image: one image on the device the blend is accumulated on.
        tile: the tile's side in pixels (what the model was trained on).
        overlap: pixels shared by neighbouring tiles, 0 <= overlap < tile.
        batch_size: tiles per call of ``predict`` (fewer on a CPU for large tiles, see above).
        kind: the blending window, ``hann`` or ``flat``.
        pad_mode: how an image smaller than a tile is padded (:func:`torch.nn.functional.pad`).

    Returns:
        float32 predictions of the image's height and width.
    """
    if image.ndim != 3:
        raise ValueError(f"one image (C, H, W) expected, got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check(tile, overlap)
    height, width = image.shape[-2:]
    padded = image
    if height < tile or width < tile:
        pad = (0, max(0, tile - width), 0, max(0, tile - height))
        padded = F.pad(image[None], pad, pad_mode)[0]
    weights = window(tile, kind).to(image.device)
    boxes = tile_boxes(*padded.shape[-2:], tile, overlap)
    if image.device.type == "cpu":
        batch_size = min(batch_size, max(1, CPU_FORWARD_VALUES // (image.shape[0] * tile * tile)))
    out = total = None
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start : start + batch_size]
        batch = torch.stack(
            [padded[:, top : top + tile, left : left + tile] for top, left in chunk]
        )
        preds = predict(batch).float()
        if preds.ndim != 4 or preds.shape[0] != len(chunk) or preds.shape[-2:] != (tile, tile):
            raise ValueError(
                f"predict must map tiles {tuple(batch.shape)} to (B, K, {tile}, {tile}), "
                f"got {tuple(preds.shape)}"
            )
        if out is None:
            out = padded.new_zeros((preds.shape[1], *padded.shape[-2:]), dtype=torch.float32)
            total = padded.new_zeros(padded.shape[-2:], dtype=torch.float32)
        for (top, left), pred in zip(chunk, preds.to(out.device), strict=True):
            out[:, top : top + tile, left : left + tile] += pred * weights
            total[top : top + tile, left : left + tile] += weights
    return (out / total)[:, :height, :width]
