"""Load ensemble members and check them before any work.

A member is one experiment folder, or several folders holding the same experiment run with
different seeds (averaged, never the best seed picked). Every folder holds ``oof.parquet`` and
``test.parquet`` in the contract format: the id column, ``fold`` (OOF only), then the task's
prediction columns. The checks refuse, naming the experiment: an empty list, other folds (the
folds manifest of the experiment's config, and the ``fold`` column of its OOF table against
``folds.csv``), other ids, other columns, NaN or infinite values, probabilities outside [0, 1].
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medalist.config import Config
from medalist.data import read_train
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.folds import TEST_LIKE, load_folds
from medalist.layout import folds_files, train_path
from medalist.tasks import Task, build_task

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One ensemble member: its folders (one per seed) and its seed-averaged predictions."""

    name: str
    folders: list[Path]
    seed_oof: list[np.ndarray]  # one (n_rows, n_columns) array per folder, train row order
    test: np.ndarray  # (n_test, n_columns), averaged over seeds

    @property
    def oof(self) -> np.ndarray:
        return np.mean(self.seed_oof, axis=0)


@dataclass
class Inputs:
    """Everything a blend needs, aligned: labels, folds and each member's predictions."""

    cfg: Config
    task: Task
    y: np.ndarray  # task targets in train row order
    fold: np.ndarray  # fold of every train row (folds.csv)
    ids: np.ndarray  # train ids
    test_ids: np.ndarray  # test ids, in the first member's order
    columns: list[str]
    members: list[Member] = field(default_factory=list)
    test_like: np.ndarray | None = None  # folds.csv's test-like flags (folds.test_like), or None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def oof(self) -> np.ndarray:
        """Stacked OOF predictions, shape (n_members, n_rows, n_columns)."""
        return np.stack([m.oof for m in self.members])

    def test(self) -> np.ndarray:
        """Stacked test predictions, shape (n_members, n_test, n_columns)."""
        return np.stack([m.test for m in self.members])


def resolve_folder(entry: str, outputs_dir: Path) -> Path:
    """``outputs/<entry>`` when it exists, else ``entry`` as a path (a teammate's folder)."""
    under = outputs_dir / entry
    return under if under.is_dir() or not Path(entry).is_dir() else Path(entry)


def expand_members(entries: list, outputs_dir: Path) -> list[tuple[str, list[Path]]]:
    """``(name, folders)`` per member: a string, a list (seed group) or a glob ``'exp@*'``."""
    if not entries:
        raise ConfigError("ensemble.experiments: the list is empty; name at least one experiment")
    members = []
    for entry in entries:
        if isinstance(entry, list):
            name = _group_name(entry)
            members.append((name, [resolve_folder(e, outputs_dir) for e in entry]))
        elif glob.has_magic(entry):
            found = sorted(Path(p) for p in glob.glob(str(outputs_dir / entry)))
            if not found:
                raise DataError(f"experiment '{entry}': no folder under {outputs_dir} matches")
            members.append((entry.split("@")[0].rstrip("*_-"), found))
        else:
            members.append((entry, [resolve_folder(entry, outputs_dir)]))
    names = [name for name, _ in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"ensemble.experiments: a member is listed twice: {names}")
    return members


def _group_name(entries: list[str]) -> str:
    bases = {Path(e).name.split("@")[0] for e in entries}
    return bases.pop() if len(bases) == 1 and len(entries) > 1 else "+".join(entries)


def read_prediction(path: Path, label: str) -> pd.DataFrame:
    """Read a prediction table; a missing or unreadable file names the experiment."""
    if not path.is_file():
        stage = "train" if path.name == "oof.parquet" else "infer"
        raise DataError(f"{label}: {path} not found (run `medalist {stage}` for it first)")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{label}: {path} cannot be read ({exc})") from exc


def check_manifest(folder: Path, label: str, manifest: dict) -> None:
    """An experiment's config names its folds dir; its folds.json must be ours (same hashes)."""
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        return  # a foreign folder: its OOF fold column is checked instead
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        folds_dir = Path(config["competition"]["folds_dir"])
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise DataError(f"{label}: {config_file} has no competition.folds_dir ({exc})") from exc
    theirs = folds_dir / "folds.json"
    if not theirs.is_file():
        raise FoldsMismatchError(f"{label}: its folds manifest {theirs} does not exist")
    other = json.loads(theirs.read_text(encoding="utf-8"))
    for key in ("folds_sha256", "ids_sha256"):
        if other.get(key) != manifest[key]:
            raise FoldsMismatchError(
                f"{label}: trained on other folds ({theirs} {key} differs from this project's "
                "folds.json); experiments on different folds cannot be blended or stacked"
            )


def _id_difference(have: pd.Index, want: pd.Index) -> str:
    missing, extra = want.difference(have), have.difference(want)
    parts = [f"{len(missing)} missing (e.g. {list(missing[:3])})"] if len(missing) else []
    parts += [f"{len(extra)} extra (e.g. {list(extra[:3])})"] if len(extra) else []
    return ", ".join(parts) or "same ids in another row order"


def check_values(table: pd.DataFrame, columns: list[str], label: str, probabilities: bool):
    """Same columns, no NaN or infinity, probabilities in [0, 1]."""
    values = table[columns].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        column = columns[int(np.flatnonzero(bad.any(0))[0])]
        raise DataError(f"{label}: {int(bad.sum())} NaN or infinite value(s), e.g. in {column}")
    if probabilities and ((values < 0) | (values > 1)).any():
        raise DataError(f"{label}: probabilities outside [0, 1]")
    return values


