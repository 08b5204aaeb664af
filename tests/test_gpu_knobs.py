"""The GPU settings, checked for correctness on the CPU: train.compile, train.channels_last,
model.grad_checkpointing and infer.precision.

Each changes how a model runs, not what it computes: compiled weights and checkpoints carry the
bare model's keys and resume across the setting, channels_last batches and weights predict what
the standard layout predicts, checkpointed gradients are the stored-activation ones, bf16
predictions are close to fp32 ones and fp32 ones are unchanged. torch.compile runs with the
"eager" backend here (a real OptimizedModule, without inductor's code generation).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file, save_file
from torch._dynamo.eval_frame import OptimizedModule
from torch.utils.data import Dataset
from transformers import BertConfig, BertModel

from medalist.config import resolve_config
from medalist.errors import ConfigError
from medalist.modalities.text_model import TextModel
from medalist.prediction import infer
from medalist.tasks import build_task
from medalist.training import fold_setup
from medalist.training.hooks import Hook, Hooks, TrainState, Tricks
from medalist.training.loop import FoldTrainer
from medalist.training.runtime import make_accelerator, make_loader
from medalist.training.weights import load_weights, save_weights
from medalist.tricks.adversarial import embedding
from medalist.tricks.ema import EMA
from medalist.tricks.swa import SWA

ROWS, CLASSES, SIZE, CHANNELS = 24, 3, 16, 3  # 3 channels: a 1-channel batch is both layouts
COMPILED = "_orig_mod."


class Images(Dataset):
    def __init__(self, seed: int = 0, rows: int = ROWS):
        generator = torch.Generator().manual_seed(seed)
        self.inputs = torch.randn(rows, CHANNELS, SIZE, SIZE, generator=generator)
        self.targets = torch.randint(0, CLASSES, (rows,), generator=generator)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "input": self.inputs[index], "target": self.targets[index]}


def make_cfg(*extra: str):
    return resolve_config(
        overrides=[
            "train.cpu=true",
            "train.progress=false",
            "train.mixed_precision='no'",
            "train.epochs=1",
            "train.batch_size=8",
            "train.lr=3.0e-3",
            "train.seed=7",
            "train.num_workers=0",
            f"image.channels={CHANNELS}",
            f"image.size={SIZE}",
            *extra,
        ]
    )


def fresh_model(name: str = "test_resnet") -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=CLASSES, in_chans=CHANNELS)


def first_conv(model: torch.nn.Module) -> torch.Tensor:
    return next(p for p in model.parameters() if p.dim() == 4)


def task_of(cfg):
    return build_task(cfg, pd.DataFrame({"target": list(range(CLASSES))}))


@pytest.fixture
def eager_compile(monkeypatch):
    """torch.compile without inductor's C++ code generation (slow and compiler-bound on a CPU)."""
    monkeypatch.setattr(fold_setup, "COMPILE_BACKEND", "eager")


class Probe(Hook):
    """Records the prepared model's class, and the memory format of every input and conv weight
    the bare model sees in its forward passes (training and evaluation)."""

    def __init__(self):
        self.model_types: list[type] = []
        self.seen: list[tuple[bool, bool, bool]] = []  # (training, input CL, weight CL)

    def on_fit_start(self, state):
        self.model_types.append(type(state.model))
        module = getattr(state.model, "_orig_mod", state.model)

        def record(mod, args):
            x = args[0]
            weight = first_conv(mod)
            self.seen.append(
                (
                    mod.training,
                    x.is_contiguous(memory_format=torch.channels_last),
                    weight.is_contiguous(memory_format=torch.channels_last),
                )
            )

        module.register_forward_pre_hook(record)


class StopAt(Hook):
    """Raises after optimizer step ``step``: an interruption after the last checkpoint."""

    def __init__(self, step: int):
        self.step = step

    def after_step(self, state):
        if state.step == self.step:
            raise KeyboardInterrupt


def trainer(cfg, model, *, hooks=(), folder=None, data_seed=0) -> FoldTrainer:
    task = task_of(cfg)
    tricks = Tricks(Hooks(list(hooks)), task.loss)
    train, valid = Images(data_seed), Images(data_seed + 1, rows=12)
    torch.manual_seed(cfg.train.seed)
    return FoldTrainer(
        cfg,
        task,
        model,
        train,
        valid,
        valid.targets.numpy(),
        fold=0,
        tricks=tricks,
        accelerator=make_accelerator(cfg),
        folder=folder,
        config_hash=None if folder is None else "one config",
    )


