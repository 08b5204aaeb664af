"""Distillation beyond a network's folds: a full-fit student learns from the teacher's full fit,
a pseudo round's student mixes its labelled rows only, and table students (GBDTs on soft labels
in [0, 1] or mixed values, the MLP, ridge) learn from the mix while their validation rows keep
their labels; students that take class labels only are refused. A constructed case shows the
OOF shortcut inflating a LightGBM student's CV on random labels while per-fold teachers do not."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.config import resolve_config
from medalist.errors import ConfigError
from medalist.io import sha256_file
from medalist.modalities import get_modality
from medalist.modalities.tabular import boosters, network
from medalist.modalities.tabular.linear import LinearLearner
from medalist.prediction import distill
from medalist.tasks import build_task
from medalist.training import stage as train_stage
from medalist.training.runtime import make_accelerator, make_loader, predict_logits
from medalist.training.weights import load_weights
from support.configs import TINY, TRAINED
from support.tables import table_cfg, write_table_competition, write_table_folds

STUDENT = ["train.experiment=student", "distill.teacher=tiny"]


def _spy_fit_fold(monkeypatch, module) -> list[dict]:
    """What ``module``'s calls of the loop's ``fit_fold`` trained on, one entry per fold."""
    seen, real = [], module.fit_fold

    def spy(cfg, task, model, train_set, valid_set, valid_targets, **options):
        seen.append({"train_set": train_set, "valid_targets": valid_targets})
        return real(cfg, task, model, train_set, valid_set, valid_targets, **options)

    monkeypatch.setattr(module, "fit_fold", spy)
    return seen


def _image_logits(project, folder: str, rows) -> np.ndarray:
    """The tiny teacher's logits of ``rows`` from ``outputs/tiny/<folder>/model.safetensors``."""
    cfg = resolve_config(TINY, ["train.epochs=1"])
    train = pd.read_csv("data/train.csv")
    modality = get_modality(cfg.modality)
    model = modality.build_model(cfg, build_task(cfg, train))
    model = load_weights(model, project / f"outputs/tiny/{folder}/model.safetensors")
    subset = train.iloc[rows].reset_index(drop=True)
    dataset = modality.build_dataset(cfg, subset, None, split="train", train=False, source="")
    accelerator = make_accelerator(cfg)
    loader = accelerator.prepare(make_loader(dataset, 32, shuffle=False, cfg=cfg))
    return predict_logits(accelerator.prepare(model), loader, accelerator)[1]


def _onehot(targets: np.ndarray, classes: int, smoothing: float) -> np.ndarray:
    return np.eye(classes)[targets] * (1 - smoothing) + smoothing / classes


def test_full_fit_student_learns_from_the_teachers_full_fit(trained_project, monkeypatch):
    full = [*TRAINED, *STUDENT, "train.folds=[-1]", "distill.temperature=3", "distill.alpha=0.4"]
    cfg = resolve_config(TINY, full[2:])
    with pytest.raises(ConfigError, match=r"distill.teacher: 'tiny' has no full fit.*folds=\[-1\]"):
        distill.run(cfg)
    assert main(["train", *TRAINED, "train.folds=[-1]"]) == 0  # the teacher's full fit
    assert main(["distill", *full]) == 0
    record = json.loads((trained_project / "outputs/distill/tiny/teacher.json").read_text())
    assert set(record["files"]) == {"full"}
    table = pd.read_parquet(trained_project / "outputs/distill/tiny/full.parquet")
    train = pd.read_csv("data/train.csv")
    rows = np.arange(len(train))
    assert table["id"].tolist() == train["id"].tolist()  # every training row
    soft = table.filter(like="p_").to_numpy()
    expected = (torch.from_numpy(_image_logits(trained_project, "full", rows)) / 3).softmax(-1)
    assert np.allclose(soft, expected.numpy(), atol=1e-4)
    fold0 = (torch.from_numpy(_image_logits(trained_project, "fold0", rows)) / 3).softmax(-1)
    assert not np.allclose(soft, fold0.numpy(), atol=1e-4)  # the full fit's, not a fold's

    seen = _spy_fit_fold(monkeypatch, train_stage)
    assert main(["train", *full]) == 0
    (fitted,) = seen
    task = build_task(cfg, train)
    labels = _onehot(task.encode_targets(train), len(task.classes), 0.0)
    got = fitted["train_set"].targets.numpy()
    assert got.dtype == np.float32 and np.allclose(got, 0.4 * soft + 0.6 * labels, atol=1e-6)
    assert fitted["valid_targets"] is None  # a full fit: no validation rows
    assert (trained_project / "outputs/student/full/scores.json").is_file()


