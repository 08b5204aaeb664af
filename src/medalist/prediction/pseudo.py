"""The ``pseudo`` stage: pseudo labels for the test set, without leaking validation folds.

Per-fold teachers (the default): the labels for fold k's student come only from the teachers'
fold-k models, which never saw fold k's rows, so fold k's validation score stays honest. Labels
from all-fold ensembles (``source: ensemble``) go only to full-fit students (``train.folds:
[-1]``); a student of a fold asking for them is refused. Pseudo rows are added to training only,
never to validation, and CV is computed on labelled rows alone.

One second-order leak remains under ``train.keep: best`` (the default): a teacher's fold-k model
kept the epoch that scored best on fold k's validation rows, so fold k's labels chose the
weights behind fold k's pseudo labels. Train teachers with ``train.keep: last`` when it matters.

Writes ``outputs/pseudo/<round>/fold{k}.parquet`` (per fold) or ``full.parquet`` (ensemble), each
with the id column, ``pseudo_weight``, ``confidence`` and the label columns (the task's
prediction columns: probabilities for soft labels, one-hot / 0-1 / values for hard ones), and
``teachers.json``: teachers, source, mode, threshold, the folds manifest hash and each file's
sha256, which a student checks before using a file. A task whose predictions are not rows
(segmentation masks) writes its own labels beside the table (``fold{k}.masks.safetensors``, its
sha256 recorded too: ``task.own_predictions.pseudo_labels``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config, PseudoConfig
from medalist.data import read_test
from medalist.errors import ConfigError, DataError
from medalist.io import sha256_file, write_json, write_parquet
from medalist.layout import FULL_FIT, fold_name, folds_files, outputs_dir, pseudo_dir
from medalist.tasks import own_task
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)


def folds_hash(cfg: Config) -> str:
    manifest = folds_files(cfg)[1]
    if not manifest.is_file():
        raise DataError(f"{manifest} not found; run `medalist folds` first")
    return json.loads(manifest.read_text())["folds_sha256"]


def confidence(task_type: str, probs: np.ndarray) -> np.ndarray:
    """How sure a teacher is of each row: the top class, or the least sure label."""
    if task_type == "multiclass":
        return probs.max(1)
    if task_type in ("binary", "multilabel"):
        return np.maximum(probs, 1 - probs).min(1)
    return np.ones(len(probs))


def hard_labels(task_type: str, probs: np.ndarray) -> np.ndarray:
    if task_type == "multiclass":
        return np.eye(probs.shape[1], dtype=np.float32)[probs.argmax(1)]
    if task_type in ("binary", "multilabel"):
        return (probs >= 0.5).astype(np.float32)
    return probs


def as_hard(task_type: str, labels: np.ndarray) -> np.ndarray:
    """Hard labels read back from a label file as training takes them: integers (a one-hot row
    as its class index, 0/1 as integers; binary: one column, shape (rows,)); values unchanged."""
    if task_type == "multiclass":
        return labels.argmax(1)
    if task_type in ("binary", "multilabel"):
        return (labels >= 0.5).astype(np.int64)
    return labels


def predicted_class(task_type: str, probs: np.ndarray) -> np.ndarray:
    """The class each row is predicted as (binary: 1 when p >= 0.5); 0 for other tasks."""
    if task_type == "multiclass":
        return probs.argmax(1)
    if task_type == "binary":
        return (probs[:, 0] >= 0.5).astype(int)
    return np.zeros(len(probs), dtype=int)


def select_rows(task_type: str, probs: np.ndarray, cfg: PseudoConfig) -> np.ndarray:
    """Indices of the rows kept: above the threshold, balanced, capped; most confident first."""
    conf = confidence(task_type, probs)
    predicted = predicted_class(task_type, probs)
    keep = _passes_threshold(task_type, probs, conf, predicted, cfg.threshold)
    order = [i for i in np.argsort(-conf, kind="stable") if keep[i]]
    if cfg.balance:
        order = _balanced(task_type, order, predicted)
    cap = int(np.floor(cfg.max_fraction * len(probs)))
    return np.sort(np.asarray(order[:cap], dtype=int))


def _passes_threshold(task_type, probs, conf, predicted, threshold) -> np.ndarray:
    """One value for every row's confidence, or one per predicted class (binary: [negative,
    positive]; multiclass), or one per label (multilabel: every label passes its own)."""
    if threshold is None:
        return np.ones(len(probs), dtype=bool)
    limits = np.asarray(threshold if isinstance(threshold, list) else [threshold], dtype=float)
    if len(limits) == 1:
        return conf >= limits[0]
    columns = probs.shape[1]
    per = {
        "binary": ("class", 2),
        "multiclass": ("class", columns),
        "multilabel": ("label", columns),
    }
    unit, count = per.get(task_type, ("", 1))
    if len(limits) != count:
        wanted = f"one value, or one per {unit} ({count})" if unit else "one value"
        raise ConfigError(f"pseudo.threshold: {wanted} for a {task_type} task; got {len(limits)}")
    if task_type == "multilabel":
        return (np.maximum(probs, 1 - probs) >= limits).all(1)
    return conf >= limits[predicted]


def _balanced(task_type: str, order: list[int], predicted: np.ndarray) -> list[int]:
    """The first rows of ``order`` with the same number for each class predicted at all."""
    if task_type not in ("binary", "multiclass"):
        raise ConfigError(
            f"pseudo.balance: keeps the same number of rows per predicted class, which a "
            f"{task_type} row does not have; set it to false"
        )
    counts = np.bincount(predicted[order], minlength=2)
    present = counts[counts > 0]
    if len(present) < 2:  # a "balanced" set of one class would be anything but
        log.warning("pseudo.balance: the selected rows are all of one predicted class; none kept")
        return []
    taken = np.zeros(len(counts), dtype=int)
    balanced = []
    for i in order:
        if taken[predicted[i]] < present.min():
            taken[predicted[i]] += 1
            balanced.append(i)
    return balanced


def label_table(cfg: Config, task_info: dict, table: pd.DataFrame) -> pd.DataFrame:
    """The selected rows of a teacher prediction table, as pseudo labels."""
    columns = task_info["pred_columns"]
    probs = table[columns].to_numpy(dtype=np.float32)
    rows = select_rows(task_info["type"], probs, cfg.pseudo)
    labels = (
        probs[rows] if cfg.pseudo.mode == "soft" else hard_labels(task_info["type"], probs[rows])
    )
    out = pd.DataFrame(labels, columns=columns)
    out.insert(0, "confidence", confidence(task_info["type"], probs[rows]))
    out.insert(0, "pseudo_weight", cfg.pseudo.weight)
    out.insert(0, cfg.competition.id_column, table[cfg.competition.id_column].to_numpy()[rows])
    return out


def teacher_file(cfg: Config, teacher: str, name: str, current_hash: str) -> tuple[Path, dict]:
    """A teacher's test predictions ``name`` (a table, or a task's own file such as masks) and
    its ``task.json``, refused when missing or made on other folds than the current ones."""
    folder = Path(cfg.competition.outputs_dir) / teacher
    task_file, predictions = folder / "task.json", folder / name
    if not task_file.is_file() or not predictions.is_file():
        raise DataError(f"pseudo.teachers: {folder} has no {name}; run train and infer first")
    info = json.loads(task_file.read_text())
    if info.get("folds_sha256") != current_hash:
        raise DataError(
            f"pseudo.teachers: '{teacher}' was trained on other folds than "
            f"{cfg.competition.folds_dir}/folds.json; its labels would leak"
        )
    return predictions, info


def fold_teachers(cfg: Config, teachers: list[str]) -> list[str]:
    """The experiments whose fold models label each fold: a seed-averaged experiment
    (``train.seeds``) has no fold models of its own and stands for its seeds' experiments
    (``metrics.json``'s ``seed_experiments``), so its fold k is the mean of their fold-k models."""
    out = []
    for teacher in teachers:
        metrics = Path(cfg.competition.outputs_dir) / teacher / "metrics.json"
        seeds = (
            json.loads(metrics.read_text()).get("seed_experiments") if metrics.is_file() else None
        )
        out += seeds or [teacher]
    return out


def different_ids(teachers: list[str], name: str) -> DataError:
    return DataError(f"pseudo.teachers: {teachers} predicted different test ids for {name}")


def _teacher_tables(cfg: Config, teachers: list[str], name: str, current_hash: str):
    tables, info = [], None
    for teacher in teachers:
        table_file, info = teacher_file(cfg, teacher, name, current_hash)
        tables.append(pd.read_parquet(table_file))
    ids = [t[cfg.competition.id_column].astype(str).tolist() for t in tables]
    if any(i != ids[0] for i in ids):
        raise different_ids(teachers, name)
    mean = tables[0].copy()
    mean[info["pred_columns"]] = np.mean([t[info["pred_columns"]].to_numpy() for t in tables], 0)
    return info, mean


def run(cfg: Config) -> dict:
    """Build round ``pseudo.round``'s labels from the teachers' test predictions."""
    if not cfg.pseudo.allow_test:
        raise ConfigError("pseudo.allow_test: false; this competition's test set is not labelled")
    teachers = cfg.pseudo.teachers or [cfg.train.experiment]
    current = folds_hash(cfg)
    folder = pseudo_dir(cfg, cfg.pseudo.round)
    test_ids = set(read_test(cfg)[cfg.competition.id_column].astype(str))
    own = own_task(cfg)  # masks: the task's own label files
    predictions = "test.parquet" if own is None else own.own_predictions.test_file
    if cfg.pseudo.source == "ensemble":
        names = {fold_name(FULL_FIT): predictions}
    else:
        teachers = fold_teachers(cfg, teachers)
        first = outputs_dir(cfg) / teachers[0]
        folds = sorted(int(p.name[4:]) for p in first.glob("fold*") if p.name[4:].isdigit())
        if not folds:
            raise DataError(
                f"pseudo.teachers: {first} has no fold models (fold0/, fold1/, ...) to label "
                "each fold with; pseudo.source: ensemble labels full-fit students from its test "
                "predictions"
            )
        names = {fold_name(k): f"{fold_name(k)}/{predictions}" for k in folds}
    # Under several processes (accelerate launch, torchrun) every process computes the labels;
    # only the main one writes them, and the others wait until they are on disk.
    state = process_state(cfg)
    files = {}
    for label_name, table_name in names.items():
        if own is not None:
            files[label_name] = own.own_predictions.pseudo_labels(
                cfg, teachers, table_name, current, folder / label_name, state.is_main_process
            )
            continue
        info, mean = _teacher_tables(cfg, teachers, table_name, current)
        if not set(mean[cfg.competition.id_column].astype(str)) <= test_ids:
            raise DataError(f"pseudo: {table_name} of {teachers} has ids that are not test ids")
        labels = label_table(cfg, info, mean)
        files[label_name] = {"sha256": None, "rows": len(labels), "of": len(mean)}
        if state.is_main_process:
            path = write_parquet(folder / f"{label_name}.parquet", labels)
            files[label_name]["sha256"] = sha256_file(path)
        log.info(
            "pseudo round %d: %s: %d of %d test rows",
            cfg.pseudo.round,
            label_name,
            len(labels),
            len(mean),
        )
    record = {
        "round": cfg.pseudo.round,
        "teachers": teachers,
        "source": cfg.pseudo.source,
        "mode": cfg.pseudo.mode,
        "threshold": cfg.pseudo.threshold,
        "max_fraction": cfg.pseudo.max_fraction,
        "balance": cfg.pseudo.balance,
        "weight": cfg.pseudo.weight,
        "folds_sha256": current,
        "files": files,
    }
    if state.is_main_process:
        write_json(folder / "teachers.json", record)
    state.wait_for_everyone()
    return record


def labels_mode(cfg: Config) -> str:
    """``soft`` or ``hard``: how round ``train.pseudo_round``'s labels were made."""
    record = pseudo_dir(cfg, cfg.train.pseudo_round) / "teachers.json"
    return json.loads(record.read_text())["mode"]


def load_for_fold(cfg: Config, fold: int, pred_columns: list[str]) -> pd.DataFrame:
    """The pseudo labels a fold's student may use; leaky or tampered files are refused."""
    folder = pseudo_dir(cfg, cfg.train.pseudo_round)
    record_file = folder / "teachers.json"
    if not record_file.is_file():
        raise DataError(f"train.pseudo_round: {record_file} not found; run `medalist pseudo`")
    record = json.loads(record_file.read_text())
    name = fold_name(fold)
    if record["source"] == "ensemble" and fold != -1:
        raise ConfigError(
            "train.pseudo_round: these labels come from all-fold ensembles, whose models saw "
            f"fold {fold}'s rows; they may only train full-fit students (train.folds: [-1])"
        )
    if record["folds_sha256"] != folds_hash(cfg):
        raise DataError(f"{record_file}: made for other folds than the current fold file")
    _, table = recorded_fold_table(
        folder, record, name, pred_columns, what="pseudo labels", stage="pseudo", fix="run it again"
    )
    return table


def recorded_fold_table(
    folder: Path, record: dict, name: str, columns: list[str], *, what: str, stage: str, fix: str
) -> tuple[Path, pd.DataFrame]:
    """Fold ``name``'s table that ``medalist <stage>`` wrote in ``folder``, checked against its
    record (``record["files"][name]["sha256"]``) and for ``columns``; ``fix`` ends each error."""
    entry = record["files"].get(name)
    path = folder / f"{name}.parquet"
    if entry is None or not path.is_file():
        raise DataError(f"{folder}: no {what} for {name}; {fix}")
    if sha256_file(path) != entry["sha256"]:
        raise DataError(f"{path}: changed since `medalist {stage}` wrote it; {fix}")
    table = pd.read_parquet(path)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing {what} column(s) {missing}")
    return path, table