def averaging_hooks(cfg) -> list[Hook]:
    return [EMA(cfg.tricks.ema), SWA(cfg.tricks.swa)]


# ------------------------------------------------------------------------------ train.compile

RESUME = ("train.epochs=2", "train.checkpoint_every=2", "tricks.ema.decay=0.9")
RESUME += ("tricks.swa.start_epoch=0",)


def saved_keys(folder) -> tuple[set[str], list[str]]:
    """The safetensors files of the folder's checkpoint, and their keys with ``_orig_mod.``."""
    saved = sorted((folder / "checkpoint").glob("step-*/*.safetensors"))
    prefixed = [k for path in saved for k in load_file(str(path)) if COMPILED in k]
    return {p.name for p in saved}, prefixed


@pytest.fixture(scope="module")
def uninterrupted():
    """The fold trained without interruption and uncompiled."""
    cfg = make_cfg(*RESUME)
    return trainer(cfg, fresh_model(), hooks=averaging_hooks(cfg)).fit()


@pytest.mark.parametrize("first, then", [(True, False), (False, True)], ids=["c-u", "u-c"])
def test_compiled_and_uncompiled_runs_resume_each_others_checkpoints(
    eager_compile, uninterrupted, tmp_path, first, then
):
    """A fold interrupted after a checkpoint (step 2 of 6) resumes with train.compile toggled and
    ends where the uninterrupted run ends; no saved key (weights, EMA and SWA state, best epoch)
    carries ``_orig_mod.``, and the run that asked for it really trained an OptimizedModule."""
    expected = uninterrupted
    probe = Probe()
    cfg = make_cfg(*RESUME, f"train.compile={str(first).lower()}")
    hooks = [*averaging_hooks(cfg), StopAt(3), probe]
    with pytest.raises(KeyboardInterrupt):
        trainer(cfg, fresh_model(), hooks=hooks, folder=tmp_path).fit()
    assert (probe.model_types[0] is OptimizedModule) == first
    names, prefixed = saved_keys(tmp_path)
    assert {"model.safetensors", "hook-0.safetensors", "hook-1.safetensors"} <= names
    assert prefixed == []

    cfg = make_cfg(*RESUME, f"train.compile={str(then).lower()}")
    probe = Probe()
    run = trainer(cfg, fresh_model(), hooks=[*averaging_hooks(cfg), probe], folder=tmp_path)
    result = run.fit()
    assert (probe.model_types[0] is OptimizedModule) == then
    names, prefixed = saved_keys(tmp_path)  # the last epoch's checkpoint, by the second run
    assert {"best-model.safetensors", "best-eval.safetensors", "hook-1.safetensors"} <= names
    assert prefixed == []
    for got, want in (
        (result.state_dict, expected.state_dict),
        (result.eval_state_dict, expected.eval_state_dict),
    ):
        assert got.keys() == want.keys()
        for key, tensor in want.items():
            torch.testing.assert_close(got[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    np.testing.assert_allclose(result.valid_logits, expected.valid_logits, rtol=1e-4, atol=1e-5)


def test_compiled_weights_save_and_load_as_the_bare_models(tmp_path):
    """save_weights of a compiled model writes the bare keys; load_weights fills a compiled or an
    uncompiled model; a state dict saved raw from a compiled model (keys ``_orig_mod.``) loads
    into the bare model."""
    model = fresh_model()
    compiled = torch.compile(model, backend="eager")
    assert all(k.startswith(COMPILED) for k in compiled.state_dict())
    save_weights(compiled, tmp_path / "w.safetensors")
    assert not [k for k in load_file(str(tmp_path / "w.safetensors")) if COMPILED in k]
    other = fresh_model()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    load_weights(torch.compile(other, backend="eager"), tmp_path / "w.safetensors")
    for key, tensor in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], tensor), key
    raw = {k: v.contiguous() for k, v in compiled.state_dict().items()}
    save_file(raw, str(tmp_path / "raw.safetensors"))
    third = load_weights(
        timm.create_model("test_resnet", num_classes=CLASSES, in_chans=3),
        tmp_path / "raw.safetensors",
    )
    for key, tensor in model.state_dict().items():
        assert torch.equal(third.state_dict()[key], tensor), key


