"""A LoRA fold's training-time copies hold only the adapters and the head: EMA's and SWA's
averages share the frozen base with the live model (never copied, never cast), their states, the
best-epoch snapshots and a resumable checkpoint's files hold only the saved keys, the EMA average
is still its formula, and a killed LoRA fold with EMA and SWA resumes to the uninterrupted run's
files. Tiny Llama-shaped models (tests/support/tiny_decoder.py), never downloaded.
"""

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
from timm.utils import ModelEmaV3

from medalist.cli import main
from medalist.demo.digits import working_directory
from medalist.errors import CheckpointError
from medalist.modalities.text import build_dataset, build_model
from medalist.tasks import build_task
from medalist.training.hooks import Hook, Hooks
from medalist.training.loop import FoldTrainer
from medalist.training.runtime import make_accelerator
from medalist.training.weights import bare_model
from medalist.tricks.ema import EMA, SharedBaseEma, load_average
from medalist.tricks.registry import Tricks, build_tricks
from medalist.tricks.swa import SWA
from support.configs import text_cfg
from support.llm_projects import docstring_project, docstring_rows, tiny_llm
from support.tiny_decoder import make_decoder

SUPPORT = Path(__file__).parent / "support"
LORA = [
    "text.pooling=last",
    "text.lora.enabled=true",
    "text.lora.r=4",
    "text.lora.alpha=8",
    "text.lora.target_modules=[q_proj,v_proj]",
    "train.epochs=2",
    "train.batch_size=8",
    "train.lr=3e-3",
    "train.num_workers=0",
]
AVERAGES = [
    "tricks.ema.enabled=true",
    "tricks.ema.decay=0.5",
    "tricks.swa.enabled=true",
    "tricks.swa.start_epoch=0",
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
        "llama-bf16": make_decoder(root / "llama-bf16", texts, dtype=torch.bfloat16),
    }


def lora_trainer(cfg, corpus, *, hooks=None, folder=None) -> FoldTrainer:
    """Fold 0 of the corpus (every fourth row validates) on a freshly built LoRA model."""
    task = build_task(cfg, corpus)
    targets = task.encode_targets(corpus)
    valid = np.arange(len(corpus)) % 4 == 0
    train_rows, valid_rows = corpus[~valid], corpus[valid]
    train_set = build_dataset(
        cfg, train_rows, targets[~valid], split="train", train=True, source="t"
    )
    valid_set = build_dataset(
        cfg, valid_rows, targets[valid], split="train", train=False, source="t"
    )
    tricks = build_tricks(cfg, task, targets[~valid])
    if hooks is not None:
        tricks = Tricks(Hooks(hooks), tricks.criterion)
    torch.manual_seed(0)
    return FoldTrainer(
        cfg,
        task,
        build_model(cfg, task),
        train_set,
        valid_set,
        targets[valid],
        fold=0,
        tricks=tricks,
        accelerator=make_accelerator(cfg),
        folder=folder,
        config_hash=None if folder is None else "one config",
    )


def hook_of(trainer: FoldTrainer, kind: type) -> Hook:
    (hook,) = [h for h in trainer.hooks.hooks if isinstance(h, kind)]
    return hook


def test_averages_share_the_base_and_hold_only_the_saved_keys(decoders, corpus, tmp_path):
    """A bf16 base: EMA and SWA own fp32 copies of the adapters and the head alone; every other
    tensor is the live model's (same storage, still bf16, bit for bit as loaded)."""
    cfg = text_cfg(decoders["llama-bf16"], *LORA, *AVERAGES)
    trainer = lora_trainer(cfg, corpus, folder=tmp_path)
    model = bare_model(trainer.model)
    keep = model.saved_keys()
    base = {k: v.clone() for k, v in model.state_dict().items() if k not in keep}
    assert {v.dtype for k, v in base.items() if "base_layer" in k} == {torch.bfloat16}
    result = trainer.fit()

    live = model.state_dict()
    ema, swa = hook_of(trainer, EMA), hook_of(trainer, SWA)
    for name, average in (("ema", ema.ema.module), ("swa", swa.module)):
        for key, tensor in average.state_dict().items():
            shared = tensor.data_ptr() == live[key].data_ptr()
            assert shared == (key not in keep), (name, key)
            assert tensor.dtype == (live[key].dtype if shared else torch.float32), (name, key)
    assert set(ema.state_dict()) == keep
    assert set(swa.state_dict()) == keep | {"swa_count"}
    for key, tensor in base.items():  # nothing cast or wrote the shared base
        assert live[key].dtype == tensor.dtype and torch.equal(live[key], tensor), key

    # The best epoch's snapshots: copies of the saved keys, nothing of the base.
    assert result.eval_name == "swa"
    for snapshot in (result.state_dict, result.eval_state_dict):
        assert set(snapshot) == keep
        for key, tensor in snapshot.items():
            assert tensor.data_ptr() != live[key].data_ptr(), key

    (checkpoint,) = (tmp_path / "checkpoint").glob("step-*")
    files = {p.name: set(load_file(p)) for p in checkpoint.glob("*.safetensors")}
    assert set(files) == {
        "model.safetensors",
        "hook-0.safetensors",
        "hook-1.safetensors",
        "best-model.safetensors",
        "best-eval.safetensors",
    }
    for name, keys in files.items():
        assert keys - {"swa_count"} == keep, name


