"""Hill climbing: the vectorised scorers equal the per-candidate loop, and the picks make sense."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from medalist.ensemble.hill import hill_climb, naive_hill_climb
from medalist.ensemble.scorers import batch_scorer
from medalist.metrics import get_metric


def multiclass_case(n=300, models=8, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    strength = rng.uniform(0.2, 1.5, size=(models, 1, 1))
    logits = rng.normal(size=(models, n, classes)) + strength * np.eye(classes)[y][None]
    return softmax(logits, axis=2), y


def binary_case(n=300, models=8, labels=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n,) if labels is None else (n, labels)
    y = rng.integers(0, 2, shape)
    signal = (2 * y.reshape(n, -1) - 1)[None] * rng.uniform(0.1, 1.0, size=(models, 1, 1))
    preds = 1 / (1 + np.exp(-(signal + rng.normal(size=(models, *signal.shape[1:])))))
    return preds, (y if labels is None else y.astype(np.float32))


def regression_case(n=300, models=8, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, 1)).astype(np.float32)
    return y[None] + rng.normal(size=(models, n, 1)) * rng.uniform(0.8, 1.2, (models, 1, 1)), y


CASES = {
    "multiclass": (multiclass_case, ["accuracy", "log_loss", "roc_auc", "macro_f1"]),
    "binary": (binary_case, ["accuracy", "log_loss", "roc_auc"]),
    "multilabel": (lambda **k: binary_case(labels=3, **k), ["accuracy", "log_loss", "roc_auc"]),
    "regression": (regression_case, ["rmse", "mae"]),
}


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize(
    "kind,metric", [(kind, m) for kind, (_, metrics) in CASES.items() for m in metrics]
)
def test_vectorised_equals_naive(kind, metric, replacement):
    preds, y = CASES[kind][0](seed=sum(map(ord, kind + metric)))
    fast = hill_climb(preds, y, get_metric(metric), iterations=25, replacement=replacement)
    slow = naive_hill_climb(preds, y, get_metric(metric), iterations=25, replacement=replacement)
    assert len(fast.selection) >= 2  # the case is not trivial
    assert fast.selection == slow.selection
    np.testing.assert_allclose(fast.history, slow.history, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(fast.weights, slow.weights)


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_multiclass_accuracy_scorer_is_exact_with_ties(count):
    """Quarter-step probabilities make many exact ties; argmax breaks them by the first class."""
    rng = np.random.default_rng(count)
    y = rng.integers(0, 4, 500)
    preds = rng.integers(0, 5, size=(6, 500, 4)) / 4.0
    picked = rng.integers(0, 6, count)
    total = preds[picked].sum(axis=0) if count else np.zeros((500, 4))
    scores = batch_scorer(get_metric("accuracy"), preds, y)(total, count, np.arange(6))
    expected = [np.mean((total + preds[m]).argmax(1) == y) for m in range(6)]
    np.testing.assert_array_equal(scores, expected)


def test_picks_the_dominant_model():
    preds, y = multiclass_case(models=6)
    dominant = np.eye(preds.shape[2])[y] * 0.9 + 0.1 / preds.shape[2]
    preds[4] = dominant
    for metric in ("accuracy", "log_loss"):
        result = hill_climb(preds, y, get_metric(metric))
        assert result.selection[0] == 4
        np.testing.assert_array_equal(result.weights, np.eye(6)[4])


def test_weights_are_counts_on_the_simplex():
    preds, y = binary_case(models=10, seed=5)
    result = hill_climb(preds, y, get_metric("log_loss"), iterations=40)
    assert (result.weights >= 0).all() and result.weights.sum() == pytest.approx(1.0)
    counts = np.bincount(result.selection, minlength=10)
    np.testing.assert_allclose(result.weights, counts / counts.sum())
    # each pick improved the score, and the stored score is the blend's
    assert all(b < a for a, b in zip(result.history, result.history[1:], strict=False))
    blend = np.tensordot(result.weights, preds, axes=1)
    assert get_metric("log_loss")(y, blend) == pytest.approx(result.score)


def test_without_replacement_each_model_at_most_once():
    preds, y = binary_case(models=6, seed=2)
    result = hill_climb(preds, y, get_metric("log_loss"), iterations=50, replacement=False)
    assert len(set(result.selection)) == len(result.selection)


def test_iterations_cap_the_number_of_picks():
    preds, y = binary_case(models=12, seed=4)
    assert len(hill_climb(preds, y, get_metric("log_loss"), iterations=2).selection) <= 2


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_argmax_accuracy_bounds_are_exact_with_ties(count):
    """The bound-based accuracy scorer equals argmax of every blend, ties and NaN included."""
    from medalist.ensemble.hill import ArgmaxAccuracy

    rng = np.random.default_rng(10 + count)
    y = rng.integers(0, 4, 500)
    preds = rng.integers(0, 5, size=(6, 500, 4)) / 4.0
    preds[3, :7] = np.nan
    picked = rng.integers(0, 6, count)
    total = preds[picked].sum(axis=0) if count else np.zeros((500, 4))
    before = preds.copy()
    for candidates in (np.arange(6), np.array([4, 1])):
        scores = ArgmaxAccuracy(preds, y)(total, count, candidates)
        blends = [(total + preds[m]) / (count + 1) for m in candidates]
        np.testing.assert_array_equal(scores, [np.mean(b.argmax(1) == y) for b in blends])
    np.testing.assert_array_equal(preds, before)  # the caller's predictions are untouched


def float32_case(n=3000, models=10, classes=6, seed=0):
    """float32 probabilities: rows sum to one only within ~1e-7, as real OOF files do."""
    preds, y = multiclass_case(n=n, models=models, classes=classes, seed=seed)
    return preds.astype(np.float32), y


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_float32_scores_equal_the_metric(metric, seed):
    """The fast scorers score the metric itself on float32 inputs: the same picks, the same
    history to rounding (log loss rescales rows that sum to 1 +- 1e-7, as the metric does)."""
    preds, y = float32_case(seed=seed)
    fast = hill_climb(preds, y, get_metric(metric), iterations=30)
    slow = naive_hill_climb(preds, y, get_metric(metric), iterations=30)
    assert len(fast.selection) >= 2
    assert fast.selection == slow.selection
    np.testing.assert_allclose(fast.history, slow.history, rtol=1e-13, atol=0)


def test_log_loss_scorer_rescales_rows_as_the_metric_does():
    """Rows summing to 1 + 1e-6: every candidate's score equals the metric's, not the raw mean."""
    from medalist.ensemble.hill import TrueClassLogLoss

    preds, y = float32_case(n=500, models=5, seed=3)
    preds = (preds * np.float32(1 + 1e-6)).astype(np.float32)
    metric = get_metric("log_loss")
    total = (preds[1].astype(np.float64) + preds[3]) + preds[1]
    scores = TrueClassLogLoss.build(preds, y)(total, 3, np.arange(5))
    expected = [metric(y, (total + preds[m]) / 4) for m in range(5)]
    np.testing.assert_allclose(scores, expected, rtol=1e-13, atol=0)


def test_log_loss_outside_probabilities_scores_each_candidate():
    """Values above one (not probabilities) leave the fast path: the metric is called per
    candidate, so the climb still matches the reference."""
    preds, y = float32_case(n=400, models=5, seed=4)
    preds[2] *= 1.5
    fast = hill_climb(preds, y, get_metric("log_loss"), iterations=10)
    slow = naive_hill_climb(preds, y, get_metric("log_loss"), iterations=10)
    assert fast.selection == slow.selection
    np.testing.assert_allclose(fast.history, slow.history, rtol=1e-13, atol=0)


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_accuracy_leaders_are_exact_where_they_can_win(count):
    """leaders() (what the climb calls): the best candidate's score exact, and every other score
    either exact or below the best, so that the climb picks what exact scores would pick."""
    from medalist.ensemble.hill import ArgmaxAccuracy

    rng = np.random.default_rng(20 + count)
    y = rng.integers(0, 4, 800)
    preds = rng.integers(0, 5, size=(7, 800, 4)) / 4.0  # many exact ties
    preds[2] = np.eye(4)[y] * 0.25 + preds[2] * 0.75  # a likely leader
    scorer, total = ArgmaxAccuracy(preds, y), np.zeros((800, 4))
    for model in rng.integers(0, 7, count):
        scorer.add(int(model))
        total += preds[model]  # the climb's order of additions
    candidates = np.arange(7)
    exact = ArgmaxAccuracy(preds, y)(total, count, candidates)
    np.testing.assert_array_equal(exact, [np.mean((total + p).argmax(1) == y) for p in preds])
    scores = scorer.leaders(None, count, candidates)
    best = int(np.argmax(exact))
    assert int(np.argmax(scores)) == best and scores[best] == exact[best]
    assert ((scores == exact) | (scores < exact[best])).all()


@pytest.mark.parametrize("workers", [1, 3])
def test_row_stats_equal_a_direct_computation(monkeypatch, workers):
    """The chunked pass of the log-loss scorer (one thread or several, rows spanning several
    chunks) gives each row's true-class value and float64 row sum minus one."""
    from medalist.ensemble import hill

    monkeypatch.setattr(hill, "_workers", lambda n: workers)
    monkeypatch.setattr(hill.RowStats, "CHUNK", 64)  # 10 rows of 6 classes a chunk
    preds, y = float32_case(n=203, models=5, seed=8)
    preds[2, 7] = np.nan
    stats = hill.RowStats.build(preds, y, drift=True)
    np.testing.assert_array_equal(stats.true, preds[:, np.arange(len(y)), y])
    drift = (preds.sum(axis=2, dtype=np.float64) - 1.0).astype(np.float32)
    np.testing.assert_array_equal(stats.drift, drift)
    assert stats.low == np.nanmin(preds) and stats.high == np.nanmax(preds)


