"""Metrics: the built-in ones equal scikit-learn; their direction; a custom metric by import
path."""

import numpy as np
import pytest
from sklearn import metrics as skm

from medalist.errors import ConfigError
from medalist.metrics import BUILTIN, get_metric

RNG = np.random.default_rng(0)


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
