"""Probability masks of many images in one compact file: OOF or test predictions of one fold.

A probability mask is a float array (channels, height, width) in [0, 1]; images of one file may
differ in size. Each is stored quantised to uint8, ``q = round(p * 255)``, and read back as
``q / 255`` in float32, so a value read back is within ``0.5 / 255`` (about 0.002) of the value
written (plus float32 rounding, below 1e-7): far below what moves a threshold search, at a
quarter of float32's size.

The file is safetensors (never a pickle): one flat uint8 tensor ``masks`` holding the images one
after the other, and in its metadata the ids in order, each image's shape, and a format tag. It
is written to a temporary file and renamed into place (:func:`medalist.io.write_with`).
Ensembles average masks with :func:`average_masks`, which refuses files of other ids or shapes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import overload

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from medalist.errors import DataError
from medalist.io import write_with

FORMAT = "medalist.masks/1"
TENSOR = "masks"
LEVELS = 255
ERROR_BOUND = 0.5 / LEVELS  # most a value read back differs from the one written
# Probabilities this far outside [0, 1] are float rounding of a sigmoid or softmax, and clipped.
TOLERANCE = 1e-5
# The mask files of an experiment's folder (and of each fold's): OOF masks, test masks.
OOF_MASKS = "oof.masks.safetensors"
TEST_MASKS = "test.masks.safetensors"


def quantise(probs: np.ndarray) -> np.ndarray:
    """``round(p * 255)`` as uint8 for probabilities ``p`` in [0, 1]."""
    scaled = np.clip(np.asarray(probs, dtype=np.float32), 0.0, 1.0) * np.float32(LEVELS)
    return np.rint(scaled).astype(np.uint8)


def dequantise(levels: np.ndarray) -> np.ndarray:
    """uint8 levels back to float32 probabilities ``q / 255``."""
    return np.asarray(levels, dtype=np.float32) / np.float32(LEVELS)


def _plain_id(value):
    """A numpy scalar id as the Python value (JSON writes ``str`` and ``int`` as they are)."""
    value = value.item() if type(value).__module__ == "numpy" else value
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"mask ids are text or integers, got {value!r} ({type(value).__name__})")
    return value


def _check_probs(probs: np.ndarray, image_id, path) -> None:
    if probs.ndim != 3:
        raise DataError(
            f"{path}: the mask of id {image_id!r} has shape {probs.shape}; probability masks "
            "are (channels, height, width)"
        )
    if not probs.size:
        return
    low, high = float(np.min(probs)), float(np.max(probs))
    if not (np.isfinite(low) and np.isfinite(high)):
        raise DataError(f"{path}: the mask of id {image_id!r} holds NaN or infinite values")
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        raise DataError(
            f"{path}: the mask of id {image_id!r} holds values in [{low:g}, {high:g}]; "
            "probabilities are in [0, 1] (apply the sigmoid or softmax first)"
        )


def write_masks(path: str | os.PathLike, ids: Sequence, masks: Sequence[np.ndarray]) -> Path:
    """Write the probability masks of ``ids`` (one (C, H, W) array each, in [0, 1]) to ``path``.

    Raises:
        DataError: on repeated ids, a count of masks other than of ids, or a mask that is not
            3-D, holds NaN, or leaves [0, 1].
    """
    ids = [_plain_id(i) for i in ids]
    if len(ids) != len(masks):
        raise DataError(f"{path}: {len(masks)} masks for {len(ids)} ids")
    seen: set = set()
    for image_id in ids:
        if image_id in seen:
            raise DataError(f"{path}: id {image_id!r} appears twice")
        seen.add(image_id)
    shapes, parts = [], []
    for image_id, probs in zip(ids, masks, strict=True):
        probs = np.asarray(probs)
        _check_probs(probs, image_id, path)
        shapes.append(list(probs.shape))
        parts.append(quantise(probs).ravel())
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
    metadata = {
        "format": FORMAT,
        "ids": json.dumps(ids),
        "shapes": json.dumps(shapes),
        "levels": str(LEVELS),
    }
    return write_with(path, lambda tmp: save_file({TENSOR: flat}, tmp, metadata=metadata))


def _metadata(handle, path) -> tuple[list, list[tuple[int, ...]]]:
    metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise DataError(
            f"{path}: not a medalist mask file (format {metadata.get('format')!r}, "
            f"expected {FORMAT!r})"
        )
    try:
        ids, shapes = json.loads(metadata["ids"]), json.loads(metadata["shapes"])
        shapes = [tuple(int(side) for side in shape) for shape in shapes]
        levels = int(metadata["levels"])
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: unreadable mask metadata ({exc})") from None
    if levels != LEVELS or len(ids) != len(shapes) or any(len(s) != 3 for s in shapes):
        raise DataError(
            f"{path}: inconsistent mask metadata ({len(ids)} ids, {len(shapes)} shapes, "
            f"{levels} levels)"
        )
    return ids, shapes


def read_quantised(path: str | os.PathLike) -> tuple[list, list[np.ndarray]]:
    """The ids and uint8 masks of a mask file, in the order written.

    Raises:
        DataError: naming ``path`` when it is missing, not a safetensors mask file, or its sizes
            disagree with its metadata (a truncated or altered file).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mask file not found: {path}")
    try:
        with safe_open(str(path), framework="np") as handle:
            ids, shapes = _metadata(handle, path)
            flat = handle.get_tensor(TENSOR)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{path}: not a readable safetensors mask file ({exc})") from None
    sizes = [int(np.prod(shape)) for shape in shapes]
    if flat.dtype != np.uint8 or flat.ndim != 1 or flat.size != sum(sizes):
        raise DataError(
            f"{path}: holds {flat.size} {flat.dtype} values, its metadata {sum(sizes)} uint8"
        )
    offsets = np.cumsum([0, *sizes])
    masks = [
        flat[start:end].reshape(shape)
        for start, end, shape in zip(offsets[:-1], offsets[1:], shapes, strict=True)
    ]
    return ids, masks


