"""Seeds as a distribution (``train.seeds``): one experiment per seed, the seed-averaged model in
``outputs/<experiment>/``, the ledger and the report with mean, std and the averaged CV."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from medalist.cli import main
from medalist.config import Config
from medalist.errors import ConfigError
from medalist.layout import training_hash
from medalist.reporting import report
from medalist.reporting.ledger_view import show
from support.bundles import kaggle_overrides
from support.configs import FOLD_0, TINY, cfg

SEEDS = ["-c", TINY, *FOLD_0, "train.seeds=[0,1]"]


def _defaults(*extra: str) -> Config:
    return cfg(*extra, path=None, base=["competition.target_columns=[y]"])


def test_each_seed_once():
    with pytest.raises(ConfigError, match="train.seeds"):
        _defaults("train.seeds=[1,1]")


def test_the_seed_list_leaves_a_single_seed_run_as_it_was():
    assert training_hash(_defaults("train.seeds=[3,4]")) == training_hash(_defaults())


def _oof(experiment: str) -> pd.DataFrame:
    return pd.read_parquet(f"outputs/{experiment}/oof.parquet")


def test_seeds_train_apart_and_average(tiny_project):
    assert main(["folds", "-c", TINY]) == 0
    assert main(["train", *SEEDS]) == 0
    seeds = [_oof("tiny@s0"), _oof("tiny@s1")]
    averaged = _oof("tiny")
    columns = [c for c in averaged.columns if c.startswith("p_")]
    assert not np.allclose(seeds[0][columns], seeds[1][columns])  # the seeds differ
    expected = np.mean([s[columns].to_numpy() for s in seeds], axis=0)
    assert np.allclose(averaged[columns].to_numpy(), expected)
    assert averaged["id"].tolist() == seeds[0]["id"].tolist()

    metrics = json.loads(Path("outputs/tiny/metrics.json").read_text())
    single = [json.loads(Path(f"outputs/tiny@s{s}/metrics.json").read_text())["cv"] for s in (0, 1)]
    accuracy = [s["accuracy"] for s in single]
    assert metrics["seed_cv"]["0"]["accuracy"] == accuracy[0]
    assert metrics["seed_mean"]["accuracy"] == pytest.approx(np.mean(accuracy))
    assert metrics["seed_std"]["accuracy"] == pytest.approx(np.std(accuracy, ddof=1))
    train = pd.read_csv("data/train.csv").set_index("id")
    classes = sorted(train["label"].unique())
    truth = train.loc[averaged["id"], "label"].map({c: i for i, c in enumerate(classes)})
    hits = (averaged[columns].to_numpy().argmax(1) == truth.to_numpy()).mean()
    assert metrics["cv"]["accuracy"] == pytest.approx(hits)  # the averaged model's own CV
    assert "best" not in json.dumps(metrics)  # no best seed is offered

    ledger = pd.read_csv("outputs/ledger.csv", dtype={"seed": str})
    assert ledger["experiment"].tolist() == ["tiny@s0", "tiny@s1", "tiny"]
    assert ledger["seed"].tolist() == ["0", "1", "mean(0,1)"]
    assert ledger["seeds_std_accuracy"].iloc[-1] == pytest.approx(np.std(accuracy, ddof=1))
    console = Console(record=True, width=240)
    show("outputs", console=console)
    text = console.export_text()
    assert "seeds of tiny (0, 1)" in text and "the seed-averaged model" in text

    assert main(["infer", *SEEDS]) == 0
    tests = [pd.read_parquet(f"outputs/tiny@s{s}/test.parquet") for s in (0, 1)]
    test = pd.read_parquet("outputs/tiny/test.parquet")
    assert np.allclose(
        test[columns].to_numpy(), np.mean([t[columns].to_numpy() for t in tests], axis=0)
    )
    assert main(["submission", *SEEDS]) == 0
    # The bundle ships every seed and averages them (tests/test_package_seeds.py runs it).
    kaggle = kaggle_overrides(tiny_project.parent, "someone/seeds", "kaggle.timing_rows=0")
    assert main(["package", *SEEDS, *kaggle]) == 0
    manifest = json.loads(Path("package/seeds/medalist-bundle.json").read_text())
    assert manifest["experiments"]["tiny"]["seeds"] == ["tiny@s0", "tiny@s1"]


def test_the_report_shows_the_seeds_and_no_best_one(tmp_path):
    record = {
        "seeds": [0, 1],
        "seed_experiments": ["exp@s0", "exp@s1"],
        "seed_cv": {"0": {"accuracy": 0.8}, "1": {"accuracy": 0.9}},
        "seed_mean": {"accuracy": 0.85},
        "seed_std": {"accuracy": 0.0707},
        "cv": {"accuracy": 0.91},
    }
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "metrics.json").write_text(json.dumps(record))
    page = report._seeds_section(tmp_path / "exp", ["accuracy"])
    for text in ("Seeds of exp", "exp@s0", "0.80000", "mean across seeds", "0.85000", "0.07070"):
        assert text in page
    assert "seed-averaged model</th>\n      <td>0.91000" in page
    assert "best" not in page
    assert report._seeds_section(tmp_path / "missing", ["accuracy"]) is None
