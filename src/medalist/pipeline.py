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

from accelerate import PartialState

from medalist import infer, pseudo, stages, train
from medalist.config import Config
from medalist.data import experiment_dir, sample_path, test_path, train_path
from medalist.io import write_json

log = logging.getLogger(__name__)


@dataclass
class Stage:
    name: str
    run: Callable[[Config], object]
    inputs: Callable[[Config], list[Path]]
    outputs: Callable[[Config], list[Path]]
    config_keys: tuple[str, ...]


def _folds_files(cfg: Config) -> list[Path]:
    folder = Path(cfg.competition.folds_dir)
    return [folder / "folds.csv", folder / "folds.json"]


def _weights(cfg: Config) -> list[Path]:
    return sorted(experiment_dir(cfg).glob("*/model.safetensors"))


def _submission_file(cfg: Config) -> Path:
    name = cfg.submission.name or cfg.train.experiment
    return Path(cfg.competition.submissions_dir) / f"{name}.csv"


STAGES = {
    "folds": Stage(
        "folds", stages.folds, lambda c: [train_path(c)], _folds_files, ("competition", "folds")
    ),
    "train": Stage(
        "train",
        train.run,
        lambda c: [train_path(c), *_folds_files(c)],
        lambda c: [experiment_dir(c) / "metrics.json"],
        ("modality", "competition", "task", "folds", "image", "model", "train"),
    ),
    "infer": Stage(
        "infer",
        infer.run,
        lambda c: [test_path(c), experiment_dir(c) / "metrics.json", *_weights(c)],
        lambda c: [experiment_dir(c) / "test.parquet"],
        ("modality", "competition", "task", "image", "model", "train", "infer"),
    ),
    "pseudo": Stage(
        "pseudo",
        pseudo.run,
        lambda c: [experiment_dir(c) / "test.parquet", *_folds_files(c)],
        lambda c: [pseudo.pseudo_dir(c, c.pseudo.round) / "teachers.json"],
        ("competition", "pseudo", "train"),
    ),
    "submission": Stage(
        "submission",
        stages.submission,
        lambda c: [experiment_dir(c) / "test.parquet", sample_path(c)],
        lambda c: [_submission_file(c)],
        ("competition", "submission", "train"),
    ),
}


def _stamp(cfg: Config, stage: Stage) -> Path:
    return (
        Path(cfg.competition.outputs_dir) / ".stamps" / f"{cfg.train.experiment}.{stage.name}.json"
    )


def _config_hash(cfg: Config, stage: Stage) -> str:
    data = cfg.model_dump(mode="json", include=set(stage.config_keys))
    if "train" in data:
        data["train"].pop("progress", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def up_to_date(cfg: Config, stage: Stage) -> bool:
    outputs, inputs = stage.outputs(cfg), stage.inputs(cfg)
    stamp = _stamp(cfg, stage)
    if not stamp.is_file() or not all(p.is_file() for p in outputs):
        return False
    if json.loads(stamp.read_text()).get("config") != _config_hash(cfg, stage):
        return False
    newest_input = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


def run(cfg: Config, force: bool = False) -> dict:
    """Run ``cfg.stages`` in order; returns {stage: 'ran' | 'skipped'}."""
    done = {}
    for name in cfg.stages:
        stage = STAGES[name]
        if not force and up_to_date(cfg, stage):
            log.info("%s: up to date, skipped", name)
            done[name] = "skipped"
            continue
        log.info("%s: running", name)
        stage.run(cfg)
        if PartialState().is_main_process:
            write_json(_stamp(cfg, stage), {"config": _config_hash(cfg, stage)})
        done[name] = "ran"
    return done
