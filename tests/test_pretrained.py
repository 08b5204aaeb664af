"""Pretrained backbones by name: timm tags and hub ids through a hub cache seeded on the spot.

Every test runs with ``HF_HUB_OFFLINE=1`` (conftest) and ``HF_HUB_CACHE`` pointing at a folder
written by :mod:`support.hub_cache`; medalist reads both at call time, so nothing reaches the
network and no constant of huggingface_hub needs patching.
"""

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.errors import CheckpointError, ConfigError
from medalist.layout import training_hash
from medalist.modalities import image, text
from medalist.offline.predict import experiment_config
from medalist.pretrained.resolve import MissingWeights, resolve_text, resolve_timm
from medalist.tasks import Task
from support.configs import TINY
from support.hub_cache import TEXT_REPO, TIMM_NAME, TIMM_REPO, seed_text, seed_timm, timm_state
from support.tiny_text import make_backbone

PRETRAINED = [f"model.backbone={TIMM_NAME}", "model.pretrained=true"]
SENTENCES = [f"the {w} of row {i} is a short sentence" for i, w in enumerate("abcdefghij" * 3)]


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "hub"
    folder.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(folder))
    return folder


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    return make_backbone(tmp_path_factory.mktemp("bert") / "tiny-bert", SENTENCES, hidden=16)


def image_cfg(*extra: str):
    return resolve_config(None, [*PRETRAINED, *extra])


def task(outputs: int = 10) -> Task:
    return Task("multiclass", ["label"], [str(i) for i in range(outputs)])


# ------------------------------------------------------------------------------------ image


def test_timm_tag_loads_the_cached_file_bitwise_with_a_new_head(cache):
    seed_timm(cache)
    seeded = timm_state()
    model = image.build_model(image_cfg(), task())
    state = model.state_dict()
    assert state.keys() == seeded.keys()
    body = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(state[k], seeded[k]) for k in body)
    assert state["fc.weight"].shape == (10, seeded["fc.weight"].shape[1])  # the task's head
    # No tag: timm's default one, the same file.
    weights = image.pretrained_weights(image_cfg("model.backbone=test_resnet"))
    assert weights.name == TIMM_NAME and weights.repo_id == TIMM_REPO and weights.source == "cache"


def test_one_channel_images_get_timms_stem_adaptation_logged(cache, caplog):
    caplog.set_level("INFO")
    seed_timm(cache)
    cfg = image_cfg("image.channels=1")
    image.check_inputs(cfg, pd.DataFrame({"image": []}), "train", "train.csv")
    assert "pretrained on 3 input channels" in caplog.text and "image.channels=1" in caplog.text
    stem = image.build_model(cfg, task()).state_dict()["conv1.0.weight"]
    assert torch.allclose(stem, timm_state()["conv1.0.weight"].sum(dim=1, keepdim=True))


def test_pretrained_path_wins_over_the_hub_name(cache, tmp_path):
    local = tmp_path / "mine.safetensors"
    save_file(timm_state(seed=3), str(local))
    cfg = image_cfg(f"model.pretrained_path={local}")  # the cache is empty: never looked at
    assert image.backbone_names(cfg) == [("model.pretrained_path", str(local))]
    state = image.build_model(cfg, task()).state_dict()
    assert torch.equal(state["conv1.0.weight"], timm_state(seed=3)["conv1.0.weight"])
    assert image.starting_weights(cfg) == [local]


def test_fingerprint_follows_the_pretrained_file(cache):
    cfg = image_cfg()
    missing = training_hash(cfg)
    path = seed_timm(cache, seed=0)
    first = training_hash(cfg)
    seed_timm(cache, seed=1)
    assert image.starting_weights(cfg) == [path]
    assert len({missing, first, training_hash(cfg)}) == 3
    assert training_hash(resolve_config(None, PRETRAINED[:1])) != first  # random init


