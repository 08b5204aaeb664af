"""The project's record of the pretrained files it resolved: ``models/weights.json``.

One entry per hub file (``<repo>/<file>``): the name and config key that asked for it, the
snapshot's commit, its size and sha256. A later run that finds the same commit with another size
(a cut-short download, a half-copied Kaggle dataset) or, where the content is hashed, another
sha256 stops, naming the file. A new commit (the repository was updated) is recorded afresh.
The user's own local files (``model.pretrained_path``, a backbone folder) are not recorded: they
may be rewritten on purpose (``pretrain-mlm`` rewrites its folder in place), and the training
fingerprint already follows their content.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medalist.errors import CheckpointError, DataError
from medalist.io import sha256_file, write_json
from medalist.layout import weights_manifest
from medalist.pretrained.resolve import Weights

log = logging.getLogger(__name__)

FORMAT = 1


def read(path: Path) -> dict:
    """The recorded files (``{}`` without a manifest)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not a weights manifest ({exc}); delete it and run again"
        ) from None


def entries(weights: Weights) -> dict[str, Path]:
    """The manifest keys of a resolved name's hub files (none for a local path)."""
    if weights.repo_id is None:
        return {}
    return {f"{weights.repo_id}/{path.name}": path for path in weights.files}


def verify(manifest: Path, weights: Weights, *, content: bool) -> dict[str, dict]:
    """Compare a resolved name's files with the manifest; returns their fresh entries.

    Args:
        manifest: the manifest file.
        weights: the resolved name.
        content: hash the files too (the ``weights`` command), not only their sizes (a stage's
            input check, where gigabytes would be read once more).

    Raises:
        CheckpointError: a file recorded at the same commit now has another size or content.
    """
    recorded = read(manifest)
    fresh = {}
    for name, path in entries(weights).items():
        entry = {
            "name": weights.name,
            "key": weights.key,
            "commit": weights.commit,
            "size": path.stat().st_size,
        }
        if content:
            entry["sha256"] = sha256_file(path)
        old = recorded.get(name)
        if old and old.get("commit") == weights.commit:
            for field in ("size", "sha256"):
                if field in entry and field in old and old[field] != entry[field]:
                    raise CheckpointError(
                        f"{weights.key}: {path} ({name}) has {field} {entry[field]}, but "
                        f"{manifest} recorded {old[field]}: the file changed or was cut short; "
                        "delete it and run `medalist weights` again (or remove its entry from "
                        f"{manifest} if the change is intended)"
                    )
        elif old:
            log.info(
                "%s: %s is at a new commit %s (was %s)",
                weights.key,
                name,
                entry["commit"],
                old.get("commit"),
            )
        fresh[name] = entry
    return fresh


def record(manifest: Path, fresh: dict[str, dict]) -> None:
    """Write the verified entries into the manifest, keeping the others."""
    files = read(manifest)
    files.update(fresh)
    write_json(manifest, {"format": FORMAT, "files": dict(sorted(files.items()))})


def check_recorded(weights: Weights) -> None:
    """A stage's input check: sizes against the project's manifest (no hashing); a file just
    downloaded is recorded."""
    path = weights_manifest()
    fresh = verify(path, weights, content=False)
    if fresh and weights.source == "downloaded":
        record(path, fresh)
