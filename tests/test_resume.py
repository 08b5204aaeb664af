"""Resume: SIGKILL during training, the same command again, and bitwise the uninterrupted result."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

SUPPORT = Path(__file__).parent / "support"
# Three epochs of one fold with gradient accumulation 2 and a checkpoint after every optimizer step;
# EMA carries state of their own through the checkpoint.
ARGS = [
    "train.folds=[0]",
    "train.epochs=3",
    "train.grad_accum=2",
    "train.checkpoint_every=1",
    "tricks.ema.enabled=true",
    "tricks.ema.decay=0.9",
    "tricks.mix.enabled=true",
    "model.drop_rate=0.2",
]


def train(project: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "medalist", "train", "-c", "configs/tiny.yaml", *ARGS, *extra]
    return subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=600
    )


def results(project: Path, experiment: str = "tiny") -> dict:
    fold = project / "outputs" / experiment / "fold0"
    return {
        "model": load_file(fold / "model.safetensors"),
        "ema": load_file(fold / "ema.safetensors"),
        # Checksums of the files (a bundle's manifest, a teammate's copy) must agree too.
        "bytes": {p.name: p.read_bytes() for p in sorted(fold.glob("*.safetensors"))},
        "oof_bytes": (fold / "oof.parquet").read_bytes(),
        "oof": pd.read_parquet(fold / "oof.parquet"),
        "scores": json.loads((fold / "scores.json").read_text())["scores"],
        "metrics": json.loads((project / "outputs" / experiment / "metrics.json").read_text())[
            "cv"
        ],
    }


def assert_identical(got: dict, want: dict) -> None:
    for name in ("model", "ema"):
        assert got[name].keys() == want[name].keys()
        for key, tensor in want[name].items():
            assert got[name][key].equal(tensor), f"{name}: {key} differs"
    assert got["bytes"].keys() == want["bytes"].keys()
    for name, data in want["bytes"].items():
        assert got["bytes"][name] == data, f"{name}: same tensors, other bytes"
    pd.testing.assert_frame_equal(got["oof"], want["oof"], check_exact=True)
    assert got["oof_bytes"] == want["oof_bytes"]
    assert got["scores"] == want["scores"] and got["metrics"] == want["metrics"]


@pytest.fixture(scope="module")
def reference(tiny_template, tmp_path_factory):
    project = tmp_path_factory.mktemp("reference") / "digits"
    shutil.copytree(tiny_template, project)
    subprocess.run(
        [sys.executable, "-m", "medalist", "folds", "-c", "configs/tiny.yaml"],
        cwd=project,
        check=True,
        capture_output=True,
    )
    done = train(project)
    assert done.returncode == 0, done.stderr[-3000:]
    return project, results(project)


# Per epoch: 80 training rows / 16 = 5 micro-batches, 3 optimizer steps (2 + 2 + 1).
@pytest.mark.slow
@pytest.mark.parametrize(
    ("epoch", "batch", "where"),
    [
        (1, 0, "epoch boundary"),
        (1, 2, "mid-epoch, on a step boundary"),
        (2, 3, "inside gradient accumulation"),
    ],
)
def test_kill_and_resume_is_bitwise_identical(reference, tmp_path, epoch, batch, where):
    ref_project, want = reference
    project = tmp_path / "digits"
    shutil.copytree(ref_project, project, ignore=shutil.ignore_patterns("outputs"))
    marker = tmp_path / "killed"
    kill = [
        f"tricks.custom=[{{name: 'faults:KillAt', epoch: {epoch}, batch: {batch}, "
        f"marker: '{marker}'}}]"
    ]
    killed = train(project, *kill)
    assert killed.returncode == -9 and marker.exists(), (
        f"{where}: not killed\n{killed.stderr[-2000:]}"
    )
    fold = project / "outputs" / "tiny" / "fold0"
    assert list((fold / "checkpoint").glob("step-*")), "no checkpoint to resume from"
    assert not (fold / "model.safetensors").exists()
    resumed = train(project, *kill)  # the same command; the marker keeps it alive this time
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert_identical(results(project), want)
    assert not (fold / "checkpoint").exists()  # removed once the fold is complete


@pytest.mark.slow
def test_truncated_checkpoint_refused(reference, tmp_path):
    ref_project, _ = reference
    project = tmp_path / "digits"
    shutil.copytree(ref_project, project, ignore=shutil.ignore_patterns("outputs"))
    marker = tmp_path / "killed"
    kill = [f"tricks.custom=[{{name: 'faults:KillAt', epoch: 1, batch: 2, marker: '{marker}'}}]"]
    assert train(project, *kill).returncode == -9
    newest = sorted((project / "outputs" / "tiny" / "fold0" / "checkpoint").glob("step-*"))[-1]
    data = (newest / "trainer.pt").read_bytes()
    (newest / "trainer.pt").write_bytes(data[: len(data) // 3])
    again = train(project, *kill)
    assert again.returncode == 2
    assert "not a valid checkpoint" in again.stdout + again.stderr
    # Another training config does not resume: the damaged checkpoint is discarded unread.
    other = train(project, "train.seed=5")
    assert other.returncode == 0, other.stderr[-3000:]
    assert "different training config" in other.stdout + other.stderr
    assert (project / "outputs" / "tiny" / "fold0" / "model.safetensors").is_file()


def _run(project: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "medalist", *args, "-c", "configs/tiny.yaml", "train.folds=[0]"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_kill_during_pseudo_round_resumes_bitwise(reference, tmp_path):
    """A student of pseudo round 1 killed mid-epoch resumes to the uninterrupted student; a
    checkpoint made with other pseudo labels is not resumed from."""
    ref_project, _ = reference
    student = ["train.pseudo_round=1", "train.experiment=student"]
    _run(ref_project, "infer")
    _run(ref_project, "pseudo", "pseudo.teachers=[tiny]", "pseudo.mode=hard")
    clean = tmp_path / "clean"
    shutil.copytree(ref_project, clean)
    assert train(clean, *student).returncode == 0
    want = results(clean, "student")

    project = tmp_path / "digits"
    shutil.copytree(ref_project, project)
    marker = tmp_path / "killed"
    kill = [f"tricks.custom=[{{name: 'faults:KillAt', epoch: 1, batch: 3, marker: '{marker}'}}]"]
    assert train(project, *student, *kill).returncode == -9
    resumed = train(project, *student, *kill)
    assert resumed.returncode == 0
    assert "resumed from" in resumed.stderr
    assert_identical(results(project, "student"), want)

    # Killed again, then the labels change (soft this time): the old checkpoint must not be used.
    marker.unlink()
    shutil.rmtree(project / "outputs" / "student")
    assert train(project, *student, *kill).returncode == -9
    _run(project, "pseudo", "pseudo.teachers=[tiny]", "pseudo.mode=soft")
    again = train(project, *student, *kill)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "different training config" in again.stderr and "resumed from" not in again.stderr
