"""Atomic writes under injected faults: a process killed while writing, a full disk, a folder that
cannot be written or created, for every kind of artifact (weights, parquet, json, csv, yaml,
submission, resumable checkpoint, MLM backbone folder): no partial file at the final path, the
previous artifact still loads, and the error (a non-zero exit from the command line) names the
path."""

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from medalist import io
from medalist.cli import main
from medalist.errors import MedalistError
from support.artifacts import KINDS, disk_full, low_level_writer
from support.configs import TRAINED

SUPPORT = Path(__file__).parent / "support"


def temporary_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def contents(root: Path) -> dict[Path, bytes | None]:
    """Every path under ``root``, with the bytes of each file (None for a folder)."""
    return {p.relative_to(root): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


@pytest.mark.slow
def test_killed_while_writing_keeps_the_previous_artifact(tmp_path):
    """SIGKILL with the new version complete in its temporary file, just before the rename."""
    done = subprocess.run(
        [sys.executable, str(SUPPORT / "artifacts.py"), str(tmp_path), *KINDS],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    signals = dict(line.split() for line in done.stdout.splitlines())
    for kind, (write, load, final, *_) in KINDS.items():
        assert signals[kind] == "9", f"{kind}: the writer was not killed ({signals[kind]})"
        root = tmp_path / kind
        assert (root / final).exists(), kind
        assert load(root) == 1, f"{kind}: the previous artifact does not load"
        write(root, 3)  # the next run writes over whatever the killed one left
        assert load(root) == 3, kind
        assert not temporary_files(root), f"{kind}: the killed writer's temporary file is left"


@pytest.mark.parametrize("kind", list(KINDS))
def test_disk_full_keeps_the_previous_artifact_and_names_the_path(kind, tmp_path, monkeypatch):
    write, load, final, *_ = KINDS[kind]
    write(tmp_path, 1)
    before = contents(tmp_path)
    owner, attribute, path_index = low_level_writer(kind)
    monkeypatch.setattr(owner, attribute, disk_full(path_index))
    with pytest.raises(MedalistError, match=rf"cannot write \S*{final}\S*: No space left"):
        write(tmp_path, 2)
    monkeypatch.undo()
    after = contents(tmp_path)
    assert {path: after.get(path) for path in before} == before  # byte for byte as it was
    assert not temporary_files(tmp_path)  # half-written temporary files are removed
    if kind != "checkpoint":  # a checkpoint cut short stays without its completion marker
        assert after == before  # nothing else is left
    assert load(tmp_path) == 1


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` and everything under it cannot be written for the block (as root, which ignores
    permissions, the block runs with the effective user 'nobody')."""
    folders = [folder, *[p for p in folder.rglob("*") if p.is_dir()]]
    for path in folders:
        path.chmod(
            stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
        )
    as_root = os.geteuid() == 0
    try:
        if as_root:
            os.seteuid(65534)
        yield
    finally:
        if as_root:
            os.seteuid(0)
        for path in folders:
            path.chmod(0o755)


@pytest.fixture
def world_readable_dir():
    """A folder every user can reach (pytest's own are private to their owner)."""
    with tempfile.TemporaryDirectory(prefix="medalist-test-") as folder:
        Path(folder).chmod(0o755)
        yield Path(folder)


@pytest.mark.parametrize("kind", list(KINDS))
def test_read_only_folder_keeps_the_previous_artifact_and_names_the_path(kind, world_readable_dir):
    root = world_readable_dir / kind
    root.mkdir()
    write, load, final, *_ = KINDS[kind]
    write(root, 1)
    with read_only(root), pytest.raises(MedalistError, match=rf"cannot write \S*{final}\S*: Perm"):
        write(root, 2)
    assert load(root) == 1
    assert not temporary_files(root)


def test_a_folder_that_cannot_be_created_is_named():
    # /proc refuses new folders even to root: a real folder that cannot be created.
    target = Path("/proc/medalist-test/metrics.json")
    with pytest.raises(MedalistError, match="cannot write /proc/medalist-test/metrics.json"):
        io.write_json(target, {"cv": 1.0})


# -- the command line --------------------------------------------------------------------------


def test_stage_into_an_unwritable_folder_exits_2_naming_it(trained_project, caplog):
    """/proc refuses new folders even to root: a real folder that cannot be written."""
    assert main(["submission", *TRAINED, "competition.submissions_dir=/proc/medalist-test"]) == 2
    assert "cannot write /proc/medalist-test/tiny.csv" in caplog.text
    caplog.clear()
    assert main(["train", *TRAINED, "competition.outputs_dir=/proc/medalist-test"]) == 2
    assert "cannot write /proc/medalist-test/tiny/config.yaml" in caplog.text


def test_disk_full_during_a_stage_exits_2_and_keeps_the_previous_files(
    trained_project, caplog, monkeypatch
):
    out = trained_project / "outputs" / "tiny"
    before = {name: (out / name).read_bytes() for name in ("test.parquet", "fold0/test.parquet")}
    submission = trained_project / "submissions" / "tiny.csv"
    previous_submission = submission.read_bytes()
    monkeypatch.setattr(pd.DataFrame, "to_parquet", disk_full(1))
    monkeypatch.setattr(pd.DataFrame, "to_csv", disk_full(1))
    assert main(["infer", *TRAINED]) == 2
    assert f"cannot write {Path('outputs/tiny/fold0/test.parquet')}: No space left" in caplog.text
    assert main(["submission", *TRAINED]) == 2
    assert "cannot write submissions/tiny.csv: No space left on device" in caplog.text
    monkeypatch.undo()
    for name, data in before.items():
        assert (out / name).read_bytes() == data
        assert len(pd.read_parquet(out / name)) == len(pd.read_csv("data/test.csv"))
    assert submission.read_bytes() == previous_submission
    assert main(["validate", str(submission), *TRAINED]) == 0
    assert not temporary_files(trained_project)


def test_only_temporary_files_of_gone_writers_of_this_host_are_removed(tmp_path):
    """A later write of the same artifact removes what a killed writer of this host left; a live
    writer's file, another host's and another artifact's stay."""
    host = io._writer()
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = int(gone.stdout)  # a process that has exited
    names = {
        "dead": f".metrics.json.{host}-{dead}.abc123.tmp",
        "live": f".metrics.json.{host}-{os.getppid()}.abc123.tmp",
        "other_host": f".metrics.json.elsewhere-{dead}.abc123.tmp",
        "other_file": f".oof.parquet.{host}-{dead}.abc123.tmp",
    }
    for name in names.values():
        (tmp_path / name).write_text("partial")
    io.write_json(tmp_path / "metrics.json", {"cv": 1})
    left = {p.name for p in temporary_files(tmp_path)}
    assert left == {names["live"], names["other_host"], names["other_file"]}
