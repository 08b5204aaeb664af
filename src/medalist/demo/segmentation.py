"""The built-in segmentation competition: find the patch pasted into a photo.

The images are mosaics of the two photos scikit-learn ships offline, with exact masks
(:mod:`medalist.demo.segmentation_data`: where they come from, their licence, the files).
:func:`run_segmentation_demo` bakes the template with the segmentation task, writes the
competition into ``data/``, runs folds -> train -> infer -> submission for one U-Net
(``configs/demo/segmentation.yaml``) and the same encoder under an FPN decoder, on the split
committed in ``folds/segmentation/``, blends their masks by hill climbing (``medalist
ensemble``, nested CV), and prints for each the CV per fold (Dice and IoU per image), the CV
after the post-processing chosen on OOF, and the held-out test Dice of its RLE submission,
scored like a leaderboard would.
``python -m medalist.demo.segmentation --write-folds`` remakes the committed split.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medalist.config import resolve_config
from medalist.demo.digits import (
    REPO_CONFIGS,
    bake,
    use_committed_folds,
    working_directory,
    write_folds_main,
)
from medalist.demo.segmentation_data import build_mosaics, score_submission
from medalist.ensemble.stage import run as ensemble
from medalist.layout import experiment_dir
from medalist.pipeline import run

NAME = "segmentation"
# The second experiment: the same encoder under another decoder.
SECOND = ["segmentation.architecture=fpn", "train.experiment=mosaics_fpn"]


def segmentation_project(workdir: str | Path, n_train: int = 240, n_test: int = 60) -> Path:
    """Bake the mosaics project in ``workdir`` and write its data and experiment file; nothing
    run yet."""
    project = bake(
        Path(workdir).resolve(),
        {"competition_name": "Mosaics", "task": "segmentation", "target_columns": "has_mask"},
    )
    for stale in ("outputs", "folds", "submissions"):  # a fresh run every time
        shutil.rmtree(project / stale, ignore_errors=True)
    build_mosaics(project / "data", n_train=n_train, n_test=n_test, size=64, seed=0)
    shutil.copy(REPO_CONFIGS / "demo" / f"{NAME}.yaml", project / "configs" / f"{NAME}.yaml")
    return project


def _line(name: str, label: str, scores: dict, chosen: dict, submission: Path, solution: Path):
    """A row of the closing table: per-fold Dice, CV, CV post-processed, test Dice."""
    return {
        "name": name,
        "label": label,
        "folds": {k: v["dice"] for k, v in scores["folds"].items()},
        "cv": scores["cv"],
        "cv_postprocessed": chosen["score"],
        "postprocess": {k: chosen[k] for k in ("threshold", "min_size")},
        "test_dice": score_submission(submission, solution, size=64),
        "submission": submission,
    }


def _experiment_line(project: Path, cfg) -> dict:
    folder = project / experiment_dir(cfg)
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    chosen = json.loads((folder / "postprocess.json").read_text(encoding="utf-8"))
    submission = project / cfg.competition.submissions_dir / f"{cfg.train.experiment}.csv"
    label = f"{cfg.segmentation.architecture}, {cfg.model.backbone}"
    return _line(cfg.train.experiment, label, metrics, chosen, submission, project / "solution.csv")


def _blend_line(project: Path, cfg, summary: dict) -> dict:
    folder = Path(summary["folder"])
    chosen = json.loads((folder / "postprocess.json").read_text(encoding="utf-8"))
    nested = summary["cv"]["nested"]
    picks = summary["weights"]["weights"]
    weights = ", ".join(f"{k} {v:.2f}" for k, v in picks.items())
    label = f"hill climbing ({weights}), nested CV"
    submission = project / summary["submission"]
    return _line(cfg.ensemble.name, label, nested, chosen, submission, project / "solution.csv")


def run_segmentation_demo(
    workdir: str | Path = ".demo",
    *,
    n_train: int = 240,
    n_test: int = 60,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Bake, build the data, run two experiments and their blend, and score the submissions on
    the held-out masks.

    ``n_train``, ``n_test`` and ``overrides`` (``key=value``, applied to both experiments, last)
    make a tiny demo for tests.
    """
    started = time.perf_counter()
    project = segmentation_project(workdir, n_train, n_test)
    config = Path("configs") / f"{NAME}.yaml"
    with working_directory(project):
        first = resolve_config(config, list(overrides))
        second = resolve_config(config, [*SECOND, *overrides])
        if (n_train, n_test) == (240, 60):  # the demo's own data: train on the committed split
            use_committed_folds(first, NAME)
        lines = []
        for cfg in (first, second):
            run(cfg)
            lines.append(_experiment_line(project, cfg))
        summary = ensemble(first, first.ensemble)
        lines.append(_blend_line(project, first, summary))
    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"{NAME}: Dice per image (OOF per fold, CV) and on the held-out test masks")
    folds = list(lines[0]["folds"])
    table.add_column("experiment", no_wrap=True)
    table.add_column("what", no_wrap=True)
    for column in [*(f"fold {k}" for k in folds), "CV dice", "CV iou", "CV post-processed"]:
        table.add_column(column, justify="right")
    table.add_column("test dice", justify="right")
    for line in lines:
        table.add_row(
            line["name"],
            line["label"],
            *(f"{line['folds'][k]:.4f}" for k in folds),
            f"{line['cv']['dice']:.4f}",
            f"{line['cv']['iou']:.4f}",
            f"{line['cv_postprocessed']:.4f}",
            f"{line['test_dice']:.4f}",
            style="bold" if line is lines[-1] else None,
        )
    console.print(table)
    for line in lines:
        chosen = line["postprocess"]
        console.print(
            f"{line['name']}: threshold {chosen['threshold']:.2f} and components of at least "
            f"{chosen['min_size']} px, chosen on OOF; submission {line['submission']}"
        )
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return {
        "experiments": {line["name"]: line["cv"] for line in lines[:-1]},
        "cv": lines[-1]["cv"],
        "cv_postprocessed": {line["name"]: line["cv_postprocessed"] for line in lines},
        "test_score": {line["name"]: line["test_dice"] for line in lines},
        "submission": lines[-1]["submission"],
    }


if __name__ == "__main__":
    sys.exit(write_folds_main(NAME, segmentation_project))
