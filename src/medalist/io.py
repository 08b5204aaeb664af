"""Atomic file writes and content hashes.

Every artifact is written to a temporary file in the destination folder, flushed and fsynced, then
renamed into place (``os.replace`` is atomic on POSIX within one file system). A reader never sees
half a file, and the previous artifact survives a crash or a full disk. A temporary file names its
writer (host and process id); the next successful write of the same artifact removes those left
by writers of this host that are gone (killed mid-write), and no other.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from medalist.errors import MedalistError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    Raises:
        MedalistError: naming ``path`` when the folder cannot be written (read-only, disk full).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{_writer()}-{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        os.close(fd)
    except OSError as exc:
        raise MedalistError(f"cannot write {path}: {exc.strerror or exc}") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        raise MedalistError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
    _remove_orphans(path)


def _writer() -> str:
    """This host's name, safe in a file name (no dots: they separate the name's parts)."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname()) or "host"


def _remove_orphans(path: Path) -> None:
    """Remove the temporary files of ``path`` whose writer (this host, a dead process) is gone."""
    prefix = f".{path.name}.{_writer()}-"
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = leftover.name[len(prefix) :].split(".", 1)[0]
        if not leftover.name.startswith(prefix) or not pid.isdigit():
            continue  # another host's, or not one of ours
        if int(pid) == os.getpid() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            leftover.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def write_with(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and move the result atomically onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """``obj`` as indented JSON, keys in insertion order: that order carries meaning (a metrics
    dict lists the main metric first), and the dicts written are built in a fixed order."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    return write_with(path, lambda tmp: df.to_parquet(tmp, index=False))


def write_csv(path: str | os.PathLike, df: pd.DataFrame) -> Path:
    return write_with(path, lambda tmp: df.to_csv(tmp, index=False))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_frame(df: pd.DataFrame) -> str:
    """Hash a frame's values and column names, independent of its index and of pandas' version."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in df.columns]).encode())
    for column in df.columns:
        values = df[column].astype(str).to_numpy()
        digest.update("\x1f".join(values).encode())
        digest.update(b"\x1e")
    return digest.hexdigest()
