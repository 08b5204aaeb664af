"""Decoder language models as classifiers: last-token pooling under padding, the pad token a
tokenizer lacks, LoRA through peft (only the adapters and the head train and are saved, reloaded
onto the same base only), and a decoder competition through train, infer, submission and the
offline bundle, with kill-and-resume of a LoRA fold. Tiny Llama- and Qwen2-shaped models are made
here (tests/support/tiny_decoder.py), never downloaded.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.errors import CheckpointError, ConfigError
from medalist.modalities import mlm
from medalist.modalities.text import build_dataset, build_model
from medalist.modalities.text_model import last_token, load_tokenizer
from medalist.offline.predict import run_bundle
from medalist.tasks import build_task
from medalist.training.optim import build_optimizer
from medalist.training.runtime import make_accelerator, make_loader, predict_logits
from medalist.training.weights import BASE_KEY, load_weights, read_metadata, save_weights
from support.bundles import kaggle_overrides
from support.configs import text_cfg
from support.llm_projects import docstring_project, docstring_rows, tiny_llm
from support.tiny_decoder import make_decoder

SUPPORT = Path(__file__).parent / "support"
LORA = [
    "text.lora.enabled=true",
    "text.lora.r=4",
    "text.lora.alpha=8",
    "text.lora.dropout=0.1",
    "text.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]",
]


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return docstring_rows(per_library=20)


@pytest.fixture(scope="module")
def decoders(tmp_path_factory, corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decoders")
    texts = corpus["text"].tolist()
    return {
        "llama": make_decoder(root / "llama", texts),
        "qwen2": make_decoder(root / "qwen2", texts, family="qwen2"),
        "llama-other": make_decoder(root / "llama-other", texts, seed=1),
        "llama-bf16": make_decoder(root / "llama-bf16", texts, dtype=torch.bfloat16),
    }


def decoder_cfg(backbone: Path, *overrides: str):
    return text_cfg(backbone, "text.pooling=last", *overrides)


# ---------------------------------------------------------------------------------------------
# Pooling and padding


def test_last_token_is_the_rightmost_real_one_for_either_padding_side():
    states = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    assert last_token(states, right).flatten().tolist() == [2.0, 9.0]
    assert last_token(states, left).flatten().tolist() == [4.0, 9.0]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padded_batches_predict_as_each_row_alone(family, decoders, corpus):
    """Right padding, causal attention, the last real token: a row's logits do not depend on
    the rows it is batched with (the unpadded single-row forward)."""
    df = corpus.iloc[:12].reset_index(drop=True)
    df["text"] = [" ".join(t.split()[: 2 + 3 * i]) for i, t in enumerate(df["text"])]
    cfg = decoder_cfg(decoders[family], "text.concat_layers=2", "text.dropout=0")
    torch.manual_seed(0)
    model = build_model(cfg, build_task(cfg, df)).eval()
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t")
    loader = make_loader(dataset, 6, shuffle=False, cfg=cfg)
    assert any((batch["input"][:, 1] == 0).any() for batch in loader)  # rows are padded
    index, batched = predict_logits(model, loader, make_accelerator(cfg))
    assert list(index) == list(range(len(df)))
    with torch.no_grad():
        for row in range(len(df)):
            alone = dataset.collate([dataset[row]])["input"]
            ids = alone[:, :, : int(alone[0, 1].sum())]  # no padding at all
            np.testing.assert_allclose(model(ids).numpy()[0], batched[row], atol=1e-5)


def test_tokenizer_without_pad_token_pads_with_end_of_text(decoders, corpus):
    tokenizer = load_tokenizer(decoders["llama"])
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None
    cfg = decoder_cfg(decoders["llama"])
    model = build_model(cfg, build_task(cfg, corpus))
    assert model.backbone.config.pad_token_id == tokenizer.eos_token_id
    # The end-of-text embedding still trains (no padding_idx freezing its gradient).
    assert model.backbone.get_input_embeddings().padding_idx is None


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["text.pooling=cls"], "text.pooling: cls pools the first token"),
        ([*LORA, "text.lora.target_modules=[no_such_layer]"], "text.lora.target_modules"),
    ],
)
def test_impossible_decoder_settings_are_refused(decoders, corpus, overrides, key):
    cfg = decoder_cfg(decoders["llama"], *overrides)
    with pytest.raises(ConfigError, match=key):
        build_dataset(cfg, corpus, None, split="test", train=False, source="t")
        build_model(cfg, build_task(cfg, corpus))


def test_pretrain_mlm_refuses_a_decoder(decoders):
    with pytest.raises(ConfigError, match="text.backbone: .* is a decoder \\(llama\\)"):
        mlm.run(decoder_cfg(decoders["llama"]))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["text.reinit_layers=1"], "text.reinit_layers: not with text.lora.enabled"),
        (["text.freeze_layers=1"], "text.freeze_layers: not with text.lora.enabled"),
        (["text.lora.target_modules=[]"], "text.lora.target_modules: empty"),
    ],
)
def test_impossible_lora_configs_stop_at_the_config(decoders, overrides, key):
    with pytest.raises(ConfigError, match=key):
        decoder_cfg(decoders["llama"], *LORA, *overrides)


# ---------------------------------------------------------------------------------------------
# LoRA


def test_lora_trains_only_adapters_and_head(decoders, corpus):
    cfg = decoder_cfg(decoders["llama"], *LORA, "train.lr=1e-2", "train.weight_decay=0.1")
    task = build_task(cfg, corpus)
    torch.manual_seed(0)
    model = build_model(cfg, task).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.") for n in trainable)
    assert any("o_proj.lora_B" in n for n in trainable)  # target_modules as configured
    assert model.saved_keys() == frozenset(trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, cfg)
    dataset = build_dataset(
        cfg, corpus, task.encode_targets(corpus), split="train", train=True, source="t"
    )
    batch = dataset.collate([dataset[i] for i in range(8)])
    for _ in range(3):
        optimizer.zero_grad()
        task.loss(model(batch["input"]), batch["target"]).mean().backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == trainable  # every adapter and head tensor moved, nothing else did


def test_half_precision_base_gets_float32_adapters_and_head(decoders, corpus):
    """A bf16 checkpoint loads as bf16 (transformers' dtype "auto"); the adapters and the head,
    which the optimizer updates, are float32, as are the logits."""
    cfg = decoder_cfg(decoders["llama-bf16"], *LORA)
    task = build_task(cfg, corpus)
    model = build_model(cfg, task).train()
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert {d for n, d in dtypes.items() if "base_layer" in n} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if ".lora_" in n or n.startswith("head.")} == {
        torch.float32
    }
    dataset = build_dataset(
        cfg, corpus, task.encode_targets(corpus), split="train", train=True, source="t"
    )
    batch = dataset.collate([dataset[i] for i in range(4)])
    logits = model(batch["input"])
    assert logits.dtype == torch.float32
    task.loss(logits, batch["target"]).mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_fold_files_hold_adapters_and_head_and_load_only_onto_their_base(
    decoders, corpus, tmp_path
):
    cfg = decoder_cfg(decoders["llama"], *LORA)
    task = build_task(cfg, corpus)
    model = build_model(cfg, task)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()  # B starts at zero; make the adapters count
    path = save_weights(model, tmp_path / "model.safetensors", {"fold": 0})
    assert set(load_file(path)) == model.saved_keys()
    assert (
        read_metadata(path)[BASE_KEY] == model.weights_base() and read_metadata(path)["fold"] == 0
    )
    # A fresh build (other random adapters) on the same base: the file makes it the same model.
    torch.manual_seed(1)
    again = load_weights(build_model(cfg, task), path)
    ids = build_dataset(cfg, corpus.iloc[:4], None, split="test", train=False, source="t")
    inputs = ids.collate([ids[i] for i in range(4)])["input"]
    with torch.no_grad():
        assert torch.equal(model.eval()(inputs), again.eval()(inputs))
    other = build_model(decoder_cfg(decoders["llama-other"], *LORA), task)
    with pytest.raises(CheckpointError, match="other base weights"):
        load_weights(other, path)


# ---------------------------------------------------------------------------------------------
# A decoder competition through the stages


@pytest.fixture(scope="module")
def llm_project(tmp_path_factory, decoders, corpus) -> Path:
    """A baked text project on the tiny Llama with LoRA, through folds, train, infer, submission."""
    root = tmp_path_factory.mktemp("llm")
    project = docstring_project(root, decoders["llama"], corpus, 30, tiny_llm())
    with working_directory(project):
        for stage in ("folds", "train", "infer", "submission"):
            assert main([stage, "-c", "configs/tiny.yaml"]) == 0, stage
    return project


def test_lora_fold_saves_adapters_and_head_only(llm_project):
    out = llm_project / "outputs" / "tiny_llm"
    for fold in (0, 1):
        for name in ("model", "ema"):
            keys = set(load_file(out / f"fold{fold}" / f"{name}.safetensors"))
            assert keys and all(".lora_" in k or k.startswith("head.") for k in keys), name
            assert any("v_proj.lora_A" in k for k in keys) and "head.fc.weight" in keys
    sub = pd.read_csv(llm_project / "submissions" / "tiny_llm.csv")
    assert sub["library"].isin(["numpy", "pandas"]).all()


def test_reloaded_adapters_reproduce_the_oof_exactly(llm_project):
    out = llm_project / "outputs" / "tiny_llm"
    with working_directory(llm_project):
        cfg = resolve_config(out / "config.yaml")
        train = pd.read_csv("data/train.csv")
        folds = pd.read_csv("folds/folds.csv")
        oof = pd.read_parquet(out / "oof.parquet")
        task = build_task(cfg, train)
        for fold in (0, 1):
            scores = json.loads((out / f"fold{fold}" / "scores.json").read_text())
            (weights,) = scores["prediction_weights"]
            valid = train[train["id"].isin(folds.loc[folds["fold"] == fold, "id"])]
            dataset = build_dataset(cfg, valid, None, split="train", train=False, source="t")
            model = load_weights(build_model(cfg, task), out / f"fold{fold}" / weights)
            loader = make_loader(dataset, 2 * cfg.train.batch_size, shuffle=False, cfg=cfg)
            _, logits = predict_logits(model, loader, make_accelerator(cfg))
            got = task.activate(torch.from_numpy(logits)).numpy()
            want = oof.set_index("id").loc[valid["id"], ["p_numpy", "p_pandas"]].to_numpy()
            assert np.array_equal(got, want), fold


def test_bundle_of_a_lora_project_predicts_as_infer(llm_project, tmp_path):
    """The bundle carries the base as backbones/<name>/ and the adapters per fold; offline
    predictions equal infer's, value for value."""
    project = tmp_path / "docs"
    shutil.copytree(llm_project, project)
    kaggle = kaggle_overrides(tmp_path, "tester/docs-llm-test", "kaggle.timing_rows=0")
    with working_directory(project):
        assert main(["package", "-c", "configs/tiny.yaml", *kaggle]) == 0
        bundle = Path("package/docs-llm-test")
        assert (bundle / "backbones" / "decoder" / "model.safetensors").is_file()
        run_bundle(bundle, "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/tiny_llm.parquet")
        local = pd.read_parquet("outputs/tiny_llm/test.parquet")
    assert np.array_equal(offline.to_numpy(), local.to_numpy())


def _train(project: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "medalist", "train", "-c", "configs/tiny.yaml", *extra]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_killed_lora_fold_resumes_to_the_uninterrupted_weights(llm_project, tmp_path):
    """SIGKILL mid-epoch (checkpoints every optimizer step), the same command again: the fold's
    adapters, head, EMA and OOF are those of the uninterrupted run, bit for bit."""
    project = tmp_path / "docs"
    shutil.copytree(llm_project, project, ignore=shutil.ignore_patterns("outputs"))
    marker = tmp_path / "killed"
    args = [
        "train.folds=[0]",
        "train.checkpoint_every=1",
        f"tricks.custom=[{{name: 'faults:KillAt', epoch: 1, batch: 1, marker: '{marker}'}}]",
    ]
    killed = _train(project, *args)
    assert killed.returncode == -9 and marker.exists(), killed.stderr[-2000:]
    fold = project / "outputs" / "tiny_llm" / "fold0"
    checkpoint = next((fold / "checkpoint").glob("step-*"))
    assert set(load_file(checkpoint / "model.safetensors")) == set(
        load_file(llm_project / "outputs" / "tiny_llm" / "fold0" / "model.safetensors")
    )
    resumed = _train(project, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    want = llm_project / "outputs" / "tiny_llm" / "fold0"
    for name in ("model.safetensors", "ema.safetensors", "oof.parquet"):
        assert (fold / name).read_bytes() == (want / name).read_bytes(), name
