"""P9: checkpoint save, ``medalist.training.weights.save_weights`` against a plain ``torch.save``.

A = ``save_weights`` (CPU tensors, a finite check, safetensors, a temporary file fsynced then
renamed into place); B = ``torch.save(model.state_dict(), path)``. Same model (timm resnet18,
1000 classes, about 47 MB), same folder, each call overwriting its own file.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import benchmark, measure


def breakdown(model: torch.nn.Module, folder: Path, repeats: int = 5) -> dict:
    """Where A's time goes, phase by phase in save_weights' order (medians, ms).

    Mirrors ``medalist.training.weights.save_weights`` and ``medalist.io.atomic_path``: CPU tensors, the
    finite check, safetensors serialisation to a temporary file, fsync, rename into place.
    """
    from safetensors.torch import save_file

    from medalist.training.weights import first_non_finite, state_for_saving

    phases: dict[str, list[float]] = {}
    for _ in range(repeats):
        marks = [time.perf_counter()]
        state = state_for_saving(model)
        marks.append(time.perf_counter())
        assert first_non_finite(state) is None
        marks.append(time.perf_counter())
        tmp = folder / ".parts.safetensors.tmp"
        save_file(state, str(tmp))
        marks.append(time.perf_counter())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        marks.append(time.perf_counter())
        os.replace(tmp, folder / "parts.safetensors")
        marks.append(time.perf_counter())
        names = ("copy", "finite_check", "save_file", "fsync", "replace")
        for name, begin, end in zip(names, marks[:-1], marks[1:], strict=True):
            phases.setdefault(name, []).append(end - begin)
    return {f"{name}_ms": 1000 * statistics.median(v) for name, v in phases.items()}


@benchmark("P9", target="<=1.25", title="checkpoint save (atomic safetensors) vs torch.save")
def checkpoint_save() -> dict:
    import timm

    from medalist.training.weights import save_weights

    model = timm.create_model("resnet18", num_classes=1000)
    with tempfile.TemporaryDirectory(prefix="medalist-p9-") as tmp:
        folder = Path(tmp)
        ours, plain = folder / "model.safetensors", folder / "model.pt"
        result = measure(
            lambda: save_weights(model, ours, {"fold": 0}),
            lambda: torch.save(model.state_dict(), plain),
            warmup=2,
            repeats=10,
        )
        result["megabytes"] = ours.stat().st_size / 2**20
        result.update(breakdown(model, folder))
    return result
