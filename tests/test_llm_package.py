"""The offline bundle of a decoder LLM with LoRA: adapters merged into their base on request
(``kaggle.merge_adapters``), predicting without peft as infer did, and the time estimate by
tokens (tokens per second on the timed rows, the test set's token count). A tiny Llama-shaped
model made here (tests/support/tiny_decoder.py), never downloaded.
"""

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.errors import CheckpointError, ConfigError
from medalist.modalities.text import build_dataset, build_model
from medalist.modalities.text_model import load_tokenizer
from medalist.offline.merge import HALF_MERGED_ATOL, check_mergeable, sample_tolerance
from medalist.offline.package import make_plan
from medalist.offline.predict import predict_experiment, read_manifest, read_task, run_bundle
from medalist.offline.timing import estimate
from medalist.tasks import build_task
from medalist.training.weights import BASE_KEY, load_weights, read_metadata, save_weights
from support.configs import text_cfg
from support.llm_projects import docstring_project, docstring_rows, tiny_llm
from support.tiny_decoder import make_decoder

LORA = [
    "text.pooling=last",
    "text.lora.enabled=true",
    "text.lora.r=4",
    "text.lora.alpha=8",
    "text.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]",
]
# One epoch at a higher rate, LoRA on the output projection too, a faster EMA.
PACKAGED = {
    "text": {"lora": {"target_modules": ["q_proj", "v_proj", "o_proj"]}},
    "train": {"epochs": 1, "lr": 1.0e-2},
    "tricks": {"ema": {"decay": 0.5}},
}
CONFIG = ["-c", "configs/tiny.yaml"]
SAMPLE = 8  # kaggle.timing_rows
# The tiny decoder's folder without its weights (model.safetensors).
NO_WEIGHTS = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
WHEEL = "stub/medalist-0.1.0-py3-none-any.whl"  # stands in for medalist's, never installed


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return docstring_rows(per_library=20)


@pytest.fixture(scope="module")
def decoders(tmp_path_factory, corpus) -> dict[torch.dtype, Path]:
    """The tiny Llama with float32 weights, and with bfloat16 ones (as most checkpoints are)."""
    root, texts = tmp_path_factory.mktemp("decoder"), corpus["text"].tolist()
    return {
        torch.float32: make_decoder(root / "llama", texts),
        torch.bfloat16: make_decoder(root / "llama-bf16", texts, dtype=torch.bfloat16),
    }


@pytest.fixture(scope="module")
def decoder(decoders) -> Path:
    return decoders[torch.float32]


@pytest.fixture(scope="module")
def project(tmp_path_factory, decoder, corpus) -> Path:
    """A text project on the tiny Llama with LoRA (EMA weights predict), through folds, train,
    infer and submission, with a stand-in medalist wheel for the bundle."""
    root = tmp_path_factory.mktemp("llm-package")
    project = docstring_project(root, decoder, corpus, 28, tiny_llm(PACKAGED))
    (project / "stub").mkdir()
    with zipfile.ZipFile(project / WHEEL, "w") as archive:
        archive.writestr("medalist/__init__.py", "")
    with working_directory(project):
        for stage in ("folds", "train", "infer", "submission"):
            assert main([stage, *CONFIG]) == 0, stage
    return project


def _package(project: Path, dataset: str, *extra: str) -> Path:
    kaggle = [
        f"kaggle.medalist_wheel={project / WHEEL}",
        "kaggle.project_wheel=false",
        f"kaggle.dataset_id=tester/{dataset}",
    ]
    with working_directory(project):
        assert main(["package", *CONFIG, *kaggle, *extra]) == 0
    return project / "package" / dataset


