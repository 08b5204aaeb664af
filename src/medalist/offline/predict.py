"""Run a bundle: every packaged fold and view on the test set, the ensemble, submission.csv.

This is what the inference notebook calls once medalist is installed from the bundle. It reads
the bundle and the competition's test files only (never train.csv, folds or outputs/), predicts
as the ``infer`` stage does (same dataset, views and merge; a fold's prediction the mean of its
weight files', the folds averaged), blends with the weights the ``ensemble`` stage fitted, and
writes the file through the ``submission`` stage, which validates it against the sample
submission. A fold fitted by a library (LightGBM, XGBoost, CatBoost) predicts with the library
the environment has, the Kaggle image's unless the bundle ships a wheel of it: every library the
manifest names must import before anything is predicted, and another version than the one that
trained is named in the log.

An experiment on other experiments' predictions (its manifest entry's ``stacks``, from
``tabular.oof_features``) is predicted after them: each of those writes the table ``infer``
writes, ``<working>/stacked/<experiment>/test.parquet`` (with its ``task.json``), from its own
packaged weights, and that folder is the stacking experiment's ``competition.outputs_dir``, its
folds manifest the bundle's ``folds/folds.json``. Every experiment is predicted once, whether the
ensemble blends it, another experiment stacks on it, or both.

A seed-averaged experiment (``train.seeds``) has no weights: its entry names its seeds'
experiments (``seeds``), predicted before it, and its prediction is their mean, as ``infer``
averages the seeds' test files (:func:`average_seeds`).

Paths come from a profile. ``kaggle``: the bundle under ``/kaggle/input``, the competition's data
at ``/kaggle/input/<competition>``, output to ``/kaggle/working``. ``local``: the competition's
``data/`` folder and ``outputs/offline/`` of the project. ``MEDALIST_INPUT``, ``MEDALIST_DATA``
and ``MEDALIST_WORKING`` override them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module, metadata
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.config import Config, resolve_config
from medalist.data import read_test
from medalist.ensemble.blend import Blender, LogitBlender, RankBlender
from medalist.errors import ConfigError, DataError
from medalist.io import write_json, write_parquet
from medalist.layout import sample_path, test_path
from medalist.modalities import get_modality
from medalist.prediction.infer import predict_files
from medalist.submission import stage as submission_stage
from medalist.tasks import Task, own_task
from medalist.training.runtime import make_accelerator, make_loader

log = logging.getLogger(__name__)

MANIFEST = "medalist-bundle.json"
FORMAT = 1
STACKED = "stacked"  # under the working folder: the test predictions stacked on
PROFILES = ("kaggle", "local")
# Blends applied from their saved weights; a stacker would need a pickled model.
BLENDERS = {
    "mean": Blender,
    "weighted": Blender,
    "hill_climb": Blender,
    "rank": RankBlender,
    "logit": LogitBlender,
}


@dataclass(frozen=True)
class Paths:
    """Where a run reads the bundle and the competition's data, and writes its files."""

    bundle: Path
    data: Path
    working: Path


def read_manifest(bundle: str | Path) -> dict:
    """The bundle's manifest, after checking every file it lists is there in full.

    Raises:
        DataError: no manifest, another format, or a listed file missing or cut short (Kaggle
            drops subfolders of a dataset uploaded without ``--dir-mode zip``).
    """
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: {bundle} is not a bundle made by `medalist package`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise DataError(
            f"{path}: bundle format {manifest.get('format')}, this medalist reads {FORMAT}"
        )
    bad = [
        name
        for name, info in manifest["files"].items()
        if not (bundle / name).is_file() or (bundle / name).stat().st_size != info["size"]
    ]
    if bad:
        raise DataError(
            f"{bundle}: {len(bad)} file(s) of the bundle are missing or cut short, e.g. {bad[:3]} "
            "(upload the folder with its subfolders: kaggle datasets create --dir-mode zip)"
        )
    return manifest


