"""Bake every template option combination: valid ones render fully, invalid ones are refused."""

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import yaml
from cookiecutter.exceptions import FailedHookException
from sklearn.metrics import roc_auc_score
from timm.models import get_pretrained_cfg

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import TEMPLATE_ROOT, bake, working_directory
from medalist.demo.segmentation_data import build_mosaics
from medalist.modalities import get_modality
from support.tables import write_table_competition

OPTIONS = json.loads((TEMPLATE_ROOT / "cookiecutter.json").read_text())
TARGETS = {
    "binary": "target",
    "multiclass": "label",
    "multilabel": "a, b, c",
    "regression": "y",
    "segmentation": "has_mask",
}
SCHEMES_FOR = {
    "binary": {"kfold", "stratified", "group", "stratified_group"},
    "multiclass": {"kfold", "stratified", "group", "stratified_group"},
    "multilabel": {"kfold", "group", "multilabel_stratified"},
    "regression": {"kfold", "group", "quantile"},
    "segmentation": {"kfold", "stratified", "group", "stratified_group"},
}
METRICS_FOR = {
    "binary": {"accuracy", "roc_auc", "log_loss", "macro_f1"},
    "multiclass": {"accuracy", "roc_auc", "log_loss", "macro_f1", "qwk"},
    "multilabel": {"accuracy", "roc_auc", "log_loss", "macro_f1"},
    "regression": {"rmse", "mae", "qwk"},
    "segmentation": {"default", "dice", "iou"},  # custom metrics score table columns
}
TABLE_TASKS = [task for task in OPTIONS["task"] if task != "segmentation"]


def combos():
    metrics = ["default", "custom", "rmse", "dice"]
    return itertools.product(OPTIONS["modality"], OPTIONS["task"], OPTIONS["split_scheme"], metrics)


def is_valid(modality, task, scheme, metric):
    scheme_ok = scheme == "auto" or scheme in SCHEMES_FOR[task]
    if task == "segmentation":
        return scheme_ok and modality == "image" and metric in METRICS_FOR[task]
    metric_ok = metric in ("default", "custom") or metric in METRICS_FOR[task]
    return scheme_ok and metric_ok


@pytest.mark.parametrize(("modality", "task", "scheme", "metric"), list(combos()))
def test_bake_every_combination(tmp_path, modality, task, scheme, metric):
    group = "patient" if scheme in ("group", "stratified_group") else ""
    context = {
        "competition_name": "My Comp",
        "modality": modality,
        "task": task,
        "split_scheme": scheme,
        "metric": metric,
        "group_column": group,
        "target_columns": TARGETS[task],
    }
    if not is_valid(modality, task, scheme, metric):
        with pytest.raises(FailedHookException):
            bake(tmp_path, context)
        assert not (tmp_path / "my-comp").exists()
        return
    project = bake(tmp_path, context)
    assert project.name == "my-comp"
    for folder in ("configs", "folds", "data", "inference", "outputs", "submissions", "tests"):
        assert (project / folder).is_dir(), folder
    leftovers = [
        p
        for p in project.rglob("*")
        if p.is_file() and ("{{" in p.read_text() or "{%" in p.read_text())
    ]
    assert leftovers == []
    with working_directory(project):
        cfg = resolve_config(Path("configs/exp001.yaml"))
    if task == "segmentation":  # task.type describes the fold column
        assert cfg.modality == "segmentation" and cfg.task.type == "multiclass"
    else:
        assert cfg.modality == modality and cfg.task.type == task
    assert cfg.competition.target_columns == [t.strip() for t in TARGETS[task].split(",")]
    if scheme != "auto":
        assert cfg.folds.scheme == scheme
    assert (project / "src" / "my_comp" / "metrics.py").exists() == (metric == "custom")


def test_a_project_with_the_defaults_starts_from_pretrained_weights(tmp_path):
    """The generated image project names a timm tag that has pretrained weights, with
    ``model.pretrained`` on, and resolves it to a hub file (without fetching it here)."""
    with working_directory(bake(tmp_path, {})):
        cfg = resolve_config(Path("configs/exp001.yaml"))
    assert cfg.modality == "image" and cfg.model.pretrained and not cfg.model.pretrained_path
    assert cfg.model.backbone in timm.list_pretrained()
    assert get_pretrained_cfg(cfg.model.backbone).hf_hub_id


