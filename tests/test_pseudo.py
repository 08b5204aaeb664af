"""Pseudo labels: selection maths, per-fold teachers by default, leaky combinations refused,
and a constructed case where the leaky way inflates CV while medalist's default does not."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import PseudoConfig, resolve_config
from medalist.errors import ConfigError, DataError
from medalist.prediction.pseudo import confidence, hard_labels, select_rows

ARGS = ["-c", "configs/tiny.yaml", "train.epochs=1"]


def test_selection_threshold_per_class_cap_and_balance():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55], [0.97, 0.03]])
    assert confidence("multiclass", probs).tolist() == [0.9, 0.6, 0.8, 0.55, 0.97]
    assert select_rows("multiclass", probs, PseudoConfig(threshold=0.7)).tolist() == [0, 2, 4]
    per_class = PseudoConfig(threshold=[0.95, 0.5])
    assert select_rows("multiclass", probs, per_class).tolist() == [2, 3, 4]
    assert select_rows("multiclass", probs, PseudoConfig(max_fraction=0.4)).tolist() == [0, 4]
    balanced = select_rows("multiclass", probs, PseudoConfig(balance=True))
    assert sorted(probs[balanced].argmax(1).tolist()) == [0, 0, 1, 1]  # two of each class
    assert hard_labels("multiclass", probs[:1]).tolist() == [[1.0, 0.0]]
    assert confidence("binary", np.array([[0.1], [0.7]])).tolist() == pytest.approx([0.9, 0.7])
    with pytest.raises(ConfigError, match="pseudo.threshold"):
        select_rows("multiclass", probs, PseudoConfig(threshold=[0.1, 0.2, 0.3]))


# Predicted positive: rows 0, 1, 2, 6 (confidence .95 .9 .8 .6); negative: 3, 4, 5 (.7 .9 .98).
BINARY = np.array([[0.95], [0.9], [0.8], [0.3], [0.1], [0.02], [0.6]])


def test_binary_threshold_per_class():
    per_class = PseudoConfig(threshold=[0.9, 0.85])  # [negative, positive]
    assert select_rows("binary", BINARY, per_class).tolist() == [0, 1, 4, 5]
    with pytest.raises(ConfigError, match=r"pseudo.threshold: one value, or one per class \(2\)"):
        select_rows("binary", BINARY, PseudoConfig(threshold=[0.9, 0.9, 0.9]))


def test_binary_balance_keeps_as_many_positives_as_negatives():
    probs = BINARY
    balanced = select_rows("binary", probs, PseudoConfig(balance=True))
    assert balanced.tolist() == [0, 1, 2, 3, 4, 5]  # the three surest positives, all negatives
    positive = probs[balanced, 0] >= 0.5
    assert positive.sum() == (~positive).sum()
    one_sided = select_rows("binary", probs[:3], PseudoConfig(balance=True))
    assert one_sided.tolist() == []  # no negatives to balance the positives with


def test_multilabel_threshold_per_label():
    probs = np.array([[0.9, 0.4], [0.97, 0.1], [0.6, 0.99], [0.15, 0.75], [0.5, 0.5]])
    limits = [0.8, 0.7]
    reference = [
        i
        for i, row in enumerate(probs)
        if all(max(p, 1 - p) >= t for p, t in zip(row, limits, strict=True))
    ]
    got = select_rows("multilabel", probs, PseudoConfig(threshold=limits)).tolist()
    assert got == reference == [1, 3]
    # One value: every label against it, i.e. the least sure label (the row's confidence).
    assert select_rows("multilabel", probs, PseudoConfig(threshold=0.85)).tolist() == [1]
    with pytest.raises(ConfigError, match=r"pseudo.threshold: one value, or one per label \(2\)"):
        select_rows("multilabel", probs, PseudoConfig(threshold=[0.8, 0.7, 0.6]))


@pytest.mark.parametrize("task_type", ["multilabel", "regression"])
def test_balance_refused_without_a_predicted_class(task_type):
    probs = np.array([[0.9, 0.2], [0.1, 0.7]])
    with pytest.raises(ConfigError, match="pseudo.balance"):
        select_rows(task_type, probs, PseudoConfig(balance=True))


def _teacher(project):
    assert main(["folds", *ARGS]) == 0
    assert main(["train", *ARGS]) == 0
    assert main(["infer", *ARGS]) == 0


def test_round_trains_students_on_their_own_folds_labels(tiny_project):
    _teacher(tiny_project)
    assert main(["pseudo", *ARGS, "pseudo.threshold=0.0", "pseudo.mode=hard"]) == 0
    record = json.loads((tiny_project / "outputs/pseudo/1/teachers.json").read_text())
    assert record["source"] == "per_fold" and set(record["files"]) == {"fold0", "fold1", "fold2"}
    fold1 = pd.read_parquet(tiny_project / "outputs/pseudo/1/fold1.parquet")
    teacher1 = pd.read_parquet(tiny_project / "outputs/tiny/fold1/test.parquet")
    # Fold 1's labels are fold 1's teacher's predictions, not the all-fold average.
    assert (
        fold1.filter(like="p_").to_numpy().argmax(1)
        == teacher1.filter(like="p_").to_numpy().argmax(1)
    ).all()
    assert main(["train", *ARGS, "train.experiment=student", "train.pseudo_round=1"]) == 0
    oof = pd.read_parquet(tiny_project / "outputs/student/oof.parquet")
    assert sorted(oof["id"]) == sorted(pd.read_csv("data/train.csv")["id"])  # labelled rows only


def test_leaky_and_forbidden_combinations_refused(tiny_project):
    _teacher(tiny_project)
    assert main(["pseudo", *ARGS, "pseudo.source=ensemble"]) == 0
    from medalist.training.stage import run as train

    with pytest.raises(ConfigError, match="may only train full-fit students"):
        train(
            resolve_config(
                "configs/tiny.yaml",
                ["train.epochs=1", "train.pseudo_round=1", "train.experiment=student"],
            )
        )
    full = resolve_config(
        "configs/tiny.yaml",
        ["train.epochs=1", "train.pseudo_round=1", "train.experiment=student", "train.folds=[-1]"],
    )
    train(full)
    with pytest.raises(ConfigError, match="pseudo.allow_test"):
        resolve_config("configs/tiny.yaml", ["train.pseudo_round=1", "pseudo.allow_test=false"])
    assert main(["pseudo", *ARGS, "pseudo.allow_test=false"]) == 2


def test_tampered_labels_and_other_folds_refused(tiny_project):
    _teacher(tiny_project)
    assert main(["pseudo", *ARGS]) == 0
    from medalist.training.stage import run as train

    labels = tiny_project / "outputs/pseudo/1/fold0.parquet"
    table = pd.read_parquet(labels)
    table.loc[0, "p_0"] = 1.0
    table.to_parquet(labels)
    student = ["train.epochs=1", "train.pseudo_round=1", "train.experiment=student"]
    with pytest.raises(DataError, match="changed since"):
        train(resolve_config("configs/tiny.yaml", student))
    assert main(["folds", *ARGS, "folds.n_splits=4", "--force"]) == 0
    with pytest.raises(DataError, match="other folds"):
        train(resolve_config("configs/tiny.yaml", [*student, "folds.n_splits=4"]))
    assert main(["pseudo", *ARGS, "folds.n_splits=4"]) == 2  # the teacher used the old folds


@pytest.mark.slow
@pytest.mark.parametrize("keep", ["last", "best"])
def test_leaky_teachers_inflate_cv_but_per_fold_teachers_do_not(tiny_project, keep):
    """Random labels, and a test set made of copies of the training images: only a leak can
    score above chance. Teachers memorise their training rows; an all-fold ensemble therefore
    hands fold k's labels to fold k's student through the copies, and per-fold teachers do not.

    ``keep: last``: the teachers keep their memorised weights, so the all-fold ensemble leaks
    fold k's labels in full. ``keep: best`` (the default): each teacher keeps the epoch that
    scored best on fold k's rows, a choice made with fold k's labels (the second-order leak the
    README names): the per-fold students must stay near chance all the same. How much the
    all-fold ensemble leaks then depends on how far the chosen epochs had memorised (an early
    epoch may win on random labels), so only its direction is checked there."""
    train_csv = pd.read_csv("data/train.csv")
    train_csv["label"] = np.random.default_rng(1).permutation(train_csv["label"].to_numpy())
    train_csv.to_csv("data/train.csv", index=False)
    shutil.copytree("data/train_images", "data/test_images", dirs_exist_ok=True)
    test = train_csv[["id", "image"]].assign(id=train_csv["id"] + 100000)
    test.to_csv("data/test.csv", index=False)
    args = [
        "-c",
        "configs/tiny.yaml",
        "train.epochs=25",
        "train.lr=0.01",
        "image.train_transforms=[]",
        "train.weight_decay=0",
        f"train.keep={keep}",
    ]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    assert main(["infer", *args]) == 0
    # medalist's default: per-fold teachers.
    assert main(["pseudo", *args, "pseudo.mode=hard"]) == 0
    assert main(["train", *args, "train.experiment=honest", "train.pseudo_round=1"]) == 0
    # The leaky way, hand-rolled: the all-fold ensemble's labels for every fold's student.
    assert (
        main(["pseudo", *args, "pseudo.mode=hard", "pseudo.source=ensemble", "pseudo.round=2"]) == 0
    )
    folder = tiny_project / "outputs/pseudo/2"
    record = json.loads((folder / "teachers.json").read_text())
    for fold in range(3):
        shutil.copy(folder / "full.parquet", folder / f"fold{fold}.parquet")
        record["files"][f"fold{fold}"] = record["files"]["full"]
    record["source"] = "per_fold"
    (folder / "teachers.json").write_text(json.dumps(record))
    assert main(["train", *args, "train.experiment=leaky", "train.pseudo_round=2"]) == 0
    metrics = {
        name: json.loads((tiny_project / f"outputs/{name}/metrics.json").read_text())
        for name in ("tiny", "honest", "leaky")
    }
    honest = metrics["honest"]["cv"]["accuracy"]
    leaky = metrics["leaky"]["cv"]["accuracy"]
    assert honest < 0.3, metrics["honest"]["cv"]  # chance is 0.1
    assert leaky > honest + (0.5 if keep == "last" else 0.0), (honest, leaky)


def test_run_loops_rounds_and_stops_when_cv_stops_improving(tiny_project):
    stages = "stages=[folds,train,infer,pseudo,submission]"
    args = [
        *ARGS,
        "train.epochs=6",
        "train.lr=1e-2",
        stages,
        "pseudo.rounds=3",
        "pseudo.mode=hard",
        "pseudo.threshold=0.2",
    ]
    assert main(["run", *args]) == 0
    record = json.loads((tiny_project / "outputs/pseudo/rounds.json").read_text())
    rounds = record["rounds"]
    assert record["base"] == "tiny" and 1 <= len(rounds) <= 3
    best, best_score = "tiny", rounds[0]["cv_before"]
    for i, entry in enumerate(rounds, start=1):
        assert entry["round"] == i and entry["student"] == f"tiny_pl{i}"
        assert entry["teachers"] == [best] and entry["cv_before"] == best_score
        metrics = json.loads((tiny_project / f"outputs/tiny_pl{i}/metrics.json").read_text())
        assert entry["cv_after"] == metrics["cv"]["accuracy"]
        assert entry["kept"] == (entry["cv_after"] > entry["cv_before"])
        if not entry["kept"]:
            assert i == len(rounds)  # stopped early
        else:
            best, best_score = entry["student"], entry["cv_after"]
    assert record["best"] == best
    assert (tiny_project / f"submissions/{best}.csv").is_file()
    from medalist.pipeline import run

    students = sorted(tiny_project.glob("outputs/tiny_pl*/metrics.json"))
    stamps = [p.stat().st_mtime_ns for p in students]
    done = run(resolve_config("configs/tiny.yaml", args[2:]))  # everything is up to date
    assert done == {s: "skipped" for s in ("folds", "train", "infer", "submission")} | {
        "pseudo": best
    }
    assert [p.stat().st_mtime_ns for p in students] == stamps  # no student trained again
    assert main(["run", *ARGS, stages, "pseudo.source=ensemble"]) == 2


def test_a_seed_averaged_teacher_labels_each_fold_with_its_seeds_fold_models(tiny_project):
    """A ``train.seeds`` experiment keeps its fold models in its seeds' folders: fold k's labels
    are the mean of every seed's fold-k test predictions (the seed-averaged model's fold k)."""
    seeds = [*ARGS, "train.seeds=[0,1]", "train.folds=[0,1]"]
    assert main(["folds", *seeds]) == 0
    assert main(["train", *seeds]) == 0
    assert main(["infer", *seeds]) == 0
    assert main(["pseudo", *seeds, "pseudo.threshold=0.0"]) == 0
    record = json.loads((tiny_project / "outputs/pseudo/1/teachers.json").read_text())
    assert record["teachers"] == ["tiny@s0", "tiny@s1"]
    assert set(record["files"]) == {"fold0", "fold1"}
    labels = pd.read_parquet(tiny_project / "outputs/pseudo/1/fold1.parquet")
    per_seed = [
        pd.read_parquet(tiny_project / f"outputs/tiny@s{seed}/fold1/test.parquet")
        for seed in (0, 1)
    ]
    mean = (per_seed[0].filter(like="p_").to_numpy() + per_seed[1].filter(like="p_").to_numpy()) / 2
    assert np.allclose(labels.filter(like="p_").to_numpy(), mean, atol=1e-6)


def test_a_teacher_without_fold_models_is_refused_for_per_fold_labels(tiny_project):
    _teacher(tiny_project)
    shutil.copytree(tiny_project / "outputs/tiny", tiny_project / "outputs/flat")
    for fold in (tiny_project / "outputs/flat").glob("fold*"):
        shutil.rmtree(fold)
    with pytest.raises(DataError, match="no fold"):
        from medalist.prediction.pseudo import run as pseudo

        pseudo(resolve_config("configs/tiny.yaml", ["pseudo.teachers=[flat]"]))
