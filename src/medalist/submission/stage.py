"""The ``submission`` stage: an experiment's test predictions as a validated Kaggle file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medalist.config import Config
from medalist.data import read_table
from medalist.io import write_text
from medalist.layout import experiment_dir, sample_path, submission_path
from medalist.prediction.infer import read_predictions
from medalist.submission.format import build_submission, validate_submission, write_submission
from medalist.tasks import own_task
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)


def run(cfg: Config, predictions: Path | None = None) -> Path:
    """Map the experiment's test predictions onto the sample submission, validate, write."""
    c = cfg.competition
    task = own_task(cfg)
    if task is not None and task.own_predictions is not None:  # masks: written as RLE by the task
        return _run_own(cfg, task, predictions)
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
    path = submission_path(cfg)
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


def _run_own(cfg: Config, task, predictions: Path | None) -> Path:
    """Predictions that are not table rows (masks): the task writes and validates the file."""
    path = submission_path(cfg)
    state = process_state(cfg)
    if state.is_main_process:
        task.own_predictions.submission(cfg, path, predictions)
        write_text(path.with_suffix(".yaml"), cfg.to_yaml())
        log.info("submission written and validated: %s", path)
    state.wait_for_everyone()
    return path