class Recorder(Hook):
    """The trained tensors after every optimizer step (after EMA's update of that step)."""

    def __init__(self):
        self.weights = []

    def after_step(self, state):
        state_dict = bare_model(state.model).state_dict()
        keep = bare_model(state.model).saved_keys()
        self.weights.append({k: state_dict[k].detach().clone() for k in keep})


def test_lora_ema_is_its_formula_over_the_trained_tensors(decoders, corpus):
    decay = 0.5
    cfg = text_cfg(
        decoders["llama"],
        *LORA,
        "train.epochs=1",
        "tricks.ema.enabled=true",
        f"tricks.ema.decay={decay}",
    )
    ema, recorder = EMA(cfg.tricks.ema), Recorder()
    trainer = lora_trainer(cfg, corpus, hooks=[ema, recorder])
    trainer.fit()
    assert len(recorder.weights) == 4  # 30 rows in batches of 8
    expected = recorder.weights[0]  # the first step copies the weights
    for weights in recorder.weights[1:]:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    averaged = ema.state_dict()
    assert set(averaged) == set(expected)
    for key, value in expected.items():
        assert torch.allclose(averaged[key], value, atol=1e-6), key
    assert any(not torch.equal(averaged[k], recorder.weights[-1][k]) for k in expected)


@pytest.mark.parametrize("warmup", [False, True])
def test_decay_schedule_is_timm_s(warmup):
    timm_ema = ModelEmaV3(torch.nn.Linear(2, 2), decay=0.99, update_after_step=3, use_warmup=warmup)
    ours = SharedBaseEma(torch.nn.Linear(2, 2), decay=0.99, start_step=3, warmup=warmup)
    assert [ours.get_decay(s) for s in range(200)] == [timm_ema.get_decay(s) for s in range(200)]


# ---------------------------------------------------------------------------------------------
# Kill and resume through the train stage


# Fold 0 alone, SWA from the first epoch beside EMA.
TRIMMED = {"train": {"folds": [0]}, "tricks": {"swa": {"enabled": True, "start_epoch": 0}}}


@pytest.fixture(scope="module")
def averaged_project(tmp_path_factory, decoders, corpus) -> Path:
    """A baked text project on the tiny Llama with LoRA, EMA and SWA: fold 0, uninterrupted."""
    root = tmp_path_factory.mktemp("llm")
    project = docstring_project(root, decoders["llama"], corpus, 30, tiny_llm(TRIMMED))
    with working_directory(project):
        for stage in ("folds", "train"):
            assert main([stage, "-c", "configs/tiny.yaml"]) == 0, stage
    return project


def _train(project: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SUPPORT), "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "medalist", "train", "-c", "configs/tiny.yaml", *extra]
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_killed_lora_fold_with_ema_and_swa_resumes_to_the_uninterrupted_files(
    averaged_project, tmp_path
):
    """SIGKILL mid-epoch 1 (SWA has averaged epoch 0; checkpoints every optimizer step): the
    checkpoint's files hold the adapters and the head alone, and the same command again ends
    with the uninterrupted run's weight files and OOF, bit for bit."""
    project = tmp_path / "docs"
    shutil.copytree(averaged_project, project, ignore=shutil.ignore_patterns("outputs"))
    marker = tmp_path / "killed"
    args = [
        "train.checkpoint_every=1",
        f"tricks.custom=[{{name: 'faults:KillAt', epoch: 1, batch: 1, marker: '{marker}'}}]",
    ]
    killed = _train(project, *args)
    assert killed.returncode == -9 and marker.exists(), killed.stderr[-2000:]
    fold = project / "outputs" / "tiny_llm" / "fold0"
    want = averaged_project / "outputs" / "tiny_llm" / "fold0"
    saved = set(load_file(want / "model.safetensors"))
    (checkpoint,) = (fold / "checkpoint").glob("step-*")
    files = {p.name: set(load_file(p)) for p in checkpoint.glob("*.safetensors")}
    assert len([name for name in files if name.startswith("hook-")]) == 2  # EMA's and SWA's
    assert {"best-model.safetensors", "best-eval.safetensors"} <= set(files)
    for name, keys in files.items():
        assert keys - {"swa_count"} == saved, name

    resumed = _train(project, *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    names = sorted(p.name for p in want.glob("*.safetensors"))
    assert names == ["model.safetensors", "swa.safetensors"]
    for name in [*names, "oof.parquet"]:
        assert (fold / name).read_bytes() == (want / name).read_bytes(), name


def test_an_average_of_another_layout_is_a_checkpoint_error():
    """SWA's checkpoint once held AveragedModel's own keys (``module.<key>``, ``n_averaged``);
    such a state, or one of another model, stops the resume naming the trick, not a traceback."""
    model = torch.nn.Linear(2, 2)
    old = {"module.weight": torch.zeros(2, 2), "module.bias": torch.zeros(2), "n_averaged": 1}
    with pytest.raises(CheckpointError, match="tricks.swa: the checkpoint's average does not fit"):
        load_average(model, old, "tricks.swa")
    load_average(model, {"weight": torch.ones(2, 2), "bias": torch.ones(2)}, "tricks.swa")
    assert torch.equal(model.weight, torch.ones(2, 2))
