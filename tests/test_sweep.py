"""``medalist sweep``: hyperparameter trials as experiments of their own, resumable, pruned on
their first folds, with the best score marked as optimistic.

The space is checked against the config schema before anything trains; trials land in the
ledger with their values; the real experiment's files are never written.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from pydantic import ValidationError
from rich.console import Console

from medalist.cli import main
from medalist.config import resolve_config
from medalist.config.sweep import SweepConfig
from medalist.errors import ConfigError
from medalist.folds import run as make_folds
from medalist.honest import sweep
from medalist.layout import experiment_dir, ledger_path
from medalist.reporting import report
from medalist.reporting.ledger_view import ledger_rows, show
from medalist.training import stage as training
from support.configs import TINY
from support.configs import cfg as tiny_cfg
from support.tables import table_cfg, write_table_competition, write_table_folds

LEAVES = {"type": "int", "low": 2, "high": 31}
RATE = {"type": "float", "low": 0.03, "high": 0.3, "log": True}


def _table(root: Path, *extra: str):
    write_table_competition(root)
    cfg = table_cfg(root, "train.experiment=cancer", *extra)
    write_table_folds(cfg)
    return cfg


def _sweep(**fields) -> SweepConfig:
    return SweepConfig.model_validate({"name": "demo", **fields})


def _result(cfg, name: str = "demo") -> dict:
    return json.loads((sweep.sweep_dir(cfg, name) / "sweep.json").read_text())


def _models(cfg, name: str = "demo") -> dict[str, int]:
    """Every trial's model files with their modification times."""
    folder = sweep.sweep_dir(cfg, name)
    return {
        str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("model.*"))
    }


def test_space_keys_are_dotted_or_nested():
    nested = _sweep(space={"tabular": {"params": {"num_leaves": LEAVES}}, "train.lr": RATE})
    assert list(nested.space) == ["tabular.params.num_leaves", "train.lr"]
    assert nested.space["train.lr"].log and nested.folds == [0] and nested.trials == 20


@pytest.mark.parametrize(
    "spec",
    [
        {"type": "uniform", "low": 0, "high": 1},  # no such type
        {"low": 0, "high": 1},  # no type
        {"type": "float", "low": 1, "high": 1},  # empty range
        {"type": "float", "low": 0, "high": 1, "log": True},  # log of 0
        {"type": "int", "low": 1, "high": 8, "step": 2, "log": True},
        {"type": "int", "low": 1.5, "high": 8},
        {"type": "categorical", "choices": []},
        {"type": "categorical", "choices": [1, 1]},
        {"type": "float", "lo": 0, "high": 1},  # a typo
    ],
)
def test_a_bad_distribution_is_refused(spec):
    with pytest.raises(ValidationError, match="space"):
        _sweep(space={"train.lr": spec})


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"tabular.roundz": LEAVES}, "unknown key 'tabular.roundz'; did you mean 'tabular.rounds'"),
        ({"trian.lr": RATE}, "unknown key 'trian'"),
        ({"tabular.rounds": {"type": "int", "low": 0, "high": 50}}, "tabular.rounds"),
        ({"train.lr": {"type": "float", "low": -0.1, "high": 0.1}}, r"train.lr: .*-0.1"),
        ({"tabular.model": {"type": "categorical", "choices": ["lightgbm", "svm"]}}, "'svm'"),
        ({"competition.id_column": {"type": "categorical", "choices": ["id"]}}, "same data"),
        ({"train.seed": {"type": "int", "low": 0, "high": 9}}, "seed"),
        ({"infer.batch_size": {"type": "int", "low": 8, "high": 64}}, "does not change"),
        ({"train.progress": {"type": "categorical", "choices": [True]}}, "does not change"),
        ({}, "sweep.space: empty"),
    ],
)
def test_unknown_keys_and_values_outside_the_schema_are_refused_before_training(
    tmp_path, monkeypatch, space, message
):
    cfg = _table(tmp_path)
    monkeypatch.setattr(training, "run", lambda *a, **k: pytest.fail("a trial trained"))
    with pytest.raises(ConfigError, match=message):
        sweep.run(cfg, _sweep(space=space))
    assert not (tmp_path / "outputs").exists()


