"""Shared fixtures: a tiny digits competition baked from the real template."""

import os
import shutil
from pathlib import Path

import pytest

from medalist.demo.digits import bake, build_digits, working_directory
from support.configs import TRAINED

TINY = """\
image:
  size: 16
  channels: 1
  mean: [0.5]
  std: [0.5]
  train_transforms:
    - {name: Affine, translate_percent: [-0.05, 0.05], p: 0.5}
model:
  backbone: test_resnet
  pretrained: false  # the template starts from pretrained weights; tests never download
folds:
  n_splits: 3
train:
  experiment: tiny
  epochs: 2
  batch_size: 16
  lr: 3.0e-3
  num_workers: 0
  progress: false
"""


@pytest.fixture(scope="session")
def tiny_template(tmp_path_factory) -> Path:
    """A baked digits project with 150 rows of real data, made once per session."""
    root = tmp_path_factory.mktemp("template")
    project = bake(root, {"competition_name": "Digits"})
    build_digits(project / "data", n_rows=150)
    (project / "configs" / "tiny.yaml").write_text(TINY)
    return project


@pytest.fixture
def tiny_project(tiny_template, tmp_path) -> Path:
    """A fresh copy of the tiny project as the working directory of the test."""
    project = tmp_path / "digits"
    shutil.copytree(tiny_template, project)
    with working_directory(project):
        yield project


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # Nothing may reach a model hub, in tests as at run time.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setitem(os.environ, "TQDM_DISABLE", "1")


@pytest.fixture(scope="session")
def trained_template(tiny_template, tmp_path_factory) -> Path:
    """The tiny project with fold 0 trained for one epoch and its test predictions and
    submission made (``medalist run`` with ``TRAINED``), once per session."""
    from medalist.cli import main

    project = tmp_path_factory.mktemp("trained") / "digits"
    shutil.copytree(tiny_template, project)
    with working_directory(project):
        assert main(["run", *TRAINED]) == 0
    return project


@pytest.fixture
def trained_project(trained_template, tmp_path) -> Path:
    """A fresh copy of the trained tiny project as the working directory of the test."""
    project = tmp_path / "digits"
    shutil.copytree(trained_template, project)
    with working_directory(project):
        yield project
