"""How long the notebook will take: a timed sample of test rows, extrapolated to the full set.

Every packaged model goes through the same code the notebook runs (load the weights, predict the
first ``kaggle.timing_rows`` test rows with every view), and each model's time becomes
``load + predict * total_rows / sample_rows``. The sum is compared with the competition's limit
(``kaggle.time_limit_hours``). The clock is this machine's: a Kaggle GPU may be faster or slower,
so the report names the device. Installing and start-up are not counted.

A fold fitted by a library (a GBDT; the manifest's ``learners``) loads its model inside its
prediction, so one call times both. Its load is then timed apart, as the prediction of a single
row, and only the rest of the sample's time grows with the rows: a model file that takes a second
to read is not counted once per sample of rows.

An experiment that stacks on others is timed after them, on their predictions of the same sample
(kept in a temporary folder, as the run keeps them in its working folder).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from medalist.offline.predict import (
    keep_prediction,
    predict_experiment,
    prediction_order,
    stacked_members,
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
    samples = {}
    needed = stacked_members(experiments)
    with tempfile.TemporaryDirectory(prefix="medalist-timing-") as folder:
        stacked = Path(folder)
        for name in prediction_order(experiments):
            entry, start = experiments[name], len(timings)
            test, task, values = predict_experiment(
                bundle, entry, data, rows=sample_rows, timings=timings, stacked=stacked
            )
            if entry.get("learners"):
                _split_load(bundle, entry, data, timings[start:], stacked)
            for timing in timings[start:]:
                timing["experiment"] = name
            samples[name] = (test, values)
            if name in needed:
                keep_prediction(stacked, bundle, name, entry, test, task, values)
    seconds = [
        t["load_seconds"] + t["predict_seconds"] * total_rows / max(t["rows"], 1) for t in timings
    ]
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
