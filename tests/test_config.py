"""Config layering, typed errors with key paths, suggestions for typos, impossible combinations."""

from pathlib import Path

import pytest
import yaml

from medalist.config import Config, describe, parse_override, resolve_config
from medalist.errors import ConfigError


def write(path, text):
    path.write_text(text)
    return path


def test_layers_later_wins(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  epochs: 3\n  lr: 0.01\n")
    exp = write(tmp_path / "exp.yaml", "train:\n  epochs: 5\n")
    cfg = resolve_config(exp, ["train.lr=1e-4"])
    assert cfg.train.epochs == 5  # experiment over base
    assert cfg.train.lr == pytest.approx(1e-4)  # command line over both
    assert cfg.train.batch_size == Config().train.batch_size  # library default underneath


def test_base_alone_is_not_layered_twice(tmp_path):
    base = write(tmp_path / "base.yaml", "train:\n  epochs: 4\n")
    assert resolve_config(base).train.epochs == 4


def test_unknown_key_names_path_and_suggests(tmp_path):
    exp = write(tmp_path / "exp.yaml", "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as err:
        resolve_config(exp)
    assert "train.epoch" in str(err.value) and "train.epochs" in str(err.value)
    assert str(exp) in str(err.value)


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match="did you mean 'train'"):
        resolve_config(overrides=["trian.epochs=2"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match=r"train\.epochs.*'many'"):
        resolve_config(overrides=["train.epochs=many"])


def test_out_of_range_names_key():
    with pytest.raises(ConfigError, match=r"folds\.n_splits"):
        resolve_config(overrides=["folds.n_splits=1"])


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["folds.scheme=group"], "folds.group_column"),
        (["task.type=regression", "folds.scheme=stratified"], "folds.scheme"),
        (["folds.scheme=quantile"], "folds.scheme"),
        (["folds.scheme=multilabel_stratified"], "folds.scheme"),
        (["task.type=multilabel", "folds.scheme=kfold"], "competition.target_columns"),
        (["competition.target_columns=[a, b]"], "competition.target_columns"),
        (["train.folds=[-1, 0]"], "train.folds"),
        (["image.channels=2"], "image.channels"),
    ],
)
def test_impossible_combinations(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        resolve_config(overrides=overrides)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve_config(tmp_path / "nope.yaml")
    bad = write(tmp_path / "bad.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve_config(bad)


def test_parse_override_types():
    assert parse_override("train.lr=3e-4") == {"train": {"lr": 3e-4}}
    assert parse_override("train.folds=[0, 2]") == {"train": {"folds": [0, 2]}}
    assert parse_override("model.backbone=resnet18.a1_in1k") == {
        "model": {"backbone": "resnet18.a1_in1k"}
    }
    with pytest.raises(ConfigError):
        parse_override("train.lr")


def test_hash_is_stable_and_sensitive():
    a, b = resolve_config(), resolve_config()
    assert a.hash() == b.hash()
    assert resolve_config(overrides=["train.seed=1"]).hash() != a.hash()


def test_resolved_yaml_round_trips(tmp_path):
    cfg = resolve_config(overrides=["train.epochs=7", "task.type=binary"])
    saved = write(tmp_path / "resolved.yaml", cfg.to_yaml())
    assert resolve_config(saved) == cfg


def test_describe_lists_every_key_with_help():
    text = describe()
    assert "  lr: 0.001  # Peak learning rate." in text
    assert "  group_column: null  # Column whose groups never cross folds." in text


def test_reference_config_is_current_and_valid():
    reference = Path(__file__).parents[1] / "configs" / "reference.yaml"
    assert reference.read_text() == describe(), "regenerate: medalist config --describe"
    assert resolve_config(reference) == Config()


def test_every_shipped_config_resolves():
    configs = Path(__file__).parents[1] / "configs"
    for path in sorted(configs.rglob("*.yaml")):
        resolve_config(path)


def test_yaml_no_and_off_stay_strings(tmp_path):
    exp = write(tmp_path / "exp.yaml", "train:\n  mixed_precision: no\n  experiment: off\n")
    cfg = resolve_config(exp, ["submission.name=no"])
    assert cfg.train.mixed_precision == "no" and cfg.train.experiment == "off"
    assert cfg.submission.name == "no"
    assert resolve_config(overrides=["train.cpu=true"]).train.cpu is True


def test_overrides_before_and_after_options(tiny_project, capsys):
    from medalist.cli import main

    assert main(["config", "train.lr=0.5", "-c", "configs/tiny.yaml", "train.epochs=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.5 and printed["train"]["epochs"] == 3
    assert printed["model"]["backbone"] == "test_resnet"  # the -c file was read too
    with pytest.raises(SystemExit):
        main(["config", "-c", "configs/tiny.yaml", "--bogus"])
    assert main(["validate", "a.csv", "b.csv"]) == 2  # b.csv is not an override