def default_profile(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get("MEDALIST_PROFILE") or (
        "kaggle" if Path("/kaggle/input").is_dir() else "local"
    )


def resolve_paths(
    bundle: str | Path, profile: str, manifest: dict, environ: Mapping[str, str] | None = None
) -> Paths:
    """The profile's paths with the environment's overrides; the data folder must exist."""
    environ = os.environ if environ is None else environ
    if profile not in PROFILES:
        raise ConfigError(f"MEDALIST_PROFILE: '{profile}' is not one of {list(PROFILES)}")
    settings = manifest["profiles"][profile]
    if profile == "kaggle":
        root = Path(environ.get("MEDALIST_INPUT") or settings["input"])
        data = root / manifest["competition"]
        if not data.is_dir() and (root / "competitions" / manifest["competition"]).is_dir():
            data = root / "competitions" / manifest["competition"]
    else:
        data = Path(settings["data"])
    data = Path(environ.get("MEDALIST_DATA") or data)
    working = Path(environ.get("MEDALIST_WORKING") or settings["working"])
    if not data.is_dir():
        raise DataError(
            f"competition data not found at {data} (profile {profile}); attach the competition "
            "to the notebook or set MEDALIST_DATA"
        )
    return Paths(Path(bundle), data, working)


def _with(cfg, dotted: str, value):
    """A copy of ``cfg`` with one ``section.key`` (or ``section.sub.key``) replaced."""
    name, _, rest = dotted.partition(".")
    inner = _with(getattr(cfg, name), rest, value) if rest else value
    return cfg.model_copy(update={name: inner})


def experiment_config(bundle: Path, entry: dict, data: Path, stacked: Path | None = None) -> Config:
    """An experiment's resolved config, pointed at the bundle's files and the data folder, with
    the bundle's ``settings`` (no pretrained weights: the fine-tuned ones replace them); one that
    stacks on other experiments reads their test predictions under ``stacked``."""
    cfg = _with(resolve_config(bundle / entry["config"]), "competition.data_dir", str(data))
    if entry.get("stacks"):
        if stacked is None:
            raise DataError(
                f"{entry['config']}: the experiment stacks on {entry['stacks']}, whose test "
                "predictions must be made first (predict the bundle with run_bundle)"
            )
        cfg = _with(cfg, "competition.outputs_dir", str(stacked))
    for dotted, relative in entry["paths"].items():
        cfg = _with(cfg, dotted, None if relative is None else str(bundle / relative))
    for dotted, value in entry.get("settings", {}).items():  # model.pretrained: false
        cfg = _with(cfg, dotted, value)
    for key, value in entry.get("infer", {}).items():  # the views test.parquet was made with
        cfg = _with(cfg, f"infer.{key}", value)
    return cfg


def read_task(path: Path) -> Task:
    info = json.loads(path.read_text(encoding="utf-8"))
    return Task(info["type"], list(info["target_columns"]), list(info["classes"] or []))


def count_tokens(dataset) -> int | None:
    """The tokens a model reads for the dataset's rows, every view counted, padding not; None
    when its inputs are not token sequences.

    A text dataset holds them as ``encoded`` (per view, one ``(ids, types)`` per row, truncated
    as the model reads them).
    """
    encoded = getattr(dataset, "encoded", None)
    if not isinstance(encoded, dict):
        return None
    return int(sum(len(ids) for rows in encoded.values() for ids, _ in rows))


def _test_dataset(cfg: Config, rows: int | None):
    """The experiment's test dataset (its first ``rows``), its rows and its views."""
    modality = get_modality(cfg.modality)
    views = modality.expand_views(cfg.infer.tta)
    test = read_test(cfg)
    test = test if rows is None else test.head(rows)
    dataset = modality.build_dataset(
        cfg, test, None, split="test", train=False, source=str(test_path(cfg)), views=views
    )
    return dataset, test, views


def whole_test_tokens(
    bundle: Path, entry: dict, data: Path, stacked: Path | None = None
) -> tuple[int, int] | None:
    """(tokens, rows) of the whole test table as the experiment reads it (every view); None
    when its inputs are not token sequences."""
    cfg = experiment_config(bundle, entry, data, stacked)
    dataset, test, _ = _test_dataset(cfg, None)
    tokens = count_tokens(dataset)
    return None if tokens is None else (tokens, len(test))


def predict_experiment(
    bundle: Path,
    entry: dict,
    data: Path,
    rows: int | None = None,
    timings: list | None = None,
    stacked: Path | None = None,
) -> tuple[pd.DataFrame, Task, np.ndarray]:
    """The fold average of one experiment's merged TTA predictions, as ``infer`` makes it.

    A fold's prediction is the mean of its weight files' (one, or a snapshot ensemble's).

    Args:
        bundle: the bundle folder.
        entry: the experiment's entry in the manifest.
        data: the competition's data folder (test table and files).
        rows: predict only the first rows (the time estimate).
        timings: when given, one dict per weight file is appended (seconds to load, to predict;
            the tokens read, for token inputs).
        stacked: where the test predictions of the experiments it stacks on (``stacks``) are,
            as :func:`keep_prediction` writes them (of the same rows at least).

    Returns:
        (the test rows, the task, predictions shaped (rows, outputs)).
    """

    cfg = experiment_config(bundle, entry, data, stacked)
    modality = get_modality(cfg.modality)
    task = own_task(cfg) or read_task(bundle / entry["task"])
    own = task.own_predictions  # masks: predicted as `infer` predicts them, image by image
    dataset, test, views = _test_dataset(cfg, rows)
    tokens = count_tokens(dataset) if timings is not None else None
    accelerator = make_accelerator(cfg)
    if own is None:
        loader = make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg)
        loader = accelerator.prepare(loader)
    per_fold = []
    for fold, files in entry["weights"].items():

        def timed(path: Path, load_seconds: float, predict_seconds: float, fold=fold) -> None:
            timings.append(
                {
                    "fold": fold,
                    "weights": path.name,
                    "views": len(views),
                    "rows": len(test),
                    "load_seconds": load_seconds,
                    "predict_seconds": predict_seconds,
                    "device": str(accelerator.device),
                    **({} if tokens is None else {"tokens": tokens}),
                }
            )

        paths = [bundle / weights for weights in fold_files(files)]
        if own is not None:
            on_file = None if timings is None else timed
            per_fold.append(
                own.predict_files(cfg, modality, accelerator, paths, dataset, views, on_file)
            )
            continue
        per_fold.append(
            predict_files(
                cfg,
                task,
                modality,
                accelerator,
                paths,
                loader,
                views,
                cfg.train.progress,
                on_file=None if timings is None else timed,
            )
        )
    if own is not None:
        return test, task, own.fold_mean(per_fold)
    return test, task, np.mean(per_fold, axis=0)


