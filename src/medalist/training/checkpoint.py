"""Resumable training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a folder ``<folder>/checkpoint/step-<n>/`` (a fold's folder, or pretraining's
``.<name>.resume`` beside its output; :mod:`medalist.training.resume` decides what goes in)
holding

- ``model.safetensors``, and ``hook-<i>.safetensors`` for hooks with tensor state (EMA, SWA),
  ``best-model.safetensors`` / ``best-eval.safetensors`` (the best epoch so far); for a model
  with ``saved_keys()`` (LoRA) each holds only those keys (the adapters and the head), the base
  is read from the model's own folder;
- ``trainer.pt``: optimizer, scheduler, grad scaler, random states (python, numpy, torch, CUDA),
  counters and the best epoch's validation logits: tensors and plain values only, read back with
  ``torch.load(weights_only=True)``, so a tampered file cannot run code;
- ``progress.json``: epoch, step, position in the epoch, best scores and history;
- ``COMPLETE``, written last: a folder without it is ignored (a kill while writing).

The newest complete folder wins; the others (older ones, and folders a kill left incomplete) are
removed once a newer one is complete.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from medalist.errors import CheckpointError, MedalistError
from medalist.io import write_json, write_text, write_with
from medalist.training.weights import first_non_finite, read_weights, save_weights

log = logging.getLogger(__name__)
COMPLETE = "COMPLETE"


def rng_state() -> dict:
    """Python, numpy and torch random states as tensors and plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _module_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = folder / "checkpoint"
    found = [p for p in root.glob("step-*") if (p / COMPLETE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    folder: Path,
    *,
    step: int,
    model,
    optimizer,
    scheduler,
    scaler,
    hook_states: list[dict],
    best: dict,
    progress: dict,
) -> Path:
    """Write a complete checkpoint for ``step`` and remove the older ones."""
    target = folder / "checkpoint" / f"step-{step:08d}"
    try:
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
    except OSError as exc:  # a read-only or full disk: name the folder, as every write does
        raise MedalistError(f"cannot write {target}: {exc.strerror or exc}") from exc
    save_weights(model, target / "model.safetensors")
    for index, tensors in enumerate(hook_states):
        if tensors:
            _save_tensors(tensors, target / f"hook-{index}.safetensors")
    for name in ("model", "eval"):
        if best.get(name):
            _save_tensors(best[name], target / f"best-{name}.safetensors")
    trainer = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "best_logits": None if best.get("logits") is None else torch.from_numpy(best["logits"]),
    }
    write_with(target / "trainer.pt", lambda tmp: _torch_save(trainer, tmp))
    write_json(target / "progress.json", progress)
    write_text(target / COMPLETE, "")
    # This one is complete: the others go, the older complete ones and any a kill cut short.
    for other in (folder / "checkpoint").glob("step-*"):
        if other != target:
            shutil.rmtree(other, ignore_errors=True)
    return target


def _torch_save(obj: dict, path: Path) -> None:
    """``torch.save`` through an open file: given a path, torch names the archive's folder after
    the (temporary, per-process) file name, so the same state would give other bytes."""
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def _save_tensors(tensors: dict, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    bad = first_non_finite(state)
    if bad is not None:  # EMA or best weights: a non-finite model is never saved either
        raise CheckpointError(f"refusing to save {path}: tensor '{bad}' is not finite")
    write_with(path, lambda tmp: save_file(state, str(tmp)))


def read_progress(path: Path) -> dict:
    """A checkpoint folder's ``progress.json`` alone (epoch, step, the training config's hash)."""
    try:
        return json.loads((path / "progress.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path / 'progress.json'}: not a valid checkpoint ({exc})") from exc


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint folder; nothing in it can execute code."""
    try:
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a bad or unsafe file
        raise CheckpointError(f"{path / 'trainer.pt'}: not a valid checkpoint ({exc})") from exc
    hooks = {int(p.stem.split("-")[1]): read_weights(p) for p in path.glob("hook-*.safetensors")}
    best = {
        name: read_weights(path / f"best-{name}.safetensors")
        for name in ("model", "eval")
        if (path / f"best-{name}.safetensors").is_file()
    }
    logits = trainer.get("best_logits")
    best["logits"] = None if logits is None else logits.numpy()
    return {
        "model": read_weights(path / "model.safetensors"),
        "trainer": trainer,
        "hooks": hooks,
        "best": best,
        "progress": read_progress(path),
    }


def clear_checkpoints(folder: Path) -> None:
    shutil.rmtree(folder / "checkpoint", ignore_errors=True)