def test_tricks_see_the_bare_models_names_when_compiled():
    """FGM/AWP/PGD pick their parameters by name: a compiled model's names are the bare ones."""
    compiled = torch.compile(fresh_model(), backend="eager")
    state = TrainState(None, compiled, None, None, None, 0)
    assert list(embedding(state, None, "tricks.fgm.target")) == ["conv1.0.weight"]


def test_compile_without_a_cpp_compiler_is_refused_before_training(monkeypatch):
    """Inductor on the CPU needs a C++ compiler: without one, train.compile is a ConfigError
    when the fold is set up, not a backend error at its first batch."""
    from torch._inductor import cpp_builder

    def missing():
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(ConfigError, match=r"train\.compile: .*C\+\+ compiler"):
        fold_setup.check_compile(torch.device("cpu"))
    with pytest.raises(ConfigError, match=r"train\.compile"):
        trainer(make_cfg("train.compile=true"), fresh_model())
    fold_setup.check_compile(torch.device("cpu"), backend="eager")  # nothing to generate


# ------------------------------------------------------------------------- train.channels_last


class FirstGradients(Hook):
    """The gradients of the fold's first micro-batch, by parameter name."""

    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def after_backward(self, state, batch):
        if not self.grads:
            model = getattr(state.model, "_orig_mod", state.model)
            self.grads = {n: p.grad.clone() for n, p in model.named_parameters()}


def test_channels_last_batches_and_weights_give_the_same_fold():
    """With train.channels_last the model's conv weights and every batch it sees (training and
    evaluation) are channels_last; the gradients are the standard layout's up to float rounding,
    and so are the fold's OOF logits (AdamW turns rounding in near-zero gradients into steps of
    up to lr, hence their looser tolerance)."""
    results, grads = {}, {}
    for on in (False, True):
        probe, first = Probe(), FirstGradients()
        cfg = make_cfg(f"train.channels_last={str(on).lower()}")
        results[on] = trainer(cfg, fresh_model(), hooks=[probe, first]).fit()
        assert {training for training, _, _ in probe.seen} == {True, False}
        assert all(x_cl == on and w_cl == on for _, x_cl, w_cl in probe.seen), probe.seen
        grads[on] = first.grads
    assert grads[True].keys() == grads[False].keys()
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    np.testing.assert_allclose(results[True].valid_logits, results[False].valid_logits, atol=2e-3)
    assert not np.array_equal(results[True].valid_logits, results[False].valid_logits)


def tiny_text_model(cfg) -> TextModel:
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    torch.manual_seed(0)
    return TextModel(BertModel(config), CLASSES, cfg.text)


class Tokens(Dataset):
    """Packed token ids and attention masks, (2, seq) per row, as the text dataset gives."""

    def __init__(self, rows: int = 12, seq: int = 8):
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1, 50, (rows, seq), generator=generator)
        self.inputs = torch.stack([ids, torch.ones_like(ids)], dim=1)
        self.targets = torch.arange(rows) % CLASSES

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, index):
        return {"index": index, "input": self.inputs[index], "target": self.targets[index]}


