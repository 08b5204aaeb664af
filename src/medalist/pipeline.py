"""``medalist run``: the configured stages in order, skipping those already up to date.

A stage is skipped when all its outputs exist, are newer than all its inputs, and were made from
the same config (a stamp file stores the hash of the config parts the stage depends on).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medalist import folds
from medalist.config import Config
from medalist.config.schema import training_sections
from medalist.data import read_train
from medalist.errors import ConfigError
from medalist.io import write_json
from medalist.layout import (
    distill_record,
    experiment_dir,
    folds_files,
    pseudo_dir,
    sample_path,
    stamp_path,
    starting_weights,
    submission_path,
    test_path,
    train_path,
)
from medalist.prediction import distill, infer, pseudo
from medalist.submission import stage as submission
from medalist.tasks import build_task, own_task
from medalist.training import stage as train
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    run: Callable[[Config], object]
    inputs: Callable[[Config], list[Path]]
    outputs: Callable[[Config], list[Path]]
    config_keys: tuple[str, ...]


def _weights(cfg: Config) -> list[Path]:
    return sorted(experiment_dir(cfg).glob("*/model.safetensors"))


def _teacher_tables(cfg: Config) -> list[Path]:
    outputs = Path(cfg.competition.outputs_dir)
    name = _test_predictions(cfg).name
    return [outputs / t / name for t in cfg.pseudo.teachers or [cfg.train.experiment]]


def _pseudo_labels(cfg: Config) -> list[Path]:
    if cfg.train.pseudo_round is None:
        return []
    return [pseudo_dir(cfg, cfg.train.pseudo_round) / "teachers.json"]


def _soft_targets(cfg: Config) -> list[Path]:
    """The distillation record a student trains on (``distill.teacher``), if any."""
    return [distill_record(cfg)] if cfg.distill.teacher is not None else []


def _teacher_results(cfg: Config) -> list[Path]:
    """The distillation teacher's ``metrics.json``: rewritten whenever it trains again."""
    return [Path(cfg.competition.outputs_dir) / cfg.distill.teacher / "metrics.json"]


def _test_predictions(cfg: Config) -> Path:
    """The experiment's test predictions: ``test.parquet``, or the file a task that predicts
    something else than table rows writes (segmentation: ``test.masks.safetensors``)."""
    task = own_task(cfg)
    name = "test.parquet" if task is None else task.own_predictions.test_file
    return experiment_dir(cfg) / name


STAGES = {
    "folds": Stage(
        "folds", folds.run, lambda c: [train_path(c)], folds_files, ("competition", "folds")
    ),
    "train": Stage(
        "train",
        train.run,
        lambda c: [
            train_path(c),
            *folds_files(c),
            *_pseudo_labels(c),
            *_soft_targets(c),
            *starting_weights(c),
        ],
        lambda c: [experiment_dir(c) / "metrics.json"],
        training_sections(),
    ),
    "distill": Stage(
        "distill",
        distill.run,
        lambda c: [train_path(c), *folds_files(c), *_teacher_results(c)],
        lambda c: [distill_record(c)],
        ("competition", "folds", "distill", "train"),
    ),
    "infer": Stage(
        "infer",
        infer.run,
        lambda c: [test_path(c), experiment_dir(c) / "metrics.json", *_weights(c)],
        lambda c: [_test_predictions(c)],
        (*training_sections(), "infer"),
    ),
    "pseudo": Stage(
        "pseudo",
        pseudo.run,
        lambda c: [*_teacher_tables(c), *folds_files(c)],
        lambda c: [pseudo_dir(c, c.pseudo.round) / "teachers.json"],
        ("competition", "pseudo", "train"),
    ),
    "submission": Stage(
        "submission",
        submission.run,
        lambda c: [_test_predictions(c), sample_path(c)],
        lambda c: [submission_path(c)],
        ("competition", "submission", "train"),
    ),
}


