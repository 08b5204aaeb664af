"""The built-in demo competitions, in Kaggle's file layout, from data that ships offline.

``digits``: scikit-learn's 1,797 handwritten digits (8x8 scans by 43 people, UCI), written as PNG
files with ``train.csv``, ``test.csv`` and ``sample_submission.csv``. The test labels are kept
aside in ``solution.csv`` (outside ``data/``) to score the submission like a leaderboard would.
``text``: which library a docstring comes from (:mod:`medalist.demo.text`).

:func:`run_digits_demo` (and :func:`medalist.demo.text.run_text_demo`; ``medalist demo``
runs either or both) does what a team does in its first days: bake the template with cookiecutter,
copy the competition files into ``data/``, run the stages for two experiments, blend them
(``medalist ensemble``), write the report (``medalist report``), and score every submission
against the held-out labels. It also writes ``configs/<demo>_pseudo.yaml`` and
``configs/<demo>_tta.yaml`` into the project (the demo's experiment file with an overlay from
``configs/demo/`` merged in): one pseudo-label round, and test-time augmentation, to run after.

Each demo trains on the split committed in the repository's ``folds/<demo>/`` (as a team commits
its split once), checked against the data the demo writes. If a dependency changes that data,
``python -m medalist.demo.<demo> --write-folds`` remakes the files with the folds stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import takewhile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import yaml
from cookiecutter.main import cookiecutter
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from medalist import folds
from medalist.config import Config, resolve_config
from medalist.config.load import deep_merge, load_yaml
from medalist.data import read_train
from medalist.ensemble.stage import run as ensemble
from medalist.errors import FoldsMismatchError
from medalist.io import write_csv, write_text
from medalist.layout import folds_files
from medalist.metrics import get_metric
from medalist.pipeline import run
from medalist.reporting.report import write_report

log = logging.getLogger(__name__)

REPO_CONFIGS = Path(__file__).resolve().parents[3] / "configs"
TEMPLATE_ROOT = Path(__file__).resolve().parents[3]
# The demos' committed splits, folds/<demo>/folds.{csv,json}: every run trains on the same folds.
DEMO_FOLDS = Path(__file__).resolve().parents[3] / "folds"


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


# The digits demo's second experiment: a smaller, differently built ResNet (timm's resnet10t:
# a deep three-convolution stem, average-pool downsampling, one block per stage; about half
# ResNet-18's time per step on a CPU), so the two make different mistakes.
DIGITS_SECOND = ["model.backbone=resnet10t", "train.experiment=digits_resnet10t"]
VARIANTS = ("pseudo", "tta")


class _FlowLists(yaml.SafeDumper):
    """Sections and keys as blocks, lists on one line, as the hand-written configs have them."""


_FlowLists.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, True)
)


def write_variants(project: Path, name: str) -> list[Path]:
    """``configs/<name>_<variant>.yaml`` in the project: the demo's experiment file
    (``configs/demo/<name>.yaml``) with the overlay ``configs/demo/<name>_<variant>.yaml`` merged
    in, headed by the overlay's comments. Every other setting equals the demo's, so the stages
    the demo ran are up to date under these files and only what the overlay adds runs."""

    base = load_yaml((REPO_CONFIGS / "demo" / f"{name}.yaml").read_text(encoding="utf-8"))
    written = []
    for variant in VARIANTS:
        text = (REPO_CONFIGS / "demo" / f"{name}_{variant}.yaml").read_text(encoding="utf-8")
        header = list(takewhile(lambda line: line.startswith("#"), text.splitlines()))
        header.append(
            f"# Below: configs/{name}.yaml (see its comments) with this overlay merged in."
        )
        merged = deep_merge(base, load_yaml(text))
        body = yaml.dump(merged, Dumper=_FlowLists, sort_keys=False, width=4096)
        target = project / "configs" / f"{name}_{variant}.yaml"
        write_text(target, "\n".join(header) + "\n" + body)
        written.append(target)
    return written


@dataclass
class Scored:
    """One line of a demo's closing table: an experiment or the ensemble."""

    name: str
    label: str
    scores: dict  # metrics.json or the ensemble's nested scores: "cv", "folds" per metric
    test_score: float
    submission: Path

    def tests(self) -> dict[str, float]:
        """The submission's scores on the held-out labels, by metric (the first one leads)."""
        return {"accuracy": self.test_score}


def scored_experiment(project: Path, cfg, label: str, column: str) -> Scored:
    """CV (``metrics.json``) and test accuracy of an experiment's submission."""
    metrics = pd.read_json(Path("outputs") / cfg.train.experiment / "metrics.json", typ="series")
    name = cfg.submission.name or cfg.train.experiment
    submission = project / cfg.competition.submissions_dir / f"{name}.csv"
    test_score = score_submission(submission, project / "solution.csv", column)
    return Scored(cfg.train.experiment, label, dict(metrics), test_score, submission)


def ensemble_and_report(project: Path, cfg, column: str) -> tuple[Scored, dict, Path]:
    """``medalist ensemble`` then ``medalist report`` on ``cfg.ensemble``; the ensemble's line
    holds its nested (honest) CV and the test accuracy of its submission."""

    summary = ensemble(cfg, cfg.ensemble)
    report = write_report(
        cfg.competition.outputs_dir, list(cfg.ensemble.experiments), cfg.ensemble.name, cfg=cfg
    )
    submission = project / summary["submission"]
    test_score = score_submission(submission, project / "solution.csv", column)
    label = f"{cfg.ensemble.method} ({summary['cv']['optimised_metric']}), nested"
    line = Scored(cfg.ensemble.name, label, summary["cv"]["nested"], test_score, submission)
    return line, summary, project / report


def print_summary(
    console, title: str, lines: list[Scored], summary: dict, report: Path, main_metric: str
) -> None:
    """The closing table (per-fold main metric, CV, test scores), then single vs ensemble."""

    metrics = list(lines[0].scores["cv"])[:2]
    folds = list(lines[0].scores["folds"])
    table = Table(title=title)
    table.add_column("experiment", no_wrap=True)
    table.add_column("what", no_wrap=True)
    for fold in folds:
        table.add_column(f"fold {fold}", justify="right")
    for metric in metrics:
        table.add_column(f"CV {metric}", justify="right")
    tests = list(lines[0].tests())
    for metric in tests:
        table.add_column(f"test {metric}", justify="right")
    for line in lines:
        table.add_row(
            line.name,
            line.label,
            *(f"{line.scores['folds'][k][main_metric]:.4f}" for k in folds),
            *(f"{line.scores['cv'][m]:.4f}" for m in metrics),
            *(f"{value:.4f}" for value in line.tests().values()),
            style="bold" if line is lines[-1] else None,
        )
    console.print(table)
    *singles, blend = lines
    best = _best_single(singles, main_metric)
    weights = ", ".join(f"{k} {v:.2f}" for k, v in summary["weights"]["weights"].items())
    console.print(f"ensemble {blend.name}: weights {weights}")
    optimised = summary["cv"]["optimised_metric"]
    for metric in dict.fromkeys([main_metric, optimised]):
        in_sample = summary["cv"]["in_sample"]["cv"][metric]
        single = _best_single(singles, metric)  # the best single model by this metric
        console.print(
            f"  CV {metric}: best single model ({single.name}) {single.scores['cv'][metric]:.4f} -> "
            f"ensemble {blend.scores['cv'][metric]:.4f} nested ({in_sample:.4f} in-sample)"
        )
    first, *others = tests
    moves = [f"test {m} {best.tests()[m]:.4f} -> {blend.tests()[m]:.4f}" for m in others]
    console.print(
        f"  test {first}: best single model by CV {main_metric} ({best.name}) "
        f"{best.tests()[first]:.4f} -> ensemble {blend.tests()[first]:.4f}"
        + "".join(f"; {move}" for move in moves)
    )
    console.print(f"report: {report}")
    console.print(f"submissions: {', '.join(str(line.submission) for line in lines)}")


def _best_single(singles: list, metric: str):
    """The experiment with the best CV by ``metric`` (the first one on ties)."""

    best = singles[0]
    for line in singles[1:]:
        if get_metric(metric).better(line.scores["cv"][metric], best.scores["cv"][metric]):
            best = line
    return best


def print_next_steps(console, project: Path, name: str, experiment: str) -> None:
    """The optional pseudo-label round and TTA, from the configs the demo wrote."""
    console.print(f"optional next steps, in {project}:")
    console.print(
        f"  medalist run -c configs/{name}_pseudo.yaml   # one pseudo-label round; CV before "
        "and after: outputs/pseudo/rounds.json"
    )
    console.print(
        f"  medalist run -c configs/{name}_tta.yaml      # test-time augmentation; CV without "
        f"and with: outputs/{experiment}/tta.json"
    )
    console.print(
        f"  medalist ledger -c configs/{name}.yaml          # every run and ensemble, with CV"
    )


