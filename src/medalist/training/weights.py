"""Model weights as safetensors, written atomically and loaded with checks.

Nothing here unpickles: a weights file a teammate sends cannot run code. Loading refuses a
truncated file, a non-finite tensor and a file made for another model, naming the path. The same
weights and metadata give the same bytes in any process, so checksums of the files can be compared.

Keys are always the bare model's: a ``torch.compile``-d model is saved and loaded through the
model it wraps, and a file whose keys carry torch.compile's ``_orig_mod.`` (the state dict of a
compiled model, saved by other code) loads into the bare model.

A model whose weights are mostly a fixed base read from elsewhere (a LoRA text model: the
backbone folder) saves only what it trains. It says so with two methods:

- ``saved_keys()``: the state-dict keys its files hold (None: all of them);
- ``weights_base()``: a fingerprint of the rest, stored in the file's metadata (``base``) and
  compared when the file is loaded, so adapters never land on another base.

Every save and load here honours them, so the fold weight files (the model's, EMA's, SWA's),
snapshots, the model file of a resumable checkpoint, ``infer`` and the offline bundle handle such
models without knowing of them.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from medalist.errors import CheckpointError
from medalist.io import write_with

METADATA_KEY = "medalist"
BASE_KEY = "base"  # the metadata entry of weights_base()
COMPILED_PREFIX = "_orig_mod."  # what torch.compile's wrapper puts before its model's keys


def bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, out of every wrapper: DDP's (``module.``) and ``torch.compile``'s
    (``_orig_mod.``).

    Its ``state_dict`` keys are the model's own, so weights saved from it load into the model
    whether or not either run was compiled or distributed. Training code that saves, copies or
    names a prepared model's tensors (checkpoints, EMA, SWA, snapshots, adversarial targets)
    goes through here, not through ``Accelerator.unwrap_model``: by default that keeps the
    compiled wrapper, and re-points it at the model inside DDP, so a compiled DDP model would no
    longer synchronise its gradients.
    """
    return extract_model_from_parallel(model, keep_torch_compile=False)


def saved_keys(model: torch.nn.Module) -> frozenset[str] | None:
    """The keys a model's weight files hold: its ``saved_keys()``, else None (every key)."""
    listed = getattr(bare_model(model), "saved_keys", None)
    return listed() if callable(listed) else None


def weights_base(model: torch.nn.Module) -> str | None:
    """The fingerprint of the weights a model's files leave out (``weights_base()``), or None."""
    base = getattr(bare_model(model), "weights_base", None)
    return base() if callable(base) else None


