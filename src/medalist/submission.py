"""Map predictions onto Kaggle's sample submission, and refuse any file that does not match it.

One bad submission costs a day's quota; :func:`validate_submission` checks what Kaggle checks
and more (RELIABILITY R6): the ids (missing, duplicated, re-typed, reordered), the columns
(missing, extra, reordered), the row count, NaN and infinities, probabilities outside [0, 1] and
labels outside the classes. Every refusal says what is wrong and where.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.errors import SubmissionError, show_value
from medalist.io import write_csv

log = logging.getLogger(__name__)


def _ids_as_text(series: pd.Series) -> pd.Series:
    return series.astype(str)


def _align(preds: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> pd.DataFrame:
    """The prediction rows in the sample's id order; missing or extra ids are refused."""
    if id_column not in preds.columns:
        raise SubmissionError(f"predictions have no id column '{id_column}'")
    pred_ids, sample_ids = _ids_as_text(preds[id_column]), _ids_as_text(sample[id_column])
    if pred_ids.duplicated().any():
        raise SubmissionError(f"predictions repeat id {pred_ids[pred_ids.duplicated()].iloc[0]}")
    missing = sample_ids[~sample_ids.isin(pred_ids)]
    if len(missing):
        raise SubmissionError(
            f"{len(missing)} sample submission id(s) have no prediction, "
            f"e.g. {missing.head(5).tolist()}"
        )
    extra = pred_ids[~pred_ids.isin(sample_ids)]
    if len(extra):
        raise SubmissionError(
            f"{len(extra)} predicted id(s) are not in the sample submission, "
            f"e.g. {extra.head(5).tolist()}"
        )
    position = pd.Series(np.arange(len(preds)), index=pred_ids.to_numpy())
    return preds.iloc[position.loc[sample_ids.to_numpy()].to_numpy()].reset_index(drop=True)


def _cast_labels(labels: list, dtype) -> list:
    if dtype.kind in "iu":
        return [int(v) for v in labels]
    if dtype.kind == "f":
        return [float(v) for v in labels]
    return [str(v) for v in labels]


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
        preds: a prediction table (id, then ``p_<class>`` or ``pred_<target>`` columns).
        sample: the sample submission.
        id_column: the id column of both.
        task: binary, multiclass, multilabel or regression.
        classes: the class labels, in the order of the ``p_`` columns (binary, multiclass).
        target_columns: the task's target columns.
        kind: ``label`` (class labels), ``probability``, or ``auto`` (follow the sample).
    """
    rows = _align(preds, sample, id_column)
    out = pd.DataFrame({id_column: sample[id_column].to_numpy()})
    value_columns = [c for c in sample.columns if c != id_column]
    if task == "multiclass":
        probs = rows[[f"p_{c}" for c in classes]].to_numpy()
        by_class = {str(c) for c in classes}
        if kind == "auto":
            kind = "probability" if set(map(str, value_columns)) == by_class else "label"
        if kind == "label":
            if len(value_columns) != 1:
                raise SubmissionError(
                    f"sample submission has {value_columns}: one label column "
                    "was expected for kind 'label'"
                )
            column = value_columns[0]
            labels = np.asarray(_cast_labels(classes, sample[column].dtype), dtype=object)
            out[column] = pd.Series(labels[probs.argmax(1)]).astype(sample[column].dtype)
        else:
            lookup = {str(c): i for i, c in enumerate(classes)}
            for column in value_columns:
                if str(column) not in lookup:
                    raise SubmissionError(f"sample column '{column}' is not a class {classes}")
                out[column] = probs[:, lookup[str(column)]]
    elif task == "binary":
        if len(value_columns) != 1:
            raise SubmissionError(
                f"sample submission has {value_columns}: a binary task writes one column"
            )
        column, positive = value_columns[0], rows[f"p_{classes[1]}"].to_numpy()
        if kind == "label":
            labels = np.asarray(_cast_labels(classes, sample[column].dtype), dtype=object)
            out[column] = pd.Series(labels[(positive >= 0.5).astype(int)]).astype(
                sample[column].dtype
            )
        else:
            out[column] = positive
    else:
        prefix = "p_" if task == "multilabel" else "pred_"
        missing = [c for c in value_columns if c not in target_columns]
        if missing:
            raise SubmissionError(f"sample columns {missing} are not targets {target_columns}")
        if kind == "label" and task == "regression":
            raise SubmissionError("submission.kind: 'label' makes no sense for regression")
        for column in value_columns:
            values = rows[f"{prefix}{column}"].to_numpy()
            out[column] = (values >= 0.5).astype(int) if kind == "label" else values
    return out


def _check_columns(sub: pd.DataFrame, sample: pd.DataFrame) -> None:
    got, want = [str(c) for c in sub.columns], [str(c) for c in sample.columns]
    missing = [c for c in want if c not in got]
    extra = [c for c in got if c not in want]
    if missing:
        raise SubmissionError(f"missing column(s) {missing}")
    if extra:
        raise SubmissionError(f"extra column(s) {extra}; the sample has {want}")
    if got != want:
        raise SubmissionError(f"columns in another order: {got}; the sample has {want}")


def _check_ids(sub: pd.DataFrame, sample: pd.DataFrame, id_column: str) -> None:
    ids, want = sub[id_column], sample[id_column]
    if ids.dtype.kind != want.dtype.kind:
        raise SubmissionError(
            f"id column '{id_column}' has type {ids.dtype}, the sample's is "
            f"{want.dtype} (e.g. {show_value(ids.iloc[0])} vs "
            f"{show_value(want.iloc[0])})"
        )
    duplicated = ids.duplicated()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated.to_numpy())[0])
        raise SubmissionError(f"row {row}: id {show_value(ids.iloc[row])} appears twice")
    if len(sub) != len(sample):
        raise SubmissionError(f"{len(sub)} rows; the sample submission has {len(sample)}")
    missing = want[~want.isin(ids)]
    if len(missing):
        raise SubmissionError(
            f"{len(missing)} id(s) of the sample are missing, e.g. {missing.head(5).tolist()}"
        )
    wrong = np.flatnonzero(ids.to_numpy() != want.to_numpy())
    if len(wrong):
        row = int(wrong[0])
        raise SubmissionError(
            f"rows in another order than the sample: row {row} has id "
            f"{show_value(ids.iloc[row])}, the sample {show_value(want.iloc[row])}"
        )


def _check_values(sub, id_column, probability_columns, label_values) -> None:
    for column in [c for c in sub.columns if c != id_column]:
        values = sub[column]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise SubmissionError(
                f"column '{column}' row {row} (id {show_value(sub[id_column].iloc[row])}) is NaN"
            )
        if values.dtype.kind == "f" and not np.isfinite(values.to_numpy()).all():
            row = int(np.flatnonzero(~np.isfinite(values.to_numpy()))[0])
            raise SubmissionError(f"column '{column}' row {row} is infinite")
        if column in probability_columns:
            outside = (values < 0) | (values > 1)
            if outside.any():
                row = int(np.flatnonzero(outside.to_numpy())[0])
                raise SubmissionError(
                    f"column '{column}' row {row}: probability "
                    f"{show_value(values.iloc[row])} is outside [0, 1]"
                )
        allowed = (label_values or {}).get(column)
        if allowed is not None:
            bad = ~values.astype(str).isin([str(v) for v in allowed])
            if bad.any():
                row = int(np.flatnonzero(bad.to_numpy())[0])
                raise SubmissionError(
                    f"column '{column}' row {row}: label "
                    f"{show_value(values.iloc[row])} is not one of {list(allowed)}"
                )


def validate_submission(
    sub: pd.DataFrame,
    sample: pd.DataFrame,
    *,
    id_column: str,
    probability_columns=(),
    label_values: dict | None = None,
) -> None:
    """Refuse ``sub`` unless it matches ``sample`` exactly in layout, ids and value ranges."""
    _check_columns(sub, sample)
    _check_ids(sub, sample, id_column)
    _check_values(sub, id_column, set(probability_columns), label_values)


def write_submission(sub: pd.DataFrame, sample: pd.DataFrame, path, **validate_kwargs) -> Path:
    """Validate, then write atomically; on a refusal an existing file at ``path`` is untouched."""
    validate_submission(sub, sample, **validate_kwargs)
    return write_csv(path, sub)


def read_csv_checked(path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{what} not found: {path}")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise SubmissionError(f"{path}: cannot be read as CSV ({exc})") from exc
    if frame.empty:
        raise SubmissionError(f"{path}: has no rows")
    return frame


def validate_submission_file(path, sample_path, *, id_column: str, **kwargs) -> None:
    """Read both CSV files the same way and validate; errors name the submission's path."""
    sub = read_csv_checked(path, "submission")
    sample = read_csv_checked(sample_path, "sample submission")
    try:
        validate_submission(sub, sample, id_column=id_column, **kwargs)
    except SubmissionError as exc:
        raise SubmissionError(f"{path}: {exc}") from None
