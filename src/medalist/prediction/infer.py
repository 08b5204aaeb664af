"""The ``infer`` stage: test predictions of every trained fold, and their average.

Reads each fold's prediction weights (those that scored its OOF rows, as ``fold{k}/scores.json``
records them: the model's, the EMA's or SWA's, or the mean of its snapshots), ``task.json`` and
``data/test.csv``. Writes ``outputs/<experiment>/fold{k}/test.parquet`` and the fold average
``test.parquet``, in the prediction-table format (id, then one column per output), and
``infer.json``: the views, merge and precision they were predicted with (what ``medalist
package`` ships, whatever config trained the folds).

Precision: the prepared model runs as it was evaluated in training (accelerate autocasts its
forward under ``train.mixed_precision``, so a bf16- or fp16-trained model predicts the test set
as it predicted its OOF rows). ``infer.precision: bf16`` adds bf16 autocast around the forward
on top, logits back in float32; with ``fp32`` nothing is added. An fp16 forward
(``train.mixed_precision: fp16``) stays fp16: the innermost autocast decides.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate.utils import release_memory
from tqdm.auto import tqdm

from medalist.config import Config
from medalist.data import read_test, read_train
from medalist.errors import DataError
from medalist.folds import load_folds
from medalist.honest.seeds import average_tests, seed_config
from medalist.io import write_json, write_parquet
from medalist.layout import (
    FULL_FIT,
    experiment_dir,
    fold_dir,
    has_prediction_weights,
    prediction_weights,
    test_path,
    train_path,
)
from medalist.modalities import get_modality
from medalist.prediction.tta import align_views, batched_views, merge
from medalist.tasks import Task, build_task
from medalist.training.runtime import (
    check_precision,
    make_accelerator,
    make_loader,
    process_state,
)
from medalist.training.stage import mean_prediction
from medalist.training.weights import load_weights

log = logging.getLogger(__name__)
_warned: set[str] = set()  # each precision warning once per process, not once per weight file


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


class Bf16Autocast(torch.nn.Module):
    """A model whose forward runs under bf16 autocast and returns float32 (``infer.precision``).

    Matrix products and convolutions run in bf16, reductions and activations as autocast keeps
    them; the logits are cast back so TTA merges, means and tables stay float32.
    """

    def __init__(self, model: torch.nn.Module, device_type: str):
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, inputs):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.model(inputs)
        return out.float()


def bf16_usable(cfg: Config, device: torch.device) -> bool:
    """Whether ``infer.precision: bf16`` autocasts on ``device``.

    Not on a CUDA GPU without native bf16 (compute capability below 8.0: Kaggle's T4 and P100),
    where it would be emulated, slower than fp32: there it predicts in fp32, with a warning.
    """
    if cfg.infer.precision != "bf16":
        return False
    if device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        name = torch.cuda.get_device_name(device)
        _warn_once(f"infer.precision: bf16 is not native on {name}; predicting in fp32")
        return False
    if cfg.train.mixed_precision == "fp16":
        _warn_once(
            "infer.precision: bf16 has no effect with train.mixed_precision fp16: the model's "
            "forward is autocast to fp16 inside"
        )
    return True


class AcceleratorAutocast(torch.nn.Module):
    """A model on one process whose forward runs under the accelerator's autocast (the mixed
    precision it trained with), as a prepared model's does, without the wrapper that several
    processes share (whose construction every process must take part in)."""

    def __init__(self, model: torch.nn.Module, accelerator):
        super().__init__()
        self.model, self.accelerator = model, accelerator

    def forward(self, inputs):
        with self.accelerator.autocast():
            return self.model(inputs)


def prediction_model(
    cfg: Config, model: torch.nn.Module, accelerator, shared: bool = True
) -> torch.nn.Module:
    """``model`` ready to predict as configured: channels_last when it was trained so
    (``train.channels_last``; the loaders give channels_last batches then), prepared by
    ``accelerator`` (``shared``: every process predicts its share of the rows; else this process
    alone predicts, the model on its device under the accelerator's autocast), under bf16
    autocast with ``infer.precision: bf16``."""
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # 4-D weights only: text unchanged
    if shared:
        model = accelerator.prepare(model)
    else:
        model = AcceleratorAutocast(model.to(accelerator.device), accelerator)
    if bf16_usable(cfg, accelerator.device):
        model = Bf16Autocast(model, accelerator.device.type)
    return model


def trained_folds(cfg: Config) -> list[int]:
    """Folds with saved weights: the configured ones, or every fold folder found."""
    out = experiment_dir(cfg)
    if cfg.train.folds is not None:
        folds = list(cfg.train.folds)
    else:
        folds = sorted(int(p.name[4:]) for p in out.glob("fold*") if p.name[4:].isdigit())
        folds += [FULL_FIT] if fold_dir(cfg, FULL_FIT).is_dir() else []
    missing = [f for f in folds if not has_prediction_weights(cfg, f)]
    if not folds or missing:
        raise DataError(
            f"{out}: no trained weights for fold(s) {missing or 'any'}; run train first"
        )
    return folds


def load_task(cfg: Config, train: pd.DataFrame) -> Task:
    """The task as it was trained (its classes and columns come from task.json)."""
    task = build_task(cfg, train)
    info = json.loads((experiment_dir(cfg) / "task.json").read_text())
    task.classes = info["classes"]
    return task


def view_output_maps(dataset, task: Task) -> dict[str, tuple[list[int], bool]]:
    """Per view whose outputs mean something else (a swap view), how they return to the
    identity's order: a dataset may bring ``output_maps(task)``; a ConfigError names the key of
    a mapping that does not fit the task."""
    output_maps = getattr(dataset, "output_maps", None)
    return output_maps(task) if callable(output_maps) else {}


@torch.no_grad()
def predict(model, loader, accelerator, task: Task, views: list[str], how: str, progress=False):
    """Merged TTA predictions of every row, in row order (probabilities or values); each view's
    outputs back in the identity's order first (:func:`view_output_maps`)."""
    model.eval()
    maps = view_output_maps(loader.dataset, task)
    indices, outputs = [], []
    for batch in tqdm(loader, desc="predict", leave=False, disable=None if progress else True):
        logits = align_views(batched_views(model, batch["input"], views), views, maps)
        merged = merge(task.type, logits, how)
        index, merged = accelerator.gather_for_metrics((batch["index"], merged))
        indices.append(index.cpu())
        outputs.append(merged.cpu())
    order = np.argsort(torch.cat(indices).numpy(), kind="stable")
    return torch.cat(outputs).numpy()[order]


def prediction_build_config(cfg: Config) -> Config:
    """``cfg`` to build a model that a fine-tuned file then fills: the fine-tuned file replaces
    every weight, so the model is built without reading pretrained ones (a machine without
    them, such as the offline notebook, predicts the same)."""
    unread = {"pretrained": False, "pretrained_path": None}
    return cfg.model_copy(update={"model": cfg.model.model_copy(update=unread)})


def predict_files(
    cfg: Config,
    task: Task,
    modality,
    accelerator,
    paths: list[Path],
    loader,
    views: list[str],
    progress: bool = False,
    on_file: Callable[[Path, float, float], None] | None = None,
) -> np.ndarray:
    """The mean of the merged TTA predictions of ``loader``'s rows by each weight file in
    ``paths`` (one, or the snapshots of a snapshot ensemble), as a fold's OOF was made; for a
    model its library fits (a GBDT), its prediction from the fold's files.

    ``on_file(path, load_seconds, predict_seconds)`` runs after each file (the bundle's timing).
    The model runs as :func:`prediction_model` sets it up (``infer.precision``, channels_last).
    """
    learner = modality.fold_learner(cfg, task)
    if learner is not None:  # a model its library fits: the fold's files, in their order
        started = time.perf_counter()
        dataset = loader.dataset
        values = learner.predict(dataset.frame, paths, dataset.source)
        if on_file is not None:
            on_file(paths[-1], 0.0, time.perf_counter() - started)
        return values

    def predicted(model):
        return predict(model, loader, accelerator, task, views, cfg.infer.tta_merge, progress)

    outputs = each_weight_file(cfg, task, modality, accelerator, paths, predicted, on_file)
    return mean_prediction(outputs)


def each_weight_file(
    cfg: Config,
    task,
    modality,
    accelerator,
    paths: list[Path],
    predicted: Callable[[torch.nn.Module], object],
    on_file: Callable[[Path, float, float], None] | None = None,
    shared: bool = True,
) -> list:
    """``predicted(model)`` for the model of each weight file in ``paths``, in order: built
    without pretrained weights (:func:`prediction_build_config`), the file loaded, run as
    :func:`prediction_model` sets it up (``shared``: by every process, else by this one alone),
    freed after. ``on_file(path, load_seconds, predict_seconds)`` runs after each file (the
    bundle's timing)."""
    build_cfg = prediction_build_config(cfg)
    outputs = []
    for path in paths:
        started = time.perf_counter()
        model = load_weights(modality.build_model(build_cfg, task), path)
        model = prediction_model(cfg, model, accelerator, shared)
        loaded = time.perf_counter()
        outputs.append(predicted(model))
        if on_file is not None:
            on_file(path, loaded - started, time.perf_counter() - loaded)
        if shared:
            accelerator.free_memory(model)
        else:  # the accelerator's own lists are every process's: left as they are
            release_memory(model)
    return outputs


def predict_fold(cfg, task, modality, accelerator, fold, loader, views, progress=False):
    """A fold's predictions of ``loader``'s rows, from the weights that scored its OOF rows."""
    paths = prediction_weights(cfg, fold)
    return predict_files(cfg, task, modality, accelerator, paths, loader, views, progress)


def run(cfg: Config) -> pd.DataFrame:
    """Predict the test set with every trained fold; returns the averaged prediction table.

    With ``train.seeds``: every seed's experiment, then their mean in ``outputs/<experiment>/``.
    """
    if cfg.train.seeds:
        return _run_seeds(cfg)
    # An unknown view or a precision the device cannot run stops here, before any work.
    check_precision(cfg)
    modality = get_modality(cfg.modality)
    views = modality.expand_views(cfg.infer.tta)
    train = read_train(cfg)
    folds_table = load_folds(
        cfg.competition.folds_dir,
        train,
        id_column=cfg.competition.id_column,
        target_columns=cfg.competition.target_columns,
    )
    task = load_task(cfg, train)
    test = read_test(cfg)
    modality.check_inputs(cfg, test, "test", str(test_path(cfg)))  # every row, before any work
    if task.own_predictions is not None:  # masks: predicted and written by the task
        return _run_own(cfg, task, modality, test, views, train, folds_table)
    dataset = modality.build_dataset(
        cfg, test, None, split="test", train=False, source=str(test_path(cfg)), views=views
    )
    view_output_maps(dataset, task)  # a swap's classes against the trained task's, before work
    folds = trained_folds(cfg)
    accelerator = make_accelerator(cfg)
    loader = accelerator.prepare(make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg))
    per_fold = []
    for fold in folds:
        probs = predict_fold(
            cfg, task, modality, accelerator, fold, loader, views, cfg.train.progress
        )
        per_fold.append(probs)
        if accelerator.is_main_process:
            write_parquet(fold_dir(cfg, fold) / "test.parquet", _table(cfg, task, test, probs))
    table = _table(cfg, task, test, np.mean(per_fold, axis=0))
    if accelerator.is_main_process:
        write_parquet(experiment_dir(cfg) / "test.parquet", table)
        # The settings behind test.parquet: `medalist package` ships them with the weights.
        write_json(experiment_dir(cfg) / "infer.json", inference_settings(cfg))
        log.info(
            "test predictions of %d fold(s), %d view(s) written to %s",
            len(folds),
            len(views),
            experiment_dir(cfg),
        )
    if cfg.infer.tta_oof:
        tta_oof(cfg, task, modality, accelerator, train, folds_table, folds, views)
    accelerator.wait_for_everyone()  # the main process's files are on disk before anyone reads
    return table


