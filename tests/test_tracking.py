"""Experiment trackers: wandb and mlflow (offline, files only) get the config, every epoch and
the CV of a train run; a tracker that is not installed is refused before any training."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from medalist.cli import main

TRAIN = ["-c", "configs/tiny.yaml", "train.epochs=2", "train.folds=[0,1]"]


def test_mlflow_and_wandb_get_every_epoch_and_the_cv(tiny_project, monkeypatch):
    import mlflow  # mlflow(-skinny) and wandb are in the dev extras that make test installs

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the run sets it; undone after

    assert main(["folds", *TRAIN]) == 0
    assert main(["train", *TRAIN, "tracking.trackers=[mlflow,wandb]", "tracking.project=tiny"]) == 0
    out = tiny_project / "outputs"
    log = pd.read_csv(out / "tiny" / "log.csv")  # the CSV log is written as always
    assert len(log) == 4 and sorted(set(log["fold"])) == [0, 1]
    cv = json.loads((out / "tiny" / "metrics.json").read_text())["cv"]

    client = mlflow.MlflowClient(tracking_uri=(out / "tracking" / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "tiny"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == "2" and run.data.params["train.experiment"] == "tiny"
    for fold in (0, 1):
        rows = log[log["fold"] == fold]
        for name in ("train_loss", "valid_loss", "accuracy"):
            history = client.get_metric_history(run.info.run_id, f"fold{fold}/{name}")
            assert [m.value for m in history] == pytest.approx(rows[name].tolist(), rel=1e-6)
    steps = [
        m.step for f in (0, 1) for m in client.get_metric_history(run.info.run_id, f"fold{f}/lr")
    ]
    assert steps == [0, 1, 2, 3]  # one step per epoch across the folds, in order
    for name, value in cv.items():
        assert run.data.metrics[f"cv/{name}"] == pytest.approx(value, rel=1e-6)

    (wandb_run,) = (out / "tracking" / "wandb").glob("offline-run-*")  # written, not uploaded
    (records,) = wandb_run.glob("run-*.wandb")
    assert records.stat().st_size > 0


def test_a_tracker_not_installed_is_refused_before_training(tiny_project, monkeypatch, caplog):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "wandb" else find_spec(name, *a),
    )
    assert main(["folds", *TRAIN]) == 0
    assert main(["train", *TRAIN, "tracking.trackers=[wandb]"]) == 2
    assert "tracking.trackers: wandb is not installed" in caplog.text
    assert not (tiny_project / "outputs" / "tiny").exists()  # refused before any training


def test_no_tracker_is_the_default(tiny_project):
    from medalist.config import resolve_config

    cfg = resolve_config("configs/tiny.yaml", [])
    assert cfg.tracking.trackers == [] and cfg.tracking.offline
