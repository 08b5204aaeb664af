"""``medalist ledger``: every run of ``outputs/ledger.csv`` as a table, with leaderboard scores.

One row per training run (experiment, seed, CV per fold of the main metric with mean and std,
every metric's CV, config hash, git commit, time, device) and one per ensemble
(``ensemble/<name>``, its nested CV). Leaderboard scores recorded with :func:`record_lb` live in
``outputs/lb.csv``; the table shows them beside CV, with the CV-LB correlation (Pearson and
Spearman, from three experiments on). Runs of one experiment with several seeds (``exp@s1``,
``exp@s2`` or re-runs of ``exp``) are summarised across seeds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from medalist.errors import MedalistError
from medalist.io import write_csv

log = logging.getLogger(__name__)
LB_FILE = "lb.csv"


def record_lb(outputs_dir: str | Path, experiment: str, score: float, note: str = "") -> Path:
    """Append a leaderboard score for ``experiment`` to ``outputs/lb.csv`` (atomically).

    Raises:
        MedalistError: an empty experiment name or a score that is not a finite number.
    """
    try:
        score = float(score)
    except (TypeError, ValueError):
        raise MedalistError(f"lb: score {score!r} for {experiment} is not a number") from None
    if not experiment or not math.isfinite(score):
        raise MedalistError(
            f"lb: need an experiment name and a finite score, got {experiment!r}, {score}"
        )
    path = Path(outputs_dir) / LB_FILE
    row = {
        "recorded": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "experiment": experiment,
        "lb": score,
        "note": note,
    }
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=list(row))
    write_csv(path, pd.concat([table, pd.DataFrame([row])], ignore_index=True))
    log.info("lb: %s = %s recorded in %s", experiment, score, path)
    return path


def read_lb(outputs_dir: str | Path) -> dict[str, float]:
    """The latest recorded leaderboard score of each experiment."""
    path = Path(outputs_dir) / LB_FILE
    if not path.is_file():
        return {}
    table = pd.read_csv(path, dtype={"experiment": str})
    return {
        str(k): float(v) for k, v in table.groupby("experiment", sort=False)["lb"].last().items()
    }


def _run_row(row: pd.Series) -> dict:
    main_columns = [c for c in row.index if c.startswith("fold_") and pd.notna(row[c])]
    main = main_columns[0].removeprefix("fold_") if main_columns else ""
    folds = json.loads(row[main_columns[0]]) if main_columns else {}
    cv = {
        c.removeprefix("cv_"): row[c] for c in row.index if c.startswith("cv_") and pd.notna(row[c])
    }
    return {
        "experiment": str(row["experiment"]),
        "seed": str(row.get("seed", "")),
        "main": main,
        "folds": {str(k): float(v) for k, v in folds.items()},
        "std": row.get(f"std_{main}", np.nan),
        "cv": cv,
        "test_like": row.get(f"test_like_{main}", np.nan),
        "config_hash": str(row.get("config_hash", "")),
        "git_commit": "" if pd.isna(row.get("git_commit")) else str(row.get("git_commit")),
        "finished": str(row.get("finished", "")),
        "seconds": row.get("seconds", np.nan),
        "device": str(row.get("device", "")),
        "params": "" if pd.isna(row.get("params", np.nan)) else str(row["params"]),
    }


def _ensemble_row(folder: Path) -> dict:
    cv = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    nested = cv["nested"]
    main = next(iter(nested["cv"]), "")
    stamp = dt.datetime.fromtimestamp((folder / "cv.json").stat().st_mtime, dt.timezone.utc)
    return {
        "experiment": f"ensemble/{folder.name}",
        "seed": "-",
        "main": main,
        "folds": {k: float(v[main]) for k, v in nested["folds"].items()},
        "std": nested["fold_std"].get(main, np.nan),
        "cv": dict(nested["cv"]),
        "test_like": nested.get("cv_test_like", {}).get(main, np.nan),
        "config_hash": "",
        "git_commit": "",
        "finished": stamp.isoformat(timespec="seconds"),
        "seconds": np.nan,
        "device": f"{cv['method']} (nested CV)",
        "params": "",
    }


def ledger_rows(outputs_dir: str | Path, lb: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per run and per ensemble, with the LB score where one is recorded.

    ``lb`` adds to (and overrides) the scores in ``outputs/lb.csv``.
    """
    outputs_dir = Path(outputs_dir)
    ledger = outputs_dir / "ledger.csv"
    rows = [_run_row(r) for _, r in pd.read_csv(ledger).iterrows()] if ledger.is_file() else []
    rows += [_ensemble_row(f.parent) for f in sorted(outputs_dir.glob("ensemble/*/cv.json"))]
    if not rows:
        raise MedalistError(f"{ledger}: no finished runs or ensembles yet (run `medalist train`)")
    frame = pd.DataFrame(rows)
    scores = read_lb(outputs_dir) | dict(lb or {})
    frame["mean"] = [np.mean(list(f.values())) if f else np.nan for f in frame["folds"]]
    frame["cv_main"] = [cv.get(m, np.nan) for cv, m in zip(frame["cv"], frame["main"], strict=True)]
    frame["lb"] = frame["experiment"].map(
        lambda e: scores.get(e, scores.get(e.removeprefix("ensemble/")))
    )
    return frame


