"""Cross-validation folds: assign them once, record a manifest, refuse them for other data.

``folds/folds.csv`` holds ``[id, fold]`` in train's row order; ``folds/folds.json`` records the
splitter, its parameters and hashes of the data it was made for. :func:`load_folds` checks those
hashes, so a changed target, an added or removed row, or a hand-edited fold file stops a stage
instead of leaking validation rows into training.

With ``folds.test_like`` (a ``test_like.csv`` of ``medalist adversarial``), the flagged train
rows, the ones a classifier finds most like the test set, are spread evenly over the folds (a
stratum of their own) and ``folds.csv`` gains a ``test_like`` column: every experiment then also
scores its CV on those rows alone (:mod:`medalist.honest.test_like`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from medalist.config import Config
from medalist.data import read_train
from medalist.errors import ConfigError, DataError, FoldsMismatchError, show_value
from medalist.io import sha256_file, sha256_frame, write_csv, write_json
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)

SCHEMES = ("kfold", "stratified", "group", "stratified_group", "multilabel_stratified", "quantile")
GROUP_SCHEMES = ("group", "stratified_group")
SINGLE_TARGET_SCHEMES = ("stratified", "stratified_group", "quantile")
_CLASSES = (KFold, StratifiedKFold, GroupKFold, StratifiedGroupKFold, MultilabelStratifiedKFold)
_SPLITTERS = dict(zip(SCHEMES, (*_CLASSES, StratifiedKFold), strict=True))
TEST_LIKE = "test_like"  # folds.csv's column of the rows flagged by ``folds.test_like``


def make_splitter(scheme: str, n_splits: int, random_state: int, n_bins: int = 10):
    """Return the scikit-learn style splitter of ``scheme`` (every one shuffles).

    ``quantile`` is a :class:`StratifiedKFold`; :func:`assign_folds` feeds it the ``n_bins``
    quantile bins of the target instead of the target itself.

    Raises:
        ConfigError: naming ``folds.scheme`` when the scheme is unknown.
    """
    if scheme not in _SPLITTERS:
        raise ConfigError(f"folds.scheme: unknown scheme {scheme!r}; valid: {', '.join(SCHEMES)}")
    return _SPLITTERS[scheme](n_splits=n_splits, shuffle=True, random_state=random_state)


def _first_row(mask: pd.Series) -> int:
    return int(np.flatnonzero(mask.to_numpy())[0])


def _check_columns(train: pd.DataFrame, columns: list[str]) -> None:
    missing = [c for c in columns if c not in train.columns]
    if missing:
        raise DataError(f"train: missing column(s) {missing}; it has {list(train.columns)[:20]}")


def _check_ids(ids: pd.Series, id_column: str) -> None:
    duplicated = ids.duplicated()
    if duplicated.any():
        row = _first_row(duplicated)
        raise DataError(f"train: row {row}: duplicated {id_column} {show_value(ids.iloc[row])}")


def _check_no_nan(train: pd.DataFrame, columns: list[str]) -> None:
    for column in columns:
        if train[column].isna().any():
            raise DataError(f"train: row {_first_row(train[column].isna())} has no {column}")


def _check_n_splits(n_splits: int, n_rows: int, n_groups: int | None) -> None:
    if not isinstance(n_splits, (int, np.integer)) or isinstance(n_splits, bool) or n_splits < 2:
        raise ConfigError(f"folds.n_splits: must be an integer >= 2, got {n_splits!r}")
    if n_splits > n_rows:
        raise ConfigError(f"folds.n_splits: {n_splits} folds but train has only {n_rows} rows")
    if n_groups is not None and n_splits > n_groups:
        raise ConfigError(f"folds.n_splits: {n_splits} folds but only {n_groups} groups")


def _check_classes(y: pd.Series, column: str, n_splits: int) -> None:
    counts = y.astype(str).value_counts()
    if counts.iloc[-1] < n_splits:
        raise DataError(
            f"train: class {counts.index[-1]!r} of {column} has {counts.iloc[-1]} row(s), fewer "
            f"than folds.n_splits={n_splits}; lower n_splits, merge rare classes, or use "
            "'quantile' for a continuous target"
        )


def _check_multilabel(train: pd.DataFrame, target_columns: list[str]) -> None:
    if len(target_columns) < 2:
        raise ConfigError(
            "competition.target_columns: scheme 'multilabel_stratified' needs >= 2 target "
            f"columns, got {target_columns}"
        )
    for column in target_columns:
        bad = ~train[column].isin([0, 1])
        if bad.any():
            row = _first_row(bad)
            raise DataError(
                f"train: row {row}: {column} is {show_value(train[column].iloc[row])}; "
                "'multilabel_stratified' needs 0/1 targets"
            )


def _check_scheme_targets(train: pd.DataFrame, target_columns: list[str], scheme: str, n_splits):
    if scheme == "multilabel_stratified":
        _check_multilabel(train, target_columns)
    if scheme not in SINGLE_TARGET_SCHEMES:
        return
    if len(target_columns) != 1:
        raise ConfigError(
            f"competition.target_columns: scheme {scheme!r} stratifies one target column, got "
            f"{target_columns}; use 'multilabel_stratified' for several"
        )
    column, dtype = target_columns[0], train[target_columns[0]].dtype
    numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
    if scheme == "quantile" and not numeric:
        raise DataError(f"train: {column} is {dtype}; scheme 'quantile' needs a numeric target")
    if scheme != "quantile":
        _check_classes(train[column], column, n_splits)


def quantile_bins(y: pd.Series, n_bins: int, n_splits: int) -> tuple[np.ndarray, int]:
    """Bin a continuous target into quantiles, each bin holding at least ``n_splits`` rows.

    Returns:
        The bin of every row and the number of bins asked of ``pd.qcut`` (``n_bins`` unless it
        had to be lowered because ties left a bin too small to stratify).
    """
    for bins_used in range(max(int(n_bins), 1), 0, -1):
        bins = pd.qcut(y, bins_used, labels=False, duplicates="drop")
        bins = bins.fillna(0).astype(int).to_numpy()  # a constant target: one bin
        if np.bincount(bins).min() >= n_splits or bins_used == 1:
            break
    if bins_used != n_bins:
        log.warning("folds: quantile bins lowered from %d to %d (ties)", n_bins, bins_used)
    return bins, bins_used


def read_test_like(path: str | os.PathLike, train: pd.DataFrame, id_column: str) -> np.ndarray:
    """The 0/1 test-like flag of every train row, in train's row order, from ``path``.

    Raises:
        ConfigError: ``folds.test_like`` names no file.
        DataError: the file lacks a column, misses or adds ids, or holds a flag other than 0/1.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"folds.test_like: {path} not found; run `medalist adversarial` first (it writes "
            "outputs/adversarial/<experiment>/test_like.csv) or set folds.test_like to null"
        )
    table = pd.read_csv(path, dtype={id_column: str})
    missing = [c for c in (id_column, TEST_LIKE) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; it has {list(table.columns)}")
    ids, file_ids = train[id_column].astype(str), table[id_column].astype(str)
    gone, extra = sorted(set(ids) - set(file_ids)), sorted(set(file_ids) - set(ids))
    if gone or extra or len(file_ids) != len(ids):
        raise DataError(
            f"{path}: made for other train rows ({len(gone)} train id(s) missing, e.g. {gone[:3]}; "
            f"{len(extra)} unknown, e.g. {extra[:3]}; {len(file_ids)} rows for {len(ids)}); "
            "run `medalist adversarial` again on this data"
        )
    bad = ~table[TEST_LIKE].isin([0, 1])
    if bad.any():
        row = _first_row(bad)
        raise DataError(
            f"{path}: row {row}: test_like is {show_value(table[TEST_LIKE].iloc[row])}; 0 or 1"
        )
    flags = pd.Series(table[TEST_LIKE].to_numpy(dtype=np.int64), index=file_ids.to_numpy())
    return flags.loc[ids.to_numpy()].to_numpy()


def _check_test_like(test_like: np.ndarray, n_splits: int) -> None:
    flagged = int(np.sum(test_like))
    if not n_splits <= flagged <= len(test_like) - n_splits:
        raise DataError(
            f"folds.test_like: {flagged} of {len(test_like)} train rows are flagged; every fold "
            f"needs flagged and unflagged rows, so between {n_splits} and "
            f"{len(test_like) - n_splits} (adversarial.test_like_fraction sets the share)"
        )


def _split(splitter, y, groups, n_rows: int) -> np.ndarray:
    fold = np.full(n_rows, -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splitter.split(np.zeros((n_rows, 1)), y, groups)):
        fold[valid] = k
    return fold


def _split_test_like(scheme, y, groups, test_like, n_splits, random_state) -> np.ndarray:
    """Folds that give every fold its share of the flagged rows.

    Ungrouped schemes split the flagged and the other rows apart, each by the scheme (each fold's
    flagged rows then number the same to within one), and join the flagged rows' largest fold with
    the others' smallest so the folds keep their sizes. Grouped schemes cannot split a group
    across the two, so the flag becomes a stratum (``kfold``'s and ``group``'s only one) and the
    spread is as even as whole groups allow.
    """
    flag = np.asarray(test_like, dtype=np.int64)
    if scheme in GROUP_SCHEMES:
        strata = flag.astype(str) if y is None else np.char.add(flag.astype(str), y.astype(str))
        return _split(make_splitter("stratified_group", n_splits, random_state), strata, groups,
                      len(flag))  # fmt: skip
    fold = np.full(len(flag), -1, dtype=np.int64)
    sizes = []
    for part in (flag == 1, flag == 0):
        rows = np.flatnonzero(part)
        labels = None if y is None else y[rows]
        splitter = make_splitter(scheme, n_splits, random_state)
        if labels is not None and np.unique(labels, axis=0, return_counts=True)[1].max() < n_splits:
            splitter = make_splitter("kfold", n_splits, random_state)  # too few to stratify
        fold[rows] = _split(splitter, labels, None, len(rows))
        sizes.append(np.bincount(fold[rows], minlength=n_splits))
    # the other rows' fold k joins the flagged rows' fold whose size ranks opposite to it
    largest_first, smallest_first = np.argsort(-sizes[0], kind="stable"), np.argsort(sizes[1])
    rename = np.empty(n_splits, dtype=np.int64)
    rename[smallest_first] = largest_first
    others = flag == 0
    fold[others] = rename[fold[others]]
    return fold


def _validate(train, id_column, target_columns, scheme, n_splits, group_column) -> None:
    if scheme not in SCHEMES:
        make_splitter(scheme, 2, 0)  # raises the ConfigError
    uses_groups = scheme in GROUP_SCHEMES
    if uses_groups and not group_column:
        raise ConfigError(f"folds.group_column: scheme {scheme!r} needs a group column")
    groups = [group_column] if uses_groups else []
    _check_columns(train, [id_column, *target_columns, *groups])
    _check_no_nan(train, [id_column, *target_columns, *groups])
    _check_ids(train[id_column], id_column)
    n_groups = train[group_column].nunique() if uses_groups else None
    _check_n_splits(n_splits, len(train), n_groups)
    _check_scheme_targets(train, list(target_columns), scheme, n_splits)


def assign_folds(
    train: pd.DataFrame,
    *,
    id_column: str,
    target_columns: list[str],
    scheme: str,
    n_splits: int,
    random_state: int,
    group_column: str | None = None,
    n_bins: int = 10,
    test_like: np.ndarray | None = None,
) -> pd.DataFrame:
    """Assign every row of ``train`` to one of ``n_splits`` folds; ``train`` is not modified.

    ``test_like`` (0/1 per row, :func:`read_test_like`): every fold also holds its share of
    the flagged rows (:func:`_split_test_like`).

    Returns:
        A new frame with columns ``[id_column, "fold"]`` in train's row order, plus
        ``test_like`` when given.

    Raises:
        DataError: a column is missing, an id is duplicated, a target is missing or unfit.
        ConfigError: the scheme, ``n_splits`` or the group column does not fit the data.
    """
    target_columns = list(target_columns)
    _validate(train, id_column, target_columns, scheme, n_splits, group_column)
    if group_column and scheme not in GROUP_SCHEMES:
        log.warning("folds: group_column %r is ignored by scheme %r", group_column, scheme)
    y = None
    if scheme == "multilabel_stratified":
        y = train[target_columns].to_numpy(dtype=int)
    elif scheme == "quantile":
        y = quantile_bins(train[target_columns[0]], n_bins, n_splits)[0]
    elif scheme in SINGLE_TARGET_SCHEMES:
        y = train[target_columns[0]].astype(str).to_numpy()
    groups = train[group_column].astype(str).to_numpy() if scheme in GROUP_SCHEMES else None
    if test_like is not None:
        _check_test_like(test_like, n_splits)
        fold = _split_test_like(scheme, y, groups, test_like, n_splits, random_state)
    else:
        fold = _split(make_splitter(scheme, n_splits, random_state, n_bins), y, groups, len(train))
    table = pd.DataFrame({id_column: train[id_column].to_numpy(), "fold": fold})
    if test_like is not None:
        table[TEST_LIKE] = np.asarray(test_like, dtype=np.int64)
    return table


def build_manifest(
    train: pd.DataFrame,
    folds: pd.DataFrame,
    *,
    id_column: str,
    target_columns: list[str],
    scheme: str,
    n_splits: int,
    random_state: int,
    group_column: str | None = None,
    n_bins: int = 10,
) -> dict:
    """Describe how ``folds`` were made and hash the data they belong to (``folds.json``)."""
    target_columns = list(target_columns)
    splitter = make_splitter(scheme, n_splits, random_state, n_bins)
    params = {"n_splits": n_splits, "shuffle": splitter.shuffle, "random_state": random_state}
    if scheme == "quantile":
        params["n_bins"] = n_bins
        params["n_bins_used"] = quantile_bins(train[target_columns[0]], n_bins, n_splits)[1]
    stratify = {"kfold": [], "group": [], "multilabel_stratified": target_columns}
    stratify_columns = stratify.get(scheme, target_columns[:1])
    if TEST_LIKE in folds.columns:
        stratify_columns = [*stratify_columns, TEST_LIKE]
        if scheme in GROUP_SCHEMES:
            splitter = make_splitter("stratified_group", n_splits, random_state)
    sizes = folds["fold"].value_counts()
    return {
        "splitter": type(splitter).__name__,
        "scheme": scheme,
        "params": params,
        "seed": random_state,
        "id_column": id_column,
        "target_columns": target_columns,
        "group_column": group_column,
        "stratify_columns": stratify_columns,
        "n_rows": len(train),
        "data_sha256": sha256_frame(train[[id_column, *target_columns]]),
        "ids_sha256": sha256_frame(train[[id_column]]),
        "folds_sha256": sha256_frame(folds),
        "fold_sizes": {str(k): int(sizes.get(k, 0)) for k in range(n_splits)},
    }


def write_folds(
    folds: pd.DataFrame, manifest: dict, folds_dir: str | os.PathLike
) -> tuple[Path, Path]:
    """Write ``folds.csv`` then ``folds.json`` atomically into ``folds_dir``; return both paths."""
    if sha256_frame(folds) != manifest["folds_sha256"]:
        raise ValueError("write_folds: the manifest was built for another folds frame")
    folder = Path(folds_dir)
    return write_csv(folder / "folds.csv", folds), write_json(folder / "folds.json", manifest)


def _mismatch(folder: Path, reason: str) -> FoldsMismatchError:
    return FoldsMismatchError(
        f"{folder}: {reason}; re-run `medalist folds --force` to make new folds (experiments on "
        "the old folds are then no longer comparable) or restore the data they were made for"
    )


def _read_folds(folder: Path) -> tuple[dict, pd.DataFrame]:
    csv_file, json_file = folder / "folds.csv", folder / "folds.json"
    missing = [p.name for p in (csv_file, json_file) if not p.is_file()]
    if missing:
        raise _mismatch(folder, f"fold file(s) {missing} not found")
    try:
        manifest = json.loads(json_file.read_text(encoding="utf-8"))
        table = pd.read_csv(csv_file, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise _mismatch(folder, f"fold files cannot be read ({exc})") from exc
    keys = ("id_column", "target_columns", "ids_sha256", "data_sha256", "folds_sha256")
    if not isinstance(manifest, dict) or any(k not in manifest for k in keys):
        raise _mismatch(folder, f"folds.json lacks one of {list(keys)}")
    return manifest, table


def _describe_id_change(train_ids: pd.Series, file_ids: pd.Series) -> str:
    now, then = set(train_ids), set(file_ids)
    new, gone = sorted(now - then), sorted(then - now)
    if not new and not gone:
        return "train has the same ids in a different row order than when the folds were made"
    parts = [f"{len(new)} new id(s) (e.g. {new[:3]})"] if new else []
    parts += [f"{len(gone)} missing id(s) (e.g. {gone[:3]})"] if gone else []
    return f"train ids changed since the folds were made: {', '.join(parts)}"


def _why_not(manifest: dict, table: pd.DataFrame, train: pd.DataFrame, key: str, targets) -> str:
    """Why ``table`` (folds.csv, as text) does not belong to ``train``; empty when it does."""
    made_for, given = (manifest["id_column"], manifest["target_columns"]), (key, targets)
    if made_for != given:
        return f"the folds were made for id/target columns {made_for}, not {given}"
    columns = [key, "fold", TEST_LIKE] if "test_like" in manifest else [key, "fold"]
    if list(table.columns) != columns or sha256_frame(table) != manifest["folds_sha256"]:
        return "folds.csv was edited after it was written (its hash differs from folds.json)"
    if sha256_frame(train[[key]]) != manifest["ids_sha256"]:
        return _describe_id_change(train[key].astype(str), table[key])
    if sha256_frame(train[[key, *targets]]) != manifest["data_sha256"]:
        return f"target values in {targets} changed since the folds were made (ids did not)"
    return ""


def load_folds(
    folds_dir: str | os.PathLike,
    train: pd.DataFrame,
    *,
    id_column: str,
    target_columns: list[str],
) -> pd.DataFrame:
    """Read ``folds.csv`` and check it belongs to ``train``; return it in train's row order
    (``[id_column, "fold"]``, and ``test_like`` when the folds were made with ``folds.test_like``).

    Raises:
        DataError: ``train`` lacks the id or a target column.
        FoldsMismatchError: the files are missing or edited, or were made for other columns, ids
            or targets.
    """
    folder, target_columns = Path(folds_dir), list(target_columns)
    _check_columns(train, [id_column, *target_columns])
    manifest, table = _read_folds(folder)
    reason = _why_not(manifest, table, train, id_column, target_columns)
    if reason:
        raise _mismatch(folder, reason)
    fold = table["fold"].astype(int).to_numpy()
    loaded = pd.DataFrame({id_column: train[id_column].to_numpy(), "fold": fold})
    if TEST_LIKE in table.columns:
        loaded[TEST_LIKE] = table[TEST_LIKE].astype(int).to_numpy()
    return loaded


# The folds stage


def _fold_params(cfg: Config) -> dict:
    f, c = cfg.folds, cfg.competition
    return {
        "id_column": c.id_column,
        "target_columns": list(c.target_columns),
        "scheme": f.scheme,
        "n_splits": f.n_splits,
        "random_state": f.random_state,
        "group_column": f.group_column,
        "n_bins": f.n_bins,
    }


def run(cfg: Config, force: bool = False) -> pd.DataFrame:
    """Write ``folds/folds.csv`` and ``folds/folds.json`` once; later runs reuse them.

    Existing folds made with other settings, or for other data, are never replaced silently: a
    changed split after training would mix validation rows into training (``force`` replaces them).
    """
    train = read_train(cfg)
    folder = Path(cfg.competition.folds_dir)
    params = _fold_params(cfg)
    test_like = None
    if cfg.folds.test_like is not None:
        test_like = read_test_like(cfg.folds.test_like, train, params["id_column"])
    manifest_file = folder / "folds.json"
    if manifest_file.is_file() and not force:
        existing = json.loads(manifest_file.read_text())
        loaded = load_folds(
            folder, train, id_column=params["id_column"], target_columns=params["target_columns"]
        )
        if _same_split(existing, params) and _same_test_like(existing, cfg.folds.test_like):
            log.info("folds: %s already matches the data and settings; reused", folder)
            return loaded
        raise FoldsMismatchError(
            f"{manifest_file} was made with other settings ({existing.get('scheme')}, "
            f"n_splits={existing.get('params', {}).get('n_splits')}, test_like "
            f"{existing.get('test_like', {}).get('file')}); pass --force to replace it "
            "(experiments trained on the old folds are no longer comparable)"
        )
    table = assign_folds(train, **params, test_like=test_like)
    manifest = build_manifest(train, table, **params)
    if test_like is not None:
        manifest["test_like"] = _test_like_record(cfg.folds.test_like, table)
    state = process_state(cfg)
    if state.is_main_process:  # several processes: one writes, the others wait for the files
        write_folds(table, manifest, folder)
        log.info("folds: %d rows in %d folds written to %s", len(table), cfg.folds.n_splits, folder)
    state.wait_for_everyone()
    return table


def _test_like_record(path: str, table: pd.DataFrame) -> dict:
    per_fold = table.groupby("fold")[TEST_LIKE].sum()
    return {
        "file": str(path),
        "sha256": sha256_file(path),
        "rows": int(table[TEST_LIKE].sum()),
        "per_fold": {str(k): int(v) for k, v in per_fold.items()},
    }


def _same_test_like(manifest: dict, path: str | None) -> bool:
    """Whether the folds were made from the same test-like file (by content), or both without."""
    made = manifest.get("test_like")
    if made is None or path is None:
        return made is None and path is None
    return made["sha256"] == sha256_file(path)


def _same_split(manifest: dict, params: dict) -> bool:
    got = manifest.get("params", {})
    return (
        manifest.get("scheme") == params["scheme"]
        and got.get("n_splits") == params["n_splits"]
        and manifest.get("seed") == params["random_state"]
        and manifest.get("group_column") == params["group_column"]
    )