def test_folds_and_epochs_are_checked_before_training(tmp_path, monkeypatch):
    cfg = _table(tmp_path)
    monkeypatch.setattr(training, "run", lambda *a, **k: pytest.fail("a trial trained"))
    with pytest.raises(ConfigError, match=r"sweep.folds: \[7\]"):
        sweep.run(cfg, _sweep(space={"tabular.params.num_leaves": LEAVES}, folds=[0, 7]))
    epochs = {"type": "int", "low": 1, "high": 3}
    with pytest.raises(ConfigError, match="sweep.epochs"):
        sweep.run(cfg, _sweep(space={"train.epochs": epochs}, epochs=2))
    with pytest.raises(ConfigError, match="sweep.metric"):
        sweep.run(cfg, _sweep(space={"tabular.params.num_leaves": LEAVES}, metric="auc"))
    with pytest.raises(ValidationError, match="full fit"):
        _sweep(space={"train.lr": RATE}, folds=[-1])


def test_trials_land_in_the_ledger_and_a_second_run_trains_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medalist")
    cfg = _table(tmp_path)
    space = {"tabular.params.num_leaves": LEAVES, "tabular.params.learning_rate": RATE}
    config = _sweep(space=space, trials=3, folds=[0, 1], pruner="none")
    result = sweep.run(cfg, config)

    ledger = pd.read_csv(ledger_path(cfg))
    names = [f"cancer@sweepdemo-t{n}" for n in range(3)]
    assert ledger["experiment"].tolist() == names
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    for row, trial in zip(ledger.itertuples(), trials, strict=True):
        assert json.loads(row.params) == trial["values"]
        metrics = json.loads(
            (sweep.sweep_dir(cfg, "demo") / trial["experiment"] / "metrics.json").read_text()
        )
        assert trial["score"] == pytest.approx(metrics["fold_mean"]["roc_auc"])
        assert trial["fold_scores"] == {f: s["roc_auc"] for f, s in metrics["folds"].items()}
        assert row.cv_roc_auc == pytest.approx(metrics["cv"]["roc_auc"])
    shown = ledger_rows(cfg.competition.outputs_dir)  # what `medalist ledger` prints
    assert shown["experiment"].tolist() == names and shown["main"].eq("roc_auc").all()
    console = Console(record=True, width=200)
    show(cfg.competition.outputs_dir, console=console)
    printed = console.export_text()
    leaves = trials[1]["values"]["tabular.params.num_leaves"]
    assert f"{names[1]}: tabular.params.num_leaves={leaves}, " in printed
    best = max(trials, key=lambda t: t["score"])
    assert result["best"]["number"] == best["number"]
    assert result["best"]["score"] == best["score"] and result["best"]["values"] == best["values"]
    assert result == _result(cfg)
    assert result["optimistic"] and "optimistic" in result["note"] and "optimistic" in caplog.text
    assert result["metric"] == "roc_auc" and result["direction"] == "maximize"
    assert result["command"] in caplog.text

    chosen = yaml.safe_load((sweep.sweep_dir(cfg, "demo") / "best.yaml").read_text())
    assert chosen["train"]["experiment"] == "cancer-best"
    final = resolve_config(sweep.sweep_dir(cfg, "demo") / "best.yaml")
    assert final.tabular.params["num_leaves"] == best["values"]["tabular.params.num_leaves"]
    assert not experiment_dir(cfg).exists()  # the real experiment is never written

    before = _models(cfg)
    assert len(before) == 6
    again = sweep.run(cfg, config)
    assert _models(cfg) == before and len(pd.read_csv(ledger_path(cfg))) == 3
    assert again["best"] == result["best"]

    sweep.run(cfg, config.model_copy(update={"trials": 4}))
    assert len(pd.read_csv(ledger_path(cfg))) == 4 and len(_models(cfg)) == 8

    with pytest.raises(ConfigError, match="space"):  # the same study, another space
        sweep.run(cfg, _sweep(space={"tabular.params.num_leaves": LEAVES}, folds=[0, 1]))
    assert sweep.sweep_results(cfg.competition.outputs_dir, "cancer")[0]["name"] == "demo"
    assert sweep.sweep_results(cfg.competition.outputs_dir, "other") == []


def test_a_killed_trial_resumes_with_its_number_and_finished_folds(tmp_path, monkeypatch):
    cfg = _table(tmp_path)
    config = _sweep(space={"tabular.params.num_leaves": LEAVES}, trials=1, folds=[0, 1])
    plain, calls = training.run, []

    def killed_on_second_fold(trial_cfg, **kwargs):
        calls.append(trial_cfg.train.folds)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return plain(trial_cfg, **kwargs)

    monkeypatch.setattr(training, "run", killed_on_second_fold)
    with pytest.raises(KeyboardInterrupt):
        sweep.run(cfg, config)
    first = _models(cfg)
    assert list(first) == ["cancer@sweepdemo-t0/fold0/model.lgb.txt"]
    monkeypatch.setattr(training, "run", plain)
    result = sweep.run(cfg, config)
    assert [(t["number"], t["state"]) for t in result["trials"]] == [(0, "complete")]
    models = _models(cfg)
    assert len(models) == 2 and models[next(iter(first))] == first[next(iter(first))]
    assert len(pd.read_csv(ledger_path(cfg))) == 1


