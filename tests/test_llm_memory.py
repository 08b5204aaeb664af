"""What a fold costs, in its log: the trainable and total parameter counts when it starts (under
LoRA, the adapters and the head only) and the peak memory in every epoch's row of ``log.csv``,
with the trainable count. On a tiny Llama-shaped decoder made here (tests/support/tiny_decoder.py).
"""

import logging
import re

import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.demo.digits import working_directory
from medalist.training.fold_setup import (
    memory_scope,
    parameter_counts,
    peak_memory_mb,
    reset_peak_memory,
)
from support.tiny_decoder import make_decoder

SENTENCES = [
    f"{s} {v} the {o}"
    for s in ["the array", "the frame", "the tensor", "the model"]
    for v in ["holds", "returns", "sorts"]
    for o in ["numbers", "labels"]
]
CLASSES = ["a", "b", "c"]
# The tiny decoder's shape (make_decoder's defaults): 2 layers, hidden 32, 4 heads of 8, 2
# key/value heads, so k_proj and v_proj map 32 -> 16 and q_proj and o_proj 32 -> 32.
LAYERS, HIDDEN, KV = 2, 32, 16
RANK = 4
TRAIN = [
    "modality=text",
    "text.backbone=models/decoder",
    "competition.target_columns=[label]",
    "text.pooling=last",
    "text.max_length=16",
    "text.lora.enabled=true",
    f"text.lora.r={RANK}",
    "text.lora.alpha=8",
    "text.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]",
    "folds.n_splits=2",
    "train.folds=[0]",
    "train.epochs=2",
    "train.batch_size=6",
    "train.progress=false",
]


def lora_by_hand() -> int:
    """The adapters (A: r x in, B: out x r, per adapted projection and layer) and the head
    (a linear layer from the last token's state to the three classes)."""
    adapters = sum(RANK * (HIDDEN + out) for out in (HIDDEN, KV, KV, HIDDEN))  # q, k, v, o
    head = HIDDEN * len(CLASSES) + len(CLASSES)
    return LAYERS * adapters + head


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    project = tmp_path_factory.mktemp("memory")
    (project / "data").mkdir()
    labels = [CLASSES[i % 3] for i in range(len(SENTENCES))]
    pd.DataFrame({"id": range(len(SENTENCES)), "text": SENTENCES, "label": labels}).to_csv(
        project / "data" / "train.csv", index=False
    )
    make_decoder(project / "models" / "decoder", SENTENCES)
    return project


def test_fold_logs_trainable_parameters_and_peak_memory(trained, caplog):
    with working_directory(trained), caplog.at_level(logging.INFO, logger="medalist"):
        assert main(["folds", *TRAIN]) == 0
        assert main(["train", *TRAIN]) == 0
    found = re.search(r"fold 0: ([\d,]+) of ([\d,]+) parameters train \(([\d.]+)%\)", caplog.text)
    assert found, caplog.text[-2000:]
    trainable, total = (int(found.group(i).replace(",", "")) for i in (1, 2))
    assert trainable == lora_by_hand()  # 1891: the adapters and the head, nothing else
    assert total > 10 * trainable  # the frozen base: embeddings, layers, norms
    assert float(found.group(3)) == pytest.approx(100 * trainable / total, abs=0.01)
    assert re.search(r"fold 0: peak memory \d+ MiB \(this process's peak resident", caplog.text)
    log = pd.read_csv(trained / "outputs" / "exp001" / "log.csv")
    assert len(log) == 2 and (log["peak_memory_mb"] > 0).all()
    assert (log["trainable_params"] == lora_by_hand()).all()
    assert "peak_memory_mb=" in caplog.text  # the epoch's log line shows it too


def test_parameter_counts_count_shared_tensors_once_and_4bit_values_not_bytes():
    class Params4bit(torch.nn.Parameter):
        """Stands in for bitsandbytes' packed 4-bit weight (two values a byte)."""

    tied = torch.nn.Linear(4, 4)
    model = torch.nn.Sequential(tied, tied, torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    assert parameter_counts(model) == (4 * 4 + 4 + 2, 4 * 4 + 4 + 4 * 2 + 2)
    packed = torch.nn.Module()
    packed.register_parameter("w", Params4bit(torch.zeros(8, dtype=torch.uint8), False))
    assert parameter_counts(packed) == (0, 16)


def test_on_cuda_the_peak_is_the_allocator_s_since_the_fold_s_reset(monkeypatch):
    """The CUDA branch without a GPU: the allocator's counters replaced."""
    calls = []
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(device))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 3 * 2**20)
    cuda = torch.device("cuda", 0)
    reset_peak_memory(cuda)
    assert calls == [cuda] and peak_memory_mb(cuda) == 3.0
    assert memory_scope(cuda) == "CUDA memory allocated in this fold"
    reset_peak_memory(torch.device("cpu"))  # nothing to reset: the process's peak stays
    assert calls == [cuda] and peak_memory_mb(torch.device("cpu")) > 0
