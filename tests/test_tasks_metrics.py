"""Tasks (head size, loss, activation, columns) and metrics (values, direction, custom)."""

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn import metrics as skm

from medalist.config import resolve_config
from medalist.errors import ConfigError, DataError
from medalist.metrics import BUILTIN, get_metric
from medalist.tasks import build_task

RNG = np.random.default_rng(0)


def task_for(kind, frame, **extra):
    targets = {"multilabel": "[a, b]", "regression": "[y]"}.get(kind, "[label]")
    scheme = {"multilabel": "multilabel_stratified", "regression": "quantile"}.get(
        kind, "stratified"
    )
    overrides = [
        f"task.type={kind}",
        f"competition.target_columns={targets}",
        f"folds.scheme={scheme}",
    ]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return build_task(resolve_config(overrides=overrides), frame)


def test_multiclass_task():
    frame = pd.DataFrame({"label": ["cat", "dog", "ant", "dog"]})
    task = task_for("multiclass", frame)
    assert task.classes == ["ant", "cat", "dog"] and task.num_outputs == 3
    assert task.pred_columns == ["p_ant", "p_cat", "p_dog"]
    assert task.encode_targets(frame).tolist() == [1, 2, 0, 2]
    logits = torch.randn(4, 3)
    target = torch.tensor([1, 2, 0, 2])
    assert torch.allclose(
        task.loss(logits, target).mean(), torch.nn.functional.cross_entropy(logits, target)
    )
    assert torch.allclose(task.activate(logits).sum(1), torch.ones(4))
    assert task.main_metric.name == "accuracy"


def test_binary_task_single_output():
    frame = pd.DataFrame({"label": [0, 1, 1, 0]})
    task = task_for("binary", frame)
    assert task.num_outputs == 1 and task.pred_columns == ["p_1"]
    probs = task.activate(torch.zeros(4, 1))
    assert torch.allclose(probs, torch.full((4, 1), 0.5))


def test_multilabel_and_regression_tasks():
    frame = pd.DataFrame({"a": [0, 1], "b": [1, 1], "y": [0.5, 2.0]})
    multilabel = task_for("multilabel", frame)
    assert multilabel.num_outputs == 2 and multilabel.pred_columns == ["p_a", "p_b"]
    regression = task_for("regression", frame)
    assert regression.pred_columns == ["pred_y"]
    values = regression.encode_targets(frame)
    assert values.shape == (2, 1)
    assert torch.equal(regression.activate(torch.tensor(values)), torch.tensor(values))


def test_bad_targets_name_row():
    frame = pd.DataFrame({"label": [0, 1, 2]})
    task = task_for("multiclass", frame, **{"task.classes": "[0, 1]"})
    with pytest.raises(DataError, match="row 2"):
        task.encode_targets(frame)
    frame = pd.DataFrame({"a": [0, 1, 2], "b": [1, 0, 1], "y": [0.5, None, 1]})
    with pytest.raises(DataError, match="row 2"):
        task_for("multilabel", frame).encode_targets(frame)
    with pytest.raises(DataError, match="row 1"):
        task_for("regression", frame).encode_targets(frame)
    with pytest.raises(DataError, match="binary target has 2 values"):
        task_for("binary", pd.DataFrame({"label": [0, 1, 2]}))


def test_metrics_match_sklearn():
    y = RNG.integers(0, 3, 200)
    p = RNG.dirichlet(np.ones(3), 200)
    assert BUILTIN["accuracy"](y, p) == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
    assert BUILTIN["log_loss"](y, p) == pytest.approx(skm.log_loss(y, p))
    assert BUILTIN["macro_f1"](y, p) == pytest.approx(skm.f1_score(y, p.argmax(1), average="macro"))
    assert BUILTIN["qwk"](y, p) == pytest.approx(
        skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic")
    )
    assert BUILTIN["roc_auc"](y, p) == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"))
    yb = RNG.integers(0, 2, 100)
    pb = RNG.random((100, 1))
    assert BUILTIN["roc_auc"](yb, pb) == pytest.approx(skm.roc_auc_score(yb, pb[:, 0]))
    yr = RNG.normal(size=(50, 1)).astype(np.float32)
    pr = yr + 0.1
    assert BUILTIN["rmse"](yr, pr) == pytest.approx(0.1, rel=1e-4)
    assert BUILTIN["mae"](yr, pr) == pytest.approx(0.1, rel=1e-4)


def test_metric_direction():
    assert BUILTIN["accuracy"].better(0.9, 0.8) and not BUILTIN["accuracy"].better(0.7, 0.8)
    assert BUILTIN["rmse"].better(0.1, 0.2) and not BUILTIN["rmse"].better(0.3, 0.2)
    assert BUILTIN["log_loss"].better(0.5, None)


def test_custom_metric_by_import_path(tmp_path, monkeypatch):
    package = tmp_path / "src" / "mycomp"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "scores.py").write_text("def half(y, p):\n    return 0.5\n")
    monkeypatch.chdir(tmp_path)
    metric = get_metric("mycomp.scores:half", "minimize")
    assert metric(np.zeros(2), np.zeros((2, 1))) == 0.5 and not metric.greater_is_better
    with pytest.raises(ConfigError, match="metric_direction"):
        get_metric("mycomp.scores:half")
    with pytest.raises(ConfigError, match="has no 'nope'"):
        get_metric("mycomp.scores:nope", "maximize")
    with pytest.raises(ConfigError, match="unknown metric 'acc'"):
        get_metric("acc")
