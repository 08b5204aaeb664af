"""Damaged or unsafe weights and checkpoints: a truncated file, a pickle with a payload, and
weights or a checkpoint made for another model: each refused with an error naming the file (exit 2
from a stage), and no code from the file ever runs. (Truncated resumable checkpoints:
test_resume.py; unit cases: test_weights.py.)"""

import os
import pickle
from pathlib import Path

import pytest
import timm
import torch

from medalist.cli import main
from medalist.errors import CheckpointError
from medalist.layout import training_hash
from medalist.training.checkpoint import load_checkpoint, save_checkpoint
from medalist.training.weights import save_weights
from support.configs import TRAINED, cfg


class Payload:
    """Unpickling it creates the folder ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def tiny_checkpoint(folder: Path, model=None, progress=None) -> Path:
    model = model or torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(
        folder,
        step=1,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=None,
        hook_states=[],
        best={},
        progress=progress or {},
    )


def test_optimizer_state_with_a_payload_is_refused_unrun(tmp_path):
    path = tiny_checkpoint(tmp_path) / "trainer.pt"
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Payload(marker), "rng": {}}, path)
    # The file is a live payload: a plain torch.load would run it.
    torch.load(path, weights_only=False)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(CheckpointError, match=r"trainer.pt: not a valid checkpoint"):
        load_checkpoint(path.parent)
    assert not marker.exists()


def test_training_refuses_a_checkpoint_with_a_payload_or_for_another_model(trained_project):
    """A resumable checkpoint of fold 1 (not trained yet) that a teammate sent or an old run left."""
    config = cfg("train.folds=[1]")
    fold1 = trained_project / "outputs" / "tiny" / "fold1"
    marker = trained_project / "pwned"
    newest = tiny_checkpoint(fold1, progress={"training_hash": training_hash(config)})
    torch.save({"optimizer": Payload(marker)}, newest / "trainer.pt")
    assert main(["train", *TRAINED, "train.folds=[1]"]) == 2
    assert not marker.exists()
    assert not (fold1 / "model.safetensors").exists()

    # The same config's hash, but the weights of another model: refused, not half-loaded.
    other = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
    tiny_checkpoint(fold1, model=other, progress={"training_hash": training_hash(config)})
    with pytest.raises(CheckpointError, match=r"step-00000001 does not fit this model"):
        from medalist.training.stage import run as train

        train(config)
    assert not (fold1 / "model.safetensors").exists()


@pytest.mark.parametrize("damage", ["truncated", "pickle with a payload", "another model"])
def test_inference_refuses_bad_weights_naming_the_file(trained_project, damage, caplog):
    weights = trained_project / "outputs" / "tiny" / "fold0" / "model.safetensors"
    marker = trained_project / "pwned"
    if damage == "truncated":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
        expected = "not a valid safetensors file"
    elif damage == "pickle with a payload":
        weights.write_bytes(pickle.dumps({"stem.conv.weight": Payload(marker)}))
        expected = "not a valid safetensors file"
    else:
        other = timm.create_model("test_efficientnet", num_classes=10, in_chans=1)
        save_weights(other, weights)
        expected = "does not fit this model"
    before = (trained_project / "outputs" / "tiny" / "test.parquet").read_bytes()
    assert main(["infer", *TRAINED]) == 2
    assert (
        f"{Path('outputs/tiny/fold0/model.safetensors')}" in caplog.text and expected in caplog.text
    )
    assert not marker.exists()
    assert (trained_project / "outputs" / "tiny" / "test.parquet").read_bytes() == before
