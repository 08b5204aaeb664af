"""The guard against non-finite losses, seen from the train stage: NaN losses injected through the
public ``tricks.custom`` hook (support/faults.py) are skipped and the fold still saves finite
weights, and too many bad steps in a row stop training before any model is saved. The guard's
step-by-step behaviour in the loop: test_nan_guard.py."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medalist.errors import TrainingDivergedError
from medalist.folds import run as folds
from medalist.training.stage import run as train
from support.configs import cfg

NAN = "tricks.custom=[{name: 'faults:NaNLoss', batches: %s}]"


@pytest.fixture
def faults_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent / "support"))


def test_nan_step_skipped_not_applied(tiny_project, faults_on_path):
    folds(cfg())
    clean = cfg()
    train(clean)
    weights = tiny_project / "outputs/tiny/fold0/model.safetensors"
    reference = load_file(weights)
    shutil.rmtree(tiny_project / "outputs")
    # A NaN loss on micro-batch 1 (the second): training finishes and saves finite weights.
    train(cfg(NAN % "[1]", "train.max_bad_steps=2"))
    got = load_file(weights)
    assert all(torch.isfinite(t).all() for t in got.values() if t.is_floating_point())
    assert any(not got[k].equal(reference[k]) for k in got if got[k].is_floating_point())
    log = pd.read_csv(tiny_project / "outputs/tiny/log.csv")
    assert log["step"].iloc[-1] == 4  # 5 batches, one skipped: 4 optimizer steps


def test_nan_steps_in_a_row_stop_training(tiny_project, faults_on_path):
    folds(cfg())
    with pytest.raises(TrainingDivergedError, match="3 optimizer steps in a row"):
        train(cfg(NAN % "[0, 1, 2, 3]", "train.max_bad_steps=3"))
    assert not (tiny_project / "outputs/tiny/fold0/model.safetensors").exists()
