"""Map predictions onto Kaggle's sample submission, and refuse any file that does not match it.

One bad submission costs a day's quota; :func:`validate_submission` checks what Kaggle checks
and more: the ids (missing, duplicated, re-typed, reordered), the columns (missing, extra,
reordered), the row count, NaN and infinities, probabilities outside [0, 1] and labels outside
the classes. Every refusal says what is wrong and where.

Prediction tables hold the id column, then ``p_<class>`` columns (multiclass: one per class;
binary: ``p_<positive class>``; multilabel: ``p_<target>``) or ``pred_<target>`` (regression).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.errors import SubmissionError, show_value
from medalist.io import write_csv

log = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "multilabel", "regression")
KINDS = ("auto", "label", "probability")
THRESHOLD = 0.5


# --------------------------------------------------------------------------------------- build


def _id_keys(series: pd.Series) -> np.ndarray:
    """Ids as text for matching; integral floats (``1.0``) match the integer ids (``1``)."""
    values = series
    if values.dtype.kind == "f":
        numbers = values.to_numpy()
        if np.isfinite(numbers).all() and (numbers == np.round(numbers)).all():
            values = values.astype("int64")
    return values.astype(str).to_numpy()


def _first_value(values: pd.Series) -> str:
    return show_value(values.iloc[0]) if len(values) else "none"


def _examples(values: pd.Series, limit: int = 5) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values.head(limit)]


def _first_repeat(keys: np.ndarray) -> int | None:
    repeated = np.flatnonzero(pd.Series(keys).duplicated().to_numpy())
    return int(repeated[0]) if len(repeated) else None


def _align(preds: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """The prediction rows in the sample's id order; missing or extra ids are refused."""
    if id_column not in preds.columns:
        raise SubmissionError(f"predictions have no id column '{id_column}'")
    pred_keys, sample_keys = _id_keys(preds[id_column]), _id_keys(sample[id_column])
    for keys, frame, what in ((pred_keys, preds, "predictions"), (sample_keys, sample, "sample")):
        row = _first_repeat(keys)
        if row is not None:
            value = show_value(frame[id_column].iloc[row])
            raise SubmissionError(f"{what} repeat id {value} (row {row})")
    missing = ~pd.Series(sample_keys).isin(pred_keys).to_numpy()
    if missing.any():
        raise SubmissionError(
            f"{int(missing.sum())} sample submission id(s) have no prediction, "
            f"e.g. {_examples(sample[id_column][missing])}"
        )
    extra = ~pd.Series(pred_keys).isin(sample_keys).to_numpy()
    if extra.any():
        raise SubmissionError(
            f"{int(extra.sum())} predicted id(s) are not in the sample submission, "
            f"e.g. {_examples(preds[id_column][extra])}"
        )
    position = pd.Series(np.arange(len(preds)), index=pred_keys)
    return preds.iloc[position.loc[sample_keys].to_numpy()].reset_index(drop=True)


