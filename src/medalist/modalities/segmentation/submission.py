"""RLE submissions: binary masks written onto the sample submission's rows, and refused unless
every row matches the sample and every RLE fits its image.

The sample submission fixes the rows. Three layouts occur (:class:`RleLayout`):

- one row per image: ``id, rle_mask``;
- one row per image and class in the id: ``ImageId_ClassId, EncodedPixels`` with ids such as
  ``0002cc93b.jpg_3`` (the class after the last ``separator``);
- one row per image and class in a column of its own: ``ImageId, EncodedPixels, ClassId``.

An empty mask is written as the empty string (pandas reads it back as NaN, which
:mod:`~medalist.modalities.segmentation.rle` reads as empty).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.errors import DataError, SubmissionError
from medalist.io import write_csv
from medalist.modalities.segmentation import rle
from medalist.submission.format import read_csv_checked

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RleLayout:
    """How the sample submission's rows name an image and a class.

    Attributes:
        id_column: the first column of the sample (an image, or image and class, per row).
        rle_column: the column of the RLE texts.
        class_column: a column holding each row's class, when the id holds only the image.
        separator: the text between image and class in the id (``_`` in ``ImageId_ClassId``);
            None when the id is the image alone.
    """

    id_column: str
    rle_column: str
    class_column: str | None = None
    separator: str | None = None


def _text_keys(values: pd.Series) -> list[str]:
    """Values as text for matching; integral floats (``3.0``) match integers (``3``)."""
    if values.dtype.kind == "f":
        numbers = values.to_numpy()
        if np.isfinite(numbers).all() and (numbers == np.round(numbers)).all():
            values = values.astype("int64")
    return values.astype(str).tolist()


def detect_layout(
    sample: pd.DataFrame, classes: Sequence, *, rle_column: str | None = None, separator: str = "_"
) -> RleLayout:
    """The layout of ``sample``:

    - the id is the first column;
    - a class column is another column whose values are all class names;
    - the RLE column is ``rle_column``, else the one column left;
    - without a class column and with several classes, ids that all end in ``separator`` and a
      class name hold the class (with one class, ``scan_1`` is an image's name).

    Raises:
        SubmissionError: when the sample has no column besides the id, or columns that fit no
            layout.
    """
    if sample.shape[1] < 2:
        raise SubmissionError(
            f"the sample submission has columns {list(sample.columns)}: an id "
            "and an RLE column are needed"
        )
    id_column, others = sample.columns[0], list(sample.columns[1:])
    names = {str(c) for c in classes}
    class_columns = [c for c in others if c != rle_column and set(_text_keys(sample[c])) <= names]
    if rle_column is None:
        candidates = [c for c in others if c not in class_columns] or others[:1]
        if len(candidates) != 1:
            raise SubmissionError(
                f"the sample submission has columns {others} besides the id '{id_column}': name "
                "the RLE column"
            )
        rle_column = candidates[0]
    if rle_column not in others:
        raise SubmissionError(f"the sample submission has no column '{rle_column}'")
    class_columns = [c for c in class_columns if c != rle_column]
    extra = [c for c in others if c not in (rle_column, *class_columns[:1])]
    if extra:
        raise SubmissionError(
            f"the sample submission's column(s) {extra} are neither the RLE column "
            f"'{rle_column}' nor a column of the classes {sorted(names)}"
        )
    if class_columns:
        return RleLayout(str(id_column), str(rle_column), class_column=str(class_columns[0]))
    ids = _text_keys(sample[id_column])
    in_id = all(separator in i and i.rsplit(separator, 1)[1] in names for i in ids)
    if len(names) > 1 and ids and in_id:
        return RleLayout(str(id_column), str(rle_column), separator=separator)
    return RleLayout(str(id_column), str(rle_column))


def sample_keys(
    sample: pd.DataFrame, layout: RleLayout, classes: Sequence, source: str = "sample submission"
) -> tuple[list[str], list[int]]:
    """For each row of ``sample``: its image id (as text) and its class's channel in
    ``classes``.

    Raises:
        SubmissionError: naming the row of a class not in ``classes``, of an id without the
            separator, or of an (image, class) pair that appears twice; or when the sample has
            one row per image but there are several classes.
    """
    lookup = {str(c): i for i, c in enumerate(classes)}
    for column in (layout.id_column, layout.rle_column, layout.class_column):
        if column is not None and column not in sample.columns:
            raise SubmissionError(f"{source}: no column '{column}'; it has {list(sample.columns)}")
    ids = _text_keys(sample[layout.id_column])
    if layout.class_column is not None:
        names = _text_keys(sample[layout.class_column])
    elif layout.separator is not None:
        split = [i.rsplit(layout.separator, 1) for i in ids]
        for row, parts in enumerate(split):
            if len(parts) != 2:
                raise SubmissionError(
                    f"{source}: row {row}: id {ids[row]!r} has no '{layout.separator}' before "
                    "its class"
                )
        ids, names = [p[0] for p in split], [p[1] for p in split]
    else:
        if len(classes) != 1:
            raise SubmissionError(
                f"{source}: one row per image, but there are {len(classes)} classes "
                f"{list(classes)}: which mask goes in '{layout.rle_column}'?"
            )
        names = [str(classes[0])] * len(ids)
    channels = []
    for row, name in enumerate(names):
        if name not in lookup:
            raise SubmissionError(
                f"{source}: row {row}: class {name!r} is not one of {list(lookup)}"
            )
        channels.append(lookup[name])
    repeated = pd.DataFrame({"i": ids, "c": channels}).duplicated().to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise SubmissionError(
            f"{source}: row {row}: image {ids[row]!r}, class {names[row]!r} appears twice"
        )
    return ids, channels


def _channels(mask: np.ndarray, image_id: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype.kind == "f":
        raise SubmissionError(
            f"the mask of image {image_id!r} holds floats; a submission takes binary masks "
            "(threshold the probabilities first)"
        )
    if mask.ndim == 2:
        return mask[None]
    if mask.ndim != 3:
        raise SubmissionError(
            f"the mask of image {image_id!r} has shape {mask.shape}; masks are (height, width) "
            "or (channels, height, width)"
        )
    return mask


def build_rle_submission(
    sample: pd.DataFrame,
    layout: RleLayout,
    ids: Sequence,
    masks: Sequence[np.ndarray],
    *,
    order: str,
    classes: Sequence,
) -> pd.DataFrame:
    """The sample's rows and columns with each row's RLE filled in from ``masks``.

    Args:
        sample: the sample submission.
        layout: its layout (see :func:`detect_layout`).
        ids: the image ids of ``masks``, in any order.
        masks: binary masks (non-zero is in the mask), (channels, height, width) with one channel
            per class, or (height, width) for one class.
        order: the RLE pixel order, ``column`` or ``row``.
        classes: the class names, in channel order.

    Raises:
        SubmissionError: on an image of the sample without a mask, a mask of an image not in
            the sample, or a class with no channel.
    """
    rle.numpy_order(order)
    keys = _text_keys(pd.Series(list(ids)))
    if len(keys) != len(masks):
        raise SubmissionError(f"{len(masks)} masks for {len(keys)} ids")
    position = {key: i for i, key in enumerate(keys)}
    if len(position) != len(keys):
        raise SubmissionError("the predicted masks repeat an image id")
    images, channels = sample_keys(sample, layout, classes)
    missing = [i for i in dict.fromkeys(images) if i not in position]
    if missing:
        raise SubmissionError(
            f"{len(missing)} image(s) of the sample submission have no mask, e.g. {missing[:5]}"
        )
    extra = sorted(set(keys) - set(images))
    if extra:
        raise SubmissionError(
            f"{len(extra)} predicted image(s) are not in the sample submission, e.g. {extra[:5]}"
        )
    texts = []
    for image_id, channel in zip(images, channels, strict=True):
        mask = _channels(masks[position[image_id]], image_id)
        if channel >= len(mask):
            raise SubmissionError(
                f"the mask of image {image_id!r} has {len(mask)} channel(s); class "
                f"{classes[channel]!r} is channel {channel}"
            )
        texts.append(rle.encode(mask[channel], order))
    out = sample.copy()
    out[layout.rle_column] = pd.Series(texts, index=sample.index, dtype=object)
    empty = sum(not t for t in texts)
    log.info("RLE submission: %d rows, %d empty masks (%s-major)", len(out), empty, order)
    return out


def validate_rle_submission(
    sub: pd.DataFrame,
    sample: pd.DataFrame,
    layout: RleLayout,
    *,
    shapes: dict,
    order: str,
    classes: Sequence,
    source: str = "submission",
) -> None:
    """Refuse ``sub`` unless it has the sample's columns and rows in order and each RLE fits its
    image.

    Args:
        sub: the submission.
        sample: the sample submission.
        layout: the sample's layout.
        shapes: each image id (as text) to its (height, width).
        order: the RLE pixel order, ``column`` or ``row``: the masks must look compact in it
            (:func:`rle.check_order`).
        classes: the class names, in channel order.
        source: the submission's name (its file) in errors.

    Raises:
        SubmissionError: naming ``source`` and the row of the first problem.
    """
    got, want = [str(c) for c in sub.columns], [str(c) for c in sample.columns]
    if got != want:
        raise SubmissionError(f"{source}: columns {got}; the sample submission has {want}")
    if len(sub) != len(sample):
        raise SubmissionError(f"{source}: {len(sub)} rows; the sample submission has {len(sample)}")
    images, _ = sample_keys(sample, layout, classes)
    for column in [c for c in sample.columns if c != layout.rle_column]:
        mine, theirs = _text_keys(sub[column]), _text_keys(sample[column])
        wrong = [row for row, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]
        if wrong:
            row = wrong[0]
            raise SubmissionError(
                f"{source}: row {row}: column '{column}' is {mine[row]!r}, the sample's "
                f"{theirs[row]!r} ({len(wrong)} row(s) differ; rows follow the sample's order)"
            )
    unknown = [i for i in dict.fromkeys(images) if i not in shapes]
    if unknown:
        raise SubmissionError(f"{source}: no image size known for image(s) {unknown[:5]}")
    texts = sub[layout.rle_column].tolist()
    row_shapes = [tuple(shapes[i]) for i in images]
    try:
        for row, text in enumerate(texts):
            rle.runs(text, row_shapes[row], f"{source}: row {row} (image {images[row]!r})")
        rle.check_order(texts, row_shapes, order, f"{source}: column '{layout.rle_column}'")
    except DataError as exc:
        raise SubmissionError(str(exc)) from None


def write_rle_submission(
    sub: pd.DataFrame, sample: pd.DataFrame, path: str | os.PathLike, layout: RleLayout, **kwargs
) -> Path:
    """Validate (``kwargs`` as for :func:`validate_rle_submission`), then write ``sub``
    atomically to ``path`` as CSV; nothing is written when validation fails."""
    validate_rle_submission(sub, sample, layout, source=str(path), **kwargs)
    written = write_csv(path, sub)
    log.info("submission written: %s (%d rows)", written, len(sub))
    return written


def validate_rle_submission_file(
    path: str | os.PathLike, sample_path: str | os.PathLike, layout: RleLayout, **kwargs
) -> None:
    """Read a submission CSV and its sample the same way, and validate (``kwargs`` as for
    :func:`validate_rle_submission`)."""
    sub = read_text_csv(path, "submission")
    sample = read_text_csv(sample_path, "sample submission")
    validate_rle_submission(sub, sample, layout, source=str(path), **kwargs)


def read_text_csv(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """A CSV with every cell as text, as written (ids keep their leading zeros; an empty RLE is
    ``""``).

    Raises:
        SubmissionError: naming ``path`` when it is missing, unreadable or has no rows.
    """
    return read_csv_checked(path, what, dtype=str, keep_default_na=False)