def block_peft(monkeypatch) -> None:
    """peft made unimportable, as on an image without it: ``import peft`` (or any submodule)
    raises ImportError and ``find_spec('peft')`` finds nothing."""
    for name in [n for n in sys.modules if n == "peft" or n.startswith("peft.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "peft", None)


# ---------------------------------------------------------------------------------------------
# Merging


# Reassociating (W + sBA) x against W x + s B (A x) moves fp32 sums by a few ulps per layer
# (under 1e-6 here, with adapters as large as the weights), where a lost or doubled adapter moves
# the probabilities by more than 1e-2. In bf16 the merged weight is rounded to 8 bits once.
TOLERANCES = {
    torch.float32: {"weight": 1e-6, "probabilities": 1e-5},
    torch.bfloat16: {"weight": 2**-8, "probabilities": HALF_MERGED_ATOL},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_merge_adapters_is_the_explicit_sum_and_a_plain_model(decoders, corpus, dtype):
    """W + (alpha / r) B A in every adapted layer (in the base's dtype), the plain layers back,
    the state dict of a model built without LoRA, and the same probabilities up to rounding."""
    decoder, tolerance = decoders[dtype], TOLERANCES[dtype]
    cfg = text_cfg(decoder, *LORA)
    task = build_task(cfg, corpus)
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero: adapters that change the model
    attention = model.backbone.layers[1].self_attn
    lora = attention.o_proj
    expected = lora.base_layer.weight.float() + 2.0 * lora.lora_B["default"].weight @ (
        lora.lora_A["default"].weight
    )
    dataset = build_dataset(cfg, corpus, None, split="test", train=False, source="t")
    inputs = dataset.collate([dataset[i] for i in range(len(dataset))])["input"]
    with torch.no_grad():
        before = task.activate(model(inputs))
    assert model.merge_adapters() == {"text.lora.enabled": False}
    assert type(attention.o_proj) is torch.nn.Linear and attention.o_proj.weight.dtype == dtype
    # Each element rounded (at most) twice: the delta to the base's dtype, then the sum.
    within = tolerance["weight"] * expected.abs().max().item()
    torch.testing.assert_close(attention.o_proj.weight.float(), expected, rtol=0, atol=within)
    assert model.saved_keys() is None and model.weights_base() is None
    assert not any(".lora_" in key or "base_layer" in key for key in model.state_dict())
    plain = build_model(text_cfg(decoder, "text.pooling=last"), task)
    assert set(model.state_dict()) == set(plain.state_dict())
    with torch.no_grad():
        after = task.activate(model(inputs))
    torch.testing.assert_close(after, before, rtol=0, atol=tolerance["probabilities"])


def test_sample_tolerance_widens_only_for_half_precision_merged_weights(tmp_path):
    for dtype in ("float32", "bfloat16"):
        save_file({"w": torch.zeros(2, dtype=getattr(torch, dtype))}, tmp_path / f"{dtype}.st")
    merged = {"adapters": "merged", "weights": {"0": ["float32.st"], "1": ["bfloat16.st"]}}
    assert sample_tolerance(tmp_path, merged, 1e-3) == HALF_MERGED_ATOL
    merged["weights"] = {"0": ["float32.st"]}
    assert sample_tolerance(tmp_path, merged, 1e-3) == 1e-3
    adapters = {"weights": {"0": ["bfloat16.st"]}}  # adapters on a bf16 base: infer's maths
    assert sample_tolerance(tmp_path, adapters, 1e-3) == 1e-3


def test_merged_bundle_predicts_as_infer_without_peft(project, tmp_path, monkeypatch):
    """Each fold weight file (the EMA's here) ships as the whole model, and the backbone folder
    without its weights: the bundle builds the model from its config, without LoRA, and predicts
    infer's test table to 1e-5 (fp32 rounding of the merged sums), and the same submission. peft
    cannot be imported meanwhile: the adapter bundle needs it."""
    copy = tmp_path / "docs"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("package"))
    merged = _package(
        copy, "docs-merged", "kaggle.merge_adapters=true", f"kaggle.timing_rows={SAMPLE}"
    )
    adapters = _package(copy, "docs-adapters", "kaggle.timing_rows=0")
    entry = read_manifest(merged)["experiments"]["tiny_llm"]
    assert entry["adapters"] == "merged" and sample_tolerance(merged, entry, 1e-3) == 1e-3
    assert entry["settings"] == {"model.pretrained": False, "text.lora.enabled": False}
    assert entry["weights"] == {
        fold: [f"outputs/tiny_llm/fold{fold}/ema.merged.safetensors"] for fold in ("0", "1")
    }
    task = read_task(copy / "outputs" / "tiny_llm" / "task.json")
    plain_cfg = text_cfg(copy / "models" / "decoder", "text.pooling=last")
    whole = set(build_model(plain_cfg, task).state_dict())  # a model built without LoRA
    for files in entry["weights"].values():
        assert set(load_file(merged / files[0])) == whole
        assert BASE_KEY not in read_metadata(merged / files[0])
    backbone = merged / "backbones" / "decoder"
    assert sorted(p.name for p in backbone.iterdir()) == [*NO_WEIGHTS]
    assert entry["paths"]["text.backbone"] == "backbones/decoder/config.json"
    assert sorted(p.name for p in adapters.joinpath("backbones", "decoder").iterdir()) == [
        *sorted([*NO_WEIGHTS, "model.safetensors"])
    ]
    block_peft(monkeypatch)
    with working_directory(copy):
        written = run_bundle(merged, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/tiny_llm.parquet")
        local = pd.read_parquet("outputs/tiny_llm/test.parquet")
        assert written.read_bytes() == Path("submissions/tiny_llm.csv").read_bytes()
        with pytest.raises(ConfigError, match="needs peft"):  # the block holds
            run_bundle(adapters, "local", environ={})
    assert offline["id"].tolist() == local["id"].tolist()
    columns = ["p_numpy", "p_pandas"]
    np.testing.assert_allclose(offline[columns], local[columns], rtol=0, atol=1e-5)


def test_merged_model_built_from_config_predicts_bitwise_as_from_the_base(project, tmp_path):
    """The merged files give the same predictions, bit for bit, whether the model is built from
    the weightless folder's config or from the base folder with its weights (as bundles did)."""
    copy = tmp_path / "docs"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("package"))
    merged = _package(copy, "docs-merged", "kaggle.merge_adapters=true", "kaggle.timing_rows=0")
    entry = read_manifest(merged)["experiments"]["tiny_llm"]
    based = {**entry, "paths": {**entry["paths"], "text.backbone": str(copy / "models/decoder")}}
    with working_directory(copy):
        _, _, from_config = predict_experiment(merged, entry, copy / "data")
        _, _, from_base = predict_experiment(merged, based, copy / "data")
    assert np.array_equal(from_config, from_base)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_model_built_from_config_refuses_what_needs_the_base(decoders, corpus, tmp_path, dtype):
    """``text.backbone`` naming a config.json builds without reading any weight, in the
    config's dtype: LoRA (whose base would be random) is refused, and so is a file that does not
    hold every weight (an adapter file); the whole model's file loads, every tensor as saved."""
    decoder = decoders[dtype]
    cfg = text_cfg(decoder, *LORA)
    task = build_task(cfg, corpus)
    lora = build_model(cfg, task)
    adapter_file = save_weights(lora, tmp_path / "adapters.safetensors")
    lora.merge_adapters()
    whole_file = save_weights(lora, tmp_path / "whole.safetensors")
    with pytest.raises(ConfigError, match="text.backbone: .*config.json builds the model"):
        build_model(text_cfg(decoder / "config.json", *LORA), task)
    plain = text_cfg(decoder / "config.json", "text.pooling=last")
    with pytest.raises(CheckpointError, match="does not fit this model: missing"):
        load_weights(build_model(plain, task), adapter_file)
    model = load_weights(build_model(plain, task), whole_file)
    loaded = model.state_dict()
    assert set(loaded) == set(lora.state_dict())
    for key, tensor in lora.state_dict().items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key
    assert model.backbone.embed_tokens.weight.dtype == dtype
    # Buffers the file does not hold (the rotary frequencies) are the config's: the same outputs,
    # bit for bit, as the whole file loaded into a model built from the base.
    based = load_weights(build_model(text_cfg(decoder, "text.pooling=last"), task), whole_file)
    dataset = build_dataset(cfg, corpus.head(8), None, split="test", train=False, source="t")
    inputs = dataset.collate([dataset[i] for i in range(len(dataset))])["input"]
    with torch.no_grad():
        assert torch.equal(model.eval()(inputs), based.eval()(inputs))
    # Training starts from the weights: a config.json backbone never trains from random ones.
    with pytest.raises(ConfigError, match="text.backbone: .*names a config.json.*name the model"):
        build_dataset(plain, corpus.head(8), None, split="train", train=True, source="t")


def test_bundle_keeps_the_base_weights_while_a_model_still_reads_them(project, tmp_path):
    """An ensemble of the LoRA experiment and a full fine-tune on the same folder. Adapters left
    unmerged read the base: the folder ships with its weights and both build from it. Merged,
    every fold file holds its whole model (the full fine-tune's always do): the folder ships
    without weights, both build from its config, and each sample predicts as infer did."""
    copy = tmp_path / "docs"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("package"))
    full = [*CONFIG, "train.experiment=full", "text.lora.enabled=false", "tricks.ema.enabled=false"]
    members = ["ensemble.experiments=[tiny_llm,full]", "ensemble.method=mean"]
    with working_directory(copy):
        for stage in ("train", "infer"):
            assert main([stage, *full]) == 0, stage
        assert main(["ensemble", *CONFIG, *members]) == 0
    blend = [*members, "kaggle.ensemble=blend", f"kaggle.timing_rows={SAMPLE}"]
    kept = _package(copy, "docs-adapters", *blend)
    experiments = read_manifest(kept)["experiments"]
    assert "adapters" not in experiments["tiny_llm"] and "adapters" not in experiments["full"]
    for entry in experiments.values():
        assert entry["paths"]["text.backbone"] == "backbones/decoder"
    assert (kept / "backbones" / "decoder" / "model.safetensors").read_bytes() == (
        copy / "models" / "decoder" / "model.safetensors"
    ).read_bytes()
    merged = _package(copy, "docs-merged", *blend, "kaggle.merge_adapters=true")
    experiments = read_manifest(merged)["experiments"]
    assert experiments["tiny_llm"]["adapters"] == "merged"
    for entry in experiments.values():
        assert entry["paths"]["text.backbone"] == "backbones/decoder/config.json"
    assert not list((merged / "backbones" / "decoder").glob("*.safetensors"))


def test_adapter_bundle_is_unchanged_and_predicts_bitwise(project, tmp_path):
    """Without the option, the fold files are the adapter files themselves and the offline
    predictions are infer's, bit for bit."""
    copy = tmp_path / "docs"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("package"))
    bundle = _package(copy, "docs-plain", "kaggle.timing_rows=0")
    entry = read_manifest(bundle)["experiments"]["tiny_llm"]
    assert "adapters" not in entry and entry["settings"] == {"model.pretrained": False}
    for files in entry["weights"].values():
        assert (bundle / files[0]).read_bytes() == (copy / files[0]).read_bytes()
    with working_directory(copy):
        run_bundle(bundle, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/tiny_llm.parquet")
        local = pd.read_parquet("outputs/tiny_llm/test.parquet")
    assert np.array_equal(offline.to_numpy(), local.to_numpy())


def test_merge_is_refused_where_it_cannot_work(project, tmp_path, monkeypatch):
    copy = tmp_path / "docs"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("package"))
    full = ["train.experiment=full", "text.lora.enabled=false", "train.folds=[0]"]
    with working_directory(copy):
        assert main(["train", *CONFIG, *full]) == 0
        cfg = resolve_config("configs/tiny.yaml", [*full, "kaggle.merge_adapters=true"])
        with pytest.raises(ConfigError, match="kaggle.merge_adapters: none of the packaged"):
            make_plan(cfg)  # a fully fine-tuned model has no adapters
        lora = resolve_config("configs/tiny.yaml", ["kaggle.merge_adapters=true"])
        assert make_plan(lora).merged == ["tiny_llm"]
        qlora = resolve_config("configs/tiny.yaml", ["text.lora.quantize=4bit"])
        with pytest.raises(ConfigError, match="kaggle.merge_adapters: 'q' trains on a quantized"):
            check_mergeable(qlora, "q")  # merged weights would be quantized again
        block_peft(monkeypatch)
        with pytest.raises(ConfigError, match="kaggle.merge_adapters: merging needs peft"):
            make_plan(lora)
    assert not (copy / "package").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------
