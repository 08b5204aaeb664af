"""Snapshot ensembles: a fold's OOF and test predictions are the mean of its cycle snapshots'
predictions, each snapshot holds the weights evaluated at its cycle's end, and the switch and
the cycle count are checked. The bundle side is in test_package.py."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from medalist.cli import main
from medalist.config import resolve_config
from medalist.errors import ConfigError
from medalist.modalities import image
from medalist.prediction.infer import load_task
from medalist.training.weights import load_weights
from medalist.tricks.schedule import ScheduleTricks, snapshot_names

ARGS = ["train.epochs=2", "train.folds=[0]", "tricks.schedule.restarts=1"]
SNAPSHOTS = ["snapshot0.safetensors", "snapshot1.safetensors"]


def run(*stages: str, extra=()) -> None:
    for stage in stages:
        assert main([stage, "-c", "configs/tiny.yaml", *ARGS, *extra]) == 0, stage


def snapshot_probabilities(cfg, task, rows: pd.DataFrame, split: str) -> list[np.ndarray]:
    """Each snapshot's class probabilities of ``rows``: a plain forward pass, softmax."""
    dataset = image.build_dataset(cfg, rows, None, split=split, train=False, source=split)
    found = []
    for name in SNAPSHOTS:
        model = load_weights(image.build_model(cfg, task), Path("outputs/tiny/fold0") / name)
        with torch.no_grad():
            logits = torch.cat([model.eval()(b["input"]) for b in DataLoader(dataset, 13)])
        found.append(logits.softmax(-1).numpy())
    return found


def test_oof_and_test_predictions_are_the_mean_of_the_snapshots(tiny_project):
    run("folds", "train", "infer")
    cfg = resolve_config("configs/tiny.yaml", ARGS)
    train, test = pd.read_csv("data/train.csv"), pd.read_csv("data/test.csv")
    task = load_task(cfg, train)
    fold = Path("outputs/tiny/fold0")
    record = json.loads((fold / "scores.json").read_text())
    assert record["prediction_weights"] == SNAPSHOTS

    oof = pd.read_parquet(fold / "oof.parquet")
    valid = train.set_index("id").loc[oof["id"]].reset_index()
    each = snapshot_probabilities(cfg, task, valid, "train")
    assert not np.allclose(each[0], each[1], atol=1e-3)  # two different members
    np.testing.assert_allclose(oof[task.pred_columns].to_numpy(), np.mean(each, 0), atol=1e-6)
    # The fold's score is the ensemble's: accuracy of the mean, from the labels.
    labels = task.encode_targets(valid)
    expected = float((np.mean(each, 0).argmax(1) == labels).mean())
    assert record["scores"]["accuracy"] == pytest.approx(expected, abs=1e-12)

    predicted = pd.read_parquet(fold / "test.parquet")
    assert list(predicted["id"]) == list(test["id"])
    each = snapshot_probabilities(cfg, task, test, "test")
    np.testing.assert_allclose(predicted[task.pred_columns].to_numpy(), np.mean(each, 0), atol=1e-6)


def test_snapshots_hold_the_evaluated_weights(tiny_project):
    """With EMA on, a snapshot is the EMA at its cycle's end: the last one is the fold's final
    EMA (train.keep: last), not the raw model."""
    run(
        "folds",
        "train",
        extra=["tricks.ema.enabled=true", "tricks.ema.decay=0.5", "train.keep=last"],
    )
    fold = Path("outputs/tiny/fold0")
    last, ema = load_file(fold / "snapshot1.safetensors"), load_file(fold / "ema.safetensors")
    raw = load_file(fold / "model.safetensors")
    assert last.keys() == ema.keys()
    assert all(torch.equal(last[key], ema[key]) for key in ema)
    assert any(not torch.equal(last[k], raw[k]) for k in raw if raw[k].is_floating_point())


def test_switch_and_cycle_count():
    off = resolve_config(
        None, ["tricks.schedule.restarts=2", "tricks.schedule.snapshot_ensemble=false"]
    )
    assert snapshot_names(off) == []
    assert snapshot_names(resolve_config(None, ["tricks.schedule.restarts=0"])) == []
    on = resolve_config(
        None, ["tricks.schedule.restarts=2", "train.epochs=1", "train.grad_accum=1"]
    )
    assert snapshot_names(on) == [f"snapshot{c}.safetensors" for c in range(3)]

    class State:  # two optimizer steps cannot end three cycles
        train_loader = [0, 1]

    with pytest.raises(ConfigError, match="tricks.schedule.restarts"):
        ScheduleTricks(on).on_fit_start(State())
    State.train_loader = list(range(9))
    hook = ScheduleTricks(on)
    hook.on_fit_start(State())
    assert sorted(hook.cycle_ends.values()) == [0, 1, 2] and max(hook.cycle_ends) == 9