def test_pseudo_round_mixes_the_labelled_rows_only(trained_project, monkeypatch):
    pseudo = ["pseudo.threshold=0.0", "pseudo.mode=hard", "pseudo.weight=0.5"]
    assert main(["pseudo", *TRAINED, *pseudo]) == 0
    student = [*TRAINED, *STUDENT, "train.pseudo_round=1", "distill.alpha=0.3"]
    smoothing = "tricks.loss.label_smoothing=0.1"
    assert main(["distill", *student]) == 0
    seen = _spy_fit_fold(monkeypatch, train_stage)
    assert main(["train", *student, smoothing]) == 0
    (fitted,) = seen
    labelled, pseudo_set = fitted["train_set"].datasets

    train = pd.read_csv("data/train.csv")
    cfg = resolve_config(TINY, [*student[2:], smoothing])
    task = build_task(cfg, train)
    targets = task.encode_targets(train)
    in_fold0 = pd.read_csv("folds/folds.csv")["fold"].to_numpy() == 0
    rows = np.flatnonzero(~in_fold0)
    soft = pd.read_parquet(trained_project / "outputs/distill/tiny/fold0.parquet")
    assert soft["id"].tolist() == train["id"].iloc[rows].tolist()
    # Labelled rows: alpha * fold 0's teacher + (1 - alpha) * the label, smoothed once.
    mixed = 0.3 * soft.filter(like="p_").to_numpy() + 0.7 * _onehot(targets[rows], 10, 0.1)
    assert len(labelled) == len(rows) and labelled.weights is None  # weight 1 (Combined)
    assert np.allclose(labelled.targets.numpy(), mixed, atol=1e-6)
    # Pseudo rows: fold 0's pseudo labels as a round without a teacher has them (hard, smoothed
    # once), with their weight; never mixed with the distillation teacher.
    labels = pd.read_parquet(trained_project / "outputs/pseudo/1/fold0.parquet")
    hard = labels.filter(like="p_").to_numpy().argmax(1)
    assert np.allclose(pseudo_set.targets.numpy(), _onehot(hard, 10, 0.1), atol=1e-6)
    assert np.allclose(pseudo_set.weights.numpy(), 0.5)
    # Fold 0's validation rows: their own labels, and nothing of them among the training rows.
    assert np.array_equal(fitted["valid_targets"], targets[in_fold0])
    oof = pd.read_parquet(trained_project / "outputs/student/fold0/oof.parquet")
    assert sorted(oof["id"]) == sorted(train["id"][in_fold0])


# ----------------------------------------------------------------------------- tables


def _table_teacher(root, *extra, task="binary", targets=None, n_rows=90):
    """A LightGBM teacher trained on every fold of a small table; returns its config."""
    write_table_competition(root, n_rows=n_rows, targets=targets or ["diagnosis"])
    teacher = table_cfg(root, "train.experiment=teacher", "tabular.rounds=20", *extra, task=task)
    write_table_folds(teacher)
    train_stage.run(teacher)
    return teacher


