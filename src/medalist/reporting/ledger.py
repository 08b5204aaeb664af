"""The experiment ledger: one row per finished training run, in ``outputs/ledger.csv``."""

from __future__ import annotations

import datetime as dt
import json
import subprocess

import pandas as pd

from medalist.config import Config
from medalist.io import write_csv
from medalist.layout import ledger_path


def git_commit() -> str:
    """The commit of the project the stage runs in, with '+dirty' for uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return f"{commit}+dirty" if dirty else commit


def _seed_label(cfg: Config):
    """The run's seed, or ``mean(0,1,2)`` for the seed-averaged model of ``train.seeds``."""
    if cfg.train.seeds:
        return "mean(" + ",".join(str(s) for s in cfg.train.seeds) + ")"
    return cfg.train.seed


def append_ledger(cfg: Config, metrics: dict, device: str) -> pd.DataFrame:
    """Add this run's row (CV per metric, per-fold main metric, the main metric on the test-like
    rows when the folds flag them, config hash, commit, time; for a seed-averaged model also the
    seeds' mean and standard deviation of the main metric)."""
    main = metrics["main_metric"]
    row = {
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "experiment": cfg.train.experiment,
        "config_hash": cfg.hash(),
        "git_commit": git_commit(),
        "seed": _seed_label(cfg),
        "folds": json.dumps(sorted(metrics["folds"], key=int)),
        **{f"cv_{k}": v for k, v in metrics.get("cv", {}).items()},
        f"fold_{main}": json.dumps(
            {f: round(s.get(main, float("nan")), 6) for f, s in metrics["folds"].items()}
        ),
        f"std_{main}": metrics.get("fold_std", {}).get(main),
        **(
            {f"test_like_{main}": metrics["cv_test_like"][main]}
            if "cv_test_like" in metrics
            else {}
        ),
        **{
            f"seeds_{k}_{main}": metrics[f"seed_{k}"][main]
            for k in ("mean", "std")
            if f"seed_{k}" in metrics
        },
        "seconds": metrics.get("seconds"),
        "device": device,
    }
    path = ledger_path(cfg)
    ledger = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    ledger = pd.concat([ledger, pd.DataFrame([row])], ignore_index=True)
    write_csv(path, ledger)
    return ledger