def _run_own(
    cfg: Config, task: Task, modality, test: pd.DataFrame, views, train, folds_table
) -> pd.DataFrame:
    """Test predictions that are not table rows (masks): each fold's and their mean, written
    by the task (``task.own_predictions``), and with ``infer.tta_oof`` its OOF rows predicted
    with the views (after ``infer.json``, which they are checked against); returns the test
    ids."""
    folds = trained_folds(cfg)
    accelerator = make_accelerator(cfg)
    own = task.own_predictions
    own.infer(cfg, modality, accelerator, folds, views)
    if accelerator.is_main_process:
        write_json(experiment_dir(cfg) / "infer.json", inference_settings(cfg))
        log.info(
            "test masks of %d fold(s), %d view(s) written to %s",
            len(folds),
            len(views),
            experiment_dir(cfg),
        )
    if cfg.infer.tta_oof:
        own.tta_oof(cfg, modality, accelerator, train, folds_table, folds, views)
    accelerator.wait_for_everyone()
    return test[[cfg.competition.id_column]]


def _run_seeds(cfg: Config) -> pd.DataFrame:
    """Each seed's test predictions (``<experiment>@s<seed>/test.parquet``), then their mean."""
    for seed in cfg.train.seeds:
        run(seed_config(cfg, seed))
    state, table = process_state(cfg), pd.DataFrame()
    if state.is_main_process:
        table = average_tests(cfg, load_task(cfg, read_train(cfg)))
        write_json(experiment_dir(cfg) / "infer.json", inference_settings(cfg))
        log.info(
            "test predictions of %d seeds averaged in %s", len(cfg.train.seeds), experiment_dir(cfg)
        )
    state.wait_for_everyone()  # the averaged table is on disk before anyone reads it
    return table