def _mixed(cfg, alpha: float, fold: int, smoothing: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``fold``'s expected training targets (binary: ``alpha`` * the distilled file +
    (1 - alpha) * the smoothed label) and its validation rows' labels."""
    root = cfg.competition.outputs_dir
    train = pd.read_csv(f"{cfg.competition.data_dir}/train.csv")
    in_fold = pd.read_csv(f"{cfg.competition.folds_dir}/folds.csv")["fold"].to_numpy() == fold
    targets = build_task(cfg, train).encode_targets(train)
    soft = pd.read_parquet(f"{root}/distill/teacher/fold{fold}.parquet")
    assert soft["id"].tolist() == train["id"][~in_fold].tolist()
    labels = targets[~in_fold] * (1 - smoothing) + 0.5 * smoothing
    return alpha * soft["p_malignant"].to_numpy() + (1 - alpha) * labels, targets[in_fold]


def _spy_library(monkeypatch, cls) -> list[dict]:
    """The labels each of ``cls``'s models was fitted and early-stopped on, and the model."""
    seen, real = [], cls.train

    def spy(self, output, x, y, valid, spec, seed, soft=False):
        model, rounds, losses = real(self, output, x, y, valid, spec, seed, soft=soft)
        seen.append({"y": np.asarray(y), "valid_y": np.asarray(valid[1]), "model": model})
        return model, rounds, losses

    monkeypatch.setattr(cls, "train", spy)
    return seen


def test_lightgbm_binary_student_learns_the_mix(tmp_path, monkeypatch):
    _table_teacher(tmp_path)
    student = table_cfg(
        tmp_path,
        "train.experiment=student",
        "distill.teacher=teacher",
        "distill.alpha=0.6",
        "tabular.rounds=20",
    )
    distill.run(student)
    seen = _spy_library(monkeypatch, boosters.LightGBM)
    metrics = train_stage.run(student)
    assert len(seen) == 3 and metrics["complete"] and "roc_auc" in metrics["cv"]
    for fold, fitted in enumerate(seen):
        mixed, valid = _mixed(student, 0.6, fold)
        assert np.allclose(fitted["y"], mixed, atol=1e-6) and len(np.unique(fitted["y"])) > 2
        assert np.array_equal(fitted["valid_y"], valid)  # early-stopped on the labels
        # The objective that takes labels in [0, 1] ("binary" reads each label above 0 as 1).
        assert fitted["model"].params["objective"] == "cross_entropy"
    oof = pd.read_parquet(tmp_path / "outputs/student/oof.parquet")
    teacher = pd.read_parquet(tmp_path / "outputs/teacher/oof.parquet")
    assert (
        list(oof.columns) == list(teacher.columns) and oof["id"].tolist() == teacher["id"].tolist()
    )


@pytest.mark.parametrize("model", ["xgboost", "catboost"])
def test_xgboost_and_catboost_binary_students_learn_the_mix(tmp_path, monkeypatch, model):
    _table_teacher(tmp_path)
    student = table_cfg(
        tmp_path,
        "train.experiment=student",
        "distill.teacher=teacher",
        "tabular.rounds=20",
        "train.folds=[0]",
        model=model,
    )
    distill.run(student)
    cls = boosters.LIBRARIES[model]
    seen = _spy_library(monkeypatch, cls)
    train_stage.run(student)
    (fitted,) = seen
    mixed, valid = _mixed(student, 0.5, 0)
    assert np.allclose(fitted["y"], mixed, atol=1e-6) and np.array_equal(fitted["valid_y"], valid)
    if model == "catboost":  # its Logloss takes two values only
        assert fitted["model"].get_params()["loss_function"] == "CrossEntropy"
    oof = pd.read_parquet(tmp_path / "outputs/student/fold0/oof.parquet")
    assert oof["p_malignant"].between(0, 1).all() and oof["p_malignant"].nunique() > 2


