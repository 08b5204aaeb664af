"""Bad input stops a stage before training, naming the file, row or key; nothing is damaged."""

import functools

import pandas as pd
import pytest

from medalist.cli import main
from medalist.errors import ConfigError, DataError, FoldsMismatchError, SubmissionError
from medalist.folds import run as folds
from medalist.training.stage import run as train
from support import configs

# One epoch of every fold of the tiny config.
cfg = functools.partial(configs.cfg, base=configs.ONE_EPOCH)


def test_missing_image_file_named(tiny_project):
    folds(cfg())
    name = pd.read_csv("data/train.csv")["image"].iloc[7]
    (tiny_project / "data" / "train_images" / name).unlink()
    with pytest.raises(DataError, match=rf"row 7: image file not found: .*{name}"):
        train(cfg())
    assert not (tiny_project / "outputs" / "tiny" / "fold0").exists()  # stopped before training


@pytest.mark.parametrize("content", [b"not a png", b""], ids=["garbage", "empty"])
def test_corrupt_image_named_before_training(tiny_project, content):
    folds(cfg())
    name = pd.read_csv("data/train.csv")["image"].iloc[3]
    (tiny_project / "data" / "train_images" / name).write_bytes(content)
    with pytest.raises(DataError, match=rf"train\.csv: row 3: \S*{name} is not an image"):
        train(cfg())
    assert not (tiny_project / "outputs" / "tiny" / "fold0").exists()  # stopped before training


@pytest.mark.parametrize("damage", ["missing", "corrupt", "no image column"])
def test_bad_test_input_stops_inference_before_predicting(trained_project, damage, caplog):
    test_csv = trained_project / "data" / "test.csv"
    test = pd.read_csv(test_csv)
    image = trained_project / "data" / "test_images" / test["image"].iloc[5]
    if damage == "missing":
        image.unlink()
        expected = f"row 5: image file not found: {image.relative_to(trained_project)}"
    elif damage == "corrupt":
        image.write_bytes(b"\x89PNG cut short")
        expected = f"row 5: {image.relative_to(trained_project)} is not an image"
    else:
        test.drop(columns="image").to_csv(test_csv, index=False)
        expected = "test.csv: missing image column 'image'"
    predictions = trained_project / "outputs" / "tiny" / "test.parquet"
    before = predictions.read_bytes()
    assert main(["infer", "-c", "configs/tiny.yaml", "train.folds=[0]"]) == 2
    assert expected in caplog.text
    assert predictions.read_bytes() == before


def test_missing_column_named(tiny_project):
    train_csv = tiny_project / "data" / "train.csv"
    pd.read_csv(train_csv).drop(columns="label").to_csv(train_csv, index=False)
    with pytest.raises(DataError, match=r"train\.csv.*missing column.*label"):
        folds(cfg())


def test_label_outside_classes_named(tiny_project):
    folds(cfg())
    with pytest.raises(DataError, match=r"row 0 \(label=.*\) is not one of the classes"):
        train(cfg("task.classes=[100, 101]"))
    assert not (tiny_project / "outputs" / "tiny" / "fold0").exists()


def test_unknown_config_key_exits_2_with_suggestion(tiny_project, caplog):
    assert main(["train", "-c", "configs/tiny.yaml", "train.batchsize=3"]) == 2
    assert "train.batch_size" in caplog.text


def test_wrong_config_type(tiny_project, caplog):
    with pytest.raises(ConfigError, match="train.lr"):
        cfg("train.lr=fast")
    assert main(["train", "-c", "configs/tiny.yaml", "train.epochs=many"]) == 2
    assert "train.epochs" in caplog.text and "many" in caplog.text
    assert not (tiny_project / "outputs" / "tiny").exists()


def test_wrong_key_in_the_config_file_named(tiny_project, caplog):
    config = tiny_project / "configs" / "tiny.yaml"
    config.write_text(config.read_text().replace("  lr: 3.0e-3", "  learning_rate: 3.0e-3"))
    assert main(["train", "-c", "configs/tiny.yaml"]) == 2
    assert "train.learning_rate" in caplog.text and "tiny.yaml" in caplog.text
    assert not (tiny_project / "outputs" / "tiny").exists()


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


def test_sample_submission_mismatch_keeps_previous_file(trained_project):
    submission = trained_project / "submissions" / "tiny.csv"
    before = submission.read_bytes()
    sample_csv = trained_project / "data" / "sample_submission.csv"
    sample = pd.read_csv(sample_csv)
    sample.loc[0, "id"] = 99999
    sample.to_csv(sample_csv, index=False)
    from medalist.submission.stage import run as make_submission

    with pytest.raises(SubmissionError, match="99999"):
        make_submission(cfg("train.folds=[0]"))
    assert submission.read_bytes() == before


def test_fp16_on_cpu_refused_before_work(tiny_project):
    with pytest.raises(ConfigError, match="train.mixed_precision"):
        train(cfg("train.mixed_precision=fp16", "train.cpu=true"))
