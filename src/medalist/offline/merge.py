"""Adapters merged into their base for the offline bundle (``kaggle.merge_adapters``).

A LoRA fold's weight file holds only the adapters and the head, and predicts on the backbone
folder's fixed weights through peft. Merged, each weight file becomes the whole model: every
adapted weight is W + (alpha / r) B A, the head as trained. The trade-off:

=================  =========================================  ===============================
                   adapters (the default)                     merged
=================  =========================================  ===============================
bundle size        the base + a few MB per weight file        a full copy per weight file
                                                              (9B in bf16: 18 GB), no base
offline load       the base, then the adapters                the config, then the whole copy
prediction         two extra small matmuls per adapted layer  the plain model: faster
needs offline      peft                                       transformers only
predictions        infer's, bit for bit                       infer's up to rounding: ~1e-7
                                                              in fp32, up to ~1e-2 in bf16
=================  =========================================  ===============================

Where every experiment built from a backbone folder ships files that hold every weight of its
model (merged adapters, or a full fine-tune's folds; :func:`covers_config_build`: keys, shapes and
dtypes), the bundle carries that folder without its weight files and the experiments'
``text.backbone`` names its ``config.json``: the model is built from the config
(:func:`medalist.modalities.text_model.config_only`) and a fold's file gives every weight,
predicting bit for bit as when built from the base. Otherwise (adapters left unmerged on the same
folder, weights stored in another dtype than the config's) the folder keeps its weights.

Which files hold adapters is read from the files themselves (a ``base`` fingerprint in their
metadata, :mod:`medalist.training.weights`), and merging is the model's own (its
``merge_adapters()``). A quantized base (``text.lora.quantize``) is refused: merged weights would
be quantized again, and predict otherwise.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.modalities import get_modality
from medalist.modalities.text_model import CONFIG_FILE
from medalist.offline.predict import experiment_config, read_task
from medalist.prediction.infer import prediction_build_config
from medalist.tasks import Task
from medalist.training.weights import (
    BASE_KEY,
    bare_model,
    load_weights,
    read_metadata,
    save_weights,
)

log = logging.getLogger(__name__)

MERGED_SUFFIX = ".merged.safetensors"
# How far the merged model's sample predictions may be from test.parquet when its weights are
# half precision: W + (alpha / r) B A is rounded to bf16 once per weight, where infer adds the
# adapters' float32 output to the rounded base layer's. On the tiny bf16 test decoder, adapters as
# large as its weights moved the probabilities by up to 1.2e-2; in float32, by under 1e-6.
HALF_MERGED_ATOL = 2e-2
HALF = {"BF16", "F16"}
# safetensors' names of the dtypes a model's state dict holds.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
PEFT_MISSING = (
    "kaggle.merge_adapters: merging needs peft, as training the adapters did (pip install "
    "'medalist[llm]')"
)


def holds_adapters(files: dict[str, list[Path]]) -> bool:
    """Some fold file holds part of a model on a fixed base (adapters): its metadata names the
    base's fingerprint."""
    return any(BASE_KEY in read_metadata(path) for paths in files.values() for path in paths)


def check_mergeable(cfg: Config, name: str) -> None:
    """What would stop merging an experiment's adapters, before any model is built.

    Raises:
        ConfigError: naming ``kaggle.merge_adapters``: peft missing, or a quantized base.
    """
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(PEFT_MISSING)
    if cfg.text.lora.quantize is not None:
        raise ConfigError(
            f"kaggle.merge_adapters: '{name}' trains on a quantized base (text.lora.quantize: "
            f"{cfg.text.lora.quantize}); merged weights would be quantized again and predict "
            "otherwise than its adapters did: package it with kaggle.merge_adapters=false"
        )


def merged_name(path: Path) -> str:
    """``model.safetensors`` -> ``model.merged.safetensors``."""
    return path.name.removesuffix(".safetensors") + MERGED_SUFFIX


