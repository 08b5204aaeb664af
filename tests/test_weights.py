"""Weights: exact round trip, atomic write, and refusal of truncated, foreign or unsafe files."""

import os
import pickle

import pytest
import timm
import torch

from medalist.errors import CheckpointError
from medalist.training.weights import load_weights, save_weights


def tiny(name="test_resnet", classes=3):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=classes, in_chans=1)


def test_round_trip_is_exact(tmp_path):
    model = tiny()
    path = save_weights(model, tmp_path / "model.safetensors", {"fold": 0})
    other = tiny()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    load_weights(other, path)
    for (k, a), b in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left


def test_truncated_file_refused(tmp_path):
    path = save_weights(tiny(), tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights(tiny(), path)


def test_other_model_refused(tmp_path):
    path = save_weights(tiny(classes=3), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(tiny(classes=5), path)
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights(tiny("test_efficientnet"), path)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_payload_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"weight": Payload()}))
    with pytest.raises(CheckpointError):
        load_weights(tiny(), path)
    assert not (tmp_path / "pwned").exists()


def test_non_finite_model_never_saved(tmp_path):
    model = tiny()
    previous = save_weights(model, tmp_path / "model.safetensors").read_bytes()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        save_weights(model, tmp_path / "model.safetensors")
    assert (tmp_path / "model.safetensors").read_bytes() == previous
