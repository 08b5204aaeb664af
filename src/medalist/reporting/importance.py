"""The features' share of a GBDT experiment's gain across its folds, for the report.

A GBDT fold writes ``fold{k}/importance.parquet`` (``feature``, ``gain``, summed over the fold's
models). The three libraries measure gain in different units, and a fold's total depends on its
rows and rounds, so each fold's gains are divided by their sum first: a share means the same in
every fold and library. The mean share across folds says how much the models lean on a feature,
its standard deviation how steadily. Folds of a multi-seed experiment are pooled; a full fit
(``full/``) is not a fold and is left out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medalist.errors import DataError

IMPORTANCE_FILE = "importance.parquet"
FOLD_FOLDER = re.compile(r"fold(\d+)")
# What each library's number is (the learner's name in fold{k}/scores.json).
GAIN_MEANING = {
    "lightgbm": "LightGBM's gain: the training loss its splits on the feature removed, over the "
    "rounds kept",
    "xgboost": "XGBoost's total_gain: the training loss its splits on the feature removed, over "
    "the rounds kept",
    "catboost": "CatBoost's PredictionValuesChange: how much the prediction moves when the "
    "feature's value changes, weighted by the training rows in each leaf",
}


@dataclass
class Importance:
    """The top features of an experiment by mean share of gain across its folds."""

    table: pd.DataFrame  # index feature; mean share, std (ddof=1), folds with it in their top
    learners: list[str]  # the libraries that measured it (scores.json's "learner")
    n_folds: int  # folds whose models made at least one split
    n_empty: int  # folds whose models made none (no gain to share): left out
    top: int


def importance_files(folders: list[Path]) -> list[Path]:
    """Every fold's importance file under the experiment's folders (its seeds), fold order."""
    found = []
    for folder in folders:
        folds = folder.glob(f"fold*/{IMPORTANCE_FILE}")
        folds = [p for p in folds if FOLD_FOLDER.fullmatch(p.parent.name)]
        found += sorted(folds, key=lambda p: int(FOLD_FOLDER.fullmatch(p.parent.name).group(1)))
    return found


def _gains(path: Path) -> pd.Series:
    """A fold's gain per feature."""
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc}); train the fold again") from exc
    if not {"feature", "gain"} <= set(frame.columns):
        raise DataError(
            f"{path}: columns {list(frame.columns)}, expected feature and gain; train the fold again"
        )
    return frame.groupby("feature", sort=False)["gain"].sum().astype("float64")


def _learner(path: Path) -> str:
    scores = path.parent / "scores.json"
    if not scores.is_file():
        return "unknown"
    return str(json.loads(scores.read_text(encoding="utf-8")).get("learner", "unknown"))


def fold_shares(files: list[Path]) -> pd.DataFrame:
    """Features x folds: each fold's gains over their sum (0 where a fold lacks the feature).

    A fold whose gains sum to zero (its models never split) has no shares and is left out.
    """
    columns = {}
    for path in files:
        gains = _gains(path)
        total = gains.sum()
        if total > 0:
            columns[f"{path.parent.parent.name}/{path.parent.name}"] = gains / total
    return pd.DataFrame(columns).fillna(0.0)


def feature_importance(folders: list[Path], top: int = 20) -> Importance | None:
    """The ``top`` features by mean share of gain across folds; None without importance files
    (a network, a linear model, an image or text experiment)."""
    files = importance_files(folders)
    if not files:
        return None
    shares = fold_shares(files)
    learners = sorted({_learner(path) for path in files})
    if shares.empty:
        return Importance(pd.DataFrame(), learners, 0, len(files), top)
    n_folds = shares.shape[1]
    # A share of zero is not a place in the top, even when fewer features than `top` split.
    in_top = (shares.rank(ascending=False, method="min") <= top) & (shares > 0)
    table = pd.DataFrame(
        {
            "mean share": shares.mean(axis=1),
            "std": shares.std(axis=1, ddof=1),
            f"in top {top} (of {n_folds} folds)": in_top.sum(axis=1),
        }
    )
    table.index.name = "feature"
    table = table.reset_index().sort_values(["mean share", "feature"], ascending=[False, True])
    table = table.set_index("feature").head(top)
    return Importance(table, learners, n_folds, len(files) - n_folds, top)


def gain_meaning(learners: list[str]) -> str:
    """What the gain is, for the libraries that measured it."""
    return "; ".join(GAIN_MEANING.get(name, f"{name}'s own importance") for name in learners)