@pytest.mark.parametrize("workers", [1, 3])
def test_argmax_stats_equal_a_direct_computation(monkeypatch, workers):
    """The accuracy scorer's pass (chunks of rows on one thread or several): per row and model
    the true-class value and the lift over the best other class, per row their maxima over
    the models (NaN where a model has NaN), per model the rows where it alone is right (ties
    to the first class, NaN rows as argmax reads them)."""
    from medalist.ensemble import hill

    monkeypatch.setattr(hill, "_workers", lambda n: workers)
    monkeypatch.setattr(hill.ArgmaxStats, "CHUNK", 64)
    rng = np.random.default_rng(9)
    y = rng.integers(0, 6, 203)
    preds = (rng.integers(0, 4, size=(5, 203, 6)) / 3.0).astype(np.float32)  # many ties
    preds[2, 7] = np.nan
    preds[4, 11, 3] = np.nan
    stats = hill.ArgmaxStats.build(preds, y)
    rows = np.arange(len(y))
    true = preds[:, rows, y]
    others = preds.copy()
    others[:, rows, y] = -np.inf
    lift = others.max(axis=2) - true
    np.testing.assert_array_equal(stats.true, true.T)
    np.testing.assert_array_equal(stats.lift, lift.T)
    np.testing.assert_array_equal(stats.lift_max, lift.max(axis=0))
    np.testing.assert_array_equal(stats.true_max, true.max(axis=0))
    np.testing.assert_array_equal(stats.hits, [(p.argmax(axis=1) == y).sum() for p in preds])
    assert stats.low == np.nanmin(preds) and stats.high == np.nanmax(preds)


