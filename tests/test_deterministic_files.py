"""The same content gives the same bytes: weights, checkpoints and JSON, in any process."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

from medalist.training.checkpoint import save_checkpoint
from medalist.training.weights import read_metadata, save_weights

# Eight keys: safetensors writes a metadata map in a per-process hash order, so eight separate
# keys would come out in the same order in three processes about once in 40,000^2 runs.
METADATA = {
    "fold": 3,
    "epoch": 7,
    "weights": "ema",
    "oof": True,
    "cycle": 1,
    "step": 120,
    "seed": 42,
    "note": "a",
}
SAVE = """
import sys, torch
from medalist.training.weights import save_weights
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
save_weights(model, sys.argv[1], {metadata!r})
"""


def test_weights_are_the_same_bytes_in_every_process(tmp_path):
    script = SAVE.format(metadata=METADATA)
    digests = set()
    for seed in ("0", "1", "2"):
        path = tmp_path / f"weights{seed}.safetensors"
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    assert read_metadata(tmp_path / "weights0.safetensors") == METADATA  # types kept


def test_metadata_round_trip_and_none(tmp_path):
    model = torch.nn.Linear(2, 2)
    save_weights(model, tmp_path / "bare.safetensors")
    assert read_metadata(tmp_path / "bare.safetensors") == {}
    save_weights(model, tmp_path / "meta.safetensors", {"b": [1, 2], "a": None})
    assert read_metadata(tmp_path / "meta.safetensors") == {"a": None, "b": [1, 2]}


def _checkpoint(folder: Path) -> dict[str, bytes]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
    model(torch.randn(5, 3)).pow(2).sum().backward()
    optimizer.step()
    scheduler.step()
    best = {"model": model.state_dict(), "logits": torch.ones(4, 2).numpy()}
    target = save_checkpoint(
        folder,
        step=1,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=None,
        hook_states=[{"shadow": torch.arange(3.0)}],
        best=best,
        progress={"step": 1, "epoch": 0, "history": [{"loss": 0.5}]},
    )
    return {p.name: p.read_bytes() for p in sorted(target.iterdir())}


def test_checkpoint_files_are_the_same_bytes(tmp_path):
    first = _checkpoint(tmp_path / "a")
    second = _checkpoint(tmp_path / "b")
    assert first.keys() == second.keys() and "trainer.pt" in first
    for name, data in first.items():
        assert second[name] == data, f"{name} differs"
