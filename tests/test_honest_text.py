"""The honest-CV tools on a text competition: real docstrings, a tiny BERT trained here.

``medalist adversarial`` must find a test set whose rows all carry a notice few train rows carry,
flag those train rows as the test-like ones, and find nothing on a random split of the same
texts; ``medalist sanity`` must stay quiet on the clean project, find copies of texts across
folds by what the model reads, and fire on labels written into the text; seeds and sweeps must
train text experiments as any other; the report must show the tools' sections once they ran.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.honest import sanity
from medalist.metrics import BUILTIN
from medalist.modalities import text
from support.text_project import (
    CONFIG,
    EXPERIMENT,
    docstrings,
    labelled,
    marked,
    random_split,
    tokenizer_corpus,
    write_text_project,
)
from support.threads import one_thread
from support.tiny_text import make_backbone

PER_LIBRARY = 100  # 200 docstrings: 150 train rows, 50 test rows
N_TEST = 50
N_TRAIN = 2 * PER_LIBRARY - N_TEST
ADVERSARIAL = ["adversarial", "-c", CONFIG, "adversarial.n_splits=2", "adversarial.epochs=4"]
SANITY = ["sanity", "-c", CONFIG]


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="session")
def corpus() -> pd.DataFrame:
    return docstrings(PER_LIBRARY)


@pytest.fixture(scope="session")
def backbone(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("backbone") / "tiny-bert"
    return make_backbone(folder, tokenizer_corpus(corpus))


@pytest.fixture
def text_project(tmp_path, corpus, backbone):
    """A random split of the docstrings as the working directory of the test."""
    project = write_text_project(tmp_path, backbone, *random_split(corpus, N_TEST))
    with working_directory(project):
        yield project


@pytest.fixture
def shifted_project(tmp_path, corpus, backbone):
    """The same split, every test text and about a fifth of the train texts carrying the
    notice; yields the project and the ids of the train rows that carry it."""
    train, test = random_split(corpus, N_TEST)
    chosen = np.random.default_rng(1).random(len(train)) < 0.2
    train.loc[chosen, "text"] = marked(train.loc[chosen, "text"])
    test["text"] = marked(test["text"])
    project = write_text_project(tmp_path, backbone, train, test)
    with working_directory(project):
        yield project, set(train.loc[chosen, "id"])


def _json(path: str) -> dict:
    return json.loads(Path(path).read_text())


def _untouched(project: Path) -> None:
    """The real experiment, its folds and the ledger were never written."""
    assert not (project / "outputs" / EXPERIMENT).exists()
    assert not (project / "outputs" / "ledger.csv").exists()


# ---------------------------------------------------------------------------------------------
# medalist adversarial


def test_a_notice_only_test_texts_carry_is_a_shift_and_flags_the_train_texts_with_it(
    shifted_project, caplog
):
    project, marked_ids = shifted_project
    caplog.set_level(logging.INFO, logger="medalist")
    assert main(ADVERSARIAL) == 0  # a measurement: exit 0 whatever it finds
    folder = project / "outputs" / "adversarial" / EXPERIMENT
    result = _json(folder / "adversarial.json")
    assert result["verdict"] == "shift" and result["z"] > 3, result["fold_auc"]
    # At best 0.9: the train texts with the notice (a fifth) look exactly like test texts.
    assert result["auc"] > 0.75 and ": shift:" in caplog.text
    assert (result["n_train"], result["n_test"]) == (N_TRAIN, N_TEST)
    assert result["features"] is None  # a network: no gain to share
    listed = [row["id"] for row in result["test_like_rows"]]
    assert len(marked_ids & set(listed)) >= 10, listed  # about 4 of the 20 by chance
    train = pd.read_csv("data/train.csv")
    weights = pd.read_csv(folder / "weights.csv")
    flags = pd.read_csv(folder / "test_like.csv")
    assert list(weights["id"]) == list(flags["id"]) == list(train["id"])
    assert flags["test_like"].sum() == round(0.2 * N_TRAIN)  # adversarial.test_like_fraction
    carries = train["id"].isin(marked_ids)
    assert carries[flags["test_like"] == 1].mean() > 0.5, carries.mean()
    assert roc_auc_score(carries, weights["weight"]) > 0.85  # they weigh more
    # The run read the text and nothing else: no target, its own folds, the experiment untouched.
    table = pd.read_csv(folder / "data" / "train.csv")
    assert list(table.columns) == ["id", "text", "is_test"]
    assert not (project / "folds" / "folds.csv").exists()
    _untouched(project)


def test_a_random_split_of_the_same_texts_is_no_shift(text_project):
    assert main(ADVERSARIAL) == 0
    result = _json(f"outputs/adversarial/{EXPERIMENT}/adversarial.json")
    # Within 3 standard errors of 0.5 (0.047 for 150 train and 50 test rows).
    assert result["verdict"] == "no shift" and abs(result["z"]) < 3, result["auc"]
    _untouched(text_project)


# ---------------------------------------------------------------------------------------------
# medalist sanity


def test_a_null_without_spread_cannot_judge_and_another_metric_does():
    """Every shuffle scores the same accuracy (one class predicted for every row): no standard
    error made of rounding, no z; the log loss, whose null has spread, judges instead."""
    accuracy, loss = BUILTIN["accuracy"], BUILTIN["log_loss"]
    flat = sanity.assess(accuracy, 5 / 9, np.full(200, 5 / 9), 3.0)
    assert not flat["informative"] and flat["standard_error"] == 0 and flat["z"] == 0
    assert not flat["above_chance"]
    spread = sanity.assess(loss, 0.68, np.random.default_rng(0).normal(0.72, 0.01, 200), 3.0)
    assert spread["informative"] and spread["above_chance"]
    scores = {"accuracy": flat, "log_loss": spread}
    assert sanity.judging_metric("accuracy", scores) == "log_loss"
    assert sanity.judging_metric("accuracy", {"accuracy": flat}) is None


def test_a_clean_text_project_is_at_chance(text_project):
    assert main(["folds", "-c", CONFIG]) == 0
    assert main([*SANITY, "sanity.epochs=2"]) == 0
    result = _json(f"outputs/sanity/{EXPERIMENT}/sanity.json")
    assert result["verdict"] == "chance" and result["judged_by"] is not None
    assert abs(result["metrics"][result["judged_by"]]["z"]) < 3
    assert result["duplicate_groups_across_folds"] == 0
    _untouched(text_project)


def test_copies_of_texts_are_found_by_the_tokens_the_model_reads(text_project):
    """Copies under other ids, and copies that differ only in case and spacing (the tokenizer
    lowercases and splits on whitespace: the same tokens), share a group; the other texts and
    a copy with one word changed do not."""
    train = pd.read_csv("data/train.csv")
    copies = train.iloc[:3].assign(id=lambda f: f["id"] + "-copy")
    shouted = train.iloc[3:5].assign(
        id=lambda f: f["id"] + "-upper", text=lambda f: "  " + f["text"].str.upper()
    )
    edited = train.iloc[[5]].assign(id="edited", text="Given " + train["text"].iloc[5])
    rows = pd.concat([train, copies, shouted, edited], ignore_index=True)
    groups = sanity.content_groups(resolve_config(CONFIG), rows)
    n = len(train)
    assert list(groups[n:]) == [0, 1, 2, 3, 4, n + 5]
    assert len(set(groups[:n])) == n  # the docstrings themselves are all distinct


def test_labels_written_into_the_text_fire_the_alarm(text_project, monkeypatch, caplog):
    """A dataset that writes each row's label into its text (a planted bug) carries the
    shuffled labels into the validation texts, as it carried the real ones."""
    plain = text.build_dataset
    classes = np.array(sorted(pd.read_csv("data/train.csv")["library"].unique()))

    def leaky(cfg, df, targets, **kwargs):
        if targets is not None:  # class indices
            df = df.assign(text=labelled(df["text"], classes[np.asarray(targets)]))
        return plain(cfg, df, targets, **kwargs)

    monkeypatch.setattr(text, "build_dataset", leaky)
    assert main(["folds", "-c", CONFIG]) == 0
    code = main([*SANITY, "sanity.duplicates=false"])
    result = _json(f"outputs/sanity/{EXPERIMENT}/sanity.json")
    assert code == 2 and result["verdict"] == "leak", result["metrics"]
    judged = result["metrics"][result["judged_by"]]
    assert judged["score"] != judged["chance"] and judged["z"] > 3
    assert "labels reaching the inputs" in caplog.text
    _untouched(text_project)


@pytest.mark.slow
def test_copies_of_texts_across_folds_fire_the_alarm_and_are_named(text_project, caplog):
    """45 docstrings three times over under other ids: the folds split the copies, the shuffled
    label follows the tokens, and the model reads a validation text's label off its copy."""
    train = pd.read_csv("data/train.csv").iloc[:45]
    copies = [train.assign(id=train["id"] + f"-{k}") for k in range(3)]
    pd.concat(copies, ignore_index=True).to_csv("data/train.csv", index=False)
    assert main(["folds", "-c", CONFIG]) == 0
    code = main([*SANITY, "sanity.epochs=6", "train.lr=1e-2"])
    result = _json(f"outputs/sanity/{EXPERIMENT}/sanity.json")
    assert result["duplicate_groups_across_folds"] >= 25
    assert all(
        len({i.rsplit("-", 1)[0] for i in ids}) == 1 for ids in result["duplicate_ids_across_folds"]
    )  # each group: the copies of one docstring
    assert code == 2 and result["verdict"] == "leak", result["main"]
    assert "duplicates across folds" in caplog.text


