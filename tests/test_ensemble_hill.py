"""Hill climbing: the vectorised scorers equal the per-candidate reference, and the picks make sense."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import softmax

from medalist.ensemble import hill
from medalist.ensemble.hill import (
    _argmax_is,
    batch_scorer,
    hill_climb,
    naive_hill_climb,
    per_candidate,
)
from medalist.metrics import Metric, get_metric, rmse


def multiclass_case(n=300, models=8, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    strength = rng.uniform(0.2, 1.5, size=(models, 1, 1))
    logits = rng.normal(size=(models, n, classes)) + strength * np.eye(classes)[y][None]
    return softmax(logits, axis=2), y


def float32_case(n=3000, models=10, classes=6, seed=0):
    """float32 probabilities: rows sum to one only within ~1e-7, as real OOF files do."""
    preds, y = multiclass_case(n=n, models=models, classes=classes, seed=seed)
    return preds.astype(np.float32), y


def hard_case(n=300, models=8, classes=4, seed=0):
    """Hard labels as probabilities (0 and 1 only): the metrics' clips matter, ties abound.
    Two classes: the binary format (the positive class's column)."""
    rng = np.random.default_rng(seed)
    right = rng.random((models, n)) < rng.uniform(0.5, 0.9, (models, 1))
    y = rng.integers(0, classes, n)
    preds = np.eye(classes)[np.where(right, y, rng.integers(0, classes, (models, n)))]
    return (preds[:, :, 1:] if classes == 2 else preds), y


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
    "float32": (lambda seed: float32_case(n=500, seed=seed), ["accuracy", "log_loss"]),
    "hard": (hard_case, ["log_loss"]),
    "hard_binary": (lambda seed: hard_case(classes=2, seed=seed), ["log_loss"]),
    "binary": (binary_case, ["accuracy", "log_loss", "roc_auc"]),
    "multilabel": (
        lambda seed: binary_case(labels=3, seed=seed),
        ["accuracy", "log_loss", "roc_auc"],
    ),
    "regression": (regression_case, ["rmse", "mae"]),
}
KIND_METRIC = [(kind, metric) for kind, (_, metrics) in CASES.items() for metric in metrics]


def case(kind, metric):
    return CASES[kind][0](seed=sum(map(ord, kind + metric)))


@pytest.mark.parametrize("chunk", [1 << 20, 700])  # 700: one candidate a chunk, several blocks
@pytest.mark.parametrize("kind,metric", KIND_METRIC)
def test_scorer_equals_the_reference(monkeypatch, kind, metric, chunk):
    """Every candidate's score, after a few picks (the climb's additions), to 1e-9."""
    monkeypatch.setattr(hill, "CHUNK_VALUES", chunk)
    preds, y = case(kind, metric)
    fast, slow = (make(get_metric(metric), preds, y) for make in (batch_scorer, per_candidate))
    rng, spread = np.random.default_rng(len(kind)), []
    for count in (0, 1, 3):
        total = np.zeros(preds.shape[1:])
        for model in rng.integers(0, len(preds), count):
            total += preds[model]
        for candidates in (np.arange(len(preds)), np.array([5, 2])):
            expected = slow(total, count, candidates)
            np.testing.assert_allclose(fast(total, count, candidates), expected, rtol=0, atol=1e-9)
            spread.append(np.ptp(expected))
    assert max(spread) > 1e-3  # the candidates differ


@pytest.mark.parametrize("kind,metric", KIND_METRIC)
def test_builtin_metrics_are_vectorised(monkeypatch, kind, metric):
    """Only metrics without a vectorised scorer call the metric once per candidate."""
    calls = []
    monkeypatch.setattr(hill, "per_candidate", lambda *args: calls.append(args))
    preds, y = case(kind, metric)
    batch_scorer(get_metric(metric), preds, y)
    assert len(calls) == (metric == "macro_f1")
    calls.clear()
    batch_scorer(Metric("custom", get_metric(metric).fn, True), preds, y)  # not the builtin
    assert len(calls) == 1


