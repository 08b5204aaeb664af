"""A tiny segmentation competition for the stage tests: mosaics of the photos scikit-learn ships
(:func:`medalist.demo.segmentation_data.build_mosaics`), baked from the template, with
``configs/tiny.yaml`` training a U-Net on timm's ``test_resnet`` in seconds."""

from __future__ import annotations

import json
from pathlib import Path

from medalist.cli import main
from medalist.demo.digits import bake
from medalist.demo.segmentation_data import build_mosaics

CONFIG = "configs/tiny.yaml"
EXPERIMENT = "tiny_seg"
TINY_SEGMENTATION = f"""\
modality: segmentation
task:
  type: binary          # has_mask, the column the folds stratify on
model:
  backbone: test_resnet
  pretrained: false
image:
  size: 32
segmentation:
  architecture: unet
folds:
  n_splits: 2
train:
  experiment: {EXPERIMENT}
  epochs: 2
  batch_size: 4
  lr: 3.0e-3
  num_workers: 0
  progress: false
"""


def segmentation_project(root: Path, n_train: int = 16, n_test: int = 6, size: int = 32) -> Path:
    """Bake the template under ``root`` with a mosaic competition of ``n_train`` and ``n_test``
    images of ``size`` pixels in ``data/`` (``solution.csv`` beside it) and
    :data:`TINY_SEGMENTATION` as ``configs/tiny.yaml``; return the project folder."""
    project = bake(
        root,
        {
            "competition_name": "Mosaics",
            "modality": "image",
            "task": "binary",
            "target_columns": "has_mask",
        },
    )
    build_mosaics(project / "data", n_train=n_train, n_test=n_test, size=size, seed=0)
    (project / CONFIG).write_text(TINY_SEGMENTATION)
    return project


def run_stages(*stages: str, overrides: tuple[str, ...] = ()) -> None:
    """``medalist <stage> -c configs/tiny.yaml <overrides>`` for each stage, each succeeding."""
    for stage in stages:
        assert main([stage, "-c", CONFIG, *overrides]) == 0, stage


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())
