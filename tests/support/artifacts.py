"""Every kind of artifact medalist writes, as (write version v, load) pairs, for the atomic-write
tests (test_atomic_writes.py).

``write(root, v)`` writes version ``v`` of the artifact under ``root`` through medalist's own
writer; ``load(root)`` reads it back the way a stage would and returns the version found.

Run as a script, it is the killed writer: ``python artifacts.py ROOT KIND...`` forks one child per
kind; the child writes version 1, then starts version 2 and SIGKILLs itself at the moment the new
bytes are complete in the temporary file, just before the rename (its first ``os.fsync``; for
the MLM folder, once weights and tokenizer are in the staging folder). It prints each child's
exit as ``KIND SIGNAL``.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
from pathlib import Path

import pandas as pd

ID = "id"
SAMPLE = pd.DataFrame({ID: [10, 11, 12], "p": [0.0, 0.0, 0.0]})


def _linear(v: int):
    import torch

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float(v))
    return model


def _weights(root: Path, v: int) -> None:
    from medalist.training.weights import save_weights

    save_weights(_linear(v), root / "model.safetensors", {"fold": 0})


def _load_weights(root: Path) -> int:
    from medalist.training.weights import load_weights

    return int(load_weights(_linear(0), root / "model.safetensors").weight[0, 0])


def _parquet(root: Path, v: int) -> None:
    from medalist.io import write_parquet

    write_parquet(root / "oof.parquet", pd.DataFrame({ID: [1, 2], "p_0": [v, v]}))


def _json(root: Path, v: int) -> None:
    from medalist.io import write_json

    write_json(root / "metrics.json", {"cv": v})


def _csv(root: Path, v: int) -> None:
    from medalist.io import write_csv

    write_csv(root / "folds.csv", pd.DataFrame({ID: [1, 2], "fold": [v, v]}))


def _text(root: Path, v: int) -> None:
    from medalist.io import write_text

    write_text(root / "config.yaml", f"train:\n  seed: {v}\n")


def _submission(root: Path, v: int) -> None:
    from medalist.submission.format import write_submission

    sub = SAMPLE.assign(p=0.1 * v)
    write_submission(sub, SAMPLE, root / "submission.csv", id_column=ID, probability_columns=["p"])


def _load_submission(root: Path) -> int:
    from medalist.submission.format import validate_submission_file

    sample = root.parent / f"{root.name}-sample.csv"  # beside, not in, the folder under test
    SAMPLE.to_csv(sample, index=False)
    path = root / "submission.csv"
    validate_submission_file(path, sample, id_column=ID, probability_columns=["p"])
    return round(pd.read_csv(path)["p"].iloc[0] * 10)


def _checkpoint(root: Path, v: int) -> None:
    import torch

    from medalist.training.checkpoint import save_checkpoint

    model = _linear(v)
    optimizer = torch.optim.AdamW(model.parameters())
    save_checkpoint(
        root,
        step=v,
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=None,
        hook_states=[{"shadow": torch.full((2,), float(v))}],
        best={},
        progress={"epoch": v},
    )


def _load_checkpoint(root: Path) -> int:
    from medalist.training.checkpoint import checkpoints, load_checkpoint

    found = load_checkpoint(checkpoints(root)[-1])
    assert found["hooks"][0]["shadow"].tolist() == [found["progress"]["epoch"]] * 2
    return int(found["progress"]["epoch"])


@functools.cache
def _mlm_objects():
    """A tiny masked-LM BERT and its tokenizer, made once (before any folder is read-only)."""
    from transformers import BertConfig, BertForMaskedLM

    from support.tiny_text import train_tokenizer

    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=8,
        max_position_embeddings=16,
    )
    return BertForMaskedLM(config), train_tokenizer(["the array holds the numbers"], vocab_size=40)


def _mlm(root: Path, v: int) -> None:
    from medalist.modalities.mlm import _save

    _save(*_mlm_objects(), root / "mlm" / "adapted", {"version": v})


def _load_mlm(root: Path) -> int:
    import json

    from transformers import AutoModelForMaskedLM

    from medalist.modalities.text_model import load_tokenizer

    folder = root / "mlm" / "adapted"
    AutoModelForMaskedLM.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    load_tokenizer(folder)
    return json.loads((folder / "mlm.json").read_text())["version"]


def _reader(name: str):
    def load(root: Path) -> int:
        import json

        path = root / name
        if name.endswith(".parquet"):
            return int(pd.read_parquet(path)["p_0"].iloc[0])
        if name.endswith(".json"):
            return json.loads(path.read_text())["cv"]
        if name.endswith(".csv"):
            return int(pd.read_csv(path)["fold"].iloc[0])
        return int(path.read_text().split()[-1])

    return load


# kind: (write, load, final path under root, (object, attribute) of the low-level writer that a
# full disk makes fail part way, index of that writer's path argument)
KINDS = {
    "weights": (
        _weights,
        _load_weights,
        "model.safetensors",
        ("medalist.training.weights", "save_file"),
        1,
    ),
    "parquet": (_parquet, _reader("oof.parquet"), "oof.parquet", ("DataFrame", "to_parquet"), 1),
    "json": (_json, _reader("metrics.json"), "metrics.json", ("Path", "write_text"), 0),
    "csv": (_csv, _reader("folds.csv"), "folds.csv", ("DataFrame", "to_csv"), 1),
    "text": (_text, _reader("config.yaml"), "config.yaml", ("Path", "write_text"), 0),
    "submission": (_submission, _load_submission, "submission.csv", ("DataFrame", "to_csv"), 1),
    "checkpoint": (_checkpoint, _load_checkpoint, "checkpoint", ("torch", "save"), 1),
    "mlm": (_mlm, _load_mlm, "mlm/adapted", ("medalist.modalities.mlm", "write_json"), 0),
}


def low_level_writer(kind: str):
    """(owner object, attribute name, path argument index) of the kind's low-level writer."""
    import importlib

    import torch

    owner, attribute = KINDS[kind][3]
    owners = {"DataFrame": pd.DataFrame, "Path": Path, "torch": torch}
    return owners.get(owner) or importlib.import_module(owner), attribute, KINDS[kind][4]


def disk_full(path_index: int):
    """A writer that puts half a file on disk, then fails as a full disk does."""

    def write(*args, **kwargs):
        target = args[path_index]  # a path, or a file opened on one (torch.save's)
        Path(target.name if hasattr(target, "write") else target).write_bytes(b"PAR1 half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def _kill_child(root: Path, kind: str) -> None:
    write = KINDS[kind][0]
    write(root, 1)

    def die(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if kind == "mlm":
        import medalist.modalities.mlm

        medalist.modalities.mlm.write_json = die
    else:
        os.fsync = die
    write(root, 2)
    os._exit(0)  # not reached: the kill comes first


def main(root: str, kinds: list[str]) -> None:
    # Import everything once here, so that each forked child starts at once.
    import transformers  # noqa: F401

    import medalist.modalities.mlm  # noqa: F401
    import medalist.submission.format  # noqa: F401
    import medalist.training.checkpoint  # noqa: F401
    import medalist.training.weights  # noqa: F401

    for kind in kinds:
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        child = os.fork()
        if child == 0:
            try:
                _kill_child(folder, kind)
            finally:
                os._exit(3)
        _, status = os.waitpid(child, 0)
        print(kind, os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))  # `support.tiny_text`
    main(sys.argv[1], sys.argv[2:])