def prediction_order(experiments: dict) -> list[str]:
    """The manifest's experiments in the order to predict them: each after those it stacks on
    or averages (``seeds``) (a bundle packs them so already; a hand-edited manifest is checked).

    Raises:
        DataError: an experiment reads one the bundle does not hold, or itself in a cycle.
    """
    order: list[str] = []

    def add(name: str, above: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in above:
            raise DataError(f"{MANIFEST}: the experiments stack on each other: {[*above, name]}")
        entry = experiments[name]
        for member in [*entry.get("seeds", []), *entry.get("stacks", [])]:
            if member not in experiments:
                raise DataError(
                    f"{MANIFEST}: '{name}' reads the predictions of '{member}', which is not in "
                    "the bundle; package it again"
                )
            add(member, (*above, name))
        order.append(name)

    for name in experiments:
        add(name, ())
    return order


def average_seeds(
    entry: dict, predicted: Mapping[str, tuple[pd.DataFrame, Task, np.ndarray]]
) -> tuple[pd.DataFrame, Task, np.ndarray]:
    """A seed-averaged experiment from its seeds' predictions (``predicted``: the test rows, task
    and values of each experiment predicted so far), as ``infer`` averages the seeds' test
    files: their mean, or the task's own seed mean (masks: of the files as stored).

    Returns:
        (the test rows, the task, predictions shaped as each seed's).
    """
    test, task, _ = predicted[entry["seeds"][0]]
    per_seed = [predicted[seed][2] for seed in entry["seeds"]]
    if task.own_predictions is not None:
        return test, task, task.own_predictions.seed_mean(per_seed)
    return test, task, np.mean(per_seed, axis=0)


def predict_entry(
    bundle: Path,
    entry: dict,
    data: Path,
    predicted: Mapping[str, tuple[pd.DataFrame, Task, np.ndarray]],
    **kwargs,
) -> tuple[pd.DataFrame, Task, np.ndarray]:
    """The test predictions of a manifest entry: the mean of its seeds (``seeds``), from
    ``predicted`` (each experiment predicted so far), or its own models'
    (:func:`predict_experiment` with ``kwargs``)."""
    if entry.get("seeds"):
        return average_seeds(entry, predicted)
    return predict_experiment(bundle, entry, data, **kwargs)


def stacked_members(experiments: dict) -> set[str]:
    """The experiments of the manifest that another one stacks on."""
    return {member for entry in experiments.values() for member in entry.get("stacks", [])}


def keep_prediction(
    folder: Path, bundle: Path, name: str, entry: dict, test: pd.DataFrame, task: Task, values
) -> Path:
    """An experiment's test predictions where the experiments stacked on it read them:
    ``<folder>/<name>/test.parquet``, the table ``infer`` writes, and its ``task.json``."""
    id_column = resolve_config(bundle / entry["config"]).competition.id_column
    target = folder / name
    target.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle / entry["task"], target / "task.json")
    return write_parquet(target / "test.parquet", prediction_table(id_column, test, task, values))