def _columns(table: pd.DataFrame, id_column: str, label: str) -> list[str]:
    if id_column not in table.columns:
        raise DataError(f"{label}: no id column '{id_column}'; it has {list(table.columns)[:10]}")
    return [c for c in table.columns if c not in (id_column, "fold")]


def align_oof(table: pd.DataFrame, inputs: Inputs, label: str) -> np.ndarray:
    """OOF values in train row order, after checking ids, columns, folds and values."""
    id_column = inputs.cfg.competition.id_column
    columns = _columns(table, id_column, label)
    if columns != inputs.columns:
        raise DataError(f"{label}: columns {columns} differ from the expected {inputs.columns}")
    if "fold" not in table.columns:
        raise DataError(
            f"{label}: has no 'fold' column, so it is not an out-of-fold table; blending and "
            "stacking need OOF predictions made with this project's folds"
        )
    ids = pd.Index(table[id_column].astype(str))
    want = pd.Index(inputs.ids.astype(str))
    if ids.has_duplicates or len(ids) != len(want) or not ids.isin(want).all():
        raise DataError(f"{label}: ids differ from train.csv: {_id_difference(ids, want)}")
    rows = pd.Series(np.arange(len(ids)), index=ids).loc[want].to_numpy()
    wrong = table["fold"].to_numpy()[rows].astype(np.int64) != inputs.fold
    if wrong.any():
        raise FoldsMismatchError(
            f"{label}: the fold of {int(wrong.sum())} OOF row(s) differs from folds.csv; its "
            "predictions were made with other folds (or are not out-of-fold)"
        )
    probabilities = inputs.task.type != "regression"
    return check_values(table, columns, label, probabilities)[rows]


def align_test(table: pd.DataFrame, inputs: Inputs, label: str) -> np.ndarray:
    """Test values in the first member's id order (which sets it when it is the first)."""
    id_column = inputs.cfg.competition.id_column
    columns = _columns(table, id_column, label)
    if columns != inputs.columns:
        raise DataError(f"{label}: columns {columns} differ from the expected {inputs.columns}")
    ids = pd.Index(table[id_column].astype(str))
    if ids.has_duplicates:
        raise DataError(f"{label}: duplicated ids in test.parquet")
    if inputs.test_ids.size == 0:
        inputs.test_ids = table[id_column].to_numpy()
    want = pd.Index(inputs.test_ids.astype(str))
    if len(ids) != len(want) or not ids.isin(want).all():
        first = inputs.members[0].name if inputs.members else "the first member"
        raise DataError(f"{label}: test ids differ from {first}'s: {_id_difference(ids, want)}")
    rows = pd.Series(np.arange(len(ids)), index=ids).loc[want].to_numpy()
    return check_values(table, columns, label, inputs.task.type != "regression")[rows]


def _check_task_file(folder: Path, label: str, task: Task) -> None:
    task_file = folder / "task.json"
    if task_file.is_file():
        info = json.loads(task_file.read_text(encoding="utf-8"))
        if info.get("pred_columns", task.pred_columns) != task.pred_columns:
            raise DataError(
                f"{label}: its task.json has columns {info['pred_columns']}, this config's task "
                f"has {task.pred_columns}"
            )


def load_member(name: str, folders: list[Path], inputs: Inputs, manifest: dict) -> Member:
    """Check and load every folder of one member (one per seed)."""
    seed_oof, seed_test = [], []
    for folder in folders:
        label = f"experiment '{name}'" + (f" ({folder})" if len(folders) > 1 else "")
        check_manifest(folder, label, manifest)
        _check_task_file(folder, label, inputs.task)
        seed_oof.append(align_oof(read_prediction(folder / "oof.parquet", label), inputs, label))
        test = read_prediction(folder / "test.parquet", label)
        seed_test.append(align_test(test, inputs, label))
    return Member(name, folders, seed_oof, np.mean(seed_test, axis=0))


def labelled_inputs(cfg: Config) -> Inputs:
    """The project's labels and folds (with their test-like flags), checked, and no members yet:
    what a blend or a report scores predictions against."""
    c = cfg.competition
    train = read_train(cfg)
    task = build_task(cfg, train)
    folds = load_folds(c.folds_dir, train, id_column=c.id_column, target_columns=c.target_columns)
    return Inputs(
        cfg=cfg,
        task=task,
        y=task.encode_targets(train, source=str(train_path(cfg))),
        fold=folds["fold"].to_numpy(dtype=np.int64),
        ids=train[c.id_column].to_numpy(),
        test_ids=np.array([]),
        columns=list(task.pred_columns),
        test_like=folds[TEST_LIKE].to_numpy() if TEST_LIKE in folds.columns else None,
    )


def load_inputs(cfg: Config, entries: list) -> Inputs:
    """Labels, folds and every member, all checked; raises before any blending work."""
    expanded = expand_members(entries, Path(cfg.competition.outputs_dir))
    inputs = labelled_inputs(cfg)
    manifest = json.loads(folds_files(cfg)[1].read_text(encoding="utf-8"))
    for name, folders in expanded:
        inputs.members.append(load_member(name, folders, inputs, manifest))
    log.info("ensemble: %d member(s) checked: %s", len(inputs.members), inputs.names)
    return inputs