def read_masks(path: str | os.PathLike) -> tuple[list, list[np.ndarray]]:
    """The ids and float32 probability masks of a mask file, in the order written."""
    ids, masks = read_quantised(path)
    return ids, [dequantise(mask) for mask in masks]


class Probabilities(Sequence):
    """Probability masks held as their uint8 levels and read back one image at a time: the
    float32 mask of image ``i`` is ``probs[i]`` (``dequantise``, the values :func:`read_masks`
    gives), and an index array or a boolean array gives the images it picks, still as levels.

    Every OOF mask of a competition (thousands of images of hundreds of pixels a side) fits in
    memory a quarter the size of float32's, and a whole pass over them (scoring, the
    post-processing search, writing them again: the levels come back unchanged) holds one
    image's floats at a time.
    """

    def __init__(self, levels: Sequence[np.ndarray]):
        self.levels = list(levels)

    def __len__(self) -> int:
        return len(self.levels)

    @overload
    def __getitem__(self, key: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, key: slice | np.ndarray | list) -> Probabilities: ...

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return dequantise(self.levels[int(key)])
        if isinstance(key, slice):
            return Probabilities(self.levels[key])
        picked = np.asarray(key)
        if picked.dtype == bool:
            picked = np.flatnonzero(picked)
        return Probabilities([self.levels[int(i)] for i in picked])


def read_probabilities(path: str | os.PathLike) -> tuple[list, Probabilities]:
    """The ids and probability masks of a mask file, in the order written, kept as levels
    (:class:`Probabilities`)."""
    ids, levels = read_quantised(path)
    return ids, Probabilities(levels)


def average_masks(
    paths: Sequence[str | os.PathLike], weights: Sequence[float] | None = None
) -> tuple[list, list[np.ndarray]]:
    """The (weighted) mean of several mask files, in the first file's id order.

    Args:
        paths: mask files of the same images (e.g. one fold's test masks of each experiment);
            their ids may come in another order.
        weights: one non-negative weight per file (default: equal), not all zero.

    Returns:
        The ids and the float32 mean masks.

    Raises:
        DataError: naming the file whose ids differ from the first file's (missing or extra)
            or whose mask of an id has another shape.
    """
    if not paths:
        raise DataError("no mask files to average")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise DataError(
            f"{len(weights)} weights {weights} for {len(paths)} mask files: one non-negative "
            "weight per file, not all zero"
        )
    ids, first = read_quantised(paths[0])
    members = [(weights[0], [dequantise(mask) for mask in first])]
    position = {image_id: i for i, image_id in enumerate(ids)}
    for path, weight in zip(paths[1:], weights[1:], strict=True):
        other_ids, masks = read_quantised(path)
        _check_same_ids(ids, other_ids, path, paths[0])
        aligned: list = [None] * len(ids)
        for image_id, mask in zip(other_ids, masks, strict=True):
            i = position[image_id]
            if mask.shape != first[i].shape:
                raise DataError(
                    f"{path}: the mask of id {image_id!r} has shape {mask.shape}, "
                    f"{first[i].shape} in {paths[0]}"
                )
            aligned[i] = dequantise(mask)
        members.append((weight, aligned))
    return ids, weighted_mean(members)


def weighted_mean(members: Sequence[tuple[float, Sequence[np.ndarray]]]) -> list[np.ndarray]:
    """Each image's weighted mean over members' masks (the same images in the same order): the
    sum of weight times mask in member order over the sum of the weights, in float32.
    :func:`average_masks` blends through here."""
    (weight, first), *rest = members
    total = [mask * np.float32(weight) for mask in first]
    for weight, masks in rest:
        for row, mask in enumerate(masks):
            total[row] += mask * np.float32(weight)
    scale = np.float32(sum(float(w) for w, _ in members))
    return [mask / scale for mask in total]


def _check_same_ids(ids: list, other: list, path, first_path) -> None:
    mine, theirs = set(ids), set(other)
    if len(theirs) == len(other) == len(ids) and theirs == mine:
        return
    missing = [i for i in ids if i not in theirs]
    extra = [i for i in other if i not in mine]
    raise DataError(
        f"{path}: its ids differ from {first_path}'s ({len(other)} vs {len(ids)} ids; "
        f"missing {missing[:5]}, extra {extra[:5]})"
    )