@pytest.mark.parametrize("workers", [1, 3])
def test_accuracy_running_total_equals_the_given_one(monkeypatch, workers):
    """The running scorer (rows tracked and left to bounds step by step, in shards, blocks of a
    few rows) scores every candidate as the reference does after every addition, over a long
    climb in which rows leave the tracked set and come back."""
    from medalist.ensemble import hill

    monkeypatch.setattr(hill, "_workers", lambda n: workers)
    monkeypatch.setattr(hill.ArgmaxAccuracy, "BLOCK", 16)
    preds, y = float32_case(n=700, models=6, classes=5, seed=11)
    preds[0] = preds[0][::-1]  # a model right only by chance: margins fall when it is added
    preds[:, :150] = np.round(preds[:, :150] * 4) / 4  # exact ties in the blends
    preds[2, 160:164] = np.nan
    scorer, total = hill.ArgmaxAccuracy(preds, y), np.zeros((700, 5))
    candidates = np.arange(6)
    rng = np.random.default_rng(5)
    for count in range(25):
        expected = [np.mean(((total + p) / (count + 1)).argmax(1) == y) for p in preds]
        np.testing.assert_array_equal(scorer(None, count, candidates), expected)
        np.testing.assert_array_equal(scorer(total, count, candidates), expected)
        model = int(rng.integers(0, 6))
        scorer.add(model)
        total += preds[model]
    assert 0 < scorer.tracked.sum() < len(y)


def test_patience_finds_a_small_weight_that_no_single_step_reaches():
    """B is noisier than A but independent: 5:1 beats A alone, 1:1 to 4:1 do not. Stopping at
    the first step that does not improve keeps A alone; patience re-picks A to reach it, and
    keeps the best selection seen (not the last)."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=20_000)
    a = y + rng.normal(scale=1.0, size=y.shape)
    b = y + rng.normal(scale=3.0, size=y.shape)
    preds = np.stack([a, b])[:, :, None]
    metric = get_metric("rmse")
    greedy = hill_climb(preds, y, metric, patience=0)
    assert greedy.weights.tolist() == [1.0, 0.0]
    patient = hill_climb(preds, y, metric, iterations=60, patience=10)
    assert 0.0 < patient.weights[1] < 0.3
    assert patient.score < greedy.score == metric(y, preds[0])
    assert patient.score == min(patient.history) == patient.history[-1]
    blend = np.tensordot(patient.weights, preds, axes=1)
    assert metric(y, blend) == pytest.approx(patient.score, rel=1e-12)
    reference = naive_hill_climb(preds, y, metric, iterations=60, patience=10)
    assert reference.selection == patient.selection