def without_compiled_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with torch.compile's ``_orig_mod.`` taken out of its keys (where it wraps the
    whole model, or a compiled submodule)."""
    if not any(COMPILED_PREFIX in key for key in state):
        return state
    return {key.replace(COMPILED_PREFIX, ""): tensor for key, tensor in state.items()}


def state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors of the state dict, with tied tensors stored once each.

    A tensor already on the CPU is not copied (the file is written before the caller returns),
    except where it shares its storage with another entry, which safetensors refuses. A compiled
    model gives its bare model's keys; channels_last tensors are stored in the standard layout.
    Only the model's :func:`saved_keys` are kept.
    """
    state, seen = {}, {}
    keep = saved_keys(model)
    for key, tensor in bare_model(model).state_dict().items():
        if keep is not None and key not in keep:
            continue
        ptr = (tensor.data_ptr(), tensor.shape, tensor.dtype) if tensor.numel() else None
        if ptr is not None and ptr in seen:
            continue  # a tied weight is restored through the module that owns it
        if ptr is not None:
            seen[ptr] = key
        state[key] = tensor.detach().to("cpu").contiguous()
    storages = Counter(t.untyped_storage().data_ptr() for t in state.values() if t.numel())
    for key, tensor in state.items():
        if tensor.numel() and storages[tensor.untyped_storage().data_ptr()] > 1:
            state[key] = tensor.clone()
    return state


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating tensor holding a NaN or an infinity, or None.

    Each tensor's min and max (NaN propagates, an infinity shows), then one check of them all:
    a tenth of the time of ``isfinite().all()`` per tensor on a CPU, one sync on a GPU.
    """
    floats = [(k, t) for k, t in state.items() if t.is_floating_point() and t.numel()]
    if not floats:
        return None
    bounds = torch.stack([torch.stack(t.aminmax()).float() for _, t in floats])
    finite = torch.isfinite(bounds).all(dim=1).tolist()
    return next((key for (key, _), ok in zip(floats, finite, strict=True) if not ok), None)


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict | None = None) -> Path:
    """Save a model's weights; a non-finite tensor is refused so a broken model never lands.

    ``metadata`` (JSON values) is read back by :func:`read_metadata`; a model with a
    :func:`weights_base` gets it added under ``base``.
    """
    state = state_for_saving(model)
    bad = first_non_finite(state)
    if bad is not None:
        raise CheckpointError(f"refusing to save {path}: tensor '{bad}' is not finite")
    base = weights_base(model)
    if base is not None:
        metadata = {**(metadata or {}), BASE_KEY: base}
    # safetensors keeps the header's metadata in a hash map, written in an order that changes
    # from one process to the next; one key holding JSON with sorted keys gives the same bytes.
    meta = {METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str)} if metadata else None
    return write_with(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def read_metadata(path: str | Path) -> dict:
    """The metadata :func:`save_weights` stored with the weights ({} when there is none)."""
    try:
        with safe_open(str(path), "pt") as handle:
            stored = handle.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from exc
    return json.loads(stored[METADATA_KEY]) if METADATA_KEY in stored else stored


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from exc


def load_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load weights saved by :func:`save_weights` into ``model``; keys and shapes must match.

    A file holding only a model's :func:`saved_keys` must have been saved on the same base
    (its ``base`` metadata equals the model's :func:`weights_base`).
    """
    state = read_weights(path)
    base = weights_base(model)
    if base is not None and not _covers_model(model, state):
        saved = read_metadata(path).get(BASE_KEY)
        if saved != base:
            raise CheckpointError(
                f"{path} was trained on other base weights than the model's backbone "
                f"({'no fingerprint in the file' if saved is None else 'fingerprints differ'}); "
                "point text.backbone at the folder it was trained from"
            )
    return load_state_into(model, state, path)


def _covers_model(model: torch.nn.Module, state: dict) -> bool:
    """``state`` holds every key of the bare model (the whole model, base included)."""
    return set(bare_model(model).state_dict()) <= set(without_compiled_prefix(state))


def load_state_into(model: torch.nn.Module, state: dict, source) -> torch.nn.Module:
    """Load ``state`` (read from ``source``) into ``model`` if its keys and shapes all match.

    ``model`` may be compiled and ``state`` may come from a compiled model: the keys compared are
    the bare model's (:func:`without_compiled_prefix`). A model with :func:`saved_keys` takes
    exactly those (its base stays as built), or a state of the whole model.

    Raises:
        CheckpointError: naming ``source`` and the first mismatches, before any tensor is copied.
    """
    target, state = bare_model(model), without_compiled_prefix(state)
    own = target.state_dict()
    keep = saved_keys(target)
    if keep is not None and not set(own) <= set(state):
        own = {key: tensor for key, tensor in own.items() if key in keep}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in state if k in own and own[k].shape != state[k].shape]
    # Tied tensors were saved once; they are missing here but filled by their owner.
    missing = [k for k in missing if not _is_tied(target, k)]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source} does not fit this model: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, shape mismatch {wrong[:3]} (was it saved for another model or "
            "config?)"
        )
    target.load_state_dict(state, strict=False)
    return model


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    own = model.state_dict()
    target = own[key]
    return any(
        other != key and t.data_ptr() == target.data_ptr() and t.shape == target.shape
        for other, t in own.items()
    )