def test_table_mlp_student_learns_the_mix(tmp_path, monkeypatch):
    _table_teacher(tmp_path)
    student = table_cfg(
        tmp_path,
        "train.experiment=student",
        "distill.teacher=teacher",
        "train.folds=[0]",
        "train.epochs=1",
        "tabular.hidden=[8]",
        "tricks.loss.label_smoothing=0.1",
        model="mlp",
        threads=None,
    )
    distill.run(student)
    seen = _spy_fit_fold(monkeypatch, network)
    train_stage.run(student)
    (fitted,) = seen
    mixed, valid = _mixed(student, 0.5, 0, smoothing=0.1)
    got = fitted["train_set"].targets.numpy()
    assert got.dtype == np.float32 and np.allclose(got, mixed, atol=1e-6)  # smoothed once
    assert np.array_equal(fitted["valid_targets"], valid)
    assert (tmp_path / "outputs/student/fold0/oof.parquet").is_file()


def test_ridge_student_learns_the_mixed_values(tmp_path, monkeypatch):
    _table_teacher(tmp_path, task="regression", targets=["mean_area"])
    student = table_cfg(
        tmp_path,
        "train.experiment=student",
        "distill.teacher=teacher",
        "distill.alpha=0.25",
        "distill.temperature=3",  # ignored for values
        "train.folds=[1]",
        task="regression",
        model="linear",
        threads=None,
    )
    distill.run(student)
    seen, real = [], LinearLearner._models

    def spy(self, x, targets):
        seen.append(np.asarray(targets))
        return real(self, x, targets)

    monkeypatch.setattr(LinearLearner, "_models", spy)
    train_stage.run(student)
    train = pd.read_csv(tmp_path / "data/train.csv")
    in_fold = pd.read_csv(tmp_path / "folds/folds.csv")["fold"].to_numpy() == 1
    (column,) = build_task(student, train).pred_columns
    soft = pd.read_parquet(tmp_path / "outputs/distill/teacher/fold1.parquet")[column].to_numpy()
    labels = train["mean_area"].to_numpy()[~in_fold]
    (got,) = seen
    assert np.allclose(got[:, 0], 0.25 * soft + 0.75 * labels, rtol=1e-5)


@pytest.mark.parametrize(
    ("model", "task", "message"),
    [
        ("lightgbm", "multiclass", "a multiclass lightgbm student \\(tabular.model\\)"),
        ("catboost", "multiclass", "a multiclass catboost student \\(tabular.model\\)"),
        ("linear", "binary", "tabular.model linear .* LogisticRegression"),
    ],
)
def test_students_of_class_labels_only_are_refused(tmp_path, model, task, message):
    write_table_competition(
        tmp_path, n_rows=90, targets=["size" if task == "multiclass" else "diagnosis"]
    )
    threads = None if model == "linear" else 1
    cfg = table_cfg(
        tmp_path,
        "train.experiment=student",
        "distill.teacher=teacher",
        task=task,
        model=model,
        threads=threads,
    )
    write_table_folds(cfg)
    with pytest.raises(ConfigError, match=f"distill.teacher: {message}"):
        distill.run(cfg)  # before the teacher is even looked for: there is none
    with pytest.raises(ConfigError, match=f"distill.teacher: {message}"):
        train_stage.run(cfg)
    assert not (tmp_path / "outputs").exists()  # nothing written


