"""Bad input stops a stage before training, naming the file, row or key; nothing is damaged."""

import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.errors import ConfigError, DataError, FoldsMismatchError, SubmissionError
from medalist.stages import folds
from medalist.train import run as train

OVERRIDES = ["train.epochs=1"]


def cfg(*extra):
    return resolve_config("configs/tiny.yaml", [*OVERRIDES, *extra])


def test_missing_image_file_named(tiny_project):
    folds(cfg())
    name = pd.read_csv("data/train.csv")["image"].iloc[7]
    (tiny_project / "data" / "train_images" / name).unlink()
    with pytest.raises(DataError, match=rf"row 7: image file not found: .*{name}"):
        train(cfg())
    assert not (tiny_project / "outputs" / "tiny" / "fold0").exists()  # stopped before training


def test_corrupt_image_named(tiny_project):
    folds(cfg())
    name = pd.read_csv("data/train.csv")["image"].iloc[3]
    (tiny_project / "data" / "train_images" / name).write_bytes(b"not a png")
    with pytest.raises(DataError, match=name):
        train(cfg())


def test_missing_column_named(tiny_project):
    train_csv = tiny_project / "data" / "train.csv"
    pd.read_csv(train_csv).drop(columns="label").to_csv(train_csv, index=False)
    with pytest.raises(DataError, match=r"train\.csv.*missing column.*label"):
        folds(cfg())


def test_label_outside_classes_named(tiny_project):
    folds(cfg())
    with pytest.raises(DataError, match=r"row 0 \(label=.*\) is not one of the classes"):
        train(cfg("task.classes=[100, 101]"))


def test_unknown_config_key_exits_2_with_suggestion(tiny_project, caplog):
    assert main(["train", "-c", "configs/tiny.yaml", "train.batchsize=3"]) == 2
    assert "train.batch_size" in caplog.text


def test_wrong_config_type(tiny_project):
    with pytest.raises(ConfigError, match="train.lr"):
        cfg("train.lr=fast")


def test_data_changed_after_folds_is_refused(tiny_project):
    folds(cfg())
    train_csv = tiny_project / "data" / "train.csv"
    data = pd.read_csv(train_csv)
    data.loc[5, "label"] = (data.loc[5, "label"] + 1) % 10
    data.to_csv(train_csv, index=False)
    with pytest.raises(FoldsMismatchError):
        train(cfg())


def test_folds_with_other_settings_not_replaced(tiny_project):
    folds(cfg())
    before = (tiny_project / "folds" / "folds.csv").read_bytes()
    with pytest.raises(FoldsMismatchError, match="--force"):
        folds(cfg("folds.n_splits=4"))
    assert (tiny_project / "folds" / "folds.csv").read_bytes() == before
    folds(cfg("folds.n_splits=4"), force=True)
    assert pd.read_csv(tiny_project / "folds" / "folds.csv")["fold"].nunique() == 4


def test_sample_submission_mismatch_keeps_previous_file(tiny_project):
    assert main(["run", "-c", "configs/tiny.yaml", *OVERRIDES]) == 0
    submission = tiny_project / "submissions" / "tiny.csv"
    before = submission.read_bytes()
    sample_csv = tiny_project / "data" / "sample_submission.csv"
    sample = pd.read_csv(sample_csv)
    sample.loc[0, "id"] = 99999
    sample.to_csv(sample_csv, index=False)
    from medalist.stages import submission as make_submission

    with pytest.raises(SubmissionError, match="99999"):
        make_submission(cfg())
    assert submission.read_bytes() == before


def test_fp16_on_cpu_refused_before_work(tiny_project):
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        train(cfg("train.mixed_precision=fp16", "train.cpu=true"))
