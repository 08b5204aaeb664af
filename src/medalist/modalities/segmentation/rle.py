"""Run-length encoding of binary masks, as segmentation competitions use it.

An RLE is the text ``"start length start length ..."``: each pair is a run of mask pixels, its
start counted from 1 in a flat numbering of the image's pixels. Competitions number the pixels in
one of two orders:

- ``column``: top to bottom, then left to right (numpy's Fortran order; most Kaggle
  segmentation competitions, e.g. salt, steel defects, clouds);
- ``row``: left to right, then top to bottom (numpy's C order).

The empty mask is the empty string; a missing value (``None``, NaN, as pandas reads an empty CSV
cell) decodes as empty too. :func:`decode` refuses anything else that is not a valid, increasing,
non-overlapping list of runs inside the image, naming where the RLE came from.

Decoding in the wrong order does not fail: it scrambles the mask. On a non-square image the runs
of a blob land shifted against each other, and the mask turns into stripes; :func:`check_order`
catches that by comparing how compact the masks are in both orders. On a square image the other
order gives exactly the transposed mask, which is as compact as the true one: no check on the
masks alone can tell the two apart there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from medalist.errors import DataError

log = logging.getLogger(__name__)

ORDERS = ("column", "row")
ORDER_KEY = "segmentation.rle_order"
_NUMPY_ORDER = {"column": "F", "row": "C"}

# check_order: the configured order is "much less compact" on a mask when its boundary is this
# many times the other order's (a blob scrambled into stripes has several times the boundary).
LESS_COMPACT = 1.5


def numpy_order(order: str) -> str:
    """numpy's name of a pixel ``order`` (``"F"`` for column-major, ``"C"`` for row-major)."""
    if order not in _NUMPY_ORDER:
        raise DataError(f"{ORDER_KEY}: '{order}' is not one of {list(ORDERS)}")
    return _NUMPY_ORDER[order]


def is_missing(rle) -> bool:
    """Whether ``rle`` is a missing value (None, NaN, pandas' NA) or blank text: the empty mask."""
    if isinstance(rle, str):
        return not rle.strip()
    if rle is None:
        return True
    return np.ndim(rle) == 0 and bool(pd.isna(rle))