# The infer settings that change the predicted values.
INFERENCE_KEYS = ("tta", "tta_merge", "precision")


def inference_settings(cfg: Config) -> dict:
    """The ``infer`` settings that shape the predictions (views, their merge, the precision)."""
    return {key: getattr(cfg.infer, key) for key in INFERENCE_KEYS}


def tta_oof(cfg, task, modality, accelerator, train, folds_table, folds, views) -> dict:
    """The OOF predictions again, with the test-time views: what TTA really brings to CV.

    Writes ``oof_tta.parquet`` and ``tta.json`` (CV without and with TTA).
    """
    id_column = cfg.competition.id_column
    targets = task.encode_targets(train)
    fold_of_row = folds_table["fold"].to_numpy()
    parts, rows_all = [], []
    for fold in [f for f in folds if f != FULL_FIT]:
        rows = np.flatnonzero(fold_of_row == fold)
        subset = train.iloc[rows].reset_index(drop=True)
        dataset = modality.build_dataset(
            cfg, subset, None, split="train", train=False, source=str(train_path(cfg)), views=views
        )
        loader = accelerator.prepare(
            make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg)
        )
        probs = predict_fold(cfg, task, modality, accelerator, fold, loader, views)
        part = pd.DataFrame(probs, columns=task.pred_columns)
        part.insert(0, "fold", fold)
        part.insert(0, id_column, subset[id_column].to_numpy())
        parts.append(part)
        rows_all.append(rows)
    if not parts:
        return {}
    oof = pd.concat(parts, ignore_index=True)
    rows = np.concatenate(rows_all)
    order = np.argsort(rows, kind="stable")
    oof, rows = oof.iloc[order].reset_index(drop=True), rows[order]
    plain = pd.read_parquet(experiment_dir(cfg) / "oof.parquet")
    plain = plain.set_index(plain[id_column].astype(str)).loc[oof[id_column].astype(str)]
    report = {
        "views": views,
        "merge": cfg.infer.tta_merge,
        "cv": task.score(targets[rows], plain[task.pred_columns].to_numpy()),
        "cv_tta": task.score(targets[rows], oof[task.pred_columns].to_numpy()),
    }
    if accelerator.is_main_process:
        write_parquet(experiment_dir(cfg) / "oof_tta.parquet", oof)
        write_json(experiment_dir(cfg) / "tta.json", report)
        log.info("CV without TTA %s, with TTA %s", report["cv"], report["cv_tta"])
    return report


def _table(cfg: Config, task: Task, test: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
    table = pd.DataFrame(values, columns=task.pred_columns)
    table.insert(0, cfg.competition.id_column, test[cfg.competition.id_column].to_numpy())
    return table


def read_predictions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"prediction table not found: {path}; run infer first")
    return pd.read_parquet(path)