def first_tie(preds, y, metric, selection, replacement):
    """The first step of the reference climb decided by less than 1e-9 (its two best candidates,
    or its best against the best so far); ``len(selection) + 1`` when none is."""
    score, sign = per_candidate(metric, preds, y), 1 if metric.greater_is_better else -1
    total, best = np.zeros(preds.shape[1:]), None
    for step in range(len(selection) + 1):
        picked = selection[:step]
        candidates = np.array([m for m in range(len(preds)) if replacement or m not in picked])
        if not candidates.size:
            break
        scores = np.sort(sign * score(total, step, candidates))[::-1]
        near = len(scores) > 1 and scores[0] - scores[1] <= 1e-9
        if near or (best is not None and abs(scores[0] - best) <= 1e-9):
            return step
        if step < len(selection):
            total += preds[selection[step]]
            best = scores[0]
    return len(selection) + 1


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("kind,metric", KIND_METRIC)
def test_vectorised_climb_equals_naive(kind, metric, replacement):
    """The same scores to 1e-9, and the same picks up to the first (near) tie."""
    preds, y = case(kind, metric)
    fast = hill_climb(preds, y, get_metric(metric), iterations=25, replacement=replacement)
    slow = naive_hill_climb(preds, y, get_metric(metric), iterations=25, replacement=replacement)
    assert len(slow.selection) >= 2  # the case is not trivial
    tie = first_tie(preds, y, get_metric(metric), slow.selection, replacement)
    assert tie >= 2
    assert fast.selection[:tie] == slow.selection[:tie]
    np.testing.assert_allclose(fast.history[:tie], slow.history[:tie], rtol=0, atol=1e-9)
    if tie > len(slow.selection):  # no tie at all: the same climb
        assert fast.selection == slow.selection
        np.testing.assert_array_equal(fast.weights, slow.weights)


@pytest.mark.parametrize("count", [0, 1, 2, 5])
def test_multiclass_accuracy_is_exact_with_ties_and_nan(count):
    """Quarter-step probabilities make many exact ties (argmax: the first class); NaN rows are
    read as argmax reads them."""
    rng = np.random.default_rng(count)
    y = rng.integers(0, 4, 500)
    preds = rng.integers(0, 5, size=(6, 500, 4)) / 4.0
    preds[3, :7] = np.nan
    preds[1, 7:12, 2] = np.nan
    before = preds.copy()
    total = np.zeros((500, 4))
    for model in rng.integers(0, 6, count):
        total += preds[model]
    scorer = batch_scorer(get_metric("accuracy"), preds, y)
    for candidates in (np.arange(6), np.array([4, 1])):
        blends = [(total + preds[m]) / (count + 1) for m in candidates]
        expected = [np.mean(blend.argmax(axis=1) == y) for blend in blends]
        np.testing.assert_array_equal(scorer(total, count, candidates), expected)
    np.testing.assert_array_equal(preds, before)  # the caller's predictions are untouched


def test_argmax_is_reads_ties_and_nan_as_argmax():
    """The first maximum wins a tie; a row with NaN goes to its first NaN."""
    rng = np.random.default_rng(0)
    blend = rng.integers(0, 3, size=(2000, 5)).astype(np.float64)
    blend[rng.random(blend.shape) < 0.05] = np.nan
    y = rng.integers(0, 5, 2000)
    expected = blend.argmax(axis=1) == y
    got = _argmax_is(np.ascontiguousarray(blend.T), y)
    assert 0 < expected.sum() < len(y) and np.isnan(blend).any(axis=1).sum() > 100
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_float32_climb_equals_the_metric(metric, seed):
    """On float32 probabilities the fast climb scores the metric itself: the same picks, the
    same history to 1e-9 (log loss rescales rows that sum to 1 +- 1e-7, as the metric does)."""
    preds, y = float32_case(seed=seed)
    fast = hill_climb(preds, y, get_metric(metric), iterations=30)
    slow = naive_hill_climb(preds, y, get_metric(metric), iterations=30)
    assert len(fast.selection) >= 2
    assert fast.selection == slow.selection
    np.testing.assert_allclose(fast.history, slow.history, rtol=0, atol=1e-9)