SECTIONS = {  # the top-level sections of base.yaml that only some modalities have
    "image": {"image", "model"},
    "text": {"text", "mlm"},
    "tabular": {"tabular"},
}


@pytest.mark.parametrize("modality", OPTIONS["modality"])
def test_base_config_has_only_its_modality_sections(tmp_path, modality):
    project = bake(tmp_path, {"modality": modality})
    base = yaml.safe_load((project / "configs" / "base.yaml").read_text())
    others = set().union(*SECTIONS.values(), {"segmentation"}) - SECTIONS[modality]
    assert SECTIONS[modality] <= set(base) and not others & set(base)
    if modality == "tabular":  # no network settings for a model fitted by its library
        assert set(base["train"]) == {"experiment", "seed"}
        assert base["tabular"]["model"] == "lightgbm" and base["tabular"]["features"] is None
        assert {"params", "rounds", "early_stopping"} <= set(base["tabular"])
    else:
        assert "epochs" in base["train"]


def test_tabular_project_runs_its_stages_to_a_validated_submission(tmp_path):
    """A baked tabular project: a table in data/, the README's stage commands in order, one
    validated submission that ranks the held-out labels."""
    context = {"modality": "tabular", "task": "binary", "target_columns": "diagnosis"}
    project = bake(tmp_path, {"competition_name": "Tumours", **context})
    readme = (project / "README.md").read_text()
    commands = ["folds", "train", "infer", "submission"]
    lines = [readme.index(f"medalist {command:<10} -c configs/exp001.yaml") for command in commands]
    assert lines == sorted(lines)
    assert "medalist weights" not in readme and "train_images" not in readme
    labels = pd.read_csv(write_table_competition(project)).set_index("id")
    args = ["-c", "configs/exp001.yaml", "tabular.rounds=200", "tabular.early_stopping=20"]
    args.append("tabular.params={num_threads: 1}")  # a few processes may share two cores
    with working_directory(project):
        for command in commands:
            assert main([command, *args, "train.progress=false"]) == 0, command
        assert main(["validate", "submissions/exp001.csv", *args]) == 0
    submission = pd.read_csv(project / "submissions" / "exp001.csv")
    assert submission.columns.tolist() == ["id", "diagnosis"]
    probs = submission.set_index("id").loc[labels.index, "diagnosis"]
    assert roc_auc_score(labels["diagnosis"] == "malignant", probs) > 0.9
    assert (project / "outputs" / "exp001" / "fold0" / "model.lgb.txt").is_file()


def test_missing_group_column_is_refused(tmp_path):
    with pytest.raises(FailedHookException):
        bake(tmp_path, {"split_scheme": "group", "group_column": ""})


def test_bad_slug_is_refused(tmp_path):
    with pytest.raises(FailedHookException):
        bake(tmp_path, {"competition_name": "9 lives!"})


@pytest.mark.parametrize("task", TABLE_TASKS)
def test_baked_project_tests_pass_with_custom_metric(tmp_path, task):
    project = bake(tmp_path, {"task": task, "metric": "custom", "target_columns": TARGETS[task]})
    assert_project_tests_pass(project)


def test_baked_segmentation_project_tests_pass(tmp_path):
    assert_project_tests_pass(bake(tmp_path, {"task": "segmentation", "metric": "dice"}))


