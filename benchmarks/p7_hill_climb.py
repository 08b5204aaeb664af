"""P7: hill-climbing ensemble selection on 200k rows x 20 models x 10 classes.

- A: :func:`medalist.ensemble.hill.hill_climb`: the candidates of a step scored together, in
  plain numpy on one core (log loss from two numbers per row and candidate; accuracy blending
  only the rows that some candidate could decide either way).
- B: the straightforward loop written here in numpy: at every step, blend each candidate with
  the picked models and compute the metric on the blend, one candidate at a time.

Both climb with replacement until no candidate improves the score (at most 100 picks) and must
end on the same score to 1e-9 (picks may differ between candidates whose scores tie); the ratio
is a speed-up (B / A, >= 3) and ``seconds`` is A's median wall time. One row per metric: log
loss (Kaggle's: clip, renormalise, mean negative log) and accuracy (argmax), on float32 OOF
probabilities (see :func:`oof`).
"""

from __future__ import annotations

import functools

import numpy as np

from benchmarks.harness import benchmark, measure

ROWS, MODELS, CLASSES, ITERATIONS = 200_000, 20, 10, 100
EPS = 1e-15


@functools.lru_cache(maxsize=1)
def oof() -> tuple[np.ndarray, np.ndarray]:
    """(preds (models, rows, classes) float32 probabilities, y (rows,) class indices).

    Models 75-90% accurate: a quarter of the rows are hard (little signal), the rest easy; every
    model shares part of its noise with the others (errors correlate, as with the same folds).
    """
    rng = np.random.default_rng(7)
    y = rng.integers(0, CLASSES, ROWS)
    hard = rng.random(ROWS) < 0.25
    ease = np.where(hard, rng.uniform(0.0, 1.0, ROWS), rng.uniform(1.0, 3.0, ROWS))
    shared = rng.standard_normal((ROWS, CLASSES), dtype=np.float32)
    strength = rng.uniform(1.2, 4.0, MODELS)
    preds = np.empty((MODELS, ROWS, CLASSES), dtype=np.float32)
    for m in range(MODELS):
        logits = 0.8 * shared + rng.standard_normal((ROWS, CLASSES), dtype=np.float32)
        logits[np.arange(ROWS), y] += (strength[m] * ease).astype(np.float32)
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        preds[m] = logits / logits.sum(axis=1, keepdims=True)
    return preds, y


def kaggle_log_loss(y: np.ndarray, blend: np.ndarray) -> float:
    p = np.clip(blend, EPS, 1.0)
    p /= p.sum(axis=1, keepdims=True)
    return float(-np.log(p[np.arange(len(y)), y]).mean())


def accuracy(y: np.ndarray, blend: np.ndarray) -> float:
    return float((blend.argmax(axis=1) == y).mean())


def numpy_hill_climb(preds, y, score, greater_is_better: bool, iterations: int) -> float:
    """Caruana's selection, one blend and one metric call per candidate: the baseline.

    Returns:
        The score of the final selection.
    """
    total = np.zeros(preds.shape[1:], dtype=np.float64)
    selection: list[int] = []
    best: float | None = None
    for _ in range(iterations):
        scores = np.array(
            [score(y, (total + preds[m]) / (len(selection) + 1)) for m in range(len(preds))]
        )
        pick = int(np.argmax(scores if greater_is_better else -scores))
        improves = best is None or (
            scores[pick] > best if greater_is_better else scores[pick] < best
        )
        if not improves:
            break
        total += preds[pick]
        selection.append(pick)
        best = float(scores[pick])
    return best


def climb(name: str, score) -> dict:
    from medalist.ensemble.hill import hill_climb
    from medalist.metrics import get_metric

    preds, y = oof()
    metric = get_metric(name)
    last: dict = {}

    def ours() -> None:
        last["a"] = hill_climb(preds, y, metric, iterations=ITERATIONS)

    def baseline() -> None:
        last["b"] = numpy_hill_climb(preds, y, score, metric.greater_is_better, ITERATIONS)

    result = measure(ours, baseline, warmup=1, repeats=3, throughput=True)
    if not abs(last["a"].score - last["b"]) <= 1e-9:
        raise AssertionError(f"different final scores: {last['a'].score!r} vs {last['b']!r}")
    result.update(seconds=result["median_a_s"], picks=len(last["a"].selection))
    return result


@benchmark("P7-log_loss", target=">=3", title="hill climbing, log loss, vs numpy loop (speed-up)")
def log_loss() -> dict:
    return climb("log_loss", kaggle_log_loss)


@benchmark("P7-accuracy", target=">=3", title="hill climbing, accuracy, vs numpy loop (speed-up)")
def accuracy_climb() -> dict:
    return climb("accuracy", accuracy)