@pytest.mark.parametrize(
    ("backbone", "message"),
    [
        ("no_such_net", "timm has no model 'no_such_net'"),
        ("test_resnet.bogus", "no pretrained weights for 'test_resnet.bogus'.*r160_in1k"),
        ("botnet50ts_256", "no pretrained weights for 'botnet50ts_256'.*set model.pretrained"),
    ],
)
def test_bad_timm_names_stop_naming_the_key_and_the_fix(cache, backbone, message):
    with pytest.raises(ConfigError, match=f"model.backbone: .*{message}"):
        image.check_inputs(
            image_cfg(f"model.backbone={backbone}"), pd.DataFrame({"image": []}), "train", "x"
        )


def test_train_check_downloads_with_a_warning_and_records_it(cache, tmp_path, monkeypatch, caplog):
    """Online, the input check fetches a missing file (here a stand-in for the hub that seeds the
    cache), says so, and records it in models/weights.json."""
    calls = []

    def fake_download(repo_id, filename, *, revision, cache_dir):
        calls.append((repo_id, filename, Path(cache_dir)))
        return str(seed_timm(Path(cache_dir)))

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("medalist.pretrained.resolve.hf_hub_download", fake_download)
    with working_directory(tmp_path):
        image.check_inputs(image_cfg(), pd.DataFrame({"image": []}), "train", "train.csv")
        assert calls == [(TIMM_REPO, "model.safetensors", cache)]
        assert f"model.backbone: downloading {TIMM_NAME}" in caplog.text
        record = json.loads(Path("models/weights.json").read_text())["files"]
        assert set(record) == {f"{TIMM_REPO}/model.safetensors"}
        image.check_inputs(image_cfg(), pd.DataFrame({"image": []}), "train", "train.csv")
        assert len(calls) == 1  # cached now


def test_offline_missing_file_says_how_to_get_it(cache):
    with pytest.raises(MissingWeights, match="medalist weights.*HF_HOME"):
        resolve_timm(TIMM_NAME, download=True)  # offline: no download attempted


def test_pickled_only_cache_is_refused_never_loaded(cache):
    folder = seed_timm(cache).parent
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")  # loading it would fail
    with pytest.raises(ConfigError, match="only pickled weights.*pytorch_model.bin.*save_file"):
        resolve_timm(TIMM_NAME)


def test_truncated_cached_file_is_an_error_naming_it(cache):
    path = seed_timm(cache)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"{path}.*not a complete safetensors file"):
        image.build_model(image_cfg(), task())


# ------------------------------------------------------------------------------------- text


def text_cfg(backbone: str, *extra: str):
    return resolve_config(
        None,
        [
            "modality=text",
            f"text.backbone={backbone}",
            "competition.target_columns=[label]",
            "text.max_length=32",
            *extra,
        ],
    )


def test_hub_id_resolves_to_the_snapshot_and_loads_its_weights(cache, bert):
    snapshot = seed_text(cache, bert)
    cfg = text_cfg(TEXT_REPO)
    rows = pd.DataFrame({"text": SENTENCES[:4], "label": list("abab")})
    assert text.check_inputs(cfg, rows, "train", "train.csv") == snapshot
    model = text.build_model(cfg, task(2))
    saved = load_file(str(bert / "model.safetensors"))
    state = model.backbone.state_dict()
    assert state.keys() <= saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in state)
    assert text.starting_weights(cfg) == [snapshot / "model.safetensors"]
    assert text.packaged_folder(cfg) == ("text.backbone", snapshot)
    # A local folder stays what it was.
    assert text.check_inputs(text_cfg(str(bert)), rows, "train", "train.csv") == bert


def test_text_hub_id_missing_offline_or_pickled(cache, bert):
    with pytest.raises(MissingWeights, match="text.backbone: tiny-org/tiny-bert.*medalist weights"):
        resolve_text(TEXT_REPO, "text.backbone", download=True)
    snapshot = seed_text(cache, bert)
    (snapshot / "model.safetensors").unlink()
    (snapshot / "pytorch_model.bin").write_bytes(b"\x80\x04 pickled")
    with pytest.raises(ConfigError, match="only pickled weights.*safe_serialization=True"):
        text.check_inputs(text_cfg(TEXT_REPO), pd.DataFrame({"text": ["a b"]}), "train", "x")


