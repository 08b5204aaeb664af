"""Adapters merged into their base for the offline bundle (``kaggle.merge_adapters``).

A LoRA fold's weight file holds only the adapters and the head, and predicts on the backbone
folder's fixed weights through peft. Merged, each weight file becomes the whole model: every
adapted weight is W + (alpha / r) B A, the head as trained. The trade-off:

=================  =========================================  ===============================
                   adapters (the default)                     merged
=================  =========================================  ===============================
bundle size        the base + a few MB per weight file        the base + a full copy per
                                                              weight file (9B in bf16: 18 GB)
offline load       the base, then the adapters                the base, then the whole copy
prediction         two extra small matmuls per adapted layer  the plain model: faster
needs offline      peft                                       transformers only
predictions        infer's, bit for bit                       infer's up to rounding: ~1e-7
                                                              in fp32, up to ~1e-2 in bf16
=================  =========================================  ===============================

The bundle still carries the backbone folder: the model is built from it (config, tokenizer,
weights) before a fold's file replaces every weight. Which files hold adapters is read from the
files themselves (a ``base`` fingerprint in their metadata, :mod:`medalist.training.weights`), and
merging is the model's own (its ``merge_adapters()``). A quantized base (``text.lora.quantize``)
is refused: merged weights would be quantized again, and predict otherwise.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from pathlib import Path

from safetensors import safe_open

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.modalities import get_modality
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
    unread = {"pretrained": False, "pretrained_path": None}
    build_cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=unread)})
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
