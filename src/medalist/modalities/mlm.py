"""``medalist pretrain-mlm``: domain-adaptive masked-language-model pretraining.

Gururangan et al., "Don't stop pretraining: adapt language models to domains and tasks"
(ACL 2020): a few epochs of the pretraining objective on the competition's own text (train and
test, and any unlabelled text named in ``mlm.extra_files``) before fine-tuning. Usual settings:
mask 15% of the tokens, whole words where the tokenizer gives offsets, learning rate 2e-5 to
1e-4, 2-10 epochs.

Reads the configured text columns of ``data/train.csv`` (and ``test.csv`` unless
``mlm.include_test`` is false) and the extra files. Documents longer than ``mlm.max_length`` are
cut into chunks. A share of the documents (``mlm.valid_fraction``) is held out, masked once with a
fixed seed, and its perplexity measured before and after training. Writes
``<outputs_dir>/mlm/<name>/``: ``config.json``, ``model.safetensors``, the tokenizer files (a
folder ``text.backbone`` can point to) and ``mlm.json`` (perplexities, corpus size, loss per
epoch). The folder is written beside and renamed into place, so a reader never sees half of it.

Pretraining runs on the fold loop's runtime (:func:`medalist.training.loop.train_one_epoch`): a
step with a non-finite loss or gradient changes nothing, ``train.max_bad_steps`` of them in a row
stop the run, and checkpoints (every ``train.checkpoint_every`` optimizer steps, and at each epoch
end) go to ``<outputs_dir>/mlm/.<name>.resume/`` so that a killed run, started again with the same
config, ends with the weights of an uninterrupted one. They are removed once the folder is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForMaskedLM, DataCollatorForLanguageModeling, get_scheduler

from medalist.config import Config
from medalist.data import read_test, read_train
from medalist.errors import CheckpointError, ConfigError, DataError, MedalistError
from medalist.io import sha256_file, write_json
from medalist.layout import mlm_dir, mlm_resume_dir, test_path, train_path
from medalist.modalities.text import LengthBatchSampler, Template, check_text_rows, text_columns
from medalist.modalities.text_model import (
    backbone_dir,
    check_max_length,
    is_decoder,
    load_config,
    load_tokenizer,
    quiet_transformers,
    transformer_layers,
)
from medalist.training.guard import StepGuard
from medalist.training.hooks import Hooks, TrainState
from medalist.training.loop import train_one_epoch
from medalist.training.resume import RunCheckpoints, epoch_batches
from medalist.training.runtime import bar_off, check_precision, make_accelerator, set_loader_epoch

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The corpus


def _extra_documents(cfg: Config, name: str) -> list[str]:
    path = Path(name) if Path(name).is_absolute() else Path(cfg.competition.data_dir) / name
    key = "mlm.extra_files"
    if not path.is_file():
        raise DataError(f"{key}: file not found: {path}")
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]
    column = cfg.mlm.extra_column or cfg.text.text_column
    if path.suffix == ".csv":
        frame = pd.read_csv(path)
    elif path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    else:
        raise DataError(f"{key}: {path}: expected a .txt, .csv or .parquet file")
    if column not in frame.columns:
        raise DataError(f"{path}: missing text column '{column}' (mlm.extra_column)")
    values = frame[column]
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def documents(cfg: Config) -> list[str]:
    """Distinct texts of the configured columns of train (+ test) and of the extra files."""
    columns = text_columns(cfg)
    tables = [(read_train(cfg), str(train_path(cfg)))]
    if cfg.mlm.include_test:
        tables.append((read_test(cfg), str(test_path(cfg))))
    texts: list[str] = []
    for frame, source in tables:
        check_text_rows(frame, columns, source)
        for column in columns:
            texts += [v.strip() for v in frame[column]]
    for name in cfg.mlm.extra_files:
        texts += _extra_documents(cfg, name)
    unique = list(dict.fromkeys(texts))  # distinct, in first-seen order
    if len(unique) < 2:
        raise DataError("pretrain-mlm: fewer than two distinct texts to learn from and to hold out")
    return unique


def chunk_documents(tokenizer, texts: list[str], max_length: int) -> list[dict]:
    """Each document as chunks of at most ``max_length`` tokens with special tokens, offsets
    (for whole-word masking) and the special-token mask."""
    template = Template.of(tokenizer)
    prefix, suffix = template.single
    budget = max_length - len(prefix) - len(suffix)
    fast = tokenizer.is_fast
    with quiet_transformers():  # long documents are chunked, not truncated
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=fast)
    chunks = []
    for doc, ids in enumerate(encoded["input_ids"]):
        offsets = encoded["offset_mapping"][doc] if fast else [(0, 0)] * len(ids)
        for start in range(0, len(ids), budget):
            part = ids[start : start + budget]
            if not part:
                continue
            chunks.append(
                {
                    "key": len(chunks),  # names the chunk in the masking seed
                    "doc": doc,
                    "input_ids": [*prefix, *part, *suffix],
                    "special_tokens_mask": [1] * len(prefix) + [0] * len(part) + [1] * len(suffix),
                    "offset_mapping": [(0, 0)] * len(prefix)
                    + [tuple(o) for o in offsets[start : start + budget]]
                    + [(0, 0)] * len(suffix),
                }
            )
    return chunks


class MaskingCollate:
    """Pads chunks to the batch's longest, rounded up to a multiple of 8 (every field, offsets
    included), then masks them with transformers' ``DataCollatorForLanguageModeling``.

    The masks of a batch are a function of (seed, epoch, the batch's chunks), not of how many
    batches this object collated before: one process or several (each collating its share of
    the batches) mask every batch the same way, as do loader workers.
    """

    def __init__(self, tokenizer, collator, whole_word: bool, seed: int):
        self.pad_id, self.collator, self.whole_word = tokenizer.pad_token_id, collator, whole_word
        self.seed, self.epoch = seed, 0

    def __call__(self, chunks: list[dict]) -> dict:
        key = hash((self.seed, self.epoch, tuple(c["key"] for c in chunks))) % (2**63)
        self.collator.generator = torch.Generator().manual_seed(key)
        length = -(-max(len(c["input_ids"]) for c in chunks) // 8) * 8  # multiples of 8
        examples = []
        for c in chunks:
            pad = length - len(c["input_ids"])
            example = {
                "input_ids": c["input_ids"] + [self.pad_id] * pad,
                "attention_mask": [1] * len(c["input_ids"]) + [0] * pad,
                "special_tokens_mask": c["special_tokens_mask"] + [1] * pad,
            }
            if self.whole_word:
                example["offset_mapping"] = c["offset_mapping"] + [(0, 0)] * pad
            examples.append(example)
        return self.collator(examples)


# ---------------------------------------------------------------------------------------------
# Training


def _load_model(folder: Path):
    with quiet_transformers():
        model, info = AutoModelForMaskedLM.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, output_loading_info=True
        )
    missing = sorted(info.get("missing_keys", []))
    if len(missing) > len(model.state_dict()) // 2:
        raise CheckpointError(
            f"{folder}: {len(missing)} tensors missing (e.g. {sorted(missing)[:3]}); "
            "is it a checkpoint of another architecture?"
        )
    # A backbone shipped without its MLM head (a sentence encoder) is the usual case: one line.
    body = [k for k in missing if k.startswith(f"{model.base_model_prefix}.")]
    head = len(missing) - len(body)
    if head:
        log.info("MLM head not in the checkpoint: initialised fresh (%d tensors)", head)
        log.debug("MLM head tensors initialised fresh: %s", [k for k in missing if k not in body])
    if body:
        log.warning("%s: %d backbone tensors initialised fresh: %s", folder, len(body), body[:5])
    return model


def _collator(cfg: Config, tokenizer, seed: int) -> MaskingCollate:
    whole_word = cfg.mlm.whole_word_mask and tokenizer.is_fast
    if cfg.mlm.whole_word_mask and not whole_word:
        log.warning("mlm.whole_word_mask: the tokenizer gives no offsets; masking single tokens")
    collator = DataCollatorForLanguageModeling(
        tokenizer,
        mlm_probability=cfg.mlm.mlm_probability,
        whole_word_mask=whole_word,
        # Whole-word masking replaces every chosen token by the mask token (transformers' rule).
        mask_replace_prob=1.0 if whole_word else 0.8,
        random_replace_prob=0.0 if whole_word else 0.1,
        seed=seed,
    )
    return MaskingCollate(tokenizer, collator, whole_word, seed)


def masked_lm_loss(model, batch: dict) -> torch.Tensor:
    """The masked-LM loss, with the vocabulary projection computed at masked positions only.

    The prediction head (hidden -> vocabulary) costs more than the encoder for small models; only
    the ~15% masked positions need it. Equal to ``model(**batch).loss``; models whose head is not
    the one module beside the base model fall back to that.
    """
    inner = getattr(model, "module", model)  # DDP
    base = inner.base_model
    heads = [m for _, m in inner.named_children() if m is not base]
    if len(heads) != 1:
        return model(**batch).loss
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = base(**inputs)[0]  # (batch, seq, hidden)
    chosen = labels != -100
    if not chosen.any():  # no token masked in this batch: nothing to learn, a zero loss
        return heads[0](hidden[:, 0]).sum() * 0.0  # through the head: every weight takes part
    logits = heads[0](hidden[chosen])  # (masked, vocab)
    return torch.nn.functional.cross_entropy(logits.float(), labels[chosen])


class MaskedLMLoss(torch.nn.Module):
    """:func:`masked_lm_loss` as a module's forward, the module accelerate prepares.

    With several processes the model is wrapped in DistributedDataParallel, which averages the
    gradients only of a forward pass made through it: calling the wrapped model's parts directly
    would train each process on its own gradients.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        return masked_lm_loss(self.model, batch)


@torch.no_grad()
def perplexity(loss_module, batches: list[dict], accelerator: Accelerator) -> float:
    """exp of the mean loss over every masked token of the held-out batches."""
    loss_module.eval()
    total, count = 0.0, 0
    for batch in batches:
        masked = int((batch["labels"] != -100).sum())
        if masked == 0:
            continue
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        total += float(loss_module(batch)) * masked
        count += masked
    loss_module.train()
    return math.exp(total / max(count, 1))


def _split(chunks: list[dict], n_docs: int, fraction: float, seed: int):
    held = np.random.default_rng(seed).permutation(n_docs)[: max(1, round(fraction * n_docs))]
    held_set = set(held.tolist())
    train = [c for c in chunks if c["doc"] not in held_set]
    valid = [c for c in chunks if c["doc"] in held_set]
    return train, valid


def _freeze(model, layers: int) -> None:
    """Keep the embeddings (and the tied output projection) and the bottom layers fixed."""
    if not layers:
        return
    stack = transformer_layers(model.base_model)
    if layers > len(stack):
        raise ConfigError(
            f"mlm.freeze_layers: {layers} is more than the model's {len(stack)} layers"
        )
    model.get_input_embeddings().requires_grad_(False)
    for layer in list(stack)[:layers]:
        layer.requires_grad_(False)


def _optimizer(model, cfg: Config) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.mlm.weight_decay},
        {"params": rest, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.mlm.lr)


