"""Training targets of segmentation: masks from image files or from RLE columns of the table.

Where the masks are (:class:`MaskLayout`):

- ``masks: files``: mask images (PNG, or any format PIL reads) under ``mask_dir``, named by
  ``mask_pattern`` from the image's file name: one file per image (``{stem}.png``) holding class
  indices (multiclass) or 0/1 or 0/255 (binary); or one binary file per class, a folder per class
  (``{class}/{stem}.png``) or a name pattern (``{stem}_{class}.png``) (multilabel).
- ``masks: rle``: RLE columns of the train table, one per channel (binary: one column, the
  image's mask; multilabel: one per class; multiclass: one per class after the background class
  0, which is every pixel no run covers). A table with one row per image and class is turned into
  that shape by :func:`rle_columns_from_long`.

The target of a row is (height, width) class indices for multiclass (uint8 up to 256 classes) and
(channels, height, width) uint8 0/1 for binary and multilabel. :func:`check_masks` checks a whole
table before training: every mask file exists, has its image's size (read from the file headers,
without decoding), holds only the classes' values; every RLE is valid inside its image, RLE classes
do not overlap in a multiclass table, and the RLE order is plausible.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from medalist.config.segmentation import (
    KEY,
    TASKS,
    check_classes,
    check_pattern,
    check_rle_columns,
)
from medalist.errors import ConfigError, DataError, config_errors
from medalist.modalities.segmentation import rle

SOURCES = ("files", "rle")


@dataclass(frozen=True)
class MaskLayout:
    """Where a table's masks are and what they hold; each field is the config key
    ``segmentation.<field>``.

    Attributes:
        task: ``binary`` (one channel), ``multiclass`` (one class index per pixel) or
            ``multilabel`` (one binary channel per class).
        classes: the class names: binary one (the channel's), multiclass every class with its
            index as position (0 is usually the background), multilabel one per channel.
        masks: ``files`` or ``rle``.
        mask_dir: the folder of the mask files (``files``).
        mask_pattern: a mask's file name under ``mask_dir``, from its image's file name
            (``{stem}``: without extension, ``{name}``: with) and, for one file per class,
            ``{class}`` (``files``).
        rle_columns: the table's RLE columns, one per channel (binary 1, multilabel one per
            class, multiclass one per class after class 0) (``rle``).
        rle_order: the RLE pixel order, ``column`` or ``row`` (``rle``).
    """

    task: str
    classes: tuple[str, ...]
    masks: str = "files"
    mask_dir: str | os.PathLike | None = None
    mask_pattern: str = "{stem}.png"
    rle_columns: tuple[str, ...] = ()
    rle_order: str = "column"

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "rle_columns", tuple(self.rle_columns))
        if self.task not in TASKS:
            raise ConfigError(f"{KEY}.task: '{self.task}' is not one of {list(TASKS)}")
        if self.masks not in SOURCES:
            raise ConfigError(f"{KEY}.masks: '{self.masks}' is not one of {list(SOURCES)}")
        with config_errors():
            check_classes(self.task, self.classes)
        if self.masks == "files":
            self._check_files()
        else:
            self._check_rle()

    def _check_files(self) -> None:
        if self.mask_dir is None:
            raise ConfigError(f"{KEY}.mask_dir: the folder of the mask files is required")
        with config_errors():
            check_pattern(self.mask_pattern, self.task, self.classes)

    def _check_rle(self) -> None:
        if self.rle_order not in rle.ORDERS:
            raise ConfigError(
                f"{rle.ORDER_KEY}: '{self.rle_order}' is not one of {list(rle.ORDERS)}"
            )
        with config_errors():
            check_rle_columns(self.rle_columns, self.task, self.classes)

    @property
    def per_class(self) -> bool:
        """Whether there is one mask file per class."""
        return self.masks == "files" and "{class}" in self.mask_pattern


# ------------------------------------------------------------------------------------- files


def image_size(path: str | os.PathLike, source: str, what: str = "image") -> tuple[int, int]:
    """The (height, width) of an image file, from its header (nothing is decoded).

    Raises:
        DataError: naming ``source`` and the file when it is missing or not an image.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(f"{source}: {what} file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{source}: {path} is not an image PIL can read ({exc})") from None
    return height, width