def fold_files(files: str | list[str]) -> list[str]:
    """A fold's weight files in the manifest: a list, whose mean predicts (one file, or a
    snapshot ensemble); a bundle of an older medalist names one file as a string."""
    return [files] if isinstance(files, str) else list(files)


def blend(manifest: dict, task_type: str, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """The packaged ensemble applied to its members' test predictions, as the stage did."""
    ensemble = manifest["ensemble"]
    members = ensemble["members"]
    # A member run with several seeds is the mean of its seeds (in float64, like the stage).
    stacked = np.stack(
        [
            np.mean([predictions[e].astype(np.float64) for e in member["experiments"]], axis=0)
            for member in members
        ]
    )
    blender = BLENDERS[ensemble["method"]](task_type, None)
    blender.weights = np.array([member["weight"] for member in members], dtype=np.float64)
    return blender.predict(stacked)


def blend_own(manifest: dict, task, predictions: dict[str, np.ndarray]) -> np.ndarray:
    """The ensemble of a task's own predictions (masks), as the ensemble stage blended them
    (its members' pick counts); a member run with several seeds is the mean of its seeds."""
    own = task.own_predictions
    members = []
    for member in manifest["ensemble"]["members"]:
        seeds = [list(predictions[experiment]) for experiment in member["experiments"]]
        members.append((member["picks"], list(own.fold_mean(seeds))))
    return own.blend(members)


def prediction_table(id_column: str, test: pd.DataFrame, task: Task, values) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=task.pred_columns)
    table.insert(0, id_column, test[id_column].to_numpy())
    return table


def write_submission(bundle: Path, paths: Paths, experiment: str, table: pd.DataFrame) -> Path:
    """``<working>/submission.csv`` through the ``submission`` stage (validated)."""
    cfg = submission_config(bundle, paths, experiment)
    predictions = paths.working / "predictions" / f"{experiment.replace('/', '__')}.parquet"
    write_parquet(predictions, table)
    return submission_stage.run(cfg, predictions=predictions)


def write_own_submission(bundle: Path, paths: Paths, experiment: str, task, ids, values) -> Path:
    """``<working>/submission.csv`` from a task's own predictions (masks), stored as ``infer``
    stores them, through the ``submission`` stage (validated)."""
    cfg = submission_config(bundle, paths, experiment)
    name = f"{experiment.replace('/', '__')}.masks.safetensors"
    predictions = task.own_predictions.write_predictions(
        paths.working / "predictions" / name, ids, values
    )
    return submission_stage.run(cfg, predictions=predictions)


def submission_config(bundle: Path, paths: Paths, experiment: str) -> Config:
    """The bundle's config for the submission stage of ``experiment``: data from ``paths``,
    the bundle's outputs (an experiment's post-processing), the file into the working folder."""
    cfg = resolve_config(bundle / "config.yaml")
    cfg = _with(cfg, "competition.data_dir", str(paths.data))
    cfg = _with(cfg, "competition.outputs_dir", str(bundle / "outputs"))
    cfg = _with(cfg, "competition.submissions_dir", str(paths.working))
    cfg = _with(cfg, "train.experiment", experiment)
    return _with(cfg, "submission.name", "submission")


def check_inputs(bundle: Path, paths: Paths) -> None:
    """The test table and sample submission exist, before any model is loaded."""
    cfg = _with(resolve_config(bundle / "config.yaml"), "competition.data_dir", str(paths.data))
    for path in (test_path(cfg), sample_path(cfg)):
        if not path.is_file():
            raise DataError(f"{path} not found in the competition data ({paths.data})")