def test_a_trial_far_below_the_median_is_pruned_after_its_first_fold(tmp_path):
    """Trial 1 may grow no tree at all (every leaf needs 1000 of 160 rows): a constant
    prediction, ROC AUC 0.5 on fold 0, far below trial 0's."""
    cfg = _table(tmp_path)
    leaf = "tabular.params.min_data_in_leaf"
    config = _sweep(
        space={leaf: {"type": "categorical", "choices": [5, 1000]}},
        trials=2,
        folds=[0, 1],
        startup_trials=1,
    )
    study = sweep.open_study(sweep.plan_sweep(cfg, config))
    study.enqueue_trial({leaf: 5})
    study.enqueue_trial({leaf: 1000})
    result = sweep.run(cfg, config)
    good, bad = result["trials"]
    assert (good["state"], bad["state"]) == ("complete", "pruned")
    assert bad["fold_scores"] == {"0": 0.5} and bad["score"] is None
    assert result["best"]["number"] == 0
    assert list(_models(cfg)) == [
        "cancer@sweepdemo-t0/fold0/model.lgb.txt",
        "cancer@sweepdemo-t0/fold1/model.lgb.txt",
        "cancer@sweepdemo-t1/fold0/model.lgb.txt",
    ]
    assert pd.read_csv(ledger_path(cfg))["experiment"].tolist() == ["cancer@sweepdemo-t0"]
    stored = optuna.load_study(study_name="demo", storage=sweep.storage_url(cfg, "demo"))
    assert stored.trials[1].state == optuna.trial.TrialState.PRUNED


def test_a_network_sweep_over_the_learning_rate(tiny_project):
    overrides = ["train.batch_size=8", "train.lr=0.5", "sweep.trials=2"]
    cfg = tiny_cfg(*overrides[:2], base=())  # the tiny experiment: 2 epochs of every fold
    make_folds(cfg)
    config = SweepConfig.model_validate(
        {"space": {"train.lr": RATE}, "trials": 2, "epochs": 1, "sampler": "random"}
    )
    result = sweep.run(cfg, config, config_path=TINY, overrides=overrides)
    assert [t["state"] for t in result["trials"]] == ["complete", "complete"]
    assert result["name"] == "tiny" and result["metric"] == "accuracy"
    scores = [t["score"] for t in result["trials"]]
    assert np.isfinite(scores).all() and result["best"]["score"] == max(scores)
    ledger = pd.read_csv("outputs/ledger.csv")
    assert ledger["experiment"].tolist() == ["tiny@sweeptiny-t0", "tiny@sweeptiny-t1"]
    logs = pd.read_csv(Path("outputs/sweep/tiny/tiny@sweeptiny-t0/log.csv"))
    assert len(logs) == 1  # one epoch of fold 0 (sweep.epochs), not the file's 2 of every fold
    assert not Path("outputs/tiny").exists()

    lr = result["best"]["values"]["train.lr"]
    assert result["command"] == (
        f"medalist run -c {TINY} train.batch_size=8 train.experiment=tiny-best "
        f"train.lr={json.dumps(lr)}"
    )
    # best.yaml is the experiment file with the chosen values: beside base.yaml, it runs alone.
    shutil.copy("outputs/sweep/tiny/best.yaml", "configs/tiny-best.yaml")
    final = resolve_config("configs/tiny-best.yaml")
    assert final.train.lr == lr and final.train.experiment == "tiny-best"
    assert final.train.batch_size == 8 and final.train.epochs == 2 and final.train.folds is None
    assert final.model.backbone == "test_resnet"  # from the experiment file


def test_the_command_runs_a_sweep_and_the_report_shows_it(tiny_project):
    make_folds(tiny_cfg(base=()))
    space = "sweep.space={train.lr: {type: float, low: 0.001, high: 0.01, log: true}}"
    args = ["sweep", "-c", TINY, space, "sweep.trials=1", "sweep.epochs=1", "train.batch_size=8"]
    assert main(args) == 0
    result = json.loads(Path("outputs/sweep/tiny/sweep.json").read_text())
    assert result["best"]["number"] == 0 and result["optimistic"] is True
    sections = "\n".join(report._sweep_sections(Path("outputs"), "tiny"))
    assert "Sweep tiny of tiny: best accuracy" in sections and "optimistic" in sections
