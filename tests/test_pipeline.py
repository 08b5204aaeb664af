"""Smoke runs of every stage on tiny real data, through the command line as a user runs them, and
a run on shuffled labels that must score at chance (no validation row is trained on)."""

import json

import numpy as np
import pandas as pd
import pytest
import timm
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, log_loss

from medalist.cli import main
from medalist.config import resolve_config
from medalist.folds import run as make_folds
from medalist.pipeline import run
from medalist.training.stage import run as train_stage

CONFIG = ["-c", "configs/tiny.yaml"]


def test_stages_one_by_one(tiny_project):
    assert main(["folds", *CONFIG]) == 0
    assert main(["train", *CONFIG]) == 0
    out = tiny_project / "outputs" / "tiny"
    train = pd.read_csv("data/train.csv")
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["id", "fold"] + [f"p_{c}" for c in range(10)]
    assert sorted(oof["id"]) == sorted(train["id"])  # every row once
    assert np.allclose(oof.filter(like="p_").sum(axis=1), 1.0, atol=1e-5)
    folds = pd.read_csv("folds/folds.csv").set_index("id")["fold"]
    assert (oof.set_index("id")["fold"] == folds.loc[oof["id"]]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["folds"]) == {"0", "1", "2"}
    # The CV is the OOF table's score (sklearn on the rows joined to their labels by id).
    labels = train.set_index("id").loc[oof["id"], "label"].to_numpy()
    probs = oof.filter(like="p_").to_numpy()
    assert metrics["cv"]["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert metrics["cv"]["log_loss"] == pytest.approx(log_loss(labels, probs, labels=range(10)))
    # Each fold's weights: test_resnet with a head for the 10 digits, trained on its own rows.
    model = timm.create_model("test_resnet", num_classes=10, in_chans=1)
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    weights = [load_file(out / f"fold{fold}" / "model.safetensors") for fold in range(3)]
    for fold in weights:
        assert {key: tuple(tensor.shape) for key, tensor in fold.items()} == expected
    assert not weights[0]["fc.weight"].equal(weights[1]["fc.weight"])
    assert (out / "config.yaml").is_file() and (out / "log.csv").is_file()

    assert main(["infer", *CONFIG]) == 0
    test = pd.read_parquet(out / "test.parquet")
    assert list(test["id"]) == list(pd.read_csv("data/test.csv")["id"])
    per_fold = [pd.read_parquet(out / f"fold{k}" / "test.parquet") for k in range(3)]
    mean = np.mean([p.filter(like="p_").to_numpy() for p in per_fold], axis=0)
    assert np.allclose(test.filter(like="p_").to_numpy(), mean)

    assert main(["submission", *CONFIG]) == 0
    sub = pd.read_csv("submissions/tiny.csv")
    sample = pd.read_csv("data/sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    assert sub["label"].isin(range(10)).all()
    assert main(["validate", "submissions/tiny.csv", *CONFIG]) == 0

    ledger = pd.read_csv("outputs/ledger.csv")
    assert ledger["experiment"].tolist() == ["tiny"]
    assert ledger["cv_accuracy"].iloc[0] == pytest.approx(metrics["cv"]["accuracy"])


def test_run_skips_up_to_date_stages_and_reruns_on_change(tiny_project):
    cfg = resolve_config("configs/tiny.yaml", ["train.epochs=1"])
    assert run(cfg) == {s: "ran" for s in ("folds", "train", "infer", "submission")}
    assert run(cfg) == {s: "skipped" for s in ("folds", "train", "infer", "submission")}
    changed = resolve_config(
        "configs/tiny.yaml", ["train.epochs=1", "submission.kind=label", "submission.name=again"]
    )
    assert run(changed) == {
        "folds": "skipped",
        "train": "skipped",
        "infer": "skipped",
        "submission": "ran",
    }
    weights = tiny_project / "outputs" / "tiny" / "fold0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    smoothed = resolve_config(
        "configs/tiny.yaml", ["train.epochs=1", "tricks.loss.label_smoothing=0.1"]
    )
    assert run(smoothed) == {
        "folds": "skipped",
        "train": "ran",
        "infer": "ran",
        "submission": "ran",
    }
    assert weights.stat().st_mtime_ns != stamp  # a trick changes the weights: folds retrained


def test_starting_weights_count_by_content(tmp_path):
    from medalist.layout import training_hash

    weights = tmp_path / "backbone.safetensors"
    weights.write_bytes(b"first")
    cfg = resolve_config(
        None, [f"model.pretrained_path={weights}", "competition.target_columns=[y]"]
    )
    before = training_hash(cfg)
    assert training_hash(cfg) == before
    weights.write_bytes(b"second")  # e.g. MLM pretraining rewrote the backbone folder in place
    assert training_hash(cfg) != before
    assert training_hash(
        cfg.model_copy(update={"mlm": cfg.mlm.model_copy(update={"lr": 1.0})})
    ) == (training_hash(cfg))


def test_finished_fold_is_not_retrained(tiny_project):
    cfg = resolve_config("configs/tiny.yaml", ["train.epochs=1", "train.folds=[0]"])
    run(
        resolve_config("configs/tiny.yaml", ["train.epochs=1"]).model_copy(
            update={"stages": ["folds"]}
        )
    )
    from medalist.training.stage import run as train

    train(cfg)
    weights = tiny_project / "outputs" / "tiny" / "fold0" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    train(resolve_config("configs/tiny.yaml", ["train.epochs=1"]))  # all folds now
    assert weights.stat().st_mtime_ns == stamp
    assert (tiny_project / "outputs" / "tiny" / "fold2" / "model.safetensors").is_file()


def test_full_fit(tiny_project):
    assert main(["folds", *CONFIG]) == 0
    assert main(["train", *CONFIG, "train.folds=[-1]", "train.epochs=1"]) == 0
    out = tiny_project / "outputs" / "tiny"
    assert (out / "full" / "model.safetensors").is_file()
    assert not (out / "oof.parquet").exists()  # a full fit has no OOF predictions
    assert main(["infer", *CONFIG, "train.folds=[-1]"]) == 0
    assert len(pd.read_parquet(out / "test.parquet")) == len(pd.read_csv("data/test.csv"))


@pytest.mark.slow
def test_shuffled_targets_score_at_chance(tiny_project):
    train_csv = tiny_project / "data" / "train.csv"
    data = pd.read_csv(train_csv)
    data["label"] = np.random.default_rng(0).permutation(data["label"].to_numpy())
    data.to_csv(train_csv, index=False)
    config = resolve_config("configs/tiny.yaml", ["train.epochs=3"])
    make_folds(config)
    metrics = train_stage(config)
    # Ten classes: chance is 0.1. A leak (validation rows in training) would score far above.
    assert metrics["cv"]["accuracy"] < 0.25
