"""QLoRA's key (``text.lora.quantize``) on a machine without a GPU: refused before any work,
naming the key, where it cannot run (no CUDA device, no bitsandbytes, no LoRA); and the settings
the CUDA path would load with, checked by faking the device and bitsandbytes' presence (the
quantized load itself needs a GPU and is not run here). A tiny Llama made here, never downloaded.
"""

import logging
import shutil

import pandas as pd
import peft
import pytest
import torch
from transformers import AutoModel, BitsAndBytesConfig

from medalist.cli import main
from medalist.demo.digits import bake, working_directory
from medalist.errors import ConfigError
from medalist.modalities import text_model
from medalist.modalities.text import build_model, check_inputs
from medalist.modalities.text_model import process_device_map, quantization_config
from medalist.tasks import build_task
from support.configs import text_cfg
from support.llm_projects import docstring_rows
from support.tiny_decoder import make_decoder

LORA = [
    "text.pooling=last",
    "text.lora.enabled=true",
    "text.lora.r=4",
    "text.lora.alpha=8",
    "text.lora.target_modules=[q_proj,v_proj]",
]


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return docstring_rows(per_library=10)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, corpus):
    return make_decoder(tmp_path_factory.mktemp("qlora") / "llama", corpus["text"].tolist())


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load the backbone fails the test: refusals come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the backbone was loaded before the refusal")

    monkeypatch.setattr(text_model, "load_backbone", refuse)


def _bitsandbytes(monkeypatch, present: bool) -> None:
    """bitsandbytes taken as installed (or not) by the text model's checks, whatever this
    environment holds; peft's own checks still see the truth."""
    real = text_model.installed
    monkeypatch.setattr(
        text_model, "installed", lambda name: present if name == "bitsandbytes" else real(name)
    )


def test_quantize_needs_lora(decoder):
    with pytest.raises(ConfigError, match="text.lora.quantize: 4bit .* text.lora.enabled=true"):
        text_cfg(decoder, "text.lora.quantize=4bit")
    with pytest.raises(ConfigError, match="text.lora.quantize"):
        text_cfg(decoder, *LORA, "text.lora.quantize=2bit")


def test_quantize_without_cuda_is_refused_before_loading(decoder, corpus, monkeypatch, no_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = text_cfg(decoder, *LORA, "text.lora.quantize=4bit")
    message = "text.lora.quantize: 4bit .* no CUDA device"
    with pytest.raises(ConfigError, match=message):
        check_inputs(cfg, corpus, "train", "train.csv")  # what train and infer check first
    with pytest.raises(ConfigError, match=message):
        build_model(cfg, build_task(cfg, corpus))


def test_quantize_without_bitsandbytes_is_refused_before_loading(
    decoder, corpus, monkeypatch, no_loading
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _bitsandbytes(monkeypatch, present=False)
    cfg = text_cfg(decoder, *LORA, "text.lora.quantize=8bit")
    with pytest.raises(ConfigError, match="text.lora.quantize: 8bit needs bitsandbytes"):
        check_inputs(cfg, corpus, "train", "train.csv")


def test_train_stage_refuses_quantize_on_this_machine_before_any_fold(
    tmp_path, decoder, corpus, caplog
):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the refusal is for machines without one")
    project = bake(tmp_path, {"competition_name": "Q", "modality": "text", "target_columns": "y"})
    corpus.assign(y=corpus["library"])[["id", "text", "y"]].to_csv(
        project / "data" / "train.csv", index=False
    )
    shutil.copytree(decoder, project / "models" / "decoder")
    config = ["-c", "configs/base.yaml", "text.backbone=models/decoder", "folds.n_splits=2"]
    config += ["text.max_length=32", "train.progress=false", *LORA]
    with working_directory(project), caplog.at_level(logging.ERROR):
        assert main(["folds", *config]) == 0
        assert main(["train", *config, "text.lora.quantize=4bit"]) == 2
    assert "text.lora.quantize: 4bit" in caplog.text and "no CUDA device" in caplog.text
    assert not list((project / "outputs").glob("*/fold*"))


def test_quantization_settings():
    four = quantization_config("4bit")
    assert isinstance(four, BitsAndBytesConfig) and four.load_in_4bit and not four.load_in_8bit
    assert four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant is True
    assert four.bnb_4bit_compute_dtype == torch.bfloat16
    eight = quantization_config("8bit")
    assert eight.load_in_8bit and not eight.load_in_4bit


def test_each_process_loads_onto_its_own_gpu():
    assert process_device_map({}) == {"": 0}
    assert [process_device_map({"LOCAL_RANK": str(rank)}) for rank in (0, 1, 3)] == [
        {"": 0},
        {"": 1},
        {"": 3},
    ]


def test_quantized_build_path_on_cpu_stand_ins(decoder, corpus, monkeypatch):
    """The build with quantize set, CUDA and bitsandbytes faked present and the quantized load
    replaced by a plain one: from_pretrained gets the 4-bit settings and this rank's device,
    peft's k-bit preparation runs before the adapters are injected, only the adapters and the
    head train, and gradient checkpointing is the non-reentrant kind."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _bitsandbytes(monkeypatch, present=True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    loads, prepared = [], []
    plain_load = AutoModel.from_pretrained

    def load(*args, **kwargs):
        loads.append({k: kwargs.pop(k, None) for k in ("quantization_config", "device_map")})
        return plain_load(*args, **kwargs)

    real_prepare = peft.prepare_model_for_kbit_training

    def prepare(model, **kwargs):
        prepared.append((any(".lora_" in n for n, _ in model.named_parameters()), kwargs))
        return real_prepare(model, **kwargs)

    monkeypatch.setattr(AutoModel, "from_pretrained", load)
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training", prepare)
    cfg = text_cfg(decoder, *LORA, "text.lora.quantize=4bit", "text.gradient_checkpointing=true")
    model = build_model(cfg, build_task(cfg, corpus))
    (settings,) = loads
    assert settings["device_map"] == {"": 1}
    quantized = settings["quantization_config"]
    assert quantized.load_in_4bit and quantized.bnb_4bit_quant_type == "nf4"
    assert prepared == [(False, {"use_gradient_checkpointing": False})]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    layer = model.backbone.layers[0]
    assert layer.gradient_checkpointing is True
    assert layer._gradient_checkpointing_func.keywords == {"use_reentrant": False}
