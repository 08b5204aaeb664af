"""Artifact paths in one place, and the fingerprint that decides whether a fold trains again."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import pytest

from medalist import layout
from medalist.config.schema import Config, training_sections
from support import configs

# The built-in defaults (no config file), with the one setting they leave open.
cfg = functools.partial(configs.cfg, path=None, base=["competition.target_columns=[y]"])


def test_every_config_section_says_whether_it_retrains():
    undecided = [
        name
        for name, field in Config.model_fields.items()
        if "retrains" not in (field.json_schema_extra or {})
    ]
    assert not undecided, f"Config fields without retrains=: {undecided}"
    assert set(training_sections()) == {
        "modality", "competition", "task", "folds", "image", "model", "text", "tabular",
        "segmentation", "train", "tricks", "distill",
    }  # fmt: skip


def test_the_fingerprint_of_folds_trained_before_is_unchanged():
    """Recomputed as medalist has always written it: every section but those listed here, less
    the train keys that only choose folds or show progress, plus the starting weights (none
    here); the keys added since (the speed knobs, model.pretrained, folds.test_like,
    text.template, text.lora.quantize), text.swap (predictions only) and the tabular, distill
    and segmentation sections at their defaults are not in it. A fold trained earlier is not
    trained again for nothing."""
    config = cfg("train.folds=[0]")
    not_training = {"infer", "submission", "stages", "pseudo", "ensemble", "kaggle", "mlm"}
    data = config.model_dump(
        mode="json",
        exclude=not_training
        | {"tracking", "sanity", "adversarial", "sweep", "tabular", "distill", "segmentation"},
    )
    del data["train"]["folds"], data["train"]["progress"], data["train"]["seeds"]
    del data["train"]["compile"], data["train"]["channels_last"]
    del data["model"]["pretrained"], data["model"]["grad_checkpointing"]
    del data["folds"]["test_like"]
    del data["text"]["template"], data["text"]["swap"], data["text"]["lora"]["quantize"]
    data["backbone_weights"] = []
    expected = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
    assert layout.training_hash(config) == expected


@pytest.mark.parametrize(
    "change,retrains",
    [
        ("tricks.ema.enabled=true", True),
        ("train.lr=0.5", True),
        ("model.drop_rate=0.3", True),
        ("folds.n_splits=3", True),
        ("train.folds=[1]", False),
        ("train.progress=false", False),
        ("train.compile=true", False),
        ("train.channels_last=true", False),
        ("model.grad_checkpointing=true", False),
        ("model.pretrained=true", True),
        ("tabular.rounds=50", True),
        ("segmentation.crop_size=128", True),
        ("infer.tta=[hflip]", False),
        ("mlm.lr=1.0", False),
        ("submission.name=other", False),
        ("tracking.project=other", False),
    ],
)
def test_which_changes_retrain(change, retrains):
    assert (layout.training_hash(cfg(change)) != layout.training_hash(cfg())) is retrains


def test_a_swap_view_s_columns_and_classes_do_not_retrain():
    unswapped = cfg("text.pair_column=other")
    swapped = cfg("text.pair_column=other", "text.swap={columns: [text, other], classes: {x: y}}")
    assert swapped.text.swap.columns
    assert layout.training_hash(swapped) == layout.training_hash(unswapped)


def test_new_pseudo_labels_retrain_a_student(tmp_path):
    student = cfg(f"competition.outputs_dir={tmp_path}", "train.pseudo_round=1")
    record = layout.pseudo_dir(student, 1) / "teachers.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"mode": "soft"}')
    before = layout.training_hash(student)
    record.write_text('{"mode": "hard"}')
    assert layout.training_hash(student) != before


def test_paths_follow_the_competition_folders():
    c = cfg(
        "competition.data_dir=d",
        "competition.outputs_dir=o",
        "competition.folds_dir=f",
        "competition.submissions_dir=s",
        "train.experiment=exp",
        "mlm.name=m",
    )
    assert layout.train_path(c) == Path("d/train.csv")
    assert layout.test_path(c) == Path("d/test.csv")
    assert layout.sample_path(c) == Path("d/sample_submission.csv")
    assert layout.folds_files(c) == [Path("f/folds.csv"), Path("f/folds.json")]
    assert layout.fold_dir(c, 2) == Path("o/exp/fold2")
    assert layout.fold_dir(c, layout.FULL_FIT) == Path("o/exp/full")
    assert layout.pseudo_dir(c, 3) == Path("o/pseudo/3")
    assert layout.ensemble_dir(c, "blend") == Path("o/ensemble/blend")
    assert layout.mlm_dir(c) == Path("o/mlm/m")
    assert layout.mlm_resume_dir(c) == Path("o/mlm/.m.resume")
    assert layout.ledger_path(c) == Path("o/ledger.csv")
    assert layout.stamp_path(c, "infer") == Path("o/.stamps/exp.infer.json")
    assert layout.submission_path(c) == Path("s/exp.csv")
    named = c.model_copy(update={"submission": c.submission.model_copy(update={"name": "x"})})
    assert layout.submission_path(named) == Path("s/x.csv")
    assert layout.submission_path(named, "blend") == Path("s/blend.csv")
    assert layout.ensemble_folder(Path("o"), "blend") == layout.ensemble_dir(c, "blend")
    assert layout.fold_name(0) == "fold0" and layout.fold_name(layout.FULL_FIT) == "full"
    assert layout.tracking_dir(c) == Path("o/tracking").resolve()