def encode(mask: np.ndarray, order: str) -> str:
    """The RLE of a 2-D mask (non-zero pixels are in the mask); ``""`` for the empty mask.

    Example:
        >>> encode(np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0]]), "column")
        '3 3 7 1'
        >>> encode(np.array([[0, 1, 1], [0, 1, 0], [1, 0, 0]]), "row")
        '2 2 5 1 7 1'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode takes a 2-D mask, got shape {mask.shape}")
    flat = mask.ravel(order=numpy_order(order)) != 0
    # Run boundaries are where the flat mask, padded with a background pixel on both ends, changes.
    padded = np.concatenate(([False], flat, [False]))
    changes = np.flatnonzero(padded[1:] != padded[:-1])
    if not len(changes):
        return ""
    runs = changes.reshape(-1, 2)
    runs[:, 1] -= runs[:, 0]  # (first 0-based pixel, end) -> (first, length)
    runs[:, 0] += 1  # 1-based starts
    return " ".join(map(str, runs.ravel().tolist()))


def _shape(shape) -> tuple[int, int]:
    try:
        height, width = (int(side) for side in shape)
    except (TypeError, ValueError):
        raise ValueError(f"an image shape is (height, width), got {shape!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"an image shape is (height, width) > 0, got {shape!r}")
    return height, width


def _excerpt(rle: str, limit: int = 60) -> str:
    return repr(rle if len(rle) <= limit else rle[:limit] + "...")


def runs(rle, shape, source: str = "RLE") -> tuple[np.ndarray, np.ndarray]:
    """The runs of ``rle`` as (0-based first pixels, lengths), checked against an image of
    ``shape`` = (height, width); both empty for the empty mask.

    This parses and checks without building the mask, so a whole column of RLEs is checked in
    the time it takes to read the numbers.

    Raises:
        DataError: naming ``source`` on an odd number of numbers, a token that is not an
            integer, a start below 1, a length below 1, a run past the image, or runs that do not
            increase (overlapping or out of order).
    """
    height, width = _shape(shape)
    empty = np.zeros(0, dtype=np.int64)
    if is_missing(rle):
        return empty, empty
    text = rle if isinstance(rle, str) else str(rle)
    tokens = text.split()
    if len(tokens) % 2:
        raise DataError(
            f"{source}: the RLE has {len(tokens)} numbers, not pairs of start and length "
            f"({_excerpt(text)})"
        )
    try:
        numbers = np.asarray(tokens).astype(np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not _is_int64(t)), tokens[0])
        raise DataError(
            f"{source}: the RLE holds {bad!r}, not an integer ({_excerpt(text)})"
        ) from None
    starts, lengths = numbers[0::2], numbers[1::2]
    _check_runs(starts, lengths, height, width, source, text)
    return starts - 1, lengths


def _is_int64(token: str) -> bool:
    try:
        return abs(int(token)) < 2**63
    except ValueError:
        return False


def _check_runs(starts, lengths, height, width, source, text) -> None:
    def first(bad: np.ndarray) -> int:
        return int(np.flatnonzero(bad)[0])

    if (starts < 1).any():
        run = first(starts < 1)
        raise DataError(
            f"{source}: run {run} starts at {starts[run]}; starts count pixels from 1 "
            f"({_excerpt(text)})"
        )
    if (lengths < 1).any():
        run = first(lengths < 1)
        raise DataError(
            f"{source}: run {run} has length {lengths[run]}; a run is at least 1 pixel long "
            f"({_excerpt(text)})"
        )
    size = height * width
    # Each side within the image first: their sum cannot overflow then.
    past = (starts > size) | (lengths > size)
    ends = np.where(past, size + 1, starts + lengths - 1)  # last pixel of each run, 1-based
    past |= ends > size
    if past.any():
        run = first(past)
        raise DataError(
            f"{source}: run {run} (start {starts[run]}, length {lengths[run]}) runs past the "
            f"image of {height} x {width} ({size} pixels; is the image size right?)"
        )
    overlap = starts[1:] <= ends[:-1]
    if overlap.any():
        run = first(overlap) + 1
        raise DataError(
            f"{source}: run {run} starts at {starts[run]}, not after the end of run {run - 1} "
            f"(pixel {ends[run - 1]}): runs must increase and not overlap ({_excerpt(text)})"
        )


def _flat(starts: np.ndarray, lengths: np.ndarray, size: int) -> np.ndarray:
    """The flat uint8 mask of ``size`` pixels holding the (checked, disjoint) runs."""
    # +1 where a run starts, -1 after it ends; the running sum is 1 inside a run.
    steps = np.zeros(size + 1, dtype=np.int8)
    steps[starts] = 1
    steps[starts + lengths] -= 1
    return np.cumsum(steps[:-1], dtype=np.int8).view(np.uint8)


def decode(rle, shape, order: str, source: str = "RLE") -> np.ndarray:
    """The (height, width) uint8 mask (0/1) that ``rle`` encodes in pixel ``order``.

    Example:
        >>> decode("3 3 7 1", (3, 3), "column")
        array([[0, 1, 1],
               [0, 1, 0],
               [1, 0, 0]], dtype=uint8)

    Raises:
        DataError: naming ``source`` when the RLE is invalid (see :func:`runs`).
    """
    height, width = _shape(shape)
    starts, lengths = runs(rle, (height, width), source)
    flat = _flat(starts, lengths, height * width)
    return flat.reshape((height, width), order=numpy_order(order))


def boundary(mask: np.ndarray) -> int:
    """The number of pixel edges between the mask and the background (the image's border counts
    as background): a blob's boundary grows like the square root of its area, noise's like it."""
    padded = np.pad(np.asarray(mask, dtype=bool), 1)
    vertical = np.count_nonzero(padded[1:, :] != padded[:-1, :])
    horizontal = np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    return int(vertical + horizontal)


@dataclass(frozen=True)
class OrderCheck:
    """What :func:`check_order` saw.

    Attributes:
        compared: non-empty masks of non-square images decoded in both orders.
        less_compact: of those, how many were much less compact in the configured order.
        square: non-empty masks of square images, not compared: there the orders cannot be
            told apart.
    """

    compared: int
    less_compact: int
    square: int


def _shapes(shape, count: int) -> list[tuple[int, int]]:
    """One (height, width) per RLE: ``shape`` is one shape for all, or a sequence of them."""
    if np.ndim(shape) == 1 and len(shape) == 2:
        return [_shape(shape)] * count
    shapes = [_shape(s) for s in shape]
    if len(shapes) != count:
        raise ValueError(f"{len(shapes)} shapes for {count} RLEs")
    return shapes


def check_order(
    rles: Sequence, shape, order: str, source: str = "RLE", sample: int = 64
) -> OrderCheck:
    """Refuse an RLE ``order`` under which the masks decode to noise.

    Decodes an evenly spread sample of up to ``sample`` non-empty masks in both orders and
    compares their boundary lengths (the area is the same in both). If on most of the masks
    compared the configured order gives a boundary :data:`LESS_COMPACT` times the other's, the
    masks were encoded in the other order. Square images are skipped: there the other order only
    transposes the mask.

    Args:
        rles: the RLE texts (missing values and ``""`` are empty masks).
        shape: the (height, width) of every image, or one shape per RLE.
        order: the configured order, ``column`` or ``row``.
        source: where the RLEs come from (a file and column); rows are positions in ``rles``.
        sample: how many non-empty masks to compare at most.

    Returns:
        What was compared (see :class:`OrderCheck`).

    Raises:
        DataError: naming ``source``, the other order and :data:`ORDER_KEY` when the masks look
            like the other order; or when a sampled RLE is invalid (naming its row).
    """
    numpy_order(order)
    rles = list(rles)
    shapes = _shapes(shape, len(rles))
    rows = [row for row, rle in enumerate(rles) if not is_missing(rle)]
    square = [row for row in rows if shapes[row][0] == shapes[row][1]]
    rows = [row for row in rows if shapes[row][0] != shapes[row][1]]
    if len(rows) > sample:
        rows = [
            rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, sample).round().astype(int))
        ]
    other = ORDERS[1 - ORDERS.index(order)]
    less = 0
    for row in rows:
        height, width = shapes[row]
        starts, lengths = runs(rles[row], (height, width), f"{source}: row {row}")
        flat = _flat(starts, lengths, height * width)
        mine = boundary(flat.reshape((height, width), order=numpy_order(order)))
        theirs = boundary(flat.reshape((height, width), order=numpy_order(other)))
        less += mine > LESS_COMPACT * theirs
    result = OrderCheck(compared=len(rows), less_compact=less, square=len(square))
    if rows and 2 * less > len(rows):
        raise DataError(
            f"{source}: the masks look like {other}-major RLE, not {order}-major: decoded in "
            f"{order}-major order, {less} of {len(rows)} sampled masks are scattered stripes, "
            f"compact blobs in {other}-major order. Set {ORDER_KEY}: {other}"
        )
    if square and not rows:
        log.info(
            "%s: images are square, where %s can only be checked by eye (the other order "
            "transposes the masks)",
            source,
            ORDER_KEY,
        )
    return result