class MaskedLMState(TrainState):
    """The loop's state during pretraining: a batch's loss is what the prepared
    :class:`MaskedLMLoss` returns (no task, no per-sample losses, no hooks)."""

    def forward_loss(self, batch: dict) -> torch.Tensor:
        return self.model(batch)


def _fingerprint(cfg: Config, backbone: Path, chunks: list[dict]) -> str:
    """What a checkpoint must have been saved with to be resumed: the ``mlm`` settings, the
    precision and device, the backbone's weights and the corpus as tokenised."""
    corpus = json.dumps([c["input_ids"] for c in chunks]).encode()
    data = {
        "mlm": cfg.mlm.model_dump(mode="json"),
        "precision": [cfg.train.mixed_precision, cfg.train.cpu],
        "backbone": [sha256_file(p) for p in sorted(backbone.glob("*.safetensors"))],
        "corpus": hashlib.sha256(corpus).hexdigest(),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def run(cfg: Config) -> dict:
    """Adapt the backbone to the competition's text; returns the report written to mlm.json."""
    started = time.perf_counter()
    check_precision(cfg)
    mlm = cfg.mlm
    key = "mlm.backbone" if mlm.backbone else "text.backbone"
    # A hub id missing from the cache is fetched here (with a warning), before any work.
    folder = backbone_dir(mlm.backbone or cfg.text.backbone, key, download=True)
    config = load_config(folder)
    if is_decoder(config):
        raise ConfigError(
            f"{key}: {folder} is a decoder ({config.model_type}); masked-LM pretraining needs an "
            "encoder with a masked-LM head (BERT, RoBERTa, DeBERTa)"
        )
    check_max_length(folder, mlm.max_length, "mlm.max_length")
    tokenizer = load_tokenizer(folder)
    if tokenizer.mask_token is None or tokenizer.pad_token_id is None:
        raise ConfigError(f"{key}: the tokenizer in {folder} has no mask or padding token")
    for name in mlm.extra_files:  # every input checked before the corpus is tokenised
        _extra_documents(cfg, name)
    texts = documents(cfg)
    chunks = chunk_documents(tokenizer, texts, mlm.max_length)
    train_chunks, valid_chunks = _split(chunks, len(texts), mlm.valid_fraction, mlm.seed)
    if not train_chunks:
        raise DataError("pretrain-mlm: every document is held out; lower mlm.valid_fraction")

    accelerator = make_accelerator(cfg, grad_accum=mlm.grad_accum)
    set_seed(mlm.seed)
    model = _load_model(folder)
    _freeze(model, mlm.freeze_layers)
    # The held-out chunks are masked once: before and after see the very same masks.
    valid_collate = _collator(cfg, tokenizer, seed=mlm.seed + 1)
    valid_batches = [
        valid_collate(valid_chunks[i : i + mlm.batch_size])
        for i in range(0, len(valid_chunks), mlm.batch_size)
    ]
    state, collate = _prepare(cfg, accelerator, model, tokenizer, train_chunks)
    before = perplexity(state.model, valid_batches, accelerator)
    log.info(
        "pretrain-mlm: %d documents, %d chunks (%d held out), perplexity before %.2f",
        len(texts),
        len(chunks),
        len(valid_chunks),
        before,
    )
    checkpoints = RunCheckpoints(
        mlm_resume_dir(cfg),
        _fingerprint(cfg, folder, chunks),
        cfg.train.checkpoint_every,
        "pretrain-mlm",
    )
    history = _train(cfg, state, collate, checkpoints)
    after = perplexity(state.model, valid_batches, accelerator)
    report = {
        "backbone": str(folder),
        "output": str(mlm_dir(cfg)),
        "documents": len(texts),
        "chunks": len(chunks),
        "held_out_chunks": len(valid_chunks),
        "train_tokens": int(sum(len(c["input_ids"]) for c in train_chunks)),
        "whole_word_mask": valid_collate.whole_word,
        "perplexity_before": before,
        "perplexity_after": after,
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if accelerator.is_main_process:
        _save(accelerator.unwrap_model(state.model).model, tokenizer, mlm_dir(cfg), report)
        shutil.rmtree(mlm_resume_dir(cfg), ignore_errors=True)  # the folder is complete
        log.info(
            "pretrain-mlm: held-out perplexity %.2f -> %.2f; backbone written to %s",
            before,
            after,
            mlm_dir(cfg),
        )
    accelerator.wait_for_everyone()
    return report


def _prepare(cfg: Config, accelerator: Accelerator, model, tokenizer, chunks: list[dict]):
    """The prepared loss module, optimizer, loader and schedule as the loop's state; and the
    training collate (told each epoch, which its masks depend on)."""

    mlm = cfg.mlm
    sampler = LengthBatchSampler(
        [len(c["input_ids"]) for c in chunks],
        mlm.batch_size,
        shuffle=True,
        bucket_size=50,
        sort=True,
        seed=mlm.seed,
    )
    collate = _collator(cfg, tokenizer, seed=mlm.seed)
    loader = DataLoader(chunks, batch_sampler=sampler, collate_fn=collate)
    optimizer = _optimizer(model, cfg)
    steps = math.ceil(len(sampler) / accelerator.num_processes / mlm.grad_accum) * mlm.epochs
    scheduler = get_scheduler(
        "linear",
        optimizer,
        num_warmup_steps=int(mlm.warmup_ratio * steps) * accelerator.num_processes,
        num_training_steps=steps * accelerator.num_processes,
    )
    module, optimizer, loader, scheduler = accelerator.prepare(
        MaskedLMLoss(model), optimizer, loader, scheduler
    )
    state = MaskedLMState(
        accelerator,
        module,
        optimizer,
        scheduler,
        task=None,
        fold=0,  # one run, no folds
        num_epochs=mlm.epochs,
        train_loader=loader,
        loss_sum=torch.zeros((), device=accelerator.device),
    )
    return state, collate


def _train(cfg: Config, state: TrainState, collate, checkpoints: RunCheckpoints) -> list[dict]:
    """The epochs of pretraining, from the newest checkpoint if there is one; returns the
    training loss of each epoch."""
    accelerator, loader, epochs = state.accelerator, state.train_loader, cfg.mlm.epochs
    hooks = Hooks()
    # Gradients are clipped at norm 1, whatever train.max_grad_norm says for fine-tuning.
    guard = StepGuard(
        "pretrain-mlm", 1.0, cfg.train.max_bad_steps, cfg.train.mixed_precision, "mlm"
    )
    resumed = checkpoints.resume(state, hooks)
    history = resumed.record["history"] if resumed else []
    rng = resumed.rng if resumed else None

    def save() -> None:
        checkpoints.save(state, hooks, {}, {"history": history})

    def start_epoch(epoch: int) -> None:
        set_loader_epoch(loader, epoch)
        collate.epoch = epoch

    on_step = checkpoints.on_step(state, save)
    show = cfg.train.progress and accelerator.is_main_process
    while state.epoch < epochs:
        batches = epoch_batches(state, loader, rng, start_epoch)
        rng = None
        desc = f"mlm epoch {state.epoch + 1}/{epochs}"
        done = state.batch_in_epoch
        with tqdm(
            total=len(loader), initial=done, desc=desc, disable=bar_off(show), leave=False
        ) as bar:
            train_one_epoch(state, batches, hooks, cfg, bar, on_step, guard)
        # Each process saw its share of the batches: the epoch's loss is over all of them.
        count = torch.tensor(float(state.loss_count), device=accelerator.device)
        total = accelerator.reduce(torch.stack([state.loss_sum, count]).double(), "sum")
        history.append(
            {"epoch": state.epoch, "train_loss": float(total[0] / max(float(total[1]), 1))}
        )
        log.info("mlm epoch %d: train loss %.4f", state.epoch, history[-1]["train_loss"])
        state.next_epoch()
        save()
    return history


def _save(model, tokenizer, folder: Path, report: dict) -> None:
    """Weights (safetensors), config and tokenizer into a new folder, then renamed into place.

    A failed write (a full disk, a read-only folder) leaves the previous folder as it was and
    names the folder; a run killed between the two renames is repaired by the next one.
    """
    staging = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        if old.is_dir() and not folder.exists():  # killed between the renames: put it back
            old.rename(folder)
        shutil.rmtree(staging, ignore_errors=True)
        with quiet_transformers():
            model.save_pretrained(staging)  # model.safetensors + config.json
            tokenizer.save_pretrained(staging)
        write_json(staging / "mlm.json", report)
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        staging.rename(folder)
    except (OSError, MedalistError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise MedalistError(f"cannot write {folder}: {reason}") from exc
    shutil.rmtree(old, ignore_errors=True)