# The time estimate of a model that reads tokens


def _tokens(texts: pd.Series, tokenizer, max_length: int = 32) -> int:
    return sum(
        len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts
    )


def test_estimate_reports_tokens_per_second_and_scales_by_tokens(project, tmp_path):
    """The timed rows give tokens per second; the whole test set's tokens (counted as the model
    reads them, truncated) give the estimate, whatever the rows: a sample of short texts does
    not make a test set of long ones look short."""
    copy = tmp_path / "docs"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("package"))
    bundle = _package(copy, "docs-timed", f"kaggle.timing_rows={SAMPLE}")
    tokenizer = load_tokenizer(copy / "models" / "decoder")
    test = pd.read_csv(copy / "data" / "test.csv")
    timing = json.loads((bundle / "timing.json").read_text())
    assert set(timing["tokens_per_second"]) == {"tiny_llm"}
    for model in timing["models"]:
        assert model["tokens"] == _tokens(test["text"].head(SAMPLE), tokenizer)
        assert model["test_tokens"] == _tokens(test["text"], tokenizer)
        assert model["tokens_per_second"] == pytest.approx(
            model["tokens"] / model["predict_seconds"], rel=1e-3
        )

    # The timed rows made short, the rest as they are: the estimate follows the tokens.
    data = tmp_path / "short-sample"
    shutil.copytree(copy / "data", data)
    test.loc[: SAMPLE - 1, "text"] = test["text"].head(SAMPLE).str.split().str[:2].str.join(" ")
    test.to_csv(data / "test.csv", index=False)
    experiments = read_manifest(bundle)["experiments"]
    with working_directory(copy):
        report, _ = estimate(bundle, experiments, data, SAMPLE, len(test), limit_hours=9)
        twice, _ = estimate(bundle, experiments, data, SAMPLE, 2 * len(test), limit_hours=9)
    sample, whole = _tokens(test["text"].head(SAMPLE), tokenizer), _tokens(test["text"], tokenizer)
    for model in report["models"]:
        assert (model["tokens"], model["test_tokens"]) == (sample, whole)
        assert model["test_tokens"] / model["tokens"] > len(test) / SAMPLE  # more than by rows
    assert [m["test_tokens"] for m in twice["models"]] == [2 * whole] * len(twice["models"])
    for result in (report, twice):
        expected = sum(
            m["load_seconds"] + m["predict_seconds"] * m["test_tokens"] / m["tokens"]
            for m in result["models"]
        )
        assert result["estimated_seconds"] == pytest.approx(expected, abs=0.01)
