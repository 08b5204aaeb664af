"""Tasks: head size, loss, activation and prediction columns of each task type; bad targets
named by their row."""

import pandas as pd
import pytest
import torch

from medalist.config import resolve_config
from medalist.errors import DataError
from medalist.tasks import build_task


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
