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


def append_ledger(cfg: Config, metrics: dict, device: str) -> pd.DataFrame:
    """Add this run's row (CV per metric, per-fold main metric, config hash, commit, time)."""
    main = metrics["main_metric"]
    row = {
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "experiment": cfg.train.experiment,
        "config_hash": cfg.hash(),
        "git_commit": git_commit(),
        "seed": cfg.train.seed,
        "folds": json.dumps(sorted(metrics["folds"], key=int)),
        **{f"cv_{k}": v for k, v in metrics.get("cv", {}).items()},
        f"fold_{main}": json.dumps(
            {f: round(s.get(main, float("nan")), 6) for f, s in metrics["folds"].items()}
        ),
        f"std_{main}": metrics.get("fold_std", {}).get(main),
        "seconds": metrics.get("seconds"),
        "device": device,
    }
    path = ledger_path(cfg)
    ledger = pd.read_csv(path) if path.is_file() else pd.DataFrame()
    ledger = pd.concat([ledger, pd.DataFrame([row])], ignore_index=True)
    write_csv(path, ledger)
    return ledger
