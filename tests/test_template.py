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
from support.tables import write_table_competition

OPTIONS = json.loads((TEMPLATE_ROOT / "cookiecutter.json").read_text())
TARGETS = {"binary": "target", "multiclass": "label", "multilabel": "a, b, c", "regression": "y"}
SCHEMES_FOR = {
    "binary": {"kfold", "stratified", "group", "stratified_group"},
    "multiclass": {"kfold", "stratified", "group", "stratified_group"},
    "multilabel": {"kfold", "group", "multilabel_stratified"},
    "regression": {"kfold", "group", "quantile"},
}
METRICS_FOR = {
    "binary": {"accuracy", "roc_auc", "log_loss", "macro_f1"},
    "multiclass": {"accuracy", "roc_auc", "log_loss", "macro_f1", "qwk"},
    "multilabel": {"accuracy", "roc_auc", "log_loss", "macro_f1"},
    "regression": {"rmse", "mae", "qwk"},
}


def combos():
    metrics = ["default", "custom", "rmse"]
    return itertools.product(OPTIONS["modality"], OPTIONS["task"], OPTIONS["split_scheme"], metrics)


def is_valid(task, scheme, metric):
    scheme_ok = scheme == "auto" or scheme in SCHEMES_FOR[task]
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
    if not is_valid(task, scheme, metric):
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
    assert cfg.task.type == task
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
    others = set().union(*SECTIONS.values()) - SECTIONS[modality]
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


@pytest.mark.parametrize("task", OPTIONS["task"])
def test_baked_project_tests_pass_with_custom_metric(tmp_path, task):
    project = bake(tmp_path, {"task": task, "metric": "custom", "target_columns": TARGETS[task]})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(project / "src"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout
