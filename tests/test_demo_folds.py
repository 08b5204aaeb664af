"""The demos' committed splits (``folds/<demo>/``): they belong to the data the demos write, the
demos train on them instead of making new ones, and an edited file or changed data stops a demo
with an error that names the folder and says how to remake it."""

import logging
import shutil

import pandas as pd
import pytest

from medalist import pipeline
from medalist.config import resolve_config
from medalist.demo import digits, segmentation, tabular, text
from medalist.errors import FoldsMismatchError
from medalist.folds import load_folds

PROJECTS = {
    "digits": digits.digits_project,
    "text": text.text_project,
    "tabular": tabular.tabular_project,
    "segmentation": segmentation.segmentation_project,
}
TARGET = {"digits": "label", "text": "library", "tabular": "malignant", "segmentation": "has_mask"}
N_SPLITS = {
    "digits": 5,
    "text": 3,
    "tabular": 5,
    "segmentation": 3,
}  # configs/demo/<demo>.yaml over the answers
FILES = ("folds.csv", "folds.json")


class _StopAfterFolds(Exception):
    """Ends a demo once its folds stage ran: the tests need no training."""


def _folds_stage_only(cfg, force=False):
    pipeline.run(cfg.model_copy(update={"stages": ["folds"]}), force)
    raise _StopAfterFolds


def _demo_until_folds(name, workdir, monkeypatch):
    """Run the demo ``name`` as ``medalist demo`` does, stopping after its folds stage."""
    module = {"digits": digits, "text": text, "tabular": tabular, "segmentation": segmentation}[
        name
    ]
    monkeypatch.setattr(module, "run", _folds_stage_only)
    with pytest.raises(_StopAfterFolds):
        if name == "digits":
            digits.run_digits_demo(workdir)
        elif name == "tabular":
            tabular.run_tabular_demo(workdir)
        elif name == "segmentation":
            segmentation.run_segmentation_demo(workdir)
        else:  # no backbone is read before training: an empty folder saves copying MiniLM
            (workdir / "no-backbone").mkdir(parents=True)
            text.run_text_demo(workdir, backbone=workdir / "no-backbone")
    return next(p for p in workdir.iterdir() if (p / "configs").is_dir())


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_committed_folds_belong_to_the_data_the_demo_writes(tmp_path, name):
    project = PROJECTS[name](tmp_path)
    train = pd.read_csv(project / "data" / "train.csv")
    folds = load_folds(
        digits.DEMO_FOLDS / name, train, id_column="id", target_columns=[TARGET[name]]
    )
    # Independently of medalist: every row in exactly one of n_splits folds, classes balanced.
    committed = pd.read_csv(digits.DEMO_FOLDS / name / "folds.csv")
    assert committed["id"].tolist() == train["id"].tolist()
    assert folds["fold"].tolist() == committed["fold"].tolist()
    assert sorted(committed["fold"].unique()) == list(range(N_SPLITS[name]))
    per_class = pd.crosstab(train[TARGET[name]], committed["fold"])
    assert (per_class.max(axis=1) - per_class.min(axis=1)).max() <= 1


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_the_demo_reuses_the_committed_folds(tmp_path, monkeypatch, caplog, name):
    caplog.set_level(logging.INFO, logger="medalist.folds")
    project = _demo_until_folds(name, tmp_path, monkeypatch)
    for file in FILES:
        made = (project / "folds" / file).read_bytes()
        assert made == (digits.DEMO_FOLDS / name / file).read_bytes(), file
    assert "already matches the data and settings; reused" in caplog.text
    assert "written to" not in caplog.text


@pytest.mark.parametrize("name", sorted(PROJECTS))
def test_write_folds_remakes_the_committed_files(tmp_path, monkeypatch, name):
    # The committed files are what `python -m medalist.demo.<demo> --write-folds` makes.
    committed = digits.DEMO_FOLDS / name
    monkeypatch.setattr(digits, "DEMO_FOLDS", tmp_path / "folds")
    assert digits.write_folds_main(name, PROJECTS[name], ["--write-folds"]) == 0
    for file in FILES:
        assert (tmp_path / "folds" / name / file).read_bytes() == (committed / file).read_bytes()
    with pytest.raises(SystemExit):
        digits.write_folds_main(name, PROJECTS[name], [])


def _edit_a_fold(folder):
    table = pd.read_csv(folder / "folds.csv")
    table.loc[0, "fold"] = (table.loc[0, "fold"] + 1) % table["fold"].nunique()
    table.to_csv(folder / "folds.csv", index=False)


def _edit_a_label(project):
    train = pd.read_csv(project / "data" / "train.csv")
    train.loc[0, "label"] = (train.loc[0, "label"] + 1) % 10
    train.to_csv(project / "data" / "train.csv", index=False)


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda committed, project: _edit_a_fold(committed), "folds.csv was edited"),
        (lambda committed, project: _edit_a_label(project), "target values in ['label'] changed"),
    ],
    ids=["fold-file-edited", "data-changed"],
)
def test_committed_folds_that_do_not_fit_are_refused(tmp_path, monkeypatch, edit, reason):
    committed = tmp_path / "committed"
    shutil.copytree(digits.DEMO_FOLDS, committed)
    monkeypatch.setattr(digits, "DEMO_FOLDS", committed)
    project = digits.digits_project(tmp_path / "demo")
    edit(committed / "digits", project)
    with (
        digits.working_directory(project),
        pytest.raises(FoldsMismatchError) as raised,
    ):
        digits.use_committed_folds(resolve_config("configs/digits.yaml"), "digits")
    message = str(raised.value)
    assert str(committed / "digits") in message and reason in message
    assert "python -m medalist.demo.digits --write-folds" in message
    assert not (project / "folds" / "folds.csv").exists()  # nothing copied