# ---------------------------------------------------------------------------------------------
# train.seeds, medalist sweep, medalist report

ONE_EPOCH_FOLD_0 = ["train.epochs=1", "train.folds=[0]"]


def test_text_seeds_train_apart_and_average(text_project):
    assert main(["folds", "-c", CONFIG]) == 0
    assert main(["train", "-c", CONFIG, *ONE_EPOCH_FOLD_0, "train.seeds=[0,1]"]) == 0
    columns = ["p_numpy", "p_pandas"]
    seeds = [pd.read_parquet(f"outputs/{EXPERIMENT}@s{s}/oof.parquet") for s in (0, 1)]
    averaged = pd.read_parquet(f"outputs/{EXPERIMENT}/oof.parquet")
    assert not np.allclose(seeds[0][columns], seeds[1][columns])  # the seeds differ
    assert averaged["id"].tolist() == seeds[0]["id"].tolist()
    assert np.allclose(averaged[columns], np.mean([s[columns].to_numpy() for s in seeds], axis=0))
    metrics = _json(f"outputs/{EXPERIMENT}/metrics.json")
    accuracy = [_json(f"outputs/{EXPERIMENT}@s{s}/metrics.json")["cv"]["accuracy"] for s in (0, 1)]
    assert metrics["seed_mean"]["accuracy"] == pytest.approx(np.mean(accuracy))
    assert metrics["seed_std"]["accuracy"] == pytest.approx(np.std(accuracy, ddof=1))
    ledger = pd.read_csv("outputs/ledger.csv")
    assert ledger["experiment"].tolist() == [f"{EXPERIMENT}@s0", f"{EXPERIMENT}@s1", EXPERIMENT]