def test_leaky_oof_teacher_inflates_a_lightgbm_students_cv(tmp_path):
    """Random labels, each row twice (independent labels): only a leak scores above chance. A
    teacher that memorises its training rows gives a row of fold j, as its OOF value, the label
    of its twin in fold k; fold k's student distilled from the OOF table learns fold k's labels
    through the twins. Fold k's own teacher model never saw fold k's rows."""
    write_table_competition(tmp_path, n_rows=150)
    path = tmp_path / "data/train.csv"
    rows = pd.read_csv(path)
    twins = pd.concat([rows, rows.assign(id=rows["id"] + "b")], ignore_index=True)
    labels = np.resize(["benign", "malignant"], len(twins))
    twins["diagnosis"] = np.random.default_rng(0).permutation(labels)
    twins.to_csv(path, index=False)
    memorise = (
        "tabular.params={num_threads: 1, learning_rate: 0.3, min_data_in_leaf: 1, "
        "min_sum_hessian_in_leaf: 1.0e-6, lambda_l2: 0}"
    )
    base = [memorise, "tabular.rounds=60", "tabular.early_stopping=0"]
    distilled = ["distill.teacher=teacher", "distill.alpha=1.0", "distill.temperature=1"]
    teacher = table_cfg(tmp_path, "train.experiment=teacher", *base)
    write_table_folds(teacher)
    train_stage.run(teacher)
    honest = table_cfg(tmp_path, "train.experiment=honest", *base, *distilled)
    distill.run(honest)
    train_stage.run(honest)
    # The shortcut, by hand: every fold's soft targets are the teacher's OOF values.
    folder = tmp_path / "outputs/distill/teacher"
    record = json.loads((folder / "teacher.json").read_text())
    oof = pd.read_parquet(tmp_path / "outputs/teacher/oof.parquet").set_index("id")
    for name in record["files"]:
        ids = pd.read_parquet(folder / f"{name}.parquet")["id"]
        oof.loc[ids].drop(columns="fold").reset_index().to_parquet(folder / f"{name}.parquet")
        record["files"][name]["sha256"] = sha256_file(folder / f"{name}.parquet")
    (folder / "teacher.json").write_text(json.dumps(record))
    leaky = table_cfg(tmp_path, "train.experiment=leaky", *base, *distilled)
    train_stage.run(leaky)
    auc = {
        name: json.loads((tmp_path / f"outputs/{name}/metrics.json").read_text())["cv"]["roc_auc"]
        for name in ("teacher", "honest", "leaky")
    }
    assert abs(auc["teacher"] - 0.5) < 0.1 and abs(auc["honest"] - 0.5) < 0.1, auc
    assert auc["leaky"] > auc["honest"] + 0.15, auc


@pytest.mark.parametrize(
    ("model", "params", "objective"),
    [
        ("lightgbm", "{num_threads: 1, objective: binary}", "objective: binary"),
        ("xgboost", "{nthread: 1, objective: 'binary:hinge'}", "objective: binary:hinge"),
        ("catboost", "{thread_count: 1, loss_function: Logloss}", "loss_function: Logloss"),
    ],
)
def test_a_users_objective_that_reads_labels_only_is_refused_for_a_binary_student(
    tmp_path, model, params, objective
):
    """tabular.params wins over medalist's defaults: an objective of class labels (LightGBM's
    binary reads every soft target above 0 as 1) would train the student on no soft target at
    all, silently. Refused, naming the key and the objective that takes them."""
    write_table_competition(tmp_path, n_rows=90, targets=["diagnosis"])
    extra = ["train.experiment=student", "distill.teacher=teacher", f"tabular.params={params}"]
    cfg = table_cfg(tmp_path, *extra, model=model, threads=None)
    write_table_folds(cfg)
    with pytest.raises(ConfigError, match=f"tabular.params: {objective} .* soft targets"):
        distill.run(cfg)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("lightgbm", "{objective: xentropy}"),
        ("xgboost", "{objective: 'reg:logistic'}"),
        ("catboost", "{loss_function: 'CrossEntropy:use_weights=false'}"),
    ],
)
def test_a_users_objective_that_takes_soft_labels_is_kept(tmp_path, model, params):
    write_table_competition(tmp_path, n_rows=90, targets=["diagnosis"])
    extra = ["train.experiment=student", "distill.teacher=teacher", f"tabular.params={params}"]
    cfg = table_cfg(tmp_path, *extra, model=model, threads=None)
    train = pd.read_csv(tmp_path / "data/train.csv")
    learner = get_modality("tabular").fold_learner(cfg, build_task(cfg, train))
    assert learner.refuses_soft_targets() is None
