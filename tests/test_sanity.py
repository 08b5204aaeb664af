"""The leak alarm (``medalist sanity``): labels without signal, chance by permutation, the verdict.

The alarm must fire on a planted leak that carries labels (a dataset that writes each row's label
into its pixels; copies of rows in other folds) and stay quiet on the clean tiny project, without
touching the real experiment's files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.honest import sanity
from medalist.metrics import BUILTIN
from medalist.modalities import image
from medalist.reporting import report
from support.configs import TINY, cfg

SANITY = ["sanity", "-c", TINY]


def _result() -> dict:
    return json.loads(Path("outputs/sanity/tiny/sanity.json").read_text())


def test_shuffle_keeps_each_fold_s_labels_and_gives_copies_one_label():
    targets = np.arange(12) % 4
    fold = np.repeat([0, 1, 2], 4)
    groups = np.arange(12)
    groups[[5, 9]] = 1  # rows 5 (fold 1) and 9 (fold 2) are copies of row 1 (fold 0)
    shuffled = sanity.shuffle_labels(targets, fold, groups, seed=3)
    assert shuffled[5] == shuffled[9] == shuffled[1]
    clean = sanity.shuffle_labels(targets, fold, np.arange(12), seed=3)
    for f in range(3):
        assert sorted(clean[fold == f]) == sorted(targets[fold == f])
    assert not np.array_equal(clean, targets)
    assert np.array_equal(clean, sanity.shuffle_labels(targets, fold, np.arange(12), seed=3))


def test_crossing_groups_lists_copies_in_other_folds_only():
    groups = np.array([0, 0, 2, 2, 4])
    fold = np.array([0, 1, 0, 0, 1])
    assert sanity.crossing_groups(groups, fold, np.array([10, 11, 12, 13, 14])) == [[10, 11]]


def test_assess_is_one_sided_against_the_permutation_null():
    null = np.random.default_rng(0).normal(0.5, 0.01, size=200)
    auc, loss = BUILTIN["roc_auc"], BUILTIN["log_loss"]
    assert sanity.assess(auc, 0.6, null, 3.0)["above_chance"]
    assert not sanity.assess(auc, 0.4, null, 3.0)["above_chance"]  # worse than chance: no leak
    assert not sanity.assess(loss, 0.6, null, 3.0)["above_chance"]
    high = sanity.assess(loss, 0.4, null, 3.0)
    assert high["above_chance"] and high["p_value"] == pytest.approx(1 / 201)


def test_identical_inputs_are_found_by_content(tiny_project):
    train = pd.read_csv("data/train.csv")
    copies = train.iloc[:3].assign(id=lambda f: f["id"] + 100_000)
    groups = sanity.content_groups(cfg(), pd.concat([train, copies], ignore_index=True))
    n = len(train)
    assert list(groups[n:]) == [0, 1, 2]
    assert len(set(groups[:n])) == n  # the digits themselves are all distinct


def test_a_clean_project_is_at_chance_and_the_real_experiment_is_untouched(tiny_project):
    assert main(["folds", "-c", TINY]) == 0
    assert main([*SANITY, "sanity.epochs=2"]) == 0
    result = _result()
    assert result["verdict"] == "chance"
    assert result["duplicate_groups_across_folds"] == 0
    assert set(result["metrics"]) == {"accuracy", "log_loss", "macro_f1"}
    assert abs(result["main"]["z"]) < 3
    assert not (tiny_project / "outputs" / "tiny").exists()
    assert not (tiny_project / "outputs" / "ledger.csv").exists()


def test_labels_written_into_the_pixels_fire_the_alarm(tiny_project, monkeypatch, caplog):
    """A dataset that reads the target to make its input (a planted bug) carries the shuffled
    labels into the validation rows' pixels, exactly as it carried the real ones."""
    plain = image.ImageDataset.__getitem__

    def leaky(self, index):
        sample = plain(self, index)
        if "target" in sample:
            sample["input"] = sample["input"] + torch.as_tensor(sample["target"]).float()
        return sample

    monkeypatch.setattr(image.ImageDataset, "__getitem__", leaky)
    assert main(["folds", "-c", TINY]) == 0
    assert main([*SANITY, "sanity.epochs=3", "sanity.duplicates=false"]) == 2
    result = _result()
    assert result["verdict"] == "leak"
    assert result["main"]["score"] > result["main"]["chance"] + 3 * result["main"]["standard_error"]
    assert "labels reaching the inputs" in caplog.text
    assert "group split" in caplog.text


@pytest.mark.slow
def test_copies_across_folds_fire_the_alarm_and_are_named(tiny_project, caplog):
    """Every digit three times over with other ids: the folds split the copies, the shuffled
    label follows the content, and the model reads a validation row's label off its copy."""
    train = pd.read_csv("data/train.csv").iloc[:30]
    copies = [train.assign(id=train["id"] + k * 100_000) for k in range(3)]
    pd.concat(copies, ignore_index=True).to_csv("data/train.csv", index=False)
    assert main(["folds", "-c", TINY]) == 0
    code = main([*SANITY, "sanity.epochs=5", "train.lr=1e-2", "train.batch_size=8"])
    result = _result()
    assert result["duplicate_groups_across_folds"] >= 25
    assert code == 2 and result["verdict"] == "leak", result["main"]
    assert "duplicates across folds" in caplog.text


def test_the_report_shows_the_alarm(trained_project):
    assert main([*SANITY, "sanity.epochs=1", "sanity.folds=[0]", "sanity.permutations=50"]) == 0
    record = json.loads(Path("outputs/sanity/tiny/sanity.json").read_text())
    assert record["rows_scored"] == len(pd.read_parquet("outputs/tiny/fold0/oof.parquet"))
    page = report._sanity_section(Path("outputs"), "tiny")
    assert "Leak alarm of tiny: at chance" in page and "50 label permutations" in page
    assert report._sanity_section(Path("outputs"), "other") is None


def test_the_report_says_which_metric_judged_and_when_no_metric_could(tmp_path):
    """A verdict resting on another metric than the main one says so; an inconclusive run is
    never reported as at chance."""
    flat = {"score": 0.5, "chance": 0.5, "standard_error": 0.0, "z": 0.0, "p_value": 1.0}
    moved = {"score": 0.69, "chance": 0.7, "standard_error": 0.01, "z": 1.0, "p_value": 0.2}
    record = {
        "main_metric": "accuracy",
        "permutations": 50,
        "z_alarm": 3.0,
        "epochs": 1,
        "duplicate_groups_across_folds": 0,
    }
    folder = tmp_path / "sanity" / "tiny"
    folder.mkdir(parents=True)
    judged = {**record, "verdict": "chance", "judged_by": "log_loss"}
    judged["metrics"] = {"accuracy": flat, "log_loss": moved}
    (folder / "sanity.json").write_text(json.dumps(judged))
    page = report._sanity_section(tmp_path, "tiny")
    assert "at chance: no leak found by label shuffling (judged by log_loss" in page
    stuck = {**record, "verdict": "inconclusive", "judged_by": None}
    stuck["metrics"] = {"accuracy": flat, "log_loss": flat}
    (folder / "sanity.json").write_text(json.dumps(stuck))
    page = report._sanity_section(tmp_path, "tiny")
    assert "Leak alarm of tiny: inconclusive" in page and "at chance" not in page