def test_channels_last_is_a_no_op_for_text():
    """Token batches and a transformers model are left as they are, and the fold trains."""
    cfg = make_cfg("train.channels_last=true")
    data = Tokens()
    batch = next(iter(make_loader(data, 4, shuffle=False, cfg=cfg)))
    assert torch.equal(batch["input"], data.inputs[:4]) and batch["input"].is_contiguous()
    model = tiny_text_model(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    task = task_of(cfg)
    run = FoldTrainer(
        cfg,
        task,
        model,
        data,
        data,
        data.targets.numpy(),
        fold=0,
        tricks=Tricks(Hooks(), task.loss),
        accelerator=make_accelerator(cfg),
    )
    assert all(t.is_contiguous() for t in model.state_dict().values())
    result = run.fit()
    assert result.state_dict.keys() == before.keys()


def test_prediction_uses_channels_last_when_trained_so():
    cfg = make_cfg("train.channels_last=true")
    model = infer.prediction_model(cfg, fresh_model(), make_accelerator(cfg))
    assert first_conv(model).is_contiguous(memory_format=torch.channels_last)
    batch = next(iter(make_loader(Images(), 4, shuffle=False, cfg=cfg)))
    assert batch["input"].is_contiguous(memory_format=torch.channels_last)


# ------------------------------------------------------------------- model.grad_checkpointing


def grads_and_recomputes(model, inputs, block) -> tuple[dict, int]:
    """The parameter gradients of one training step's loss, and how often ``block`` began a
    forward pass (a pre-hook: a recomputation stops as soon as it has what backward needs)."""
    calls = []
    handle = block.register_forward_pre_hook(lambda *_: calls.append(1))
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    model(inputs).float().square().mean().backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, len(calls)


@pytest.mark.parametrize(
    "build, block, inputs",
    [
        (lambda: fresh_model("test_resnet"), lambda m: m.layer1[0], "image"),
        (lambda: fresh_model("test_vit"), lambda m: m.blocks[0], "image"),
        (
            lambda: tiny_text_model(make_cfg()),
            lambda m: m.backbone.encoder.layer[0].attention,
            "text",
        ),
    ],
    ids=["timm-resnet", "timm-vit", "transformers"],
)
def test_grad_checkpointing_recomputes_and_gives_the_same_gradients(build, block, inputs):
    x = Images(rows=4).inputs if inputs == "image" else Tokens(rows=4).inputs
    plain = build()
    want, once = grads_and_recomputes(plain, x, block(plain))
    model = build()
    enabled = fold_setup.enable_grad_checkpointing(model)
    got, twice = grads_and_recomputes(model, x, block(model))
    assert enabled == (["backbone"] if inputs == "text" else [""])
    assert (once, twice) == (1, 2), "the block's activations were not recomputed"
    assert got.keys() == want.keys()
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_grad_checkpointing_on_a_model_without_it_is_refused():
    cfg = make_cfg("model.grad_checkpointing=true")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(CHANNELS * SIZE**2, CLASSES))
    with pytest.raises(ConfigError, match=r"model\.grad_checkpointing: Sequential supports"):
        trainer(cfg, model)
    timm_model = fresh_model()
    trainer(cfg, timm_model)
    assert timm_model.grad_checkpointing


# ----------------------------------------------------------------------------- infer.precision


class Modality:
    """Only what predict_files asks of a modality: no learner of its own (the loop's folds),
    and the model."""

    @staticmethod
    def fold_learner(cfg, task):
        return None

    @staticmethod
    def build_model(cfg, task):
        return fresh_model()


def predictions(cfg, path) -> np.ndarray:
    """predict_files as infer calls it. accelerate keeps one precision per process: its state is
    reset around the call, as test_mixed_precision does."""
    AcceleratorState._reset_state()
    try:
        accelerator = make_accelerator(cfg)
        loader = accelerator.prepare(make_loader(Images(), 8, shuffle=False, cfg=cfg))
        views = ["identity", "hflip"]
        return infer.predict_files(cfg, task_of(cfg), Modality, accelerator, [path], loader, views)
    finally:
        AcceleratorState._reset_state()


def test_bf16_predictions_are_close_to_fp32_and_fp32_is_unchanged(tmp_path):
    path = save_weights(fresh_model(), tmp_path / "model.safetensors")
    fp32_cfg = make_cfg()
    fp32 = predictions(fp32_cfg, path)
    # fp32 as before: the prepared model straight through predict, no wrapper.
    accelerator = make_accelerator(fp32_cfg)
    loader = accelerator.prepare(make_loader(Images(), 8, shuffle=False, cfg=fp32_cfg))
    model = accelerator.prepare(load_weights(fresh_model(), path))
    task = task_of(fp32_cfg)
    before = infer.predict(model, loader, accelerator, task, ["identity", "hflip"], "mean")
    assert np.array_equal(fp32, before)
    bf16 = predictions(make_cfg("infer.precision=bf16"), path)
    assert bf16.dtype == np.float32 and fp32.dtype == np.float32
    assert not np.array_equal(bf16, fp32)
    np.testing.assert_allclose(bf16, fp32, atol=2e-2)
    # bf16 training already autocasts the prepared model's forward: infer.precision adds nothing.
    mixed = predictions(make_cfg("train.mixed_precision=bf16"), path)
    both = predictions(make_cfg("train.mixed_precision=bf16", "infer.precision=bf16"), path)
    assert np.array_equal(mixed, both) and not np.array_equal(mixed, fp32)


def test_the_precision_travels_with_the_views():
    """infer.json and the bundle's manifest carry the precision the test set was predicted in."""
    settings = infer.inference_settings(make_cfg("infer.precision=bf16"))
    assert settings["precision"] == "bf16" and {"tta", "tta_merge"} <= settings.keys()
