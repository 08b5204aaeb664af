"""P7: hill-climbing ensemble selection on 200k rows x 20 models x 10 classes.

- A: :func:`medalist.ensemble.hill.hill_climb`: its scorers keep the running total themselves
  and score every candidate from one or two values per row (``TrueClassLogLoss``) or from
  bounds that leave only the rows a candidate could flip (``ArgmaxAccuracy``). It shares its
  passes among the cores this process may use (at most 4 threads; numpy releases the GIL).
- B: the straightforward loop written here in numpy: at every step, blend each candidate with
  the picked models and compute the metric on the blend, one candidate at a time (numpy's
  element-wise operations run on one core).

Both climb with replacement until no candidate improves the score (at most 100 picks) and must
pick the same models; the ratio is a speed-up (B / A, >= 10) and ``seconds`` is A's median wall
time. One row per metric: log loss (Kaggle's: clip, renormalise, mean negative log) and
accuracy (argmax), on float32 OOF probabilities (see :func:`oof`).
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


def numpy_hill_climb(preds, y, score, greater_is_better: bool, iterations: int) -> list[int]:
    """Caruana's selection, one blend and one metric call per candidate: the baseline."""
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
    return selection


def climb(name: str, score) -> dict:
    from medalist.ensemble.hill import hill_climb
    from medalist.metrics import get_metric

    preds, y = oof()
    metric = get_metric(name)
    picked: dict[str, list[int]] = {}

    def ours() -> None:
        picked["a"] = hill_climb(preds, y, metric, iterations=ITERATIONS).selection

    def baseline() -> None:
        picked["b"] = numpy_hill_climb(preds, y, score, metric.greater_is_better, ITERATIONS)

    result = measure(ours, baseline, warmup=1, repeats=3, throughput=True)
    if picked["a"] != picked["b"]:
        raise AssertionError(f"different picks: {picked['a']} vs {picked['b']}")
    result.update(seconds=result["median_a_s"], picks=len(picked["a"]))
    return result


@benchmark("P7-log_loss", target=">=10", title="hill climbing, log loss, vs numpy loop (speed-up)")
def log_loss() -> dict:
    return climb("log_loss", kaggle_log_loss)


@benchmark("P7-accuracy", target=">=10", title="hill climbing, accuracy, vs numpy loop (speed-up)")
def accuracy_climb() -> dict:
    return climb("accuracy", accuracy)
