"""The same content gives the same bytes: weights, checkpoints and JSON, in any process; and the
whole pipeline run twice with the same seed writes the same files."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from medalist.demo.digits import working_directory
from medalist.pipeline import run as pipeline
from medalist.training.checkpoint import save_checkpoint
from medalist.training.weights import read_metadata, save_weights
from support.configs import ONE_EPOCH, cfg

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


def _run_copy(template: Path, where: Path, *extra: str) -> Path:
    """The whole pipeline (one epoch, every fold) in a fresh copy of the tiny project."""
    project = where / "digits"
    shutil.copytree(template, project)
    with working_directory(project):
        pipeline(cfg(*extra, base=ONE_EPOCH))
    return project


@pytest.mark.slow
def test_same_seed_bitwise_equal_different_seed_differs(tiny_template, tmp_path):
    first = _run_copy(tiny_template, tmp_path / "a")
    second = _run_copy(tiny_template, tmp_path / "b")
    other = _run_copy(tiny_template, tmp_path / "c", "train.seed=7")
    for name in (
        "folds/folds.csv",
        "folds/folds.json",
        "outputs/tiny/oof.parquet",
        "outputs/tiny/test.parquet",
        "submissions/tiny.csv",
    ):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    for fold in range(3):
        weights = f"outputs/tiny/fold{fold}/model.safetensors"
        a, b = load_file(first / weights), load_file(second / weights)
        assert all(a[k].equal(b[k]) for k in a)
    c = load_file(other / "outputs/tiny/fold0/model.safetensors")
    a = load_file(first / "outputs/tiny/fold0/model.safetensors")
    assert any(not a[k].equal(c[k]) for k in a if a[k].is_floating_point())
    # The fold file depends on folds.random_state, not on the training seed.
    assert (first / "folds/folds.csv").read_bytes() == (other / "folds/folds.csv").read_bytes()