def test_a_sweep_over_text_keys_lands_in_the_ledger_and_writes_best_yaml(text_project):
    """The learning rate and the text pooling, two trials of one epoch on folds 0 and 1."""
    assert main(["folds", "-c", CONFIG]) == 0
    space = (
        "sweep.space={train.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}, "
        "text.pooling: {type: categorical, choices: [mean, attention]}}"
    )
    settings = ["sweep.trials=2", "sweep.epochs=1", "sweep.folds=[0,1]", "sweep.pruner=none"]
    assert main(["sweep", "-c", CONFIG, space, *settings]) == 0
    folder = text_project / "outputs" / "sweep" / EXPERIMENT
    result = _json(folder / "sweep.json")
    trials = result["trials"]
    assert [t["state"] for t in trials] == ["complete", "complete"]
    assert all(set(t["fold_scores"]) == {"0", "1"} for t in trials)
    ledger = pd.read_csv("outputs/ledger.csv")
    names = [f"{EXPERIMENT}@sweep{EXPERIMENT}-t{n}" for n in (0, 1)]
    assert ledger["experiment"].tolist() == names
    assert [json.loads(p) for p in ledger["params"]] == [t["values"] for t in trials]
    best = result["best"]["values"]
    chosen = yaml.safe_load((folder / "best.yaml").read_text())
    assert chosen["train"]["experiment"] == f"{EXPERIMENT}-best"
    assert chosen["text"]["pooling"] == best["text.pooling"]
    # best.yaml is the experiment file with the chosen values: beside base.yaml, it runs alone.
    (text_project / "configs" / "best.yaml").write_text((folder / "best.yaml").read_text())
    final = resolve_config("configs/best.yaml")
    assert final.train.lr == best["train.lr"] and final.text.pooling == best["text.pooling"]
    assert final.text.backbone == "models/backbone" and final.train.folds is None
    assert not (text_project / "outputs" / EXPERIMENT).exists()


def test_the_report_shows_the_leak_alarm_and_train_versus_test_once_they_ran(text_project):
    assert main(["folds", "-c", CONFIG]) == 0
    assert main(["train", "-c", CONFIG, "train.epochs=1"]) == 0  # the report needs every fold
    report = ["report", "-c", CONFIG, "train.epochs=1"]
    assert main(report) == 0
    page = Path("outputs/report.html").read_text()
    assert "Leak alarm of" not in page and "Train versus test of" not in page
    real = {p: p.read_bytes() for p in Path("outputs").rglob("*") if p.is_file()}
    quick = ["sanity.epochs=1", "sanity.folds=[0]", "sanity.permutations=50"]
    assert main([*SANITY, *quick]) == 0
    assert (
        main(["adversarial", "-c", CONFIG, "adversarial.epochs=1", "adversarial.n_splits=2"]) == 0
    )
    # The tools wrote beside the experiment, never over it.
    assert {p: p.read_bytes() for p in real} == real
    assert main(report) == 0
    page = Path("outputs/report.html").read_text()
    assert f"Leak alarm of {EXPERIMENT}: at chance" in page and "50 label permutations" in page
    assert f"Train versus test of {EXPERIMENT}: no shift found" in page
