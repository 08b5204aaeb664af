"""What a bundle may hold: no training data, no credentials, nothing pickled.

A Kaggle dataset is easy to share by mistake, and whoever attaches it runs what it holds. Every
file of the bundle is checked before the bundle is put in place: its type must be one the bundle
carries (wheels, safetensors, JSON, YAML, text, tokenizer files), its bytes must not be a pickle
or a zip of pickles, a safetensors file must have a readable header, text must not hold a Kaggle
key, and no file may be a copy of one under the competition's data folder. The first problem
stops packaging, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import zipfile
from pathlib import Path

from medalist.errors import DataError

TEXT = {".json", ".yaml", ".yml", ".txt", ".md", ".py", ".ipynb"}
ALLOWED = TEXT | {".whl", ".safetensors", ".model", ".tiktoken"}  # .model: sentencepiece
PICKLED = {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib", ".npy", ".npz", ".h5"}
CREDENTIALS = {"kaggle.json", "access_token", ".netrc", "_netrc", ".env", "id_rsa", "id_ed25519"}
KEY_PATTERNS = (
    re.compile(rb'"key"\s*:\s*"[0-9a-f]{32}"'),
    re.compile(rb"KAGGLE_(?:KEY|API_TOKEN)\s*[=:]\s*\S"),
)
SECRET_VARIABLES = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")


def is_pickle(head: bytes) -> bool:
    """Pickle protocol 2+ starts with PROTO (0x80) and the protocol number."""
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _check_safetensors(path: Path, label: str) -> None:
    with open(path, "rb") as handle:
        size_bytes = handle.read(8)
        if len(size_bytes) != 8:
            raise DataError(f"{label}: not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > path.stat().st_size - 8:
            raise DataError(f"{label}: not a safetensors file (header past the end)")
        try:
            json.loads(handle.read(size))
        except ValueError as exc:
            raise DataError(f"{label}: not a safetensors file (header: {exc})") from exc


def _check_wheel(path: Path, label: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile as exc:
        raise DataError(f"{label}: not a wheel ({exc})") from exc
    for name in names:
        if Path(name).name.lower() in CREDENTIALS:
            raise DataError(f"{label}: holds {name}, which looks like credentials")


def _check_text(data: bytes, label: str, secrets: list[bytes]) -> None:
    if any(pattern.search(data) for pattern in KEY_PATTERNS) or any(s in data for s in secrets):
        raise DataError(f"{label}: holds what looks like a Kaggle key; credentials never ship")


def _data_sizes(data_dir: Path | None) -> dict[int, list[Path]]:
    sizes: dict[int, list[Path]] = {}
    if data_dir is None or not data_dir.is_dir():
        return sizes
    for root, _, files in os.walk(data_dir):
        for name in files:
            path = Path(root) / name
            if path.stat().st_size:  # empty files are all alike
                sizes.setdefault(path.stat().st_size, []).append(path)
    return sizes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def check_bundle(folder: str | Path, data_dir: str | Path | None = None) -> list[Path]:
    """Check every file under ``folder``; returns them, or raises naming the first bad one.

    Raises:
        DataError: a file type the bundle does not carry (data tables, images, archives), a
            pickled file, a safetensors file with no valid header, credentials, or a copy of a
            file under ``data_dir``.
    """
    folder = Path(folder)
    secrets = [os.environ[v].encode() for v in SECRET_VARIABLES if len(os.environ.get(v, "")) >= 8]
    sizes = _data_sizes(Path(data_dir) if data_dir is not None else None)
    files = sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    for path in files:
        label = f"bundle file {path.relative_to(folder)}"
        name, suffix = path.name.lower(), path.suffix.lower()
        if path.is_symlink():
            raise DataError(f"{label}: is a link; the bundle holds plain files only")
        if name in CREDENTIALS:
            raise DataError(f"{label}: looks like credentials; they never ship in a bundle")
        if suffix in PICKLED:
            raise DataError(f"{label}: pickled formats never ship; weights go in as safetensors")
        if suffix not in ALLOWED:
            raise DataError(
                f"{label}: '{suffix or name}' is not a type the bundle carries (no training "
                f"data, images or archives; allowed: {sorted(ALLOWED)})"
            )
        with open(path, "rb") as handle:
            head = handle.read(4)
        if is_pickle(head) or (head == b"PK\x03\x04" and suffix != ".whl"):
            raise DataError(f"{label}: its bytes are a pickle or an archive, whatever its name")
        if suffix == ".safetensors":
            _check_safetensors(path, label)
        elif suffix == ".whl":
            _check_wheel(path, label)
        elif suffix in TEXT:
            _check_text(path.read_bytes(), label, secrets)
        same_size = sizes.get(path.stat().st_size, [])
        if same_size and any(_sha256(path) == _sha256(other) for other in same_size):
            raise DataError(f"{label}: is a copy of a competition data file; data never ships")
    return files
