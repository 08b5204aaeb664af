"""Blenders and stacking on arrays: means, simplex weights, rank refusal, honest nested CV."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from medalist.config.ensemble import EnsembleConfig
from medalist.ensemble.blend import (
    Blender,
    HillBlender,
    LogitBlender,
    RankBlender,
    WeightedBlender,
    rank_only,
)
from medalist.ensemble.nested import nested_predictions, score
from medalist.ensemble.stacking import Stacker, check_stacker
from medalist.ensemble.stage import check_method
from medalist.errors import ConfigError
from medalist.metrics import get_metric

LOG_LOSS = get_metric("log_loss")


def overfitting_case(seed: int, n: int = 160, noise_models: int = 30):
    """One weak, overconfident model and many noise models near 0.5: any fitted blend shrinks
    the weak model towards 0.5 and, on the rows it is fitted on, also chases the noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    weak = expit((2 * y - 1) + 2 * rng.normal(size=n))
    noise = np.clip(0.5 + 0.15 * rng.normal(size=(noise_models, n)), 0.02, 0.98)
    preds = np.concatenate([weak[None], noise])[:, :, None]
    fold = np.arange(n) % 4
    return preds, y, fold


def test_mean_of_identical_models_is_the_model():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=50)
    same = np.stack([p, p, p])
    for blender in (Blender("multiclass", LOG_LOSS), LogitBlender("multiclass", LOG_LOSS)):
        np.testing.assert_allclose(blender.fit(same, None).predict(same), p, atol=1e-6)
    binary = same[:, :, :1]
    np.testing.assert_allclose(
        LogitBlender("binary", LOG_LOSS).fit(binary, None).predict(binary), binary[0], atol=1e-6
    )


def test_mean_differs_from_a_member_when_members_differ():
    rng = np.random.default_rng(1)
    preds = rng.dirichlet(np.ones(3), size=(2, 40))
    blend = Blender("multiclass", LOG_LOSS).fit(preds, None).predict(preds)
    np.testing.assert_allclose(blend, preds.mean(axis=0))
    assert not np.allclose(blend, preds[0])


@pytest.mark.parametrize(
    "task,metric", [("binary", "log_loss"), ("binary", "roc_auc"), ("regression", "rmse")]
)
def test_weighted_weights_live_on_the_simplex(task, metric):
    rng = np.random.default_rng(2)
    n = 200
    if task == "regression":
        y = rng.normal(size=(n, 1))
        preds = y[None] + rng.normal(size=(5, n, 1)) * np.array([0.3, 1, 2, 3, 4])[:, None, None]
    else:
        y = rng.integers(0, 2, n)
        strength = np.array([2.0, 0.5, 0.1, 0.0, 0.0])[:, None]
        preds = expit(strength * (2 * y - 1) + rng.normal(size=(5, n)))[:, :, None]
    weights = WeightedBlender(task, get_metric(metric)).fit(preds, y).weights
    assert (weights >= 0).all()
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert weights.argmax() == 0  # the strongest model weighs most


def test_weighted_beats_the_mean_in_sample():
    preds, y, _ = overfitting_case(0)
    blender = WeightedBlender("binary", LOG_LOSS).fit(preds, y)
    mean = Blender("binary", LOG_LOSS).fit(preds, y)
    assert LOG_LOSS(y, blender.predict(preds)) < LOG_LOSS(y, mean.predict(preds))


def test_rank_mean_only_for_rank_metrics():
    assert rank_only(get_metric("roc_auc")) and not rank_only(get_metric("accuracy"))
    with pytest.raises(ConfigError, match="rank.*log_loss"):
        check_method(EnsembleConfig(method="rank"), "binary", LOG_LOSS)
    check_method(EnsembleConfig(method="rank"), "binary", get_metric("roc_auc"))
    rng = np.random.default_rng(3)
    preds = rng.uniform(size=(2, 30, 1))
    ranks = RankBlender("binary", LOG_LOSS).fit(preds, None).predict(preds)
    # Each model's rank of every row (1 = lowest; no ties in uniform draws) over 30, averaged.
    expected = np.mean([np.argsort(np.argsort(p[:, 0])) + 1 for p in preds], axis=0) / 30
    np.testing.assert_allclose(ranks[:, 0], expected)


def test_logit_refused_for_regression_and_stackers_checked():
    with pytest.raises(ConfigError, match="logit"):
        check_method(EnsembleConfig(method="logit"), "regression", get_metric("rmse"))
    with pytest.raises(ConfigError, match="ridge.*multiclass"):
        check_stacker("ridge", "multiclass")
    with pytest.raises(ConfigError, match="logistic.*regression"):
        check_stacker("logistic", "regression")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("method", ["weighted", "hill_climb", "stack"])
def test_nested_cv_is_never_better_than_in_sample_when_overfitting(method, seed):
    preds, y, fold = overfitting_case(seed)
    make = {
        "weighted": lambda: WeightedBlender("binary", LOG_LOSS),
        "hill_climb": lambda: HillBlender("binary", LOG_LOSS, 100, True),
        "stack": lambda: Stacker("binary", LOG_LOSS, "logistic", 10.0, 0),
    }[method]
    in_sample = make().fit(preds, y).predict(preds)
    nested, per_fold = nested_predictions(make, preds, y, fold)
    assert sorted(per_fold) == [0, 1, 2, 3]
    assert LOG_LOSS(y, nested) > LOG_LOSS(y, in_sample)  # never better, here strictly worse


def test_nested_uses_only_other_folds():
    """Each fold's blender is fitted on exactly the other folds' rows."""

    class Spy(Blender):
        learns = True

        def fit(self, preds, y):
            self.rows = frozenset(preds[0, :, 0].tolist())  # row ids stored as predictions
            return self

        def predict(self, preds):
            held_out = set(preds[0, :, 0].tolist())
            assert not held_out & self.rows
            return np.full(preds.shape[1:], float(len(self.rows)))

    fold = np.arange(40) % 4
    preds = np.arange(40, dtype=float)[None, :, None].repeat(2, axis=0)
    nested, _ = nested_predictions(lambda: Spy("binary", LOG_LOSS), preds, np.zeros(40), fold)
    np.testing.assert_array_equal(nested[:, 0], np.full(40, 30.0))  # fitted on 3 of 4 folds


def test_stacker_multiclass_probabilities():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 120)
    preds = rng.dirichlet(np.ones(3), size=(3, 120))
    preds[0] = 0.6 * np.eye(3)[y] + 0.4 * preds[0]
    stacker = Stacker("multiclass", LOG_LOSS, "logistic", 1.0, 0).fit(preds, y)
    out = stacker.predict(preds)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    shares = stacker.describe(["a", "b", "c"])["weights"]
    assert max(shares, key=shares.get) == "a" and sum(shares.values()) == pytest.approx(1.0)


def test_score_pools_and_splits_by_fold():
    y = np.array([0, 1, 0, 1])
    pred = np.array([[0.2], [0.8], [0.6], [0.4]])
    result = score([get_metric("accuracy")], y, pred, np.array([0, 0, 1, 1]))
    assert result["cv"]["accuracy"] == 0.5
    assert result["folds"] == {"0": {"accuracy": 1.0}, "1": {"accuracy": 0.0}}
    assert result["fold_std"]["accuracy"] == 0.5
