"""Distillation of masks: fold k's soft masks are the teacher's fold-k model's predictions of
fold k's training images at temperature T; the student trains on ``alpha * soft + (1 - alpha) *
true`` per pixel; a changed file and what cannot learn from soft masks are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from accelerate import Accelerator

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.errors import ConfigError, DataError
from medalist.io import sha256_file
from medalist.modalities import get_modality
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.predictions import predict_with_files
from medalist.prediction import distill
from medalist.tasks import build_task
from medalist.training import stage
from medalist.training.distill import soften
from support.segmentation_project import CONFIG, EXPERIMENT, segmentation_project
from support.threads import one_thread

TEACHER = Path("outputs") / EXPERIMENT
SOFT = Path("outputs") / "distill" / EXPERIMENT
# The student: one epoch at a rate that moves a tiny U-Net's masks within it.
STUDENT = [
    "train.experiment=student",
    f"distill.teacher={EXPERIMENT}",
    "train.epochs=1",
    "train.lr=1.0e-2",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny project with a one-epoch teacher, its soft masks at T=2 and a student of them."""
    folder = segmentation_project(tmp_path_factory.mktemp("distill"))
    with working_directory(folder):
        assert main(["folds", "-c", CONFIG]) == 0
        assert main(["train", "-c", CONFIG, "train.epochs=1"]) == 0
        assert main(["distill", "-c", CONFIG, *STUDENT]) == 0
        assert main(["train", "-c", CONFIG, *STUDENT]) == 0
        yield folder


@pytest.fixture
def saved_soft_masks(project):
    """Puts the teacher's soft masks and their record back as they were after the test."""
    backup = project.parent / "soft_masks_backup"
    shutil.copytree(SOFT, backup)
    yield
    shutil.rmtree(SOFT)
    shutil.copytree(backup, SOFT)
    shutil.rmtree(backup)


def _mean_oof(experiment: str) -> float:
    _, masks = store.read_masks(Path("outputs") / experiment / "oof.masks.safetensors")
    return float(np.mean([mask.mean() for mask in masks]))


def test_each_folds_soft_masks_are_its_teacher_model_on_its_training_images(project):
    cfg = resolve_config(CONFIG, ["train.epochs=1"])
    train = pd.read_csv("data/train.csv")
    fold_of_row = pd.read_csv("folds/folds.csv")["fold"].to_numpy()
    task, modality = build_task(cfg, train), get_modality("segmentation")
    record = json.loads((SOFT / "teacher.json").read_text())
    assert record["teacher"] == EXPERIMENT and record["temperature"] == 2.0
    for fold in (0, 1):
        path = SOFT / f"fold{fold}.masks.safetensors"
        entry = record["files"][f"fold{fold}"]
        assert entry["sha256"] == sha256_file(path) and entry["weights"] == ["model.safetensors"]
        ids, soft = store.read_masks(path)
        # Fold k's training images, in train order; none of its validation (OOF) images.
        rows = np.flatnonzero(fold_of_row != fold)
        assert list(map(str, ids)) == list(train["id"].iloc[rows].astype(str))
        assert not set(map(str, ids)) & set(train["id"][fold_of_row == fold].astype(str))
        assert entry["rows"] == len(ids) == 8
        # The fold-k model's masks of those images, softened at T=2: not the other fold's model.
        images = train.iloc[rows].reset_index(drop=True)
        dataset = modality.build_dataset(cfg, images, None, split="train", train=False, source="t")

        def softened(model_fold, dataset=dataset):
            paths = [TEACHER / f"fold{model_fold}" / "model.safetensors"]
            masks = predict_with_files(
                cfg, task, modality, Accelerator(cpu=True), paths, dataset, ["identity"]
            )
            return [soften("binary", mask, 2.0) for mask in masks]

        worst = max(np.abs(s - t).max() for s, t in zip(soft, softened(fold), strict=True))
        assert worst <= store.ERROR_BOUND + 1e-6
        other = max(np.abs(s - t).max() for s, t in zip(soft, softened(1 - fold), strict=True))
        assert other > 10 * store.ERROR_BOUND


def test_the_student_trains_on_alpha_soft_plus_one_minus_alpha_true_masks(project):
    cfg = resolve_config(CONFIG, [*STUDENT, "distill.alpha=0.25"])
    train = pd.read_csv("data/train.csv")
    task = build_task(cfg, train)
    rows = np.flatnonzero(pd.read_csv("folds/folds.csv")["fold"].to_numpy() != 1)
    ids = train["id"].iloc[rows]
    true = task.encode_targets(train)[rows]
    mixed = stage._train_targets(cfg, task, true, 1, ids)
    _, soft = store.read_masks(SOFT / "fold1.masks.safetensors")
    assert len(mixed) == len(rows)
    for i in range(len(rows)):
        want = 0.25 * soft[i] + 0.75 * np.asarray(true[i], dtype=np.float32)
        assert mixed[i].shape == (1, 32, 32) and np.allclose(mixed[i], want, atol=1e-6)
    assert json.loads(Path("outputs/student/metrics.json").read_text())["complete"]


def test_alpha_one_trains_the_student_toward_the_teachers_masks(project, saved_soft_masks):
    """A teacher that calls every pixel foreground: the student with alpha=1 learns that; had
    its soft masks been ignored it would learn the true masks (under half foreground)."""
    record = json.loads((SOFT / "teacher.json").read_text())
    for fold in (0, 1):
        path = SOFT / f"fold{fold}.masks.safetensors"
        ids, masks = store.read_masks(path)
        store.write_masks(path, ids, [np.ones_like(mask) for mask in masks])
        record["files"][f"fold{fold}"]["sha256"] = sha256_file(path)
    (SOFT / "teacher.json").write_text(json.dumps(record))
    overrides = [*STUDENT, "train.experiment=all_foreground", "distill.alpha=1"]
    assert main(["train", "-c", CONFIG, *overrides]) == 0
    assert _mean_oof("all_foreground") > 0.8
    assert _mean_oof("all_foreground") > _mean_oof("student") + 0.3


def test_a_changed_file_or_another_temperature_is_refused(project, saved_soft_masks):
    cfg = resolve_config(CONFIG, [*STUDENT, "train.experiment=refused"])
    with pytest.raises(DataError, match="made at distill.temperature 2.0"):
        stage.run(
            cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"temperature": 3.0})})
        )
    path = SOFT / "fold0.masks.safetensors"
    ids, masks = store.read_masks(path)
    store.write_masks(path, ids, [1 - mask for mask in masks])
    with pytest.raises(
        DataError, match="fold0.masks.safetensors: changed since `medalist distill`"
    ):
        stage.run(cfg)
    assert not Path("outputs/refused/fold0/model.safetensors").exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["segmentation.loss=bce+lovasz"], "segmentation.loss"),
        (["segmentation.task=multiclass", "segmentation.classes=[background,a]"], "multiclass"),
    ],
)
def test_what_cannot_learn_from_soft_masks_is_refused_before_any_work(project, overrides, key):
    cfg = resolve_config(CONFIG, [*STUDENT, "train.experiment=refused_early", *overrides])
    with pytest.raises(ConfigError, match=key):
        distill.run(cfg)
    with pytest.raises(ConfigError, match=key):
        stage.run(cfg)
    assert not Path("outputs/refused_early").exists()
