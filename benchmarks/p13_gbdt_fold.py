"""P13: one LightGBM fold through medalist against the same ``lightgbm.train`` call.

The fold: a synthetic table made in memory with a fixed seed (:func:`table`), 30,000 rows as
``pandas.read_csv`` gives them (an id, 40 numeric columns with 2% missing, two text categorical
columns of 200 and 12 categories, one with 3% missing, a yes/no target), the first 80% training
rows and the rest validation rows; binary log loss, 200 rounds without early stopping
(``tabular.early_stopping: 0``), so both sides train every round; LightGBM on as many threads as
torch (``--threads``, one by default; see :func:`benchmarks.harness.configure`).

- A: ``BoostedLearner(cfg, task).fit(...)`` as the train stage calls it: from the two data
  frames it fits the fold's feature spec (checks every feature column, finds the categorical
  ones and their categories), encodes the training and validation rows as float64 matrices,
  writes ``features.json``, trains, writes ``model.lgb.txt``, sums the features' gain, builds the
  loss history, then predicts the validation rows from the files it wrote (the spec read back,
  the validation rows encoded again, the model text parsed by a new ``Booster``).
- B: what one writes by hand on the arrays A's encoding gives (made once, before timing):
  ``lgb.Dataset`` for the training rows with the same feature names and categorical columns, one
  for the validation rows, ``lgb.train`` with the same params, rounds, validation set and
  ``record_evaluation`` callback, then ``booster.predict`` of the validation rows in memory.

Both sides end with the fold's validation predictions, so B includes the training, the
per-round evaluation and the prediction that A also does; the ratio measures exactly what the
wrapper adds on top: the feature checks and encoding from data frames, the two files written,
and predicting from the saved files rather than the booster in memory. The last calls' validation
predictions are checked equal (A's are float32) and A's rounds all kept. Besides the harness's
wall-clock ratio and control: ``cpu_ratio`` and ``cpu_control_spread``, the same medians in process
CPU time (see :class:`CpuTimed`), ``overhead_ms`` the difference of the wall-clock medians, and
``*_ms`` where A's time goes (:func:`breakdown`).
"""

from __future__ import annotations

import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.harness import NotAvailable, benchmark, measure, ratio_of_medians, spread

ROWS, NUMERIC, CITIES, KINDS, ROUNDS, TRAIN_SHARE = 30_000, 40, 200, 12, 200, 0.8
SOURCE = "train.csv"
WARMUP = 1
# What one fit's steps are timed as (the feature spec's methods and the library's).
SPEC_STEPS = {"fit": "spec_fit", "encode": "encode", "save": "spec_save", "load": "spec_load"}
LIBRARY_STEPS = {"train": "train", "save": "model_save", "importance": "importance"}
LIBRARY_STEPS["predict"] = "model_load_predict"


class CpuTimed:
    """``fn`` keeping the process CPU seconds of each call and its last result.

    On shared cores the CPU time of single-threaded work moves far less with the load than its
    wall time (another process's turn on the core is not counted), so ``cpu_ratio`` still tells
    what the wrapper adds when the wall-clock medians swing."""

    def __init__(self, fn):
        self.fn, self.seconds, self.last = fn, [], None

    def __call__(self) -> None:
        started = time.process_time()
        self.last = self.fn()
        self.seconds.append(time.process_time() - started)


