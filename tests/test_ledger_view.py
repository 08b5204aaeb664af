"""The ledger view: runs from ledger.csv (as the train stage writes them), LB scores, CV-LB."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from scipy import stats

from medalist.config.ensemble import EnsembleConfig
from medalist.ensemble.stage import run
from medalist.errors import MedalistError
from medalist.reporting.ledger import append_ledger
from medalist.reporting.ledger_view import cv_lb_correlation, ledger_rows, read_lb, record_lb, show
from support.ensemble_project import add_experiments, make_project

RUNS = [("exp001", 1, 0.90), ("exp002@s1", 1, 0.92), ("exp002@s2", 2, 0.95), ("exp003", 7, 0.97)]


@pytest.fixture
def project(tmp_path):
    cfg = make_project(tmp_path, "binary")
    for index, (experiment, seed, cv) in enumerate(RUNS):
        run_cfg = cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"experiment": experiment, "seed": seed})}
        )
        folds = {str(k): {"roc_auc": cv + 0.01 * (k - 1.5), "log_loss": 0.3} for k in range(4)}
        metrics = {
            "main_metric": "roc_auc",
            "folds": folds,
            "cv": {"roc_auc": cv, "log_loss": 0.3 - index / 100},
            "fold_std": {"roc_auc": float(np.std([f["roc_auc"] for f in folds.values()]))},
            "seconds": 83.0,
        }
        append_ledger(run_cfg, metrics, device="cpu")
    return cfg, tmp_path / "outputs"


def test_rows_carry_folds_mean_std_and_every_metric(project):
    _, outputs = project
    frame = ledger_rows(outputs)
    assert list(frame["experiment"]) == [r[0] for r in RUNS]
    first = frame.iloc[0]
    assert first["main"] == "roc_auc" and first["seed"] == "1"
    assert list(first["folds"]) == ["0", "1", "2", "3"]
    assert first["mean"] == pytest.approx(0.90)
    assert first["std"] == pytest.approx(np.std([0.885, 0.895, 0.905, 0.915]))
    assert first["cv"] == {"roc_auc": 0.90, "log_loss": 0.3}
    assert frame["lb"].isna().all()


def test_record_lb_is_stored_and_the_latest_wins(project):
    _, outputs = project
    record_lb(outputs, "exp001", 0.88)
    record_lb(outputs, "exp001", 0.885, note="resubmitted")
    assert (outputs / "lb.csv").is_file()
    assert read_lb(outputs) == {"exp001": 0.885}
    assert ledger_rows(outputs).set_index("experiment").loc["exp001", "lb"] == 0.885
    with pytest.raises(MedalistError, match="finite"):
        record_lb(outputs, "exp001", float("nan"))
    with pytest.raises(MedalistError, match="not a number"):
        record_lb(outputs, "exp001", "high")


def test_cv_lb_correlation_needs_three_points(project):
    _, outputs = project
    record_lb(outputs, "exp001", 0.88)
    record_lb(outputs, "exp003", 0.90)
    two = cv_lb_correlation(ledger_rows(outputs))
    assert two["n"] == 2 and "pearson" not in two
    lb = {"exp002@s1": 0.93, "exp002@s2": 0.89}
    result = cv_lb_correlation(ledger_rows(outputs, lb))
    cv, board = [0.90, 0.92, 0.95, 0.97], [0.88, 0.93, 0.89, 0.90]
    assert result["n"] == 4 and result["metric"] == "roc_auc"
    assert result["pearson"] == pytest.approx(stats.pearsonr(cv, board)[0])
    assert result["spearman"] == pytest.approx(stats.spearmanr(cv, board)[0])


def test_show_prints_the_table_seed_groups_and_correlation(project):
    _, outputs = project
    for experiment, score in (("exp001", 0.88), ("exp002@s1", 0.91), ("exp003", 0.95)):
        record_lb(outputs, experiment, score)
    console = Console(record=True, width=260)
    frame = show(outputs, console=console)
    text = console.export_text()
    for experiment, *_ in RUNS:
        assert experiment in text
    assert "0.885 0.895 0.905 0.915" in text  # CV per fold
    assert "cv log_loss" in text and "LB" in text and "1m 23s" in text
    assert "seeds of exp002 (1, 2): roc_auc 0.935 +- 0.015" in text
    assert "CV-LB correlation (roc_auc, 3 experiments): Pearson" in text
    assert len(frame) == len(RUNS)


def test_ensembles_appear_with_their_nested_cv(project):
    cfg, outputs = project
    add_experiments(cfg, {"a": 1.0, "b": 0.5})
    result = run(cfg, EnsembleConfig(name="blend", experiments=["a", "b"], submit=False))
    record_lb(outputs, "ensemble/blend", 0.9)
    row = ledger_rows(outputs).set_index("experiment").loc["ensemble/blend"]
    assert row["cv_main"] == pytest.approx(result["cv"]["nested"]["cv"]["roc_auc"])
    assert row["lb"] == 0.9 and row["seed"] == "-"


def test_empty_outputs_say_what_to_do(tmp_path):
    with pytest.raises(MedalistError, match="no finished runs"):
        show(tmp_path, console=Console(record=True))
    assert pd.isna(
        cv_lb_correlation(pd.DataFrame(columns=["lb", "cv_main", "experiment", "main"])).get(
            "pearson"
        )
    )
