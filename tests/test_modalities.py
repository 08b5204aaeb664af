"""The Modality protocol: every registered modality provides it, and the stages ask the registry."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import get_args

import pytest

import medalist
from medalist.config import resolve_config
from medalist.config.schema import Config
from medalist.errors import ConfigError
from medalist.modalities import MODALITIES, get_modality
from medalist.modalities.protocol import Modality

PROTOCOL_METHODS = [
    name for name, value in vars(Modality).items() if callable(value) and not name.startswith("_")
]


def test_the_protocol_names_what_a_stage_needs():
    assert set(PROTOCOL_METHODS) == {
        "check_inputs",
        "build_dataset",
        "combine",
        "fold_learner",
        "build_model",
        "expand_views",
        "backbone_names",
        "starting_weights",
        "packaged_folder",
        "stacked_experiments",
    }


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_each_modality_provides_the_protocol_with_its_signatures(name):
    module = get_modality(name)
    assert isinstance(module, Modality)
    for method in PROTOCOL_METHODS:
        expected = list(inspect.signature(getattr(Modality, method)).parameters)[1:]  # no self
        got = list(inspect.signature(getattr(module, method)).parameters)
        assert got == expected, f"{name}.{method}{got} differs from the protocol's {expected}"


def test_an_incomplete_module_is_not_a_modality():
    class Partial:
        check_inputs = build_dataset = build_model = staticmethod(lambda *a, **k: None)

    assert not isinstance(Partial(), Modality)


def test_the_config_accepts_exactly_the_registered_modalities():
    assert set(get_args(Config.model_fields["modality"].annotation)) == set(MODALITIES)
    with pytest.raises(ConfigError, match="modality"):
        resolve_config(overrides=["modality=audio"])
    with pytest.raises(ConfigError, match="modality: unknown 'audio'"):
        get_modality("audio")


@pytest.mark.parametrize("name", sorted(MODALITIES))
def test_views_are_checked_by_the_modality(name):
    module = get_modality(name)
    assert module.expand_views([]) == ["identity"]
    with pytest.raises(ConfigError, match="infer.tta.*'sideways'"):
        module.expand_views(["sideways"])


def test_image_views_expand_d4_and_text_views_are_truncations():
    assert len(get_modality("image").expand_views(["d4"])) == 8
    assert get_modality("text").expand_views(["head_tail_64"]) == ["head_tail_64"]
    with pytest.raises(ConfigError):
        get_modality("text").expand_views(["hflip"])


def test_starting_weights_and_packaged_folder(tmp_path):
    weights = tmp_path / "start.safetensors"
    weights.write_bytes(b"x")
    image_cfg = resolve_config(overrides=[f"model.pretrained_path={weights}"])
    assert get_modality("image").starting_weights(image_cfg) == [weights]
    assert get_modality("image").packaged_folder(image_cfg) is None
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    (backbone / "model.safetensors").write_bytes(b"x")
    (backbone / "config.json").write_text("{}")
    text_cfg = resolve_config(overrides=["modality=text", f"text.backbone={backbone}"])
    assert get_modality("text").starting_weights(text_cfg) == [backbone / "model.safetensors"]
    assert get_modality("text").packaged_folder(text_cfg) == ("text.backbone", backbone)


STAGE_PACKAGES = ["training", "prediction", "offline", "ensemble", "submission"]


def _modality_names_in(path: Path) -> list[str]:
    """String constants equal to a modality's name, and imports of a modality module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in MODALITIES:
            found.append(f"{path.name}:{node.lineno} names '{node.value}'")
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            hits = set(modules) & set(MODALITIES.values())
            found += [f"{path.name}:{node.lineno} imports {hit}" for hit in sorted(hits)]
    return found


def test_the_stages_never_name_a_modality():
    root = Path(medalist.__file__).parent
    files = [root / "pipeline.py", root / "layout.py"]
    files += [f for package in STAGE_PACKAGES for f in sorted((root / package).glob("*.py"))]
    named = [hit for path in files for hit in _modality_names_in(path)]
    assert not named, named


def test_the_check_sees_a_stage_that_names_a_modality(tmp_path):
    stage = tmp_path / "stage.py"
    stage.write_text(
        "from medalist.modalities import text\nif cfg.modality == 'image':\n    pass\n"
    )
    assert _modality_names_in(stage) == [
        "stage.py:1 imports medalist.modalities.text",
        "stage.py:2 names 'image'",
    ]