def mask_paths(layout: MaskLayout, image_path: str | os.PathLike) -> list[Path]:
    """The mask file(s) of an image: one per class when the pattern names ``{class}``."""
    image_path = Path(image_path)
    fields = {"stem": image_path.stem, "name": image_path.name}
    folder = Path(layout.mask_dir)
    if layout.per_class:
        return [
            folder / layout.mask_pattern.format(**fields, **{"class": c}) for c in layout.classes
        ]
    return [folder / layout.mask_pattern.format(**fields, **{"class": ""})]


def _pixels(path: Path, source: str) -> np.ndarray:
    """The mask's values as a 2-D integer array; a colour mask is refused unless it is grey."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            pixels = np.asarray(image.convert("L") if mode == "1" else image)
    except FileNotFoundError:
        raise DataError(f"{source}: mask file not found: {path}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{source}: mask {path} is not an image PIL can read ({exc})") from None
    if mode == "1":
        pixels = (pixels > 0).astype(np.uint8)
    if pixels.ndim == 3:
        colour = pixels[..., :1] if mode in ("LA", "La") else pixels[..., :3]  # alpha left out
        if not (colour == colour[..., :1]).all():
            raise DataError(
                f"{source}: mask {path} is a colour image ({mode}); masks hold one value per "
                "pixel (class indices, 0/1 or 0/255): convert colours to indices first"
            )
        pixels = np.ascontiguousarray(colour[..., 0])
    if pixels.dtype.kind == "f":
        if not np.array_equal(pixels, np.round(pixels)):
            raise DataError(f"{source}: mask {path} holds fractions; masks hold integers")
        pixels = pixels.astype(np.int64)
    return pixels


def values_seen(pixels: np.ndarray) -> list[int]:
    """The distinct values of an integer mask, ascending."""
    if pixels.dtype == np.uint8:
        return np.flatnonzero(np.bincount(pixels.ravel(), minlength=256)).tolist()
    return np.unique(pixels).tolist()


def binary_mask(pixels: np.ndarray, path: Path, source: str) -> np.ndarray:
    """A 0/1 or 0/255 mask as uint8 0/1; other values are refused, naming those seen."""
    seen = values_seen(pixels)
    if set(seen) <= {0, 1}:
        return pixels.astype(np.uint8, copy=False)
    if set(seen) <= {0, 255}:
        return (pixels > 0).astype(np.uint8)
    raise DataError(
        f"{source}: mask {path} holds values {_show(seen)}; a binary mask holds 0/1 or 0/255"
    )


def class_mask(pixels: np.ndarray, classes: Sequence[str], path: Path, source: str) -> np.ndarray:
    """A mask of class indices as uint8; values outside 0..C-1 are refused, naming them."""
    seen = values_seen(pixels)
    outside = [v for v in seen if not 0 <= v < len(classes)]
    if outside:
        hint = " (a 0/255 mask is binary: segmentation.task: binary)" if outside == [255] else ""
        raise DataError(
            f"{source}: mask {path} holds values {_show(seen)}; the classes are 0..{len(classes) - 1}"
            f" ({list(classes)}), so {_show(outside)} are outside{hint}"
        )
    return pixels.astype(np.uint8, copy=False)


def _show(values: list, limit: int = 12) -> str:
    return str(values if len(values) <= limit else [*values[:limit], "..."])


def _mismatch(path, got, image_path, want, source) -> DataError:
    return DataError(
        f"{source}: mask {path} is {got[0]} x {got[1]} (height x width), its image {image_path} "
        f"is {want[0]} x {want[1]}"
    )


def read_mask(
    layout: MaskLayout, path: Path, shape: tuple[int, int], image_path: Path, source: str
) -> np.ndarray:
    """One mask file as uint8 (height, width): class indices, or 0/1 for a binary channel.

    Raises:
        DataError: naming ``source`` and the file when it is missing, unreadable, not of the
            image's ``shape``, or holds values outside the classes.
    """
    pixels = _pixels(path, source)
    if pixels.shape != tuple(shape):
        raise _mismatch(path, pixels.shape, image_path, shape, source)
    if layout.task == "multiclass":
        return class_mask(pixels, layout.classes, path, source)
    return binary_mask(pixels, path, source)


def target_from_files(
    layout: MaskLayout, image_path: str | os.PathLike, source: str, shape=None
) -> np.ndarray:
    """The target of one image from its mask file(s); ``shape`` is the image's (height, width),
    read from its header when not given."""
    image_path = Path(image_path)
    shape = tuple(shape) if shape is not None else image_size(image_path, source)
    channels = [
        read_mask(layout, p, shape, image_path, source) for p in mask_paths(layout, image_path)
    ]
    return channels[0] if layout.task == "multiclass" else np.stack(channels)


# --------------------------------------------------------------------------------------- rle


def target_from_rles(layout: MaskLayout, rles: Sequence, shape, source: str) -> np.ndarray:
    """The target of one image from its RLEs, one per ``layout.rle_columns``.

    Raises:
        DataError: naming ``source`` and the column when an RLE is invalid or runs past the
            image, or when two classes of a multiclass mask cover the same pixel.
    """
    channels = [
        rle.decode(text, shape, layout.rle_order, source=f"{source}, column '{column}'")
        for column, text in zip(layout.rle_columns, rles, strict=True)
    ]
    if layout.task != "multiclass":
        return np.stack(channels)
    stacked = np.stack(channels)
    if (stacked.sum(axis=0) > 1).any():
        raise DataError(_overlap_message(layout, stacked, source))
    # Class k + 1 where channel k is set; 0 (the background) where none is.
    return (stacked * np.arange(1, len(channels) + 1, dtype=np.uint8)[:, None, None]).sum(
        axis=0, dtype=np.uint8
    )


def _overlap_message(layout: MaskLayout, stacked: np.ndarray, source: str) -> str:
    shared = stacked.sum(axis=0) > 1
    names = [
        layout.rle_columns[i]
        for i in np.flatnonzero((stacked.astype(bool) & shared).any(axis=(1, 2)))
    ]
    return (
        f"{source}: columns {names} cover the same {int(shared.sum())} pixel(s); a multiclass "
        "mask has one class per pixel (overlapping classes are a multilabel task: "
        f"{KEY}.task: multilabel)"
    )


def rle_columns_from_long(
    table: pd.DataFrame,
    *,
    id_column: str,
    class_column: str,
    rle_column: str,
    classes: Sequence,
    ids: Sequence | None = None,
    source: str = "train table",
) -> pd.DataFrame:
    """One row per image and one RLE column per class, from a table with one row per image and
    class (e.g. ``ImageId, ClassId, EncodedPixels``).

    Args:
        table: the long table; images or classes without a row get the empty mask.
        id_column, class_column, rle_column: its columns.
        classes: the class values, in channel order; the columns of the result are
            ``str(class)``.
        ids: every image, in the order wanted (default: the table's ids in order of appearance),
            so that images listed only in the image folder get empty masks.
        source: the table's name in errors.

    Raises:
        DataError: naming the row of a class not in ``classes``, of an (image, class) pair that
            appears twice, or a missing column.
    """
    missing = [c for c in (id_column, class_column, rle_column) if c not in table.columns]
    if missing:
        raise DataError(f"{source}: missing column(s) {missing}; it has {list(table.columns)}")
    lookup = {str(c): i for i, c in enumerate(classes)}
    keys = table[class_column].astype(str).to_numpy()
    unknown = ~np.isin(keys, list(lookup))
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"{source}: row {row}: class {keys[row]!r} in column '{class_column}' is not one of "
            f"{[str(c) for c in classes]}"
        )
    repeated = table.duplicated([id_column, class_column]).to_numpy()
    if repeated.any():
        row = int(np.flatnonzero(repeated)[0])
        raise DataError(
            f"{source}: row {row}: image {table[id_column].iloc[row]!r} has class "
            f"{keys[row]!r} twice"
        )
    ids = pd.unique(table[id_column]) if ids is None else list(ids)
    wide = pd.DataFrame({id_column: ids})
    texts = table[rle_column].where(~table[rle_column].isna(), "").astype(str)
    for name in lookup:
        chosen = keys == name
        column = pd.Series(texts.to_numpy()[chosen], index=table[id_column].to_numpy()[chosen])
        wide[name] = column.reindex(wide[id_column].to_numpy()).fillna("").to_numpy()
    return wide


# ------------------------------------------------------------------------------------- table


def _rle_table(layout: MaskLayout, table: pd.DataFrame, source: str) -> list[list]:
    missing = [c for c in layout.rle_columns if c not in table.columns]
    if missing:
        raise DataError(
            f"{source}: missing RLE column(s) {missing} ({KEY}.rle_columns); it has "
            f"{list(table.columns)[:20]}"
        )
    return [table[c].tolist() for c in layout.rle_columns]


def check_masks(
    layout: MaskLayout,
    table: pd.DataFrame,
    image_paths: Sequence[str | os.PathLike],
    source: str,
    *,
    values: bool = True,
) -> list[tuple[int, int]]:
    """Check every row's masks before training, and return each image's (height, width).

    Sizes come from the file headers. Mask files are decoded only to check their values
    (``values``, on by default: a mask with a stray value would otherwise train a wrong class).
    RLEs are parsed and checked against their image's size without being decoded, except a
    sample decoded for :func:`rle.check_order`.

    Raises:
        DataError: naming ``source``, the row and the file or column of the first problem: a
            missing image or mask file, a mask of another size than its image, mask values
            outside the classes, an invalid RLE or one past the image, overlapping classes of a
            multiclass RLE table, or RLEs that look encoded in the other order.
    """
    if len(image_paths) != len(table):
        raise ValueError(f"{len(image_paths)} image paths for {len(table)} rows")
    sizes = [image_size(path, f"{source}: row {row}") for row, path in enumerate(image_paths)]
    if layout.masks == "files":
        for row, image_path in enumerate(image_paths):
            _check_files(layout, Path(image_path), sizes[row], f"{source}: row {row}", values)
        return sizes
    columns = _rle_table(layout, table, source)
    parsed = [
        [
            rle.runs(text, sizes[row], f"{source}: row {row}, column '{column}'")
            for row, text in enumerate(texts)
        ]
        for column, texts in zip(layout.rle_columns, columns, strict=True)
    ]
    if layout.task == "multiclass" and len(columns) > 1:
        _check_disjoint(layout, columns, parsed, sizes, source)
    for column, texts in zip(layout.rle_columns, columns, strict=True):
        rle.check_order(texts, sizes, layout.rle_order, f"{source}: column '{column}'")
    return sizes


def _check_files(layout, image_path: Path, shape, source: str, values: bool) -> None:
    for path in mask_paths(layout, image_path):
        if values:
            read_mask(layout, path, shape, image_path, source)
            continue
        size = image_size(path, source, what="mask")
        if size != tuple(shape):
            raise _mismatch(path, size, image_path, shape, source)


def _check_disjoint(layout, columns, parsed, sizes, source) -> None:
    """No pixel in two classes of a multiclass RLE table, from the (checked) runs alone."""
    for row in range(len(sizes)):
        runs = [by_row[row] for by_row in parsed]
        starts = np.concatenate([s for s, _ in runs])
        if len(starts) < 2:
            continue
        ends = np.concatenate([s + n for s, n in runs])
        order = np.argsort(starts, kind="stable")
        if (starts[order][1:] < ends[order][:-1]).any():
            shape = sizes[row]
            stacked = np.stack(
                [rle.decode(texts[row], shape, layout.rle_order) for texts in columns]
            )
            raise DataError(_overlap_message(layout, stacked, f"{source}: row {row}"))


class MaskTargets:
    """The target of each row of a table, read when asked (a dataset asks once per sample).

    Args:
        layout: where the masks are.
        table: the rows (RLE columns are taken from it once).
        image_paths: one image file per row.
        source: the table's name in errors.
        sizes: each image's (height, width) when known (from :func:`check_masks`); else read
            from the image's header when the row is asked for.
    """

    def __init__(
        self,
        layout: MaskLayout,
        table: pd.DataFrame,
        image_paths: Sequence[str | os.PathLike],
        source: str,
        sizes: Sequence[tuple[int, int]] | None = None,
    ):
        if len(image_paths) != len(table):
            raise ValueError(f"{len(image_paths)} image paths for {len(table)} rows")
        self.layout, self.source = layout, source
        self.image_paths = [Path(p) for p in image_paths]
        self.sizes = None if sizes is None else [tuple(s) for s in sizes]
        self.columns = _rle_table(layout, table, source) if layout.masks == "rle" else None

    def __len__(self) -> int:
        return len(self.image_paths)

    def shape(self, row: int) -> tuple[int, int]:
        if self.sizes is not None:
            return self.sizes[row]
        return image_size(self.image_paths[row], f"{self.source}: row {row}")

    def __getitem__(self, row: int) -> np.ndarray:
        source = f"{self.source}: row {row}"
        if self.columns is None:
            return target_from_files(self.layout, self.image_paths[row], source, self.shape(row))
        texts = [texts[row] for texts in self.columns]
        return target_from_rles(self.layout, texts, self.shape(row), source)
