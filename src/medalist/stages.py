"""The ``folds`` and ``submission`` stages (train and infer have modules of their own)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from medalist.config import Config
from medalist.data import experiment_dir, read_table, read_train, sample_path
from medalist.errors import FoldsMismatchError
from medalist.folds import assign_folds, build_manifest, load_folds, write_folds
from medalist.io import write_text
from medalist.loop import process_state

log = logging.getLogger(__name__)


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


def folds(cfg: Config, force: bool = False) -> pd.DataFrame:
    """Write ``folds/folds.csv`` and ``folds/folds.json`` once; later runs reuse them.

    Existing folds made with other settings, or for other data, are never replaced silently: a
    changed split after training would mix validation rows into training (``force`` replaces them).
    """
    train = read_train(cfg)
    folder = Path(cfg.competition.folds_dir)
    params = _fold_params(cfg)
    manifest_file = folder / "folds.json"
    if manifest_file.is_file() and not force:
        existing = json.loads(manifest_file.read_text())
        loaded = load_folds(
            folder, train, id_column=params["id_column"], target_columns=params["target_columns"]
        )
        if _same_split(existing, params):
            log.info("folds: %s already matches the data and settings; reused", folder)
            return loaded
        raise FoldsMismatchError(
            f"{manifest_file} was made with other settings ({existing.get('scheme')}, "
            f"n_splits={existing.get('params', {}).get('n_splits')}); pass --force to replace it "
            "(experiments trained on the old folds are no longer comparable)"
        )
    table = assign_folds(train, **params)
    manifest = build_manifest(train, table, **params)
    state = process_state(cfg)
    if state.is_main_process:  # several processes: one writes, the others wait for the files
        write_folds(table, manifest, folder)
        log.info("folds: %d rows in %d folds written to %s", len(table), cfg.folds.n_splits, folder)
    state.wait_for_everyone()
    return table


def _same_split(manifest: dict, params: dict) -> bool:
    got = manifest.get("params", {})
    return (
        manifest.get("scheme") == params["scheme"]
        and got.get("n_splits") == params["n_splits"]
        and manifest.get("seed") == params["random_state"]
        and manifest.get("group_column") == params["group_column"]
    )


def submission(cfg: Config, predictions: Path | None = None) -> Path:
    """Map the experiment's test predictions onto the sample submission, validate, write."""
    from medalist.infer import read_predictions
    from medalist.submission import build_submission, validate_submission, write_submission

    c = cfg.competition
    table = read_predictions(predictions or experiment_dir(cfg) / "test.parquet")
    sample = read_table(sample_path(cfg), [c.id_column])
    info = json.loads((experiment_dir(cfg) / "task.json").read_text())
    sub = build_submission(
        table,
        sample,
        id_column=c.id_column,
        task=info["type"],
        classes=info["classes"],
        target_columns=info["target_columns"],
        kind=cfg.submission.kind,
    )
    name = cfg.submission.name or cfg.train.experiment
    path = Path(c.submissions_dir) / f"{name}.csv"
    values = [col for col in sub.columns if col != c.id_column]
    is_label = [col for col in values if sub[col].dtype.kind != "f"]
    probability_columns = (
        [] if info["type"] == "regression" else [v for v in values if v not in is_label]
    )
    label_values = {col: info["classes"] or [0, 1] for col in is_label}
    checks = {"probability_columns": probability_columns, "label_values": label_values}
    state = process_state(cfg)
    if not state.is_main_process:  # validated here too, written by the main process only
        validate_submission(sub, sample, id_column=c.id_column, **checks)
    else:
        write_submission(sub, sample, path, id_column=c.id_column, **checks)
        write_text(path.with_suffix(".yaml"), cfg.to_yaml())
        log.info("submission written and validated: %s", path)
    state.wait_for_everyone()
    return path