def cv_lb_correlation(frame: pd.DataFrame) -> dict:
    """Pearson and Spearman correlation of CV (main metric) and LB, latest run per experiment.

    Uses the main metric shared by most experiments with an LB score; needs three points.
    """
    scored = frame.dropna(subset=["lb", "cv_main"]).drop_duplicates("experiment", keep="last")
    if scored.empty:
        return {"n": 0, "note": "no LB scores recorded (medalist ledger --lb EXP SCORE)"}
    metric = scored["main"].value_counts().index[0]
    points = scored[scored["main"] == metric]
    result = {"metric": metric, "n": len(points)}
    if len(points) < 3 or points["cv_main"].nunique() < 2 or points["lb"].nunique() < 2:
        return result | {"note": "needs >= 3 experiments with different CV and LB"}
    cv, lb = points["cv_main"].to_numpy(float), points["lb"].to_numpy(float)
    return result | {
        "pearson": float(stats.pearsonr(cv, lb)[0]),
        "spearman": float(stats.spearmanr(cv, lb)[0]),
    }


def seed_groups(frame: pd.DataFrame) -> pd.DataFrame:
    """Experiments run with several seeds: CV mean and std across seeds (never the best), and
    the CV of the seed-averaged model where ``train.seeds`` wrote one (its seed ``mean(...)``)."""
    averaged = frame[frame["seed"].str.startswith("mean(")]
    averaged_cv = dict(zip(averaged["experiment"], averaged["cv_main"], strict=True))
    runs = frame[(frame["seed"] != "-") & ~frame["seed"].str.startswith("mean(")]
    runs = runs[~runs["experiment"].str.contains("@sweep", regex=False)]  # a sweep's trials
    runs = runs.assign(group=lambda f: f["experiment"].str.split("@").str[0])
    out = []
    for group, part in runs.groupby("group", sort=False):
        if part["seed"].nunique() > 1:
            out.append(
                {
                    "group": group,
                    "seeds": ", ".join(part["seed"]),
                    "main": part["main"].iloc[0],
                    "cv_mean": float(part["cv_main"].mean()),
                    "cv_std": float(part["cv_main"].std(ddof=0)),
                    "cv_averaged": averaged_cv.get(group, np.nan),
                }
            )
    columns = ["group", "seeds", "main", "cv_mean", "cv_std", "cv_averaged"]
    return pd.DataFrame(out, columns=columns)


def _number(value, digits: int = 5) -> str:
    return "" if value is None or pd.isna(value) else f"{float(value):.{digits}g}"


def _duration(seconds) -> str:
    if seconds is None or pd.isna(seconds):
        return ""
    minutes, rest = divmod(int(round(float(seconds))), 60)
    return f"{minutes}m {rest:02d}s" if minutes else f"{rest}s"


def build_table(frame: pd.DataFrame):
    """The ledger as a rich Table (one row per run or ensemble)."""

    metrics = list(dict.fromkeys(m for cv in frame["cv"] for m in cv))
    table = Table(title="medalist ledger", show_lines=False)
    for name in ("experiment", "seed", "CV per fold (main)", "mean", "std"):
        table.add_column(name, justify="left" if name == "experiment" else "right")
    for metric in metrics:
        table.add_column(f"cv {metric}", justify="right")
    test_like = bool(frame["test_like"].notna().any())  # folds made with folds.test_like
    if test_like:
        table.add_column("test-like (main)", justify="right")
    for name in ("LB", "config", "commit", "finished", "time", "device"):
        table.add_column(name, justify="right" if name in ("LB", "time") else "left")
    for _, row in frame.iterrows():
        folds = " ".join(_number(v, 4) for v in row["folds"].values())
        table.add_row(
            row["experiment"],
            row["seed"],
            f"{row['main']}: {folds}" if row["main"] else "",
            _number(row["mean"]),
            _number(row["std"], 3),
            *(_number(row["cv"].get(m)) for m in metrics),
            *([_number(row["test_like"])] if test_like else []),
            _number(row["lb"]),
            row["config_hash"],
            row["git_commit"],
            row["finished"][:16].replace("T", " "),
            _duration(row["seconds"]),
            row["device"],
        )
    return table


def _correlation_line(result: dict) -> str:
    if "pearson" not in result:
        return f"CV-LB correlation: {result.get('note', '')} ({result['n']} point(s))"
    return (
        f"CV-LB correlation ({result['metric']}, {result['n']} experiments): "
        f"Pearson {result['pearson']:.3f}, Spearman {result['spearman']:.3f}"
    )


def show(outputs_dir: str | Path, lb: dict[str, float] | None = None, console=None) -> pd.DataFrame:
    """Print the ledger, the seed groups and the CV-LB correlation; return the rows.

    Args:
        outputs_dir: the project's outputs folder (holding ledger.csv, lb.csv, ensemble/).
        lb: leaderboard scores by experiment, added to those recorded in lb.csv.
        console: a rich Console (a new one on stdout by default).
    """

    if console is None:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: do not squeeze the columns into 80
            console = Console(width=240)
    frame = ledger_rows(outputs_dir, lb)
    console.print(build_table(frame))
    groups = seed_groups(frame)
    for _, group in groups.iterrows():
        averaged = group["cv_averaged"]
        console.print(
            f"seeds of {group['group']} ({group['seeds']}): {group['main']} "
            f"{group['cv_mean']:.5g} +- {group['cv_std']:.3g} across seeds"
            + ("" if pd.isna(averaged) else f"; the seed-averaged model {averaged:.5g}")
        )
    for _, row in frame[frame["params"] != ""].iterrows():  # a sweep's trials: their values
        values = ", ".join(f"{k}={v}" for k, v in json.loads(row["params"]).items())
        console.print(f"{row['experiment']}: {values}")
    console.print(_correlation_line(cv_lb_correlation(frame)))
    return frame