def assert_project_tests_pass(project: Path) -> None:
    """The generated project's own tests pass, its package on the path."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(project / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_segmentation_project_config(tmp_path):
    """task=segmentation: modality segmentation, the fold column typed multiclass with
    stratified folds, both mask metrics (default), an smp-ready timm encoder with pretrained
    weights, and a segmentation section whose written keys resolve to masks under train_masks/."""
    project = bake(tmp_path, {"task": "segmentation"})
    base = yaml.safe_load((project / "configs" / "base.yaml").read_text())
    assert {"image", "model", "segmentation"} <= set(base) and not {"text", "tabular"} & set(base)
    written = {"task", "classes", "masks", "mask_dir", "mask_pattern", "rle_columns", "rle_order"}
    written |= {"architecture", "loss", "crop_size", "tile", "threshold", "min_size", "empty"}
    assert written <= set(base["segmentation"])
    with working_directory(project):
        cfg = resolve_config(Path("configs/exp001.yaml"))
    assert cfg.modality == "segmentation"
    assert (cfg.task.type, cfg.folds.scheme) == ("multiclass", "stratified")
    assert cfg.competition.target_columns == ["has_mask"] and cfg.task.metrics == []
    seg = cfg.segmentation
    assert (seg.task, seg.masks, seg.mask_dir, seg.architecture) == (
        "binary",
        "files",
        "train_masks",
        "unet",
    )
    assert seg.threshold is None and seg.min_size is None  # chosen on OOF
    assert cfg.model.pretrained and cfg.model.backbone in timm.list_pretrained()
    assert not (project / "src" / "digits" / "metrics.py").exists()
    readme = (project / "README.md").read_text()
    commands = ["folds", "train", "infer", "submission"]
    lines = [readme.index(f"medalist {command:<10} -c configs/exp001.yaml") for command in commands]
    assert lines == sorted(lines)
    assert "data/train_masks/" in readme and "postprocess.json" in readme
    # The README's commands run on a segmentation project: ensembles and the bundle included.
    assert "medalist ensemble -c configs/exp001.yaml" in readme
    assert "medalist package -c configs/exp001.yaml" in readme


def test_segmentation_project_with_a_group_column_and_iou(tmp_path):
    context = {"task": "segmentation", "metric": "iou", "group_column": "patient"}
    with working_directory(bake(tmp_path, context)):
        cfg = resolve_config(Path("configs/exp001.yaml"))
    assert cfg.folds.scheme == "stratified_group" and cfg.folds.group_column == "patient"
    assert cfg.task.metrics == ["iou"]


def test_segmentation_project_reads_the_masks_where_its_readme_says(tmp_path):
    """The built-in mosaics (train_images/, train_masks/, has_mask) put into a baked project's
    data/ pass the segmentation input checks unchanged, and its folds stratify on has_mask."""
    project = bake(tmp_path, {"task": "segmentation"})
    build_mosaics(project / "data", n_train=20, n_test=4, size=64)
    with working_directory(project):
        cfg = resolve_config(Path("configs/exp001.yaml"), ["model.pretrained=false"])
        train = pd.read_csv("data/train.csv")
        sizes = get_modality(cfg.modality).check_inputs(cfg, train, "train", "data/train.csv")
        assert main(["folds", "-c", "configs/exp001.yaml"]) == 0
    assert sizes == [(64, 64)] * len(train)
    folds = pd.read_csv(project / "folds" / "folds.csv").merge(train, on="id")
    assert folds.groupby("fold")["has_mask"].nunique().eq(2).all()


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"metric": "accuracy"}, "metric 'accuracy' does not fit a segmentation task"),
        ({"metric": "custom"}, "a custom metric scores table columns"),
        ({"target_columns": "has_mask, area"}, "a segmentation task has exactly one"),
        ({"modality": "text"}, "answer modality 'image'"),
        ({"split_scheme": "quantile"}, "split_scheme 'quantile' does not fit a segmentation"),
    ],
)
def test_segmentation_answers_that_do_not_fit_are_refused(tmp_path, capfd, context, message):
    with pytest.raises(FailedHookException):
        bake(tmp_path, {"task": "segmentation", **context})
    assert message in capfd.readouterr().err
    assert not (tmp_path / "digits").exists()


def test_mask_metrics_are_refused_for_table_tasks(tmp_path, capfd):
    with pytest.raises(FailedHookException):
        bake(tmp_path, {"task": "binary", "metric": "dice", "target_columns": "target"})
    assert "metric 'dice' does not fit a binary task" in capfd.readouterr().err
