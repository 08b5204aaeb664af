"""The built-in demo competitions, in Kaggle's file layout, from data that ships offline.

``digits``: scikit-learn's 1,797 handwritten digits (8x8 scans by 43 people, UCI), written as PNG
files with ``train.csv``, ``test.csv`` and ``sample_submission.csv``. The test labels are kept
aside in ``solution.csv`` (outside ``data/``) to score the submission like a leaderboard would.
``text``: which library a docstring comes from (:mod:`medalist.demo_text`).

:func:`run_demo` does what a team does on day one: bake the template with cookiecutter, copy the
competition files into ``data/``, run the stages, and check the submission.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from medalist.io import write_csv

log = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TEMPLATE_ROOT = Path(__file__).resolve().parents[2]


def build_digits(
    folder: str | Path, n_rows: int | None = None, test_size: float = 0.2, seed: int = 0
) -> Path:
    """Write the digits competition into ``folder`` (data files) and ``folder/../solution.csv``.

    Args:
        folder: the competition's ``data/`` folder.
        n_rows: keep only the first n rows of the shuffled set (tiny versions for tests).
        test_size: fraction held out as the test set.
        seed: seed of the shuffle and the split.
    """
    folder = Path(folder)
    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)  # 0..16 -> 0..255
    labels = digits.target
    order = np.random.default_rng(seed).permutation(len(labels))
    if n_rows is not None:
        order = order[:n_rows]
    train_idx, test_idx = train_test_split(
        order, test_size=test_size, random_state=seed, stratify=labels[order]
    )
    for split, rows in (("train", train_idx), ("test", test_idx)):
        image_dir = folder / f"{split}_images"
        image_dir.mkdir(parents=True, exist_ok=True)
        for row in rows:
            cv2.imwrite(str(image_dir / f"{row:04d}.png"), images[row])
    train = pd.DataFrame(
        {"id": train_idx, "image": [f"{r:04d}.png" for r in train_idx], "label": labels[train_idx]}
    )
    test = pd.DataFrame({"id": test_idx, "image": [f"{r:04d}.png" for r in test_idx]})
    write_csv(folder / "train.csv", train)
    write_csv(folder / "test.csv", test)
    write_csv(folder / "sample_submission.csv", pd.DataFrame({"id": test_idx, "label": 0}))
    write_csv(
        folder.parent / "solution.csv", pd.DataFrame({"id": test_idx, "label": labels[test_idx]})
    )
    return folder


def bake(output_dir: str | Path, extra_context: dict | None = None, overwrite: bool = True) -> Path:
    """Generate a competition project from the repository's cookiecutter template."""
    from cookiecutter.main import cookiecutter

    project = cookiecutter(
        str(TEMPLATE_ROOT),
        no_input=True,
        output_dir=str(output_dir),
        extra_context=extra_context or {},
        overwrite_if_exists=overwrite,
    )
    return Path(project)


@contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield path
    finally:
        os.chdir(previous)


def score_submission(submission: Path, solution: Path, column: str = "label") -> float:
    """Accuracy of a label submission against the held-out solution (the 'leaderboard')."""
    sub = pd.read_csv(submission).set_index("id")
    truth = pd.read_csv(solution).set_index("id")
    return float((sub.loc[truth.index, column] == truth[column]).mean())


def run_demo(name: str = "digits", workdir: str | Path = ".demo") -> dict:
    """Bake, build the data, run every stage, and report CV and the submission's test score.

    ``name``: ``digits`` (image), ``text`` (:mod:`medalist.demo_text`) or ``all`` (both).
    """
    if name == "all":
        return {demo: run_demo(demo, workdir) for demo in ("digits", "text")}
    if name == "text":
        from medalist.demo_text import run_text_demo

        return run_text_demo(workdir)
    from rich.console import Console
    from rich.table import Table

    from medalist.config import resolve_config
    from medalist.pipeline import run

    started = time.perf_counter()
    workdir = Path(workdir).resolve()
    project = bake(workdir, {"competition_name": "Digits"})
    for stale in ("outputs", "folds", "submissions"):  # a fresh run every time
        shutil.rmtree(project / stale, ignore_errors=True)
    build_digits(project / "data")
    shutil.copy(REPO_CONFIGS / "demo" / f"{name}.yaml", project / "configs" / f"{name}.yaml")
    with working_directory(project):
        cfg = resolve_config(Path("configs") / f"{name}.yaml")
        run(cfg)
        metrics = pd.read_json(
            Path("outputs") / cfg.train.experiment / "metrics.json", typ="series"
        )
        submission = project / "submissions" / f"{cfg.submission.name or cfg.train.experiment}.csv"
    test_score = score_submission(submission, project / "solution.csv")
    table = Table(title=f"{name}: CV per fold ({metrics['main_metric']})")
    table.add_column("fold")
    for metric in metrics["cv"]:
        table.add_column(metric, justify="right")
    for fold, scores in metrics["folds"].items():
        table.add_row(fold, *(f"{scores[m]:.4f}" for m in metrics["cv"]))
    table.add_row("CV (OOF)", *(f"{v:.4f}" for v in metrics["cv"].values()), style="bold")
    console = Console()
    console.print(table)
    console.print(f"test accuracy of the submission: {test_score:.4f}")
    console.print(f"submission: {submission}")
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return {"cv": dict(metrics["cv"]), "test_score": test_score, "submission": submission}
