"""The ``ensemble`` stage: check the members, blend them, score in-sample and nested, write.

Reads each member's ``oof.parquet`` and ``test.parquet``, ``data/train.csv`` and ``folds/``.
Writes ``outputs/ensemble/<name>/``: ``weights.json``, ``cv.json`` (in-sample and nested
figures per metric, and each member's CV across seeds), ``oof.parquet`` (the nested, honest
out-of-fold blend, with ``fold``), ``test.parquet``, ``task.json``, ``config.yaml`` and
``ensemble.yaml``; then, when ``submit`` is on, ``submissions/<name>.csv`` via the submission
stage. Every file is written atomically.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from medalist.config import Config
from medalist.config.ensemble import EnsembleConfig
from medalist.ensemble.blend import (
    Blender,
    HillBlender,
    LogitBlender,
    RankBlender,
    WeightedBlender,
    rank_only,
    weight_objective,
)
from medalist.ensemble.inputs import Inputs, load_inputs
from medalist.ensemble.nested import nested_predictions, score
from medalist.ensemble.stacking import Stacker, check_stacker
from medalist.errors import ConfigError
from medalist.io import write_json, write_parquet, write_text
from medalist.layout import ensemble_dir
from medalist.metrics import Metric, get_metric
from medalist.submission import stage as submission_stage
from medalist.tasks import DEFAULT_METRICS, own_task

log = logging.getLogger(__name__)


def task_metrics(cfg: Config, ens_cfg: EnsembleConfig) -> tuple[Metric, list[Metric]]:
    """The metric the blend optimises, and every metric it is scored on."""
    names = cfg.task.metrics or DEFAULT_METRICS[cfg.task.type]
    metrics = [get_metric(name, cfg.task.metric_direction) for name in names]
    target = get_metric(ens_cfg.metric, cfg.task.metric_direction) if ens_cfg.metric else None
    if target is not None and target.name not in names:
        metrics.append(target)
    return target or metrics[0], metrics


def check_method(ens_cfg: EnsembleConfig, task_type: str, metric: Metric) -> None:
    """Refuse a method that cannot serve this task or metric, before any work."""
    if ens_cfg.method == "rank" and not rank_only(metric):
        raise ConfigError(
            f"ensemble.method: 'rank' averages ranks, which only suits a metric that depends on "
            f"ranks alone (e.g. roc_auc), not {metric.name}; use mean, weighted or hill_climb"
        )
    if ens_cfg.method == "logit" and task_type == "regression":
        raise ConfigError("ensemble.method: 'logit' blends probabilities; use mean for regression")
    if ens_cfg.method == "stack":
        check_stacker(ens_cfg.stacker, task_type)


def blender_factory(ens_cfg: EnsembleConfig, task_type: str, metric: Metric):
    """A function returning a fresh, unfitted blender of the configured method."""
    simple = {"mean": Blender, "rank": RankBlender, "logit": LogitBlender}
    if ens_cfg.method in simple:
        return partial(simple[ens_cfg.method], task_type, metric)
    if ens_cfg.method == "weighted":
        return partial(WeightedBlender, task_type, metric)
    if ens_cfg.method == "hill_climb":
        return partial(
            HillBlender,
            task_type,
            metric,
            ens_cfg.hill_iterations,
            ens_cfg.hill_replacement,
            ens_cfg.hill_patience,
        )
    return partial(
        Stacker,
        task_type,
        metric,
        ens_cfg.stacker,
        ens_cfg.stacker_strength,
        ens_cfg.random_state,
    )


def member_report(inputs: Inputs, metrics: list[Metric]) -> dict:
    """Each member's CV: per seed, mean and std across seeds, and of the seed average."""
    report = {}
    for member in inputs.members:
        per_seed = {
            str(folder): {m.name: m(inputs.y, oof) for m in metrics}
            for folder, oof in zip(member.folders, member.seed_oof, strict=True)
        }
        rows = list(per_seed.values())
        report[member.name] = {
            "folders": [str(f) for f in member.folders],
            "n_seeds": len(member.folders),
            "cv": {m.name: m(inputs.y, member.oof) for m in metrics},
            "seed_mean": {m.name: float(np.mean([r[m.name] for r in rows])) for m in metrics},
            "seed_std": {m.name: float(np.std([r[m.name] for r in rows])) for m in metrics},
            "per_seed": per_seed,
        }
    return report


def _table(ids, values, columns, id_column, fold=None) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=columns)
    if fold is not None:
        table.insert(0, "fold", fold)
    table.insert(0, id_column, ids)
    return table


def _task_info(inputs: Inputs) -> dict:
    task = inputs.task
    return {
        "type": task.type,
        "classes": task.classes,
        "target_columns": task.target_columns,
        "pred_columns": task.pred_columns,
        "metrics": [m.name for m in task.metrics],
    }