def use_committed_folds(cfg: Config, name: str) -> list[Path]:
    """Copy ``folds/<name>/`` into the project's folds folder, once it is checked against the data
    the demo wrote; the folds stage then finds them and reuses them. Run in the project folder.

    Raises:
        FoldsMismatchError: naming the committed folder, when its files were edited or the data
            changed (a dependency changed what it ships); it says how to remake the files.
    """
    source, competition = DEMO_FOLDS / name, cfg.competition
    try:
        folds.load_folds(
            source,
            read_train(cfg),
            id_column=competition.id_column,
            target_columns=list(competition.target_columns),
        )
    except FoldsMismatchError as exc:
        # The check's own advice is for a project's folds; these files are remade otherwise.
        raise FoldsMismatchError(
            f"{source}: the {name} demo's committed folds do not fit the data the demo wrote. "
            f"Restore folds/{name}/ from git if a file was edited; if a dependency changed the "
            f"demo's data, remake them with `python -m medalist.demo.{name} --write-folds` and "
            f"commit them. The check said: {exc}"
        ) from None
    copied = []
    for target in folds_files(cfg):
        target.parent.mkdir(parents=True, exist_ok=True)
        copied.append(Path(shutil.copyfile(source / target.name, target)))
    return copied


def write_committed_folds(name: str, make_project: Callable[[Path], Path]) -> Path:
    """Remake ``folds/<name>/`` with the folds stage, from the data ``make_project`` writes into
    a project baked in a temporary folder; returns the folder (to commit)."""
    target = DEMO_FOLDS / name
    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp))
        with working_directory(project):
            cfg = resolve_config(Path("configs") / f"{name}.yaml")
            folds.run(cfg)  # a fresh project: new folds
            target.mkdir(parents=True, exist_ok=True)
            for made in folds_files(cfg):
                shutil.copyfile(made, target / made.name)
    log.info("%s: remade from the %s demo's data; commit it", target, name)
    return target


def write_folds_main(name: str, make_project: Callable[[Path], Path], argv=None) -> int:
    """``python -m medalist.demo.<name> --write-folds``: :func:`write_committed_folds`."""
    parser = argparse.ArgumentParser(
        prog=f"python -m medalist.demo.{name}",
        description=f"Remake folds/{name}/ (the {name} demo's committed split) from its data.",
    )
    parser.add_argument("--write-folds", action="store_true", help=f"write folds/{name}/")
    if not parser.parse_args(argv).write_folds:
        parser.error("nothing to do without --write-folds")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_committed_folds(name, make_project)
    return 0


def digits_project(workdir: str | Path, n_rows: int | None = None) -> Path:
    """Bake the digits project in ``workdir`` and write its data and configs; nothing run yet."""
    project = bake(Path(workdir).resolve(), {"competition_name": "Digits"})
    for stale in ("outputs", "folds", "submissions"):  # a fresh run every time
        shutil.rmtree(project / stale, ignore_errors=True)
    build_digits(project / "data", n_rows=n_rows)
    shutil.copy(REPO_CONFIGS / "demo" / "digits.yaml", project / "configs" / "digits.yaml")
    write_variants(project, "digits")
    return project


def run_digits_demo(
    workdir: str | Path = ".demo",
    *,
    n_rows: int | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Bake, build the data, run two experiments, blend them, report, and score the submissions.

    ``n_rows`` and ``overrides`` (``key=value``, applied to both experiments, last) make a tiny
    digits demo for tests.
    """

    name = "digits"
    started = time.perf_counter()
    project = digits_project(workdir, n_rows)
    config = Path("configs") / f"{name}.yaml"
    with working_directory(project):
        first = resolve_config(config, list(overrides))
        second = resolve_config(config, [*DIGITS_SECOND, *overrides])
        if n_rows is None:  # the demo's own data: train on the committed split
            use_committed_folds(first, name)
        lines = []
        for cfg in (first, second):
            run(cfg)
            label = f"{cfg.model.backbone}, {cfg.train.epochs} ep."
            lines.append(scored_experiment(project, cfg, label, "label"))
        blend, summary, report = ensemble_and_report(project, first, "label")
    lines.append(blend)
    console = Console(width=None if sys.stdout.isatty() else 150)
    main_metric = lines[0].scores["main_metric"]
    print_summary(
        console,
        f"{name}: CV (OOF) per fold and test accuracy, two experiments and their ensemble",
        lines,
        summary,
        report,
        main_metric,
    )
    print_next_steps(console, project, name, first.train.experiment)
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return {
        "experiments": {line.name: line.scores["cv"] for line in lines[:-1]},
        "cv": blend.scores["cv"],
        "test_score": {line.name: line.test_score for line in lines},
        "submission": blend.submission,
        "report": report,
    }


if __name__ == "__main__":
    sys.exit(write_folds_main("digits", digits_project))