def table(rows: int = ROWS, seed: int = 13) -> pd.DataFrame:
    """A competition's train.csv as pandas reads it: ``id``, ``num_0..``, ``city``, ``kind``,
    ``target`` (yes/no, from a few numeric columns, an interaction and both categories)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, NUMERIC))
    x[rng.random((rows, NUMERIC)) < 0.02] = np.nan
    frame = pd.DataFrame(x, columns=[f"num_{i}" for i in range(NUMERIC)])
    city, kind = rng.integers(0, CITIES, rows), rng.integers(0, KINDS, rows)
    frame["city"] = pd.Series([f"c{v}" for v in city], dtype=object)
    frame["kind"] = pd.Series([f"k{v}" for v in kind], dtype=object)
    frame.loc[rng.random(rows) < 0.03, "kind"] = None
    v = np.nan_to_num(x[:, :4])
    logit = 1.5 * v[:, 0] - v[:, 1] * v[:, 2] + np.sin(3 * v[:, 3])
    logit += 0.3 * (city % 7 - 3) + 0.5 * (kind % 3)
    positive = rng.random(rows) < 1 / (1 + np.exp(-logit))
    frame.insert(0, "id", np.arange(rows))
    frame["target"] = np.where(positive, "yes", "no")
    return frame


def workload(threads: int):
    """(cfg, task, train frame, train targets, valid frame, valid targets)."""
    from medalist.config import resolve_config
    from medalist.tasks import build_task

    frame = table()
    cfg = resolve_config(
        overrides=[
            "modality=tabular",
            "competition.target_columns=[target]",
            "task.type=binary",
            f"tabular.rounds={ROUNDS}",
            "tabular.early_stopping=0",
            f"tabular.params={{num_threads: {threads}}}",
        ]
    )
    task = build_task(cfg, frame)
    targets = task.encode_targets(frame, SOURCE)
    cut = int(len(frame) * TRAIN_SHARE)
    train, valid = frame.iloc[:cut].reset_index(drop=True), frame.iloc[cut:].reset_index(drop=True)
    return cfg, task, train, targets[:cut], valid, targets[cut:]


def breakdown(learner, fit: Callable[[], object], repeats: int = 2) -> dict:
    """Where A's time goes: real ``fit()`` calls with the feature spec's and the library's
    steps timed (medians, ms; ``encode_ms`` sums every encoding of a call, ``encodings`` counts
    them), ``other_ms`` the rest of the call.

    The steps are wrapped for these calls only, so the figures follow whatever ``fit`` does.
    """
    from medalist.modalities.tabular.features import FeatureSpec

    spent: dict[str, float] = {}
    calls: dict[str, int] = {}

    def timed(name: str, fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
                calls[name] = calls.get(name, 0) + 1

        return call

    originals = {name: FeatureSpec.__dict__[name] for name in SPEC_STEPS}
    library = learner.library
    for name, phase in SPEC_STEPS.items():
        setattr(FeatureSpec, name, timed(phase, getattr(FeatureSpec, name)))
    for name, phase in LIBRARY_STEPS.items():
        setattr(library, name, timed(phase, getattr(library, name)))
    phases: dict[str, list[float]] = {}
    try:
        for _ in range(repeats):
            spent.clear()
            calls.clear()
            started = time.perf_counter()
            fit()
            spent["other"] = time.perf_counter() - started - sum(spent.values())
            for phase, seconds in spent.items():
                phases.setdefault(phase, []).append(seconds)
    finally:
        for name, original in originals.items():
            setattr(FeatureSpec, name, original)
        for name in LIBRARY_STEPS:
            delattr(library, name)
    result = {f"{phase}_ms": 1000 * statistics.median(v) for phase, v in phases.items()}
    result["encodings"] = calls.get("encode", 0)
    return result


@benchmark("P13", target="<=1.05", title="LightGBM fold through medalist vs lightgbm.train")
def gbdt_fold() -> dict:
    try:
        import lightgbm as lgb
    except ImportError:
        raise NotAvailable("lightgbm is not installed (pip install 'medalist[tabular]')") from None
    import torch

    from medalist.modalities.tabular.boosters import LEARNING_RATE, BoostedLearner
    from medalist.modalities.tabular.features import FeatureSpec

    threads = torch.get_num_threads()
    cfg, task, train, targets, valid, valid_targets = workload(threads)
    learner = BoostedLearner(cfg, task)
    spec = FeatureSpec.fit(cfg, train, SOURCE)
    x, x_valid = spec.encode(train, SOURCE), spec.encode(valid, SOURCE)
    names, categorical = [f"f{i}" for i in range(x.shape[1])], spec.categorical_positions
    params = {
        "objective": "binary",
        "learning_rate": LEARNING_RATE,
        "seed": cfg.train.seed,
        "verbosity": -1,
        "num_threads": threads,
    }

    def baseline() -> np.ndarray:
        data = lgb.Dataset(x, targets, feature_name=names, categorical_feature=categorical)
        checked = lgb.Dataset(x_valid, valid_targets, reference=data)
        history: dict = {}
        booster = lgb.train(
            params,
            data,
            num_boost_round=ROUNDS,
            valid_sets=[checked],
            valid_names=["valid"],
            callbacks=[lgb.record_evaluation(history)],
        )
        return booster.predict(x_valid)

    with tempfile.TemporaryDirectory(prefix="medalist-p13-") as tmp:
        folder = Path(tmp) / "fold0"

        def ours():
            return learner.fit(train, targets, valid, valid_targets, folder, SOURCE)

        a, b, b2 = CpuTimed(ours), CpuTimed(baseline), CpuTimed(baseline)
        result = measure(a, b, warmup=WARMUP, repeats=8, budget_s=30, control=b2)
        if a.last.best_rounds != [ROUNDS]:
            raise AssertionError(f"medalist kept {a.last.best_rounds} rounds, not {ROUNDS}")
        np.testing.assert_allclose(a.last.valid[:, 0], b.last.astype(np.float32), atol=1e-6)
        result["overhead_ms"] = 1000 * (result["median_a_s"] - result["median_b_s"])
        result["cpu_ratio"] = ratio_of_medians(a.seconds[WARMUP:], b.seconds[WARMUP:])
        result["cpu_control_spread"] = spread(b.seconds[WARMUP:], b2.seconds[WARMUP:])
        result.update(breakdown(learner, ours))
    result["threads"] = threads
    return result