def check_libraries(manifest: dict) -> None:
    """Every library a packaged fold predicts with (the manifest's ``libraries``) imports here;
    a version other than the one that trained it is logged (its predictions may differ in the
    last digits, or it may not read a newer model file).

    Raises:
        ConfigError: a library does not import (named with the ``kaggle.wheels`` entry that would
            ship it), before any model is loaded.
    """
    needed: dict[str, tuple[str, list[str]]] = {}
    for name, entry in manifest["experiments"].items():
        for library, version in entry.get("libraries", {}).items():
            needed.setdefault(library, (version, []))[1].append(name)
    missing, pins = [], []
    for library, (version, experiments) in sorted(needed.items()):
        try:
            import_module(library)
        except (ImportError, OSError) as error:  # OSError: a shared library it loads is absent
            missing.append(
                f"{library} (experiment(s) {experiments}, trained with {version}: {error})"
            )
            pins.append(f"'{library}=={version}'")
            continue
        try:
            found = metadata.version(library)
        except metadata.PackageNotFoundError:
            found = "of unknown version"
        if found != version:
            log.warning(
                "%s %s predicts here, but %s trained %s: the predictions may differ from the "
                "local test.parquet; to ship the version that trained, add '%s==%s' to "
                "kaggle.wheels and package again",
                library,
                found,
                version,
                experiments,
                library,
                version,
            )
    if missing:
        raise ConfigError(
            f"kaggle.wheels: the bundle's folds predict with {'; '.join(missing)}, which this "
            f"environment cannot import; add {', '.join(pins)} to kaggle.wheels and package "
            "again (the wheel is then installed from the bundle), or run on an image that has it"
        )


def run_bundle(
    bundle: str | Path, profile: str | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """Predict the test set with the bundle and write ``submission.csv``; returns its path."""
    started = time.perf_counter()
    bundle = Path(bundle)
    profile = profile or default_profile(environ)
    manifest = read_manifest(bundle)
    paths = resolve_paths(bundle, profile, manifest, environ)
    check_inputs(bundle, paths)
    check_libraries(manifest)
    log.info(
        "profile %s: bundle %s, data %s, output %s", profile, bundle, paths.data, paths.working
    )
    experiments = manifest["experiments"]
    order = prediction_order(experiments)
    needed, stacked = stacked_members(experiments), paths.working / STACKED
    predicted, timings = {}, []
    for name in order:
        entry, start = experiments[name], len(timings)
        test, task, values = predict_entry(
            bundle, entry, paths.data, predicted, timings=timings, stacked=stacked
        )
        if entry.get("seeds"):
            log.info("%s: the mean of seeds %s", name, entry["seeds"])
        else:
            log.info("%s: %d fold(s) predicted %d rows", name, len(entry["weights"]), len(test))
        for timing in timings[start:]:
            timing["experiment"] = name
        predicted[name] = (test, task, values)
        if name in needed:  # the test predictions of the experiments that stack on it
            keep_prediction(stacked, bundle, name, entry, test, task, values)
    predictions = {name: values for name, (_, _, values) in predicted.items()}
    tasks = {name: task for name, (_, task, _) in predicted.items()}
    id_column = manifest["id_column"]
    if manifest.get("ensemble"):
        experiment = f"ensemble/{manifest['ensemble']['name']}"
        task = tasks[manifest["ensemble"]["members"][0]["experiments"][0]]
        if task.own_predictions is not None:
            values = blend_own(manifest, task, predictions)
        else:
            values = blend(manifest, task.type, predictions)
    else:
        # A bundle of an older medalist names no prediction: its one experiment.
        experiment = manifest.get("prediction") or next(iter(experiments))
        task, values = tasks[experiment], predictions[experiment]
    if task.own_predictions is not None:  # masks: stored, then the submission stage's RLE
        path = write_own_submission(bundle, paths, experiment, task, test[id_column], values)
    else:
        table = prediction_table(id_column, test, task, values)
        path = write_submission(bundle, paths, experiment, table)
    seconds = time.perf_counter() - started
    report = {
        "profile": profile,
        "prediction": experiment,
        "rows": len(test),
        "seconds": round(seconds, 2),
        # A bundle packaged with kaggle.timing_rows=0 has no estimate (timing: null).
        "estimated_seconds": (manifest.get("timing") or {}).get("estimated_seconds"),
        "models": timings,
        "submission": str(path),
    }
    write_json(paths.working / "offline.json", report)
    log.info("%s written in %.1f s (%d rows)", path, seconds, len(test))
    return path
