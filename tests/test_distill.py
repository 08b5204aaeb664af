"""Fold-safe distillation: fold k's soft targets come from the teacher's fold-k model's
predictions of fold k's training rows, at temperature T; the student's fingerprint covers them;
leaky combinations are refused; and a constructed case where a student distilled
from the teacher's OOF predictions scores above chance on random labels while medalist's
per-fold distillation stays at chance."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.config import resolve_config
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.io import sha256_file
from medalist.layout import training_hash
from medalist.modalities import get_modality
from medalist.prediction import distill
from medalist.tasks import build_task
from medalist.training.distill import mix, soften
from medalist.training.runtime import make_accelerator, make_loader, predict_logits
from medalist.training.stage import _train_targets
from medalist.training.weights import load_weights

ARGS = ["-c", "configs/tiny.yaml", "train.epochs=1"]
STUDENT = ["train.experiment=student", "distill.teacher=tiny"]


def test_soften_is_the_activation_of_logits_over_t():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]])
    probs = torch.from_numpy(logits).softmax(-1).numpy()
    expected = torch.from_numpy(logits / 3).softmax(-1).numpy()
    assert np.allclose(soften("multiclass", probs, 3.0), expected, atol=1e-6)
    sig = torch.from_numpy(logits).sigmoid().numpy()
    expected = torch.from_numpy(logits / 2).sigmoid().numpy()
    assert np.allclose(soften("multilabel", sig, 2.0), expected, atol=1e-6)
    assert np.allclose(soften("regression", logits, 4.0), logits)  # T ignored
    assert not np.allclose(soften("multiclass", probs, 2.0), probs)  # T > 1 softens


def test_mix_is_alpha_teacher_plus_the_smoothed_label():
    soft = np.array([[0.2], [0.9]], dtype=np.float32)  # a binary table's column
    labels = np.array([0.05, 0.95], dtype=np.float32)  # smoothed 0 and 1
    got = mix("binary", 0.25, soft, labels)
    assert got.shape == (2,) and np.allclose(got, [0.25 * 0.2 + 0.75 * 0.05, 0.25 * 0.9 + 0.7125])


def _teacher(*extra):
    assert main(["folds", *ARGS]) == 0
    assert main(["train", *ARGS, *extra]) == 0


def _fold_logits(project, fold, rows):
    """The teacher's fold model's logits of ``rows``, straight from its weights file."""
    cfg = resolve_config("configs/tiny.yaml", ["train.epochs=1"])
    train = pd.read_csv("data/train.csv")
    modality = get_modality(cfg.modality)
    task = build_task(cfg, train)
    model = load_weights(
        modality.build_model(cfg, task), project / f"outputs/tiny/fold{fold}/model.safetensors"
    )
    dataset = modality.build_dataset(
        cfg, train.iloc[rows].reset_index(drop=True), None, split="train", train=False, source=""
    )
    accelerator = make_accelerator(cfg)
    loader = accelerator.prepare(make_loader(dataset, 32, shuffle=False, cfg=cfg))
    return predict_logits(accelerator.prepare(model), loader, accelerator)[1]


def test_fold_targets_are_that_folds_teacher_on_its_training_rows(tiny_project):
    _teacher()
    assert main(["distill", *ARGS, *STUDENT, "distill.temperature=3"]) == 0
    record = json.loads((tiny_project / "outputs/distill/tiny/teacher.json").read_text())
    assert set(record["files"]) == {"fold0", "fold1", "fold2"} and record["temperature"] == 3
    folds = pd.read_csv("folds/folds.csv")
    train = pd.read_csv("data/train.csv")
    for fold in (0, 2):
        table = pd.read_parquet(tiny_project / f"outputs/distill/tiny/fold{fold}.parquet")
        rows = np.flatnonzero(folds["fold"].to_numpy() != fold)
        assert table["id"].tolist() == train["id"].iloc[rows].tolist()  # exactly its training rows
        logits = torch.from_numpy(_fold_logits(tiny_project, fold, rows))
        expected = (logits / 3).softmax(-1).numpy()
        assert np.allclose(table.filter(like="p_").to_numpy(), expected, atol=1e-4)
        other = (torch.from_numpy(_fold_logits(tiny_project, 1, rows)) / 3).softmax(-1).numpy()
        assert not np.allclose(table.filter(like="p_").to_numpy(), other, atol=1e-4)

    # The student's targets: alpha * the file + (1 - alpha) * the smoothed label, per fold.
    cfg = resolve_config(
        "configs/tiny.yaml",
        [*STUDENT, "distill.temperature=3", "distill.alpha=0.3", "tricks.loss.label_smoothing=0.1"],
    )
    task = build_task(cfg, train)
    targets = task.encode_targets(train)
    rows = np.flatnonzero(folds["fold"].to_numpy() != 1)
    got = _train_targets(cfg, task, targets[rows], 1, train["id"].iloc[rows])
    soft = pd.read_parquet(tiny_project / "outputs/distill/tiny/fold1.parquet").filter(like="p_")
    onehot = np.eye(len(task.classes))[targets[rows]] * 0.9 + 0.1 / len(task.classes)
    assert got.dtype == np.float32 and np.allclose(got, 0.3 * soft.to_numpy() + 0.7 * onehot)

    # New soft targets change the student's fingerprint (its folds train again).
    before = training_hash(cfg)
    assert main(["distill", *ARGS, *STUDENT, "distill.temperature=4"]) == 0
    assert training_hash(cfg) != before
    with pytest.raises(DataError, match="temperature"):  # the file is for T=4, the config says 3
        _train_targets(cfg, task, targets[rows], 1, train["id"].iloc[rows])


def test_leaky_and_unsupported_combinations_refused(tiny_project):
    _teacher("train.folds=[0]")
    with pytest.raises(
        ConfigError, match=r"distill.teacher: 'tiny' has no trained weights.*\[1, 2\]"
    ):
        distill.run(resolve_config("configs/tiny.yaml", STUDENT))
    with pytest.raises(ConfigError, match=r"'tiny' has no full fit.*train.folds=\[-1\] first"):
        distill.run(resolve_config("configs/tiny.yaml", [*STUDENT, "train.folds=[-1]"]))
    with pytest.raises(ConfigError, match="the student's own experiment"):
        distill.run(resolve_config("configs/tiny.yaml", ["distill.teacher=tiny"]))
    from medalist.training.stage import run as train

    with pytest.raises(DataError, match="run `medalist distill`"):  # no soft targets yet
        train(resolve_config("configs/tiny.yaml", [*STUDENT, "train.folds=[0]", "train.epochs=1"]))
    assert main(["distill", *ARGS, *STUDENT, "train.folds=[0]"]) == 0
    assert main(["folds", *ARGS, "folds.n_splits=4", "--force"]) == 0
    with pytest.raises(FoldsMismatchError, match="other folds"):
        distill.run(resolve_config("configs/tiny.yaml", [*STUDENT, "train.folds=[0]"]))
    with pytest.raises(DataError, match="other folds"):
        train(resolve_config("configs/tiny.yaml", [*STUDENT, "train.folds=[0]"]))
    assert main(["distill", *ARGS, "train.experiment=student"]) == 2  # no teacher named


@pytest.mark.slow
def test_leaky_oof_teacher_inflates_cv_but_per_fold_teachers_do_not(tiny_project):
    """Random labels, each image twice (two rows, independent labels): only a leak can score
    above chance. A teacher memorises its training rows, so the OOF prediction of a copy in fold j
    is the label of its twin in fold k, which fold j's teacher model trained on: a student of fold
    k distilled from the OOF table learns fold k's labels through the twins. Fold k's own teacher
    model never saw fold k's rows: its soft targets carry none of their labels."""
    train_csv = pd.read_csv("data/train.csv").head(60)
    twins = pd.concat([train_csv, train_csv.assign(id=train_csv["id"] + 100000)])
    twins["label"] = np.random.default_rng(1).permutation(np.resize(np.arange(10), len(twins)))
    twins.to_csv("data/train.csv", index=False)
    args = [
        "-c",
        "configs/tiny.yaml",
        "train.epochs=12",
        "train.lr=0.01",
        "image.train_transforms=[]",
        "train.weight_decay=0",
        "train.keep=last",
    ]
    distilled = ["distill.teacher=tiny", "distill.alpha=1.0", "distill.temperature=1"]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    # medalist's way: per-fold teachers.
    assert main(["distill", *args, *distilled, "train.experiment=honest"]) == 0
    assert main(["train", *args, *distilled, "train.experiment=honest"]) == 0
    # The shortcut, by hand: every fold's soft targets are the teacher's OOF values.
    folder = tiny_project / "outputs/distill/tiny"
    record = json.loads((folder / "teacher.json").read_text())
    oof = pd.read_parquet(tiny_project / "outputs/tiny/oof.parquet").set_index("id")
    for name in record["files"]:
        ids = pd.read_parquet(folder / f"{name}.parquet")["id"]
        table = oof.loc[ids].drop(columns="fold").reset_index()
        table.to_parquet(folder / f"{name}.parquet")
        record["files"][name]["sha256"] = sha256_file(folder / f"{name}.parquet")
    (folder / "teacher.json").write_text(json.dumps(record))
    assert main(["train", *args, *distilled, "train.experiment=leaky"]) == 0
    metrics = {
        name: json.loads((tiny_project / f"outputs/{name}/metrics.json").read_text())["cv"]
        for name in ("tiny", "honest", "leaky")
    }
    chance = 0.1
    assert metrics["tiny"]["accuracy"] < 0.25, metrics  # the teacher itself: at chance
    assert metrics["honest"]["accuracy"] < 0.25, metrics
    assert metrics["leaky"]["accuracy"] > metrics["honest"]["accuracy"] + 0.2 > chance, metrics


def test_run_distils_before_training_and_skips_both_when_up_to_date(tiny_project, caplog):
    _teacher()
    stages = "stages=[folds, distill, train]"
    assert main(["run", *ARGS, *STUDENT, stages, "train.folds=[0]"]) == 0
    assert (tiny_project / "outputs/distill/tiny/teacher.json").is_file()
    assert (tiny_project / "outputs/student/fold0/scores.json").is_file()
    caplog.clear()
    with caplog.at_level("INFO", logger="medalist"):
        assert main(["run", *ARGS, *STUDENT, stages, "train.folds=[0]"]) == 0
    skipped = [r.getMessage() for r in caplog.records if "up to date, skipped" in r.getMessage()]
    assert skipped == [f"{s}: up to date, skipped" for s in ("folds", "distill", "train")]
