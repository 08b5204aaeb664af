"""P11: medalist's LoRA training step on a decoder against the same step written with ``peft`` and
``transformers.Trainer``.

A tiny Llama-shaped decoder made on the spot (random weights, a byte-level BPE tokenizer learnt
from the benchmark's own sentences: nothing downloaded), fp32 on the CPU, a three-class task,
the same pre-collated, dynamically padded batches on both sides, LoRA r=8, alpha=16, no dropout
on q/k/v/o of every layer, the classification head trained in full, the same optimizer and
schedule (medalist's ``build_optimizer`` / ``build_scheduler``: AdamW, decay on matrices only,
foreach) and the same clipping.

- A: medalist's model (``text.lora``: ``AutoModel`` with peft's adapters injected, last-token
  pooling, its head) through :func:`medalist.training.loop.train_one_epoch` over K batches, as
  P10 sets it up (accelerate's prepared model, optimizer and scheduler; hooks dispatch,
  ``accelerator.accumulate``, the finite-step guard, loss bookkeeping).
- B: the usual peft recipe: ``AutoModelForSequenceClassification`` (its ``score`` layer given a
  bias, as medalist's head has one) under ``get_peft_model`` with ``task_type="SEQ_CLS"`` (the
  head in ``modules_to_save``), stepped as ``Trainer.train`` steps it:
  ``trainer.training_step`` (input preparation, loss, ``accelerator.backward``), clipping
  through its accelerator, ``optimizer.step``, ``lr_scheduler.step``, ``zero_grad``.

Before timing, the two models are made the same (B's adapters and head copied from A's), their
trainable tensors are checked to be the same set (names mapped, shapes and count equal), the
first batch's loss to be the same, and after one call (K steps) on each side every trainable
tensor to be the same within float rounding: the same gradients on the same tensors and the same
optimizer updates. B' (the control) is a second B built the same way.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import benchmark, measure
from benchmarks.p10_text_step import STEPS, medalist_side, trainer_steps

SEED, BATCH, ROWS = 0, 8, 64
CLASSES = ["a", "b", "c"]
RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# The decoder: 4 layers, hidden 128, 4 heads of 32 (2 key/value heads), a 512-token vocabulary.
LAYERS, HIDDEN, HEADS, KV_HEADS, VOCAB = 4, 128, 4, 2, 512
VOCABULARY = (
    "the a model array frame tensor series returns holds sorts copies reads writes numbers "
    "labels values rows columns index axis mean sum shape type float integer string list of "
    "in to from with by for each every new old first last"
)
WORDS = VOCABULARY.split()


def sentences(rows: int, seed: int = SEED) -> list[str]:
    """Random sentences of 20 to 50 words (30 to 64 tokens once cut at max_length)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(20, 51))) for _ in range(rows)]


def make_decoder(folder: Path, corpus: list[str]) -> Path:
    """A randomly initialised Llama-shaped causal LM and its tokenizer (no padding token, as
    Llama's), written as a hub snapshot holds them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=VOCAB - 16,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=3 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(SEED)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def lora_config(folder: Path):
    from medalist.config import resolve_config

    return resolve_config(
        overrides=[
            "modality=text",
            f"text.backbone={folder}",
            "competition.target_columns=[label]",
            "text.max_length=64",
            "text.pooling=last",
            "text.dropout=0",
            "text.multi_sample_dropout=1",
            "text.lora.enabled=true",
            f"text.lora.r={RANK}",
            f"text.lora.alpha={ALPHA}",
            "text.lora.dropout=0",
            f"text.lora.target_modules=[{','.join(TARGETS)}]",
            "train.cpu=true",
            "train.progress=false",
            "train.mixed_precision='no'",
            f"train.batch_size={BATCH}",
            "train.lr=1e-3",
            "train.max_grad_norm=1.0",
            "train.epochs=1000",  # the schedule stays away from zero for every call
        ]
    )


def peft_model(folder: Path, pad_token_id: int):
    """The peft recipe's model: a sequence classifier with LoRA on the same layers, the head
    (``score``, given a bias) trained in full through ``modules_to_save``."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from medalist.modalities.text_model import quiet_transformers

    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=len(CLASSES), local_files_only=True
        )
    model.config.pad_token_id = pad_token_id  # the end-of-text token pads, as in medalist
    model.score = torch.nn.Linear(HIDDEN, len(CLASSES), bias=True)
    settings = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=0.0,
        target_modules=TARGETS,
        bias="none",
    )
    return get_peft_model(model, settings)