def merge_file(cfg: Config, task: Task, source: Path, target: Path) -> dict:
    """Write ``target``: the whole model of the adapter file ``source``, adapters merged in.

    The model is built as ``infer`` builds it (the experiment's backbone folder), the file loaded
    (its base fingerprint checked), merged, and saved with the source's metadata (``merged``
    added). Returns the config overrides under which the merged model is built (no peft).
    """
    build_cfg = prediction_build_config(cfg)
    model = load_weights(get_modality(cfg.modality).build_model(build_cfg, task), source)
    merge = getattr(bare_model(model), "merge_adapters", None)
    if not callable(merge):
        raise ConfigError(
            f"kaggle.merge_adapters: {source} holds part of a {type(model).__name__}, which has "
            "no adapters to merge; package with kaggle.merge_adapters=false"
        )
    overrides = merge()
    metadata = {k: v for k, v in read_metadata(source).items() if k != BASE_KEY}
    save_weights(model, target, {**metadata, "merged": source.name})
    del model
    gc.collect()  # one whole model in memory at a time
    return overrides


def sample_tolerance(bundle: Path, entry: dict, atol: float) -> float:
    """The tolerance of an experiment's bundle predictions against its ``test.parquet``:
    ``atol``, or :data:`HALF_MERGED_ATOL` where it ships merged half-precision weights."""
    if entry.get("adapters") != "merged":
        return atol
    for files in entry["weights"].values():
        for relative in files:
            with safe_open(str(bundle / relative), "pt") as handle:
                names = handle.keys()  # a safetensors handle, not a dict
                if any(handle.get_slice(name).get_dtype() in HALF for name in names):
                    return max(atol, HALF_MERGED_ATOL)
    return atol


def covers_config_build(bundle: Path, entry: dict, key: str, folder: Path) -> bool:
    """Every weight file of the experiment (merged adapters, or a full fine-tune's) holds every
    weight of its model as the bundle builds it from ``folder``'s config alone (``key``, e.g.
    ``text.backbone``, naming the folder's ``config.json``): each key of its state dict, in its
    shape and dtype, or tied to one that is.

    Then the experiment needs no weights of ``folder``. The model is built once (its weights left
    uninitialised) and each file's header read, not its tensors. A model that cannot be built
    without the base (unmerged LoRA adapters, a quantized base) is not covered.
    """
    probe = {**entry, "paths": {**entry["paths"], key: str(folder / CONFIG_FILE)}}
    cfg = experiment_config(bundle, probe, bundle)  # the data folder is not read
    try:
        model = get_modality(cfg.modality).build_model(cfg, read_task(bundle / entry["task"]))
    except ConfigError as exc:  # the model reads the base (LoRA): the folder keeps its weights
        log.info("%s: %s", entry.get("config", folder), exc)
        return False
    own = bare_model(model).state_dict()
    for files in entry["weights"].values():
        for relative in files:
            uncovered = _uncovered(own, bundle / relative)
            if uncovered:
                log.info(
                    "%s does not hold every weight of the model built from %s's config (%s...): "
                    "the bundle ships the folder's weights",
                    relative,
                    folder,
                    uncovered[:3],
                )
                return False
    del model, own
    gc.collect()
    return True


def _uncovered(own: dict[str, torch.Tensor], path: Path) -> list[str]:
    """The keys of ``own`` that ``path`` does not give: absent (and not tied to a key it holds),
    or stored in another shape or dtype."""
    with safe_open(str(path), "pt") as handle:
        names = handle.keys()  # a safetensors handle, not a dict
        slices = {name: handle.get_slice(name) for name in names}
        stored = {name: (part.get_shape(), part.get_dtype()) for name, part in slices.items()}
    # A tied tensor is stored once; the module that owns it fills the other names.
    given = {tensor.data_ptr() for name, tensor in own.items() if name in stored}
    uncovered = []
    for name, tensor in own.items():
        if name not in stored:
            if tensor.data_ptr() not in given:
                uncovered.append(name)
            continue
        shape, dtype = stored[name]
        if list(shape) != list(tensor.shape) or DTYPES.get(dtype) != tensor.dtype:
            uncovered.append(name)
    return uncovered
