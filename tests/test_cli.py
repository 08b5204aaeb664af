"""The command line's ensemble, ledger and report commands on a tiny project with two real
experiments (the stage commands: test_pipeline.py)."""

import json

import pandas as pd

from medalist.cli import main

ARGS = ["-c", "configs/tiny.yaml", "train.epochs=1"]


def test_ensemble_ledger_report_commands(tiny_project, capsys):
    assert main(["folds", *ARGS]) == 0
    for name, lr in (("small_lr", "1e-3"), ("big_lr", "1e-2")):
        overrides = [f"train.experiment={name}", f"train.lr={lr}"]
        assert main(["train", *ARGS, *overrides]) == 0
        assert main(["infer", *ARGS, *overrides]) == 0
    members = ["ensemble.experiments=[small_lr,big_lr]", "ensemble.name=both"]
    assert main(["ensemble", *ARGS, *members, "ensemble.method=hill_climb"]) == 0
    folder = tiny_project / "outputs/ensemble/both"
    cv = json.loads((folder / "cv.json").read_text())
    assert "accuracy" in json.dumps(cv)
    submission = pd.read_csv(tiny_project / "submissions/both.csv")
    assert len(submission) == len(pd.read_csv("data/sample_submission.csv"))
    assert main(["validate", "submissions/both.csv", "-c", "configs/tiny.yaml"]) == 0

    assert main(["ledger", *ARGS, "--lb", "small_lr", "0.91"]) == 0
    printed = capsys.readouterr().out
    assert "small_lr" in printed and "big_lr" in printed and "0.91" in printed
    assert main(["ledger", *ARGS, "--lb", "small_lr", "high"]) == 2  # not a number

    assert main(["report", *ARGS, "--ensemble", "both", "--out", "report.html"]) == 0
    page = (tiny_project / "report.html").read_text()
    assert "small_lr" in page and "big_lr" in page and "<img" in page
    assert main(["ensemble", *ARGS, "ensemble.experiments=[small_lr,missing]"]) == 2


DEMOS = {"digits": "run_digits_demo", "text": "run_text_demo", "tabular": "run_tabular_demo"}


def test_demo_all_runs_every_demo_in_order(monkeypatch, tmp_path):
    ran = []

    def recorder(name):
        def run_demo(workdir):
            ran.append((name, workdir))
            return {}

        return run_demo

    for name, function in DEMOS.items():
        monkeypatch.setattr(f"medalist.demo.{name}.{function}", recorder(name))
    assert main(["demo", "--workdir", str(tmp_path)]) == 0
    assert ran == [(name, str(tmp_path)) for name in DEMOS]
    ran.clear()
    assert main(["demo", "tabular", "--workdir", str(tmp_path)]) == 0
    assert ran == [("tabular", str(tmp_path))]