def write_outputs(folder: Path, inputs: Inputs, ens_cfg: EnsembleConfig, result: dict) -> None:
    """Every artifact of the ensemble folder, each written atomically."""
    id_column = inputs.cfg.competition.id_column
    oof = _table(inputs.ids, result.pop("oof"), inputs.columns, id_column, inputs.fold)
    test = _table(inputs.test_ids, result.pop("test"), inputs.columns, id_column)
    write_parquet(folder / "oof.parquet", oof)
    write_parquet(folder / "test.parquet", test)
    write_json(folder / "weights.json", result["weights"])
    write_json(folder / "cv.json", result["cv"])
    write_json(folder / "task.json", _task_info(inputs))
    write_text(folder / "config.yaml", inputs.cfg.to_yaml())
    write_text(folder / "ensemble.yaml", yaml.safe_dump(ens_cfg.model_dump(mode="json")))


def blend(inputs: Inputs, ens_cfg: EnsembleConfig, metric: Metric, metrics: list[Metric]):
    """Fit in-sample and nested, predict the test set; returns what write_outputs writes."""
    make = blender_factory(ens_cfg, inputs.task.type, metric)
    preds, test_preds, names = inputs.oof(), inputs.test(), inputs.names
    full = make().fit(preds, inputs.y)
    in_sample = full.predict(preds)
    nested, per_fold = in_sample, {}  # a blend that learns nothing has nothing to nest
    if full.learns:
        nested, per_fold = nested_predictions(make, preds, inputs.y, inputs.fold)
    test = full.predict(test_preds)
    if ens_cfg.method == "stack" and ens_cfg.stack_test == "fold_average":
        test = np.mean([b.predict(test_preds) for b in per_fold.values()], axis=0)
    scored = [m for m in metrics if ens_cfg.method != "rank" or rank_only(m)]
    weights = {"method": ens_cfg.method, "optimised_metric": metric.name, **full.describe(names)}
    if ens_cfg.method == "weighted":  # a piecewise-constant metric has no gradient to follow
        weights["minimised_loss"] = weight_objective(metric, inputs.task.type)
        log.info("weighted: weights minimise %s on OOF", weights["minimised_loss"])
    weights["nested"] = {str(k): b.describe(names)["weights"] for k, b in per_fold.items()}
    cv = {
        "method": ens_cfg.method,
        "optimised_metric": metric.name,
        "learns_from_labels": full.learns,
        "in_sample": score(scored, inputs.y, in_sample, inputs.fold, inputs.test_like),
        "nested": score(scored, inputs.y, nested, inputs.fold, inputs.test_like),
        "not_scored": [m.name for m in metrics if m not in scored],
        "oof_parquet": "the nested (out-of-fold) blend",
        "test_parquet": _test_note(ens_cfg),
        "members": member_report(inputs, metrics),
    }
    return {"oof": nested, "test": test, "weights": weights, "cv": cv}


def _test_note(ens_cfg: EnsembleConfig) -> str:
    if ens_cfg.method == "stack" and ens_cfg.stack_test == "fold_average":
        return "the average of the per-fold level-2 models"
    return "the blend fitted on every OOF row"


def run(cfg: Config, ens_cfg: EnsembleConfig) -> dict:
    """Check, blend, score and write the ensemble; returns its weights and CV (cv.json).

    Raises:
        ConfigError: an empty member list, or a method that does not suit the task or metric.
        DataError, FoldsMismatchError: a member's files differ in ids, columns, folds or
            hold NaN (the message names the member).
    """
    task = own_task(cfg)
    if task is not None:  # masks: blended, scored and submitted by the task
        return task.own_predictions.ensemble(cfg, ens_cfg)
    metric, metrics = task_metrics(cfg, ens_cfg)
    check_method(ens_cfg, cfg.task.type, metric)
    inputs = load_inputs(cfg, ens_cfg.experiments)
    result = blend(inputs, ens_cfg, metric, metrics)
    folder = ensemble_dir(cfg, ens_cfg.name)
    summary = {"folder": str(folder), "weights": result["weights"], "cv": result["cv"]}
    write_outputs(folder, inputs, ens_cfg, result)
    _log_scores(ens_cfg, metric, summary["cv"])
    if ens_cfg.submit:
        summary["submission"] = str(submit(cfg, ens_cfg))
    return summary


def _log_scores(ens_cfg: EnsembleConfig, metric: Metric, cv: dict) -> None:
    log.info(
        "ensemble %s (%s): %s in-sample %.6f, nested %.6f",
        ens_cfg.name,
        ens_cfg.method,
        metric.name,
        cv["in_sample"]["cv"].get(metric.name, float("nan")),
        cv["nested"]["cv"].get(metric.name, float("nan")),
    )


def submit(cfg: Config, ens_cfg: EnsembleConfig) -> Path:
    """Hand the blended test table to the submission stage: ``submissions/<name>.csv``."""
    train = cfg.train.model_copy(update={"experiment": f"ensemble/{ens_cfg.name}"})
    sub = cfg.submission.model_copy(update={"name": ens_cfg.name})
    as_experiment = cfg.model_copy(update={"train": train, "submission": sub})
    folder = ensemble_dir(cfg, ens_cfg.name)
    return submission_stage.run(as_experiment, predictions=folder / "test.parquet")