def _pred_matrix(rows: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The named prediction columns as a float matrix (rows x names)."""
    missing = [n for n in names if n not in rows.columns]
    if missing:
        raise SubmissionError(
            f"predictions have no column(s) {missing}; they have {list(rows.columns)[:20]}"
        )
    try:
        return rows[names].to_numpy(dtype=float)
    except (TypeError, ValueError) as exc:
        raise SubmissionError(f"prediction columns {names} are not all numbers ({exc})") from exc


def _labels(classes: Sequence, index: np.ndarray, column: pd.Series) -> pd.Series:
    """``classes[index]``, cast to the dtype of the sample's label ``column``."""
    original = pd.Series(list(classes), dtype=object)
    where = f"as {column.dtype} like the sample's column '{column.name}'"
    try:
        labels = original.astype(column.dtype)
    except (TypeError, ValueError) as exc:
        raise SubmissionError(f"classes {list(classes)} cannot be written {where} ({exc})") from exc
    changed = labels.nunique() != len(labels)
    if column.dtype.kind in "iuf":
        numbers = pd.to_numeric(original, errors="coerce").to_numpy(dtype=float)
        changed = changed or not np.array_equal(numbers, labels.to_numpy(dtype=float))
    if changed:
        raise SubmissionError(
            f"classes {list(classes)} change when written {where}: {list(labels)}"
        )
    return labels.iloc[index].reset_index(drop=True)


def _multiclass_kind(columns: list, classes: Sequence) -> str:
    if sorted(map(str, columns)) == sorted(map(str, classes)):
        return "probability"
    if len(columns) == 1:
        return "label"
    raise SubmissionError(
        f"sample submission columns {columns} are neither one label column nor the classes "
        f"{list(classes)}"
    )


def _multiclass(rows, sample, columns, classes, kind) -> dict:
    if len(classes) < 2:
        raise SubmissionError(f"a multiclass task needs at least 2 classes, got {list(classes)}")
    probs = _pred_matrix(rows, [f"p_{c}" for c in classes])
    kind = _multiclass_kind(columns, classes) if kind == "auto" else kind
    if kind == "label":
        if len(columns) != 1:
            raise SubmissionError(
                f"sample submission has {columns}: one label column was expected for kind 'label'"
            )
        return {columns[0]: _labels(classes, probs.argmax(axis=1), sample[columns[0]])}
    lookup = {str(c): i for i, c in enumerate(classes)}
    if sorted(map(str, columns)) != sorted(lookup):
        raise SubmissionError(
            f"sample columns {columns} are not the classes {list(classes)}: "
            "kind 'probability' writes one column per class"
        )
    return {column: probs[:, lookup[str(column)]] for column in columns}


def _binary(rows, sample, columns, classes, kind) -> dict:
    if len(classes) != 2:
        raise SubmissionError(f"a binary task needs 2 classes, got {list(classes)}")
    if len(columns) != 1:
        raise SubmissionError(f"sample submission has {columns}: a binary task writes one column")
    column = columns[0]
    positive = _pred_matrix(rows, [f"p_{classes[1]}"])[:, 0]
    if kind == "label":
        return {column: _labels(classes, (positive >= THRESHOLD).astype(int), sample[column])}
    return {column: positive}


def _per_target(rows, columns, target_columns, prefix, kind) -> dict:
    not_targets = [c for c in columns if c not in target_columns]
    if not_targets:
        raise SubmissionError(f"sample columns {not_targets} are not targets {target_columns}")
    values = _pred_matrix(rows, [f"{prefix}{c}" for c in columns])
    if kind == "label":
        values = (values >= THRESHOLD).astype(int)
    return {column: values[:, i] for i, column in enumerate(columns)}


def _check_task_kind(task: str, kind: str) -> None:
    if task not in TASKS:
        raise SubmissionError(f"unknown task '{task}'; expected one of {list(TASKS)}")
    if kind not in KINDS:
        raise SubmissionError(f"submission.kind '{kind}' is not one of {list(KINDS)}")
    if task == "regression" and kind != "auto":
        raise SubmissionError(
            f"submission.kind: '{kind}' makes no sense for regression; use 'auto'"
        )


def build_submission(
    preds: pd.DataFrame,
    sample: pd.DataFrame,
    *,
    id_column: str,
    task: str,
    classes: list,
    target_columns: list[str],
    kind: str = "auto",
) -> pd.DataFrame:
    """A frame with exactly the sample's columns and id order, filled from ``preds``.

    Args:
        preds: a prediction table (id, then ``p_<class>`` or ``pred_<target>`` columns), in any
            row order.
        sample: the sample submission; it fixes the columns, their order and the row order.
        id_column: the id column of both.
        task: ``binary``, ``multiclass``, ``multilabel`` or ``regression``.
        classes: the class labels, in the order of the ``p_`` columns (binary, multiclass).
        target_columns: the task's target columns (multilabel, regression).
        kind: ``label`` (class labels; 0/1 for multilabel), ``probability``, or ``auto``
            (multiclass follows the sample's columns; binary and multilabel write probabilities).

    Returns:
        The submission frame, with the sample's ids and column order.

    Raises:
        SubmissionError: on ids missing from or extra to ``preds``, a missing prediction column,
            a sample layout that does not fit the task, or a kind impossible for the task.
    """
    _check_task_kind(task, kind)
    if id_column not in sample.columns:
        raise SubmissionError(f"the sample submission has no id column '{id_column}'")
    columns = [c for c in sample.columns if c != id_column]
    if not columns:
        raise SubmissionError("the sample submission has no column besides the id")
    rows = _align(preds, sample, id_column)
    if task == "multiclass":
        values = _multiclass(rows, sample, columns, list(classes), kind)
    elif task == "binary":
        values = _binary(rows, sample, columns, list(classes), kind)
    else:
        prefix = "p_" if task == "multilabel" else "pred_"
        values = _per_target(rows, columns, list(target_columns), prefix, kind)
    values[id_column] = sample[id_column].to_numpy()
    out = pd.DataFrame({column: values[column] for column in sample.columns})
    log.info("submission: %d rows, columns %s (%s, kind %s)", len(out), columns, task, kind)
    return out


# ------------------------------------------------------------------------------------ validate


def _check_columns(sub: pd.DataFrame, sample: pd.DataFrame) -> None:
    got, want = [str(c) for c in sub.columns], [str(c) for c in sample.columns]
    repeated = sorted({c for c in got if got.count(c) > 1})
    if repeated:
        raise SubmissionError(f"column(s) {repeated} appear more than once")
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    if missing:
        raise SubmissionError(f"missing column(s) {missing}; the sample has {want}")
    if extra:
        raise SubmissionError(f"extra column(s) {extra}; the sample has {want}")
    if got != want:
        raise SubmissionError(f"columns in another order: {got}; the sample has {want}")


def _id_set_difference(ids: pd.Series, want: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(sample ids absent from ``ids``, ids absent from the sample)."""
    return want[~want.isin(ids)], ids[~ids.isin(want)]


def _describe_difference(missing: pd.Series, extra: pd.Series) -> str:
    parts = []
    if len(missing):
        parts.append(f"{len(missing)} id(s) of the sample are missing, e.g. {_examples(missing)}")
    if len(extra):
        parts.append(f"{len(extra)} id(s) are not in the sample, e.g. {_examples(extra)}")
    return "; ".join(parts)


def _check_id_type(ids: pd.Series, want: pd.Series, id_column: str) -> None:
    empty = ids.isna().to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise SubmissionError(
            f"id column '{id_column}' row {row} is empty ({int(empty.sum())} empty id(s))"
        )
    if ids.dtype.kind != want.dtype.kind:
        raise SubmissionError(
            f"id column '{id_column}' has type {ids.dtype}, the sample's is "
            f"{want.dtype} (e.g. {_first_value(ids)} vs {_first_value(want)})"
        )


def _check_ids(sub: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> None:
    ids, want = sub[id_column].reset_index(drop=True), sample[id_column].reset_index(drop=True)
    _check_id_type(ids, want, id_column)
    duplicated = ids.duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        first = int(np.flatnonzero((ids == ids.iloc[row]).to_numpy())[0])
        raise SubmissionError(
            f"row {row}: id {show_value(ids.iloc[row])} appears twice (first at row {first}; "
            f"{int(duplicated.sum())} repeated row(s) in all)"
        )
    missing, extra = _id_set_difference(ids, want)
    if len(sub) != len(sample):
        detail = _describe_difference(missing, extra)
        raise SubmissionError(
            f"{len(sub)} rows; the sample submission has {len(sample)}"
            + (f" ({detail})" if detail else "")
        )
    if len(missing) or len(extra):
        raise SubmissionError(_describe_difference(missing, extra))
    wrong = np.flatnonzero(ids.to_numpy() != want.to_numpy())
    if len(wrong):
        row = int(wrong[0])
        raise SubmissionError(
            f"rows in another order than the sample: row {row} has id "
            f"{show_value(ids.iloc[row])}, the sample {show_value(want.iloc[row])} "
            f"({len(wrong)} row(s) out of place)"
        )


def _first_bad(mask: pd.Series | np.ndarray) -> tuple[int, int]:
    """(first row where ``mask`` is true, how many rows are), or (-1, 0)."""
    hits = np.flatnonzero(np.asarray(mask, dtype=bool))
    return (int(hits[0]), len(hits)) if len(hits) else (-1, 0)


def _where(sub: pd.DataFrame, id_column: str, column: str, row: int) -> str:
    return f"column '{column}' row {row} (id {show_value(sub[id_column].iloc[row])})"


def _check_finite(sub: pd.DataFrame, id_column: str, column: str) -> None:
    values = sub[column]
    row, count = _first_bad(values.isna())
    if count:
        raise SubmissionError(
            f"{_where(sub, id_column, column, row)} is NaN ({count} empty value(s) in the column)"
        )
    if values.dtype.kind in "fc":
        row, count = _first_bad(~np.isfinite(values.to_numpy()))
        if count:
            raise SubmissionError(
                f"column '{column}' row {row} is infinite "
                f"(id {show_value(sub[id_column].iloc[row])}, value "
                f"{show_value(values.iloc[row])}; {count} infinite value(s) in the column)"
            )


def _check_probability(sub: pd.DataFrame, id_column: str, column: str) -> None:
    values = sub[column]
    if values.dtype.kind not in "iuf":
        raise SubmissionError(
            f"column '{column}' holds {values.dtype} values (e.g. {_first_value(values)}); "
            "probabilities are numbers in [0, 1]"
        )
    row, count = _first_bad((values < 0) | (values > 1))
    if count:
        raise SubmissionError(
            f"column '{column}' row {row}: probability {show_value(values.iloc[row])} is outside "
            f"[0, 1] (id {show_value(sub[id_column].iloc[row])}; {count} such row(s))"
        )


def _check_labels(sub: pd.DataFrame, id_column: str, column: str, allowed: Iterable) -> None:
    values, allowed = sub[column], list(allowed)
    if values.dtype.kind in "iuf" and pd.api.types.is_numeric_dtype(pd.Series(allowed)):
        bad = ~values.isin(allowed)
    else:
        bad = ~values.astype(str).isin([str(v) for v in allowed])
    row, count = _first_bad(bad)
    if count:
        raise SubmissionError(
            f"column '{column}' row {row}: label {show_value(values.iloc[row])} is not one of "
            f"{allowed} (id {show_value(sub[id_column].iloc[row])}; {count} such row(s))"
        )


def validate_submission(
    sub: pd.DataFrame,
    sample: pd.DataFrame,
    *,
    id_column: str,
    probability_columns: Iterable[str] = (),
    label_values: dict[str, list] | None = None,
) -> None:
    """Refuse ``sub`` unless it matches ``sample`` exactly in layout, ids and value ranges.

    Args:
        sub: the submission to check.
        sample: the sample submission.
        id_column: the id column of both.
        probability_columns: columns whose values must lie in [0, 1] (names the sample does not
            have are ignored).
        label_values: for label columns, the values allowed in each (likewise).

    Raises:
        SubmissionError: on the first problem found, naming the column, row, id and counts.
    """
    probability_columns, label_values = list(probability_columns), dict(label_values or {})
    if id_column not in sample.columns:
        raise SubmissionError(f"the sample submission has no id column '{id_column}'")
    _check_columns(sub, sample)
    _check_ids(sub, sample, id_column)
    for column in [c for c in sub.columns if c != id_column]:
        _check_finite(sub, id_column, column)
        if column in probability_columns:
            _check_probability(sub, id_column, column)
        if column in label_values:
            _check_labels(sub, id_column, column, label_values[column])


def write_submission(
    sub: pd.DataFrame, sample: pd.DataFrame, path: str | os.PathLike, **validate_kwargs
) -> Path:
    """Validate, then write ``sub`` atomically to ``path`` as CSV.

    Args:
        sub: the submission.
        sample: the sample submission.
        path: where to write.
        **validate_kwargs: passed to :func:`validate_submission` (``id_column`` is required).

    Returns:
        ``path``.

    Raises:
        SubmissionError: when validation fails; nothing is written and a file already at
            ``path`` is left untouched.
    """
    validate_submission(sub, sample, **validate_kwargs)
    written = write_csv(path, sub)
    log.info("submission written: %s (%d rows)", written, len(sub))
    return written


# ---------------------------------------------------------------------------------------- files


def read_csv_checked(path: str | os.PathLike, what: str, **read) -> pd.DataFrame:
    """Read a CSV with pandas' default dtype inference (or as ``read``, ``pd.read_csv``'s
    keywords, says); refuse a missing, unreadable or empty file.

    Raises:
        SubmissionError: naming ``path``.
    """
    path = Path(path)
    if not path.exists():
        raise SubmissionError(f"{what} not found: {path}")
    if not path.is_file():
        raise SubmissionError(f"{what} {path} is not a file")
    try:
        frame = pd.read_csv(path, **read)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: cannot be read as CSV ({exc})") from exc
    except OSError as exc:
        raise SubmissionError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if frame.empty:
        raise SubmissionError(f"{path}: has no rows")
    return frame


def validate_submission_file(
    path: str | os.PathLike, sample_path: str | os.PathLike, *, id_column: str, **kwargs
) -> None:
    """Read the submission and the sample the same way, and validate.

    Args:
        path: the submission CSV.
        sample_path: the sample submission CSV.
        id_column: the id column of both.
        **kwargs: ``probability_columns`` and ``label_values`` for :func:`validate_submission`.

    Raises:
        SubmissionError: naming the file that is missing, unreadable or empty, or prefixed with
            the submission's path when its content is refused.
    """
    sub = read_csv_checked(path, "submission")
    sample = read_csv_checked(sample_path, "sample submission")
    try:
        validate_submission(sub, sample, id_column=id_column, **kwargs)
    except SubmissionError as exc:
        raise SubmissionError(f"{path}: {exc}") from None