def peft_name(name: str) -> str:
    """A trainable tensor of medalist's model, named as in the peft recipe's."""
    if name.startswith("head.fc."):
        return "base_model.model.score.modules_to_save.default." + name[len("head.fc.") :]
    return "base_model.model.model." + name[len("backbone.") :]


def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def copy_into(medalist_model: torch.nn.Module, other: torch.nn.Module) -> None:
    """Give the peft recipe's model medalist's adapters and head; the two models' trainable
    tensors must match one to one."""
    ours, theirs = trainable(medalist_model), trainable(other)
    mapped = {peft_name(n): p for n, p in ours.items()}
    if mapped.keys() != theirs.keys():
        raise AssertionError(f"trainable tensors differ: {sorted(mapped.keys() ^ theirs.keys())}")
    with torch.no_grad():
        for name, param in theirs.items():
            param.copy_(mapped[name])


def trainer_side(cfg, model, batches, folder: str):
    """K steps of ``model`` as ``Trainer.train`` takes them (see P10's trainer side)."""
    inputs = [
        {"input_ids": b["input"][:, 0], "attention_mask": b["input"][:, 1], "labels": b["target"]}
        for b in batches
    ]
    return trainer_steps(cfg, model, inputs, folder)


def check_same_work(task, ours, theirs, batch, run_a, run_b) -> dict:
    """The first batch's loss on both sides, then one call of each; raises if they differ."""
    with torch.no_grad():
        ours.eval(), theirs.eval()
        loss_a = task.loss(ours(batch["input"]), batch["target"]).mean().item()
        loss_b = theirs(**run_b.inputs[0]).loss.item()
    if not np.isclose(loss_a, loss_b, rtol=1e-5, atol=0):
        raise AssertionError(f"the first batch's loss differs: {loss_a} vs {loss_b}")
    start = {n: p.detach().clone() for n, p in trainable(ours).items()}
    run_a(), run_b()
    mapped = {peft_name(n): p for n, p in trainable(ours).items()}
    diff = max(
        (p.detach() - mapped[n].detach()).abs().max().item() for n, p in trainable(theirs).items()
    )
    if diff > 1e-5:
        raise AssertionError(f"after {STEPS} steps the trainable tensors differ by {diff:.2g}")
    still = [n for n, p in trainable(ours).items() if torch.equal(p.detach(), start[n])]
    if still:
        raise AssertionError(f"{len(still)} trainable tensors did not move, e.g. {still[:2]}")
    return {"loss": loss_a, "steps_max_abs_diff": diff}


@benchmark(
    "P11", target="<=1.0", title="LoRA step on a tiny decoder vs peft + transformers.Trainer"
)
def lora_step() -> dict:
    import pandas as pd

    from medalist.modalities.text import build_dataset, build_model
    from medalist.modalities.text_model import load_tokenizer
    from medalist.tasks import build_task
    from medalist.training.fold_setup import parameter_counts
    from medalist.training.runtime import make_loader

    with tempfile.TemporaryDirectory(prefix="medalist-p11-") as folder:
        texts = sentences(ROWS)
        decoder = make_decoder(Path(folder) / "decoder", texts)
        cfg = lora_config(decoder)
        frame = pd.DataFrame({"text": texts, "label": [CLASSES[i % 3] for i in range(ROWS)]})
        task = build_task(cfg, frame)
        torch.manual_seed(SEED)
        model = build_model(cfg, task)
        pad = load_tokenizer(decoder).pad_token_id
        other, control = peft_model(decoder, pad), peft_model(decoder, pad)
        copy_into(model, other)
        copy_into(model, control)
        dataset = build_dataset(
            cfg, frame, task.encode_targets(frame), split="train", train=True, source="p11"
        )
        batches = list(make_loader(dataset, BATCH, shuffle=True, cfg=cfg))[:STEPS]
        run_a = medalist_side(cfg, task, model, batches)
        run_b = trainer_side(cfg, other, batches, folder)
        run_c = trainer_side(cfg, control, batches, folder)
        checked = check_same_work(task, model, other, batches[0], run_a, run_b)
        run_c()  # the control takes the same first steps as B
        result = measure(run_a, run_b, warmup=1, repeats=20, control=run_c, budget_s=10)
    result["step_ms"] = 1000 * result["median_a_s"] / STEPS
    result["trainable_params"] = parameter_counts(model)[0]
    result["tokens_per_step"] = sum(b["input"][:, 1].sum().item() for b in batches) / STEPS
    return {**result, **checked}