def _config_hash(cfg: Config, stage: Stage) -> str:
    data = cfg.model_dump(mode="json", include=set(stage.config_keys))
    if "train" in data:
        data["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def up_to_date(cfg: Config, stage: Stage) -> bool:
    outputs, inputs = stage.outputs(cfg), stage.inputs(cfg)
    stamp = stamp_path(cfg, stage.name)
    if not stamp.is_file() or not all(p.is_file() for p in outputs):
        return False
    if json.loads(stamp.read_text()).get("config") != _config_hash(cfg, stage):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


def _run_stage(cfg: Config, name: str, force: bool, label: str | None = None) -> str:
    stage, label = STAGES[name], label or name
    if not force and up_to_date(cfg, stage):
        log.info("%s: up to date, skipped", label)
        return "skipped"
    log.info("%s: running", label)
    stage.run(cfg)
    if process_state(cfg).is_main_process:
        write_json(stamp_path(cfg, stage.name), {"config": _config_hash(cfg, stage)})
    return "ran"


def _cv(cfg: Config) -> tuple[str, float]:
    metrics = json.loads((experiment_dir(cfg) / "metrics.json").read_text(encoding="utf-8"))
    name = metrics["main_metric"]
    return name, metrics["cv"][name]


def student_config(cfg: Config, round_: int, teachers: list[str]) -> Config:
    """The config of round ``round_``'s student: ``<experiment>_pl<round>`` on that round's labels."""
    student = cfg.model_copy(deep=True)
    student.pseudo.round = round_
    student.pseudo.teachers = list(teachers)
    student.train.pseudo_round = round_
    student.train.experiment = f"{cfg.train.experiment}_pl{round_}"
    return student


def pseudo_rounds(cfg: Config, force: bool = False) -> tuple[Config, list[dict]]:
    """Loop pseudo -> train -> infer for ``pseudo.rounds`` rounds at most; stop early when the
    student's CV does not beat the best so far. Returns the best experiment's config (the one the
    later stages use) and one record per round, also written to ``outputs/pseudo/rounds.json``.

    Round r's teachers are ``pseudo.teachers`` (or ``train.experiment``) in the first round, then
    the best student so far; every round uses per-fold teachers, so CV stays honest throughout.
    """
    if cfg.pseudo.source != "per_fold":
        raise ConfigError(
            "pseudo.source: `medalist run` loops rounds with per-fold teachers only (CV decides "
            "when to stop); ensemble labels feed full-fit students via `medalist pseudo` + `train`"
        )
    if cfg.train.folds == [train.FULL_FIT]:
        raise ConfigError("train.folds: a full fit has no CV to decide pseudo rounds on")
    metric = build_task(cfg, read_train(cfg)).main_metric
    best, (name, best_score) = cfg, _cv(cfg)
    rounds = []
    first = cfg.pseudo.round
    for round_ in range(first, first + cfg.pseudo.rounds):
        teachers = cfg.pseudo.teachers if round_ == first and cfg.pseudo.teachers else None
        student = student_config(cfg, round_, teachers or [best.train.experiment])
        for stage in ("pseudo", "train", "infer"):
            _run_stage(student, stage, force, f"{stage} (pseudo round {round_})")
        _, score = _cv(student)
        improved = metric.better(score, best_score)
        rounds.append(
            {
                "round": round_,
                "teachers": student.pseudo.teachers,
                "student": student.train.experiment,
                "mode": cfg.pseudo.mode,
                "threshold": cfg.pseudo.threshold,
                "metric": name,
                "cv_before": best_score,
                "cv_after": score,
                "kept": improved,
            }
        )
        log.info(
            "pseudo round %d: %s %s %.5f -> %.5f%s",
            round_,
            student.train.experiment,
            name,
            best_score,
            score,
            "" if improved else " (no better: stopping, keeping " + best.train.experiment + ")",
        )
        if not improved:
            break
        best, best_score = student, score
    if process_state(cfg).is_main_process:
        write_json(
            pseudo.pseudo_dir(cfg, 0).parent / "rounds.json",
            {"base": cfg.train.experiment, "best": best.train.experiment, "rounds": rounds},
        )
    return best, rounds


def run(cfg: Config, force: bool = False) -> dict:
    """Run ``cfg.stages`` in order; returns {stage: 'ran' | 'skipped' | best experiment}.

    The ``pseudo`` stage runs :func:`pseudo_rounds`; the stages after it (the submission) use the
    best experiment the rounds produced.
    """
    done = {}
    for name in cfg.stages:
        if name == "pseudo":
            cfg, _ = pseudo_rounds(cfg, force)
            done[name] = cfg.train.experiment
            continue
        done[name] = _run_stage(cfg, name, force)
    return done