def test_log_loss_rescales_rows_as_the_metric_does():
    """Rows summing to 1 + 1e-6: every candidate's score is the metric's, not the raw mean
    (which is 1e-6 away)."""
    preds, y = float32_case(n=500, models=5, seed=3)
    preds = (preds * np.float32(1 + 1e-6)).astype(np.float32)
    metric = get_metric("log_loss")
    total = (preds[1].astype(np.float64) + preds[3]) + preds[1]
    scores = batch_scorer(metric, preds, y)(total, 3, np.arange(5))
    expected = [metric(y, (total + preds[m]) / 4) for m in range(5)]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-9)


def test_log_loss_outside_probabilities_scores_each_candidate():
    """Values above one (not probabilities): the metric is called per candidate, so the climb
    still matches the reference."""
    preds, y = float32_case(n=400, models=5, seed=4)
    preds[2] *= 1.5
    fast = hill_climb(preds, y, get_metric("log_loss"), iterations=10)
    slow = naive_hill_climb(preds, y, get_metric("log_loss"), iterations=10)
    assert fast.selection == slow.selection
    np.testing.assert_allclose(fast.history, slow.history, rtol=0, atol=1e-12)


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
    preds, y = binary_case(models=6, seed=5)
    result = hill_climb(preds, y, get_metric("log_loss"), iterations=50, replacement=False)
    assert len(result.selection) >= 2
    assert len(set(result.selection)) == len(result.selection)


def test_iterations_cap_the_number_of_picks():
    preds, y = binary_case(models=12, seed=4)
    assert len(hill_climb(preds, y, get_metric("log_loss"), iterations=2).selection) == 2
    empty = hill_climb(np.zeros((0, 5, 3)), np.zeros(5, dtype=int), get_metric("accuracy"))
    assert empty.selection == [] and empty.weights.shape == (0,)


@pytest.mark.parametrize("climb", [hill_climb, naive_hill_climb])
def test_ties_go_to_the_first_model(climb):
    preds, y = binary_case(models=5, seed=6)
    best = int(np.argmin([get_metric("log_loss")(y, p) for p in preds]))
    preds = np.concatenate([preds, preds[best : best + 1]])  # the best model twice
    assert climb(preds, y, get_metric("log_loss")).selection[0] == best


@pytest.mark.parametrize("climb", [hill_climb, naive_hill_climb])
def test_nan_never_wins(climb):
    """A model with NaN predictions scores NaN (rmse): never picked, though it is otherwise y."""
    preds, y = regression_case(models=4, seed=7)
    preds[2] = y
    preds[2, 0] = np.nan
    result = climb(preds, y, get_metric("rmse"), iterations=20, patience=3)
    assert len(result.selection) >= 1 and 2 not in result.selection
    assert not np.isnan(result.history).any()


def test_the_metrics_warnings_about_sums_are_silenced_and_no_others():
    def noisy(y_true, y_pred):
        warnings.warn("The y_prob values do not sum to one.", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
        return rmse(y_true, y_pred)

    preds, y = regression_case(models=3, seed=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hill_climb(preds, y, Metric("noisy", noisy, False), iterations=3)
    messages = {str(w.message) for w in caught}
    assert messages == {"something else"}


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
    for patience in (3, 10):  # 3: the steps after the best one leave 12:1, worse than 9:1
        patient = hill_climb(preds, y, metric, iterations=60, patience=patience)
        assert 0.0 < patient.weights[1] < 0.3
        assert patient.score < greedy.score == metric(y, preds[0])
        assert patient.score == min(patient.history) == patient.history[-1]
        blend = np.tensordot(patient.weights, preds, axes=1)
        assert metric(y, blend) == pytest.approx(patient.score, rel=1e-12)
        reference = naive_hill_climb(preds, y, metric, iterations=60, patience=patience)
        assert reference.selection == patient.selection
