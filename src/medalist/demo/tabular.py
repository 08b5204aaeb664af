"""The built-in table competition: is a breast tumour malignant?

Real measurements, available offline: the Wisconsin Diagnostic Breast Cancer data (Wolberg,
Street and Mangasarian, UCI; 569 tumours, 212 malignant, 30 features of the cell nuclei seen in a
digitised image of a fine-needle aspirate), as a file inside the scikit-learn package (BSD
licence; ``sklearn.datasets.load_breast_cancer``). The test set's labels are kept aside in
``solution.csv`` (outside ``data/``) to score the submissions like a leaderboard would: ROC AUC
(and log loss) of the probability of malignancy.

:func:`run_tabular_demo` bakes the template with the tabular modality, writes the competition
into ``data/``, trains one experiment per boosting library and a network (:data:`MEMBERS`:
LightGBM, XGBoost, CatBoost and an MLP on medalist's loop, each in its own file under
``configs/demo/``) on the split committed in ``folds/tabular/``, blends them by hill climbing (``medalist ensemble``), writes the report, and
prints every CV and the held-out test scores of every submission, the blend's included.
``python -m medalist.demo.tabular --write-folds`` remakes the committed split.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.model_selection import train_test_split

from medalist.config import Config, resolve_config
from medalist.demo.digits import (
    REPO_CONFIGS,
    Scored,
    bake,
    print_summary,
    use_committed_folds,
    working_directory,
    write_folds_main,
)
from medalist.ensemble.stage import run as ensemble
from medalist.io import write_csv
from medalist.layout import experiment_dir
from medalist.pipeline import run
from medalist.reporting.report import write_report

NAME = "tabular"
TARGET = "malignant"
# The experiment files, in the order they run: configs/demo/<member>.yaml, copied into the
# project's configs/. The first also holds the ensemble section (its members' experiments).
MEMBERS = ("tabular", "tabular_xgboost", "tabular_catboost", "tabular_mlp")


def build_cancer(
    folder: str | Path, n_rows: int | None = None, test_size: float = 0.2, seed: int = 0
) -> Path:
    """Write the breast cancer competition into ``folder`` (data files) and
    ``folder/../solution.csv``: ``train.csv`` (id, 30 features, ``malignant`` 0/1),
    ``test.csv`` without the target, ``sample_submission.csv`` (a probability per id).

    Args:
        folder: the competition's ``data/`` folder.
        n_rows: keep only the first n rows of the shuffled set (tiny versions for tests).
        test_size: fraction held out as the test set.
        seed: seed of the shuffle and the split.
    """
    folder = Path(folder)
    data = load_breast_cancer(as_frame=True)
    features = data.data.rename(columns=lambda name: name.replace(" ", "_"))
    table = pd.concat(
        [
            pd.DataFrame({"id": np.arange(len(features))}),
            features,
            pd.DataFrame({TARGET: (data.target == 0).astype(int)}),  # sklearn: 0 is malignant
        ],
        axis=1,
    )
    order = np.random.default_rng(seed).permutation(len(table))
    if n_rows is not None:
        order = order[:n_rows]
    table = table.iloc[order]
    train, test = train_test_split(
        table, test_size=test_size, random_state=seed, stratify=table[TARGET]
    )
    write_csv(folder / "train.csv", train)
    write_csv(folder / "test.csv", test.drop(columns=TARGET))
    write_csv(folder / "sample_submission.csv", pd.DataFrame({"id": test["id"], TARGET: 0.5}))
    write_csv(folder.parent / "solution.csv", test[["id", TARGET]])
    return folder


def score_submission(submission: Path, solution: Path, column: str = TARGET) -> dict:
    """ROC AUC and log loss of a probability submission against the held-out solution (the
    'leaderboard'). The log loss tells models apart where the AUC cannot: good models often rank
    all 114 test rows without a mistake (AUC 1)."""
    sub = pd.read_csv(submission).set_index("id")
    truth = pd.read_csv(solution).set_index("id")
    labels, probs = truth[column], sub.loc[truth.index, column]
    return {
        "roc_auc": float(roc_auc_score(labels, probs)),
        "log_loss": float(log_loss(labels, probs, labels=[0, 1])),
    }


@dataclass
class ScoredTable(Scored):
    """A line of the closing table; ``test_score`` is the test ROC AUC, beside its log loss."""

    test_log_loss: float = float("nan")

    def tests(self) -> dict[str, float]:
        return {"roc_auc": self.test_score, "log_loss": self.test_log_loss}


def scored(name: str, label: str, scores: dict, submission: Path, solution: Path) -> ScoredTable:
    """A line of the closing table with the test scores of ``submission``."""
    test = score_submission(submission, solution)
    return ScoredTable(name, label, scores, test["roc_auc"], submission, test["log_loss"])


def scored_experiment(project: Path, cfg: Config) -> ScoredTable:
    """CV (``metrics.json``), best rounds per fold and test scores of an experiment."""
    folder = experiment_dir(cfg)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    rounds = [  # the rounds each fold kept (a fold's longest model when it has several)
        max(json.loads(path.read_text(encoding="utf-8"))["best_rounds"])
        for path in sorted(folder.glob("fold*/scores.json"))
    ]
    unit = "rounds" if cfg.tabular.boosted else "epochs"  # a network's kept epoch, counted from 1
    label = f"{cfg.tabular.model}, {min(rounds)}-{max(rounds)} {unit}"
    name = cfg.submission.name or cfg.train.experiment
    submission = project / cfg.competition.submissions_dir / f"{name}.csv"
    return scored(cfg.train.experiment, label, metrics, submission, project / "solution.csv")


def ensemble_and_report(project: Path, cfg: Config) -> tuple[ScoredTable, dict, Path]:
    """``medalist ensemble`` then ``medalist report`` on ``cfg.ensemble``; the ensemble's line
    holds its nested (honest) CV and the test scores of its submission."""
    summary = ensemble(cfg, cfg.ensemble)
    report = write_report(
        cfg.competition.outputs_dir, list(cfg.ensemble.experiments), cfg.ensemble.name, cfg=cfg
    )
    submission = project / summary["submission"]
    label = f"{cfg.ensemble.method} ({summary['cv']['optimised_metric']}), nested"
    nested = summary["cv"]["nested"]
    line = scored(cfg.ensemble.name, label, nested, submission, project / "solution.csv")
    return line, summary, project / report


def tabular_project(workdir: str | Path, n_rows: int | None = None) -> Path:
    """Bake the breast cancer project in ``workdir`` and write its data and the experiment
    files; nothing run yet."""
    project = bake(
        Path(workdir).resolve(),
        {
            "competition_name": "Breast Cancer",
            "modality": "tabular",
            "task": "binary",
            "target_columns": TARGET,
        },
    )
    for stale in ("outputs", "folds", "submissions"):  # a fresh run every time
        shutil.rmtree(project / stale, ignore_errors=True)
    build_cancer(project / "data", n_rows=n_rows)
    for member in (*MEMBERS, "tabular_sweep"):  # the sweep is not run: a next step
        shutil.copy(REPO_CONFIGS / "demo" / f"{member}.yaml", project / "configs")
    return project


def run_tabular_demo(
    workdir: str | Path = ".demo",
    *,
    n_rows: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Bake, build the data, run one experiment per member, blend them, report, and score the
    submissions.

    ``n_rows`` and ``overrides`` (``key=value``, applied to every experiment, last) make a tiny
    table demo for tests.
    """
    started = time.perf_counter()
    project = tabular_project(workdir, n_rows)
    with working_directory(project):
        configs = [
            resolve_config(Path("configs") / f"{member}.yaml", list(overrides))
            for member in MEMBERS
        ]
        if n_rows is None:  # the demo's own data: train on the committed split
            use_committed_folds(configs[0], NAME)
        lines = []
        for cfg in configs:
            run(cfg)
            lines.append(scored_experiment(project, cfg))
        blend, summary, report = ensemble_and_report(project, configs[0])
    lines.append(blend)
    console = Console(width=None if sys.stdout.isatty() else 150)
    title = f"{NAME}: CV (OOF) per fold and test scores, per model and blended"
    print_summary(console, title, lines, summary, report, lines[0].scores["main_metric"])
    console.print(f"next, in {project}:")
    console.print(f"  medalist ledger -c configs/{NAME}.yaml   # every run and ensemble, with CV")
    console.print(
        "  medalist sweep -c configs/tabular_sweep.yaml   # 20 LightGBM trials on folds 0-1; "
        "prints the final run"
    )
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return {
        "experiments": {line.name: line.scores["cv"] for line in lines[:-1]},
        "cv": blend.scores["cv"],
        "test_score": {line.name: line.test_score for line in lines},
        "test_log_loss": {line.name: line.test_log_loss for line in lines},
        "submission": blend.submission,
        "report": report,
    }


if __name__ == "__main__":
    sys.exit(write_folds_main(NAME, tabular_project))