def test_mlm_backbone_resolves_the_same_way(cache, bert):
    seed_text(cache, bert)
    cfg = text_cfg(str(bert), f"mlm.backbone={TEXT_REPO}")
    assert text.backbone_names(cfg) == [("text.backbone", str(bert)), ("mlm.backbone", TEXT_REPO)]


# --------------------------------------------------------------------- the weights command


def test_weights_command_records_then_catches_a_changed_file(cache, tmp_path, caplog):
    caplog.set_level("INFO")
    path = seed_timm(cache)
    with working_directory(tmp_path):
        assert main(["weights", *PRETRAINED]) == 0
        record = json.loads(Path("models/weights.json").read_text())["files"]
        entry = record[f"{TIMM_REPO}/model.safetensors"]
        assert entry["size"] == path.stat().st_size and len(entry["sha256"]) == 64
        assert f"model.backbone: {TIMM_NAME} <- hub cache" in caplog.text
        assert main(["weights", *PRETRAINED]) == 0  # verified again, unchanged

        blob = bytearray(path.read_bytes())
        blob[-1] ^= 0xFF  # same size, other content: only the hash can tell
        path.write_bytes(bytes(blob))
        caplog.clear()
        assert main(["weights", *PRETRAINED]) == 2
        assert f"{path}" in caplog.text and "sha256" in caplog.text

        path.write_bytes(bytes(blob[:-100]))  # cut short: the header check names it
        caplog.clear()
        assert main(["weights", *PRETRAINED]) == 2
        assert "not a complete safetensors file" in caplog.text


def test_weights_command_offline_lists_every_missing_name(cache, tmp_path, bert, caplog):
    caplog.set_level("INFO")
    with working_directory(tmp_path):
        assert main(["weights", *PRETRAINED]) == 2
        assert "1 of 1 pretrained name(s) missing" in caplog.text
        assert "medalist weights" in caplog.text and "HF_HOME" in caplog.text
        caplog.clear()
        args = ["modality=text", "competition.target_columns=[label]"]
        assert main(["weights", *args, f"text.backbone={bert}", f"mlm.backbone={TEXT_REPO}"]) == 2
        assert "text.backbone: " in caplog.text and "local path" in caplog.text
        assert f"mlm.backbone: {TEXT_REPO} is not in the Hugging Face cache" in caplog.text


# --------------------------------------------------------------- train, infer and the bundle


def test_train_from_the_cache_then_infer_without_it(tiny_project, cache, tmp_path, caplog):
    seed_timm(cache)
    caplog.set_level(logging.INFO, logger="medalist")
    args = ["-c", TINY, *PRETRAINED, "train.folds=[0]", "train.epochs=1"]
    for stage in ("folds", "train", "infer"):
        assert main([stage, *args]) == 0, stage
    first = pd.read_parquet("outputs/tiny/test.parquet")
    assert f"from {cache}" in caplog.text  # trained from the cached file
    shutil.rmtree(cache)  # another machine: fine-tuned weights only
    caplog.clear()
    assert main(["infer", *args]) == 0
    assert "not in the cache" not in caplog.text  # infer never looks for pretrained weights
    assert pd.read_parquet("outputs/tiny/test.parquet").equals(first)


def test_bundle_configs_build_without_pretrained_weights(tmp_path):
    (tmp_path / "config.yaml").write_text("model:\n  backbone: test_resnet\n  pretrained: true\n")
    entry = {
        "config": "config.yaml",
        "paths": {"model.pretrained_path": None},
        "settings": {"model.pretrained": False},
    }
    cfg = experiment_config(tmp_path, entry, tmp_path)
    assert cfg.model.pretrained is False and image.backbone_names(cfg) == []
