"""Run several ``medalist`` commands in one process (one launch under torchrun), logging every
file each process writes.

    python -m commands WRITES_LOG train -c cfg.yaml ... ::: infer -c cfg.yaml ... ::: cd DIR ::: ...

Commands are separated by ``:::``; ``cd DIR`` changes the working directory. Every file written
through ``medalist.io`` (all artifacts) and every folder ``pretrain-mlm`` saves is logged as
``<rank> <absolute path>`` to WRITES_LOG. Exits with the first non-zero status.

The main process (rank 0) writes its tables (``.parquet``) half a second late, as on a slow disk:
a stage that returns on the other ranks before the main one's files are on disk (a missing
barrier) then fails the next stage there, instead of passing when the timing happens to allow.
"""

import contextlib
import os
import sys
import time
from pathlib import Path


def _log_writes(log: Path) -> None:
    import medalist.io
    import medalist.modalities.mlm

    rank = os.environ.get("RANK", "0")
    atomic_path, save = medalist.io.atomic_path, medalist.modalities.mlm._save

    def record(path) -> None:
        with open(log, "a") as handle:  # O_APPEND: lines of the two processes do not mix
            handle.write(f"{rank} {Path(path).resolve()}\n")

    @contextlib.contextmanager
    def logged_atomic_path(path):
        with atomic_path(path) as tmp:
            yield tmp
            if rank == "0" and Path(path).suffix == ".parquet":
                time.sleep(0.5)  # a slow disk: the file lands late
        record(path)

    def logged_save(model, tokenizer, folder, report):
        save(model, tokenizer, folder, report)
        record(folder)

    medalist.io.atomic_path = logged_atomic_path
    medalist.modalities.mlm._save = logged_save


def main(argv: list[str]) -> int:
    from medalist.cli import main as medalist

    _log_writes(Path(argv[0]).resolve())
    commands, current = [], []
    for item in argv[1:]:
        if item == ":::":
            commands.append(current)
            current = []
        else:
            current.append(item)
    commands.append(current)
    for command in commands:
        if command[0] == "cd":
            os.chdir(command[1])
            continue
        status = medalist(command)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
