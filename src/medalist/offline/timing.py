"""How long the notebook will take: a timed sample of test rows, extrapolated to the full set.

Every packaged model goes through the same code the notebook runs (load the weights, predict the
first ``kaggle.timing_rows`` test rows with every view), and each model's time becomes
``load + predict * total_rows / sample_rows``. The sum is compared with the competition's limit
(``kaggle.time_limit_hours``). The clock is this machine's: a Kaggle GPU may be faster or slower,
so the report names the device. Installing and start-up are not counted.

A model that reads tokens (a text encoder, a decoder LLM) takes time by tokens, not rows: a
sample of short texts would promise a long test set too little time. Its throughput is measured
on the sample (``tokens_per_second``: the sample's tokens, every view, over its prediction time)
and its time becomes ``load + test_tokens / tokens_per_second``, with ``test_tokens`` counted on
the whole local test table as the model reads it (truncated, every view), scaled by
``total_rows / local rows`` when the hidden test set is larger (``kaggle.test_rows``).

A fold fitted by a library (a GBDT; the manifest's ``learners``) loads its model inside its
prediction, so one call times both. Its load is then timed apart, as the prediction of a single
row, and only the rest of the sample's time grows with the rows: a model file that takes a second
to read is not counted once per sample of rows.

An experiment that stacks on others is timed after them, on their predictions of the same sample
(kept in a temporary folder, as the run keeps them in its working folder). A seed-averaged
experiment takes no time of its own: its seeds are timed, and its sample is their mean.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from medalist.offline.predict import (
    keep_prediction,
    predict_entry,
    predict_experiment,
    prediction_order,
    stacked_members,
    whole_test_tokens,
)

log = logging.getLogger(__name__)


def estimate(
    bundle: Path,
    experiments: dict,
    data: Path,
    sample_rows: int,
    total_rows: int,
    limit_hours: float,
) -> tuple[dict, dict]:
    """Time the sample through every packaged model; returns (the report, sample predictions).

    The sample predictions (``{experiment: (test rows, values)}``) let the caller compare the
    bundle's output with the experiment's own ``test.parquet``.
    """
    timings: list[dict] = []
    samples, predicted = {}, {}
    needed = stacked_members(experiments)
    with tempfile.TemporaryDirectory(prefix="medalist-timing-") as folder:
        stacked = Path(folder)
        for name in prediction_order(experiments):
            entry, start = experiments[name], len(timings)
            # A seed average has no model of its own: its seeds' mean, nothing timed.
            test, task, values = predict_entry(
                bundle, entry, data, predicted, rows=sample_rows, timings=timings, stacked=stacked
            )
            predicted[name] = (test, task, values)
            if entry.get("learners"):
                _split_load(bundle, entry, data, timings[start:], stacked)
            if any("tokens" in timing for timing in timings[start:]):
                _add_tokens(bundle, entry, data, timings[start:], total_rows, stacked)
            for timing in timings[start:]:
                timing["experiment"] = name
            samples[name] = (test, values)
            if name in needed:
                keep_prediction(stacked, bundle, name, entry, test, task, values)
    seconds = [t["load_seconds"] + t["predict_seconds"] * _growth(t, total_rows) for t in timings]
    estimated = float(np.sum(seconds))
    limit = limit_hours * 3600.0
    report = {
        "sample_rows": min(sample_rows, max(t["rows"] for t in timings)),
        "test_rows": total_rows,
        "models": timings,
        "estimated_seconds": round(estimated, 2),
        "limit_seconds": limit,
        "fraction_of_limit": round(estimated / limit, 6),
        "fits": estimated <= limit,
        "device": timings[0]["device"],
        "note": "measured here, not on Kaggle; installing and start-up not counted",
    }
    throughput = _throughput(timings)
    if throughput:
        report["tokens_per_second"] = throughput
    if report["fits"]:
        log.info(
            "inference estimate: %s for %d test rows on %s, %.1f%% of the %s limit",
            duration(estimated),
            total_rows,
            report["device"],
            100 * estimated / limit,
            duration(limit),
        )
    else:
        log.warning(
            "inference estimate: %s for %d test rows on %s does NOT fit the competition's %s "
            "limit (kaggle.time_limit_hours): use fewer folds or views, or a smaller model",
            duration(estimated),
            total_rows,
            report["device"],
            duration(limit),
        )
    return report, samples


def _throughput(timings: list[dict]) -> dict[str, float]:
    """Each token-reading experiment's median tokens per second over its weight files."""
    rates: dict[str, list[float]] = {}
    for timing in timings:
        if timing.get("tokens_per_second"):
            rates.setdefault(timing["experiment"], []).append(timing["tokens_per_second"])
    return {name: float(np.median(values)) for name, values in rates.items()}


def _growth(timing: dict, total_rows: int) -> float:
    """How many times the sample's prediction work the whole test set is: its tokens over the
    sample's for a model reading tokens, else its rows over the sample's."""
    if timing.get("tokens") and "test_tokens" in timing:
        return timing["test_tokens"] / timing["tokens"]
    return total_rows / max(timing["rows"], 1)


def _add_tokens(
    bundle: Path,
    entry: dict,
    data: Path,
    timings: list[dict],
    total_rows: int,
    stacked: Path | None = None,
) -> None:
    """Each timing of a model that reads tokens gets the sample's throughput and the test set's
    tokens (the local table's, scaled to ``total_rows``)."""
    counted = whole_test_tokens(bundle, entry, data, stacked)
    if counted is None:
        return
    tokens, rows = counted
    test = round(tokens * total_rows / max(rows, 1))
    for timing in timings:
        seconds = timing["predict_seconds"]
        timing["tokens_per_second"] = round(timing["tokens"] / seconds, 1) if seconds > 0 else None
        timing["test_tokens"] = test
    throughput = [t["tokens_per_second"] for t in timings if t["tokens_per_second"]]
    log.info(
        "%s tokens in the test set (%d rows, every view); %s tokens/s measured on %d sample rows",
        f"{test:,}",
        total_rows,
        f"{np.median(throughput):,.0f}" if throughput else "?",
        timings[0]["rows"],
    )


def _split_load(
    bundle: Path, entry: dict, data: Path, timings: list[dict], stacked: Path | None = None
) -> None:
    """Each fold's load (and other fixed cost) timed as the prediction of one row, taken out
    of its sample's prediction time; ``load`` says so in the report."""
    one_row: list[dict] = []
    predict_experiment(bundle, entry, data, rows=1, timings=one_row, stacked=stacked)
    for timing, fixed in zip(timings, one_row, strict=True):
        total = timing["load_seconds"] + timing["predict_seconds"]
        load = min(fixed["load_seconds"] + fixed["predict_seconds"], total)
        timing["load_seconds"], timing["predict_seconds"] = load, total - load
        timing["load"] = "timed as the prediction of one row"


def duration(seconds: float) -> str:
    """``'42 s'``, ``'12.5 min'`` or ``'3.20 h'``."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"
