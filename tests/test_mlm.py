"""``medalist pretrain-mlm``: chunking, masking, the loss, a smoke run, its errors, the NaN guard
and resuming after a kill."""

import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.text import minilm_dir
from medalist.errors import DataError, TrainingDivergedError
from medalist.layout import mlm_dir
from medalist.modalities import mlm
from medalist.modalities.mlm import _collator, chunk_documents, masked_lm_loss, run
from medalist.modalities.text import build_model
from medalist.modalities.text_model import load_tokenizer
from medalist.tasks import build_task
from support.tiny_text import make_backbone

SUPPORT = Path(__file__).parent / "support"

# A small repeated domain: held-out sentences follow the same patterns as the training ones.
SUBJECTS = ["the array", "the frame", "the tensor", "the model", "the series", "the matrix"]
VERBS = ["holds", "returns", "stores", "copies", "sorts", "reshapes"]
OBJECTS = ["numbers", "labels", "values", "rows", "columns", "gradients"]
SENTENCES = [f"{s} {v} the {o} in place" for s in SUBJECTS for v in VERBS for o in OBJECTS[:3]]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mlm") / "tiny-bert"
    return make_backbone(folder, SENTENCES, masked_lm=True, hidden=32, layers=2)


@pytest.fixture
def project(tmp_path, backbone, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    rows = SENTENCES[:80]
    pd.DataFrame(
        {"id": range(len(rows)), "text": rows, "label": [i % 2 for i in range(len(rows))]}
    ).to_csv(data / "train.csv", index=False)
    pd.DataFrame({"id": range(1000, 1020), "text": SENTENCES[80:100]}).to_csv(
        data / "test.csv", index=False
    )
    (data / "extra.txt").write_text("\n".join(SENTENCES[100:]) + "\n\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def overrides(backbone, *extra):
    return [
        "modality=text",
        f"text.backbone={backbone}",
        "competition.target_columns=[label]",
        "train.progress=false",
        "mlm.max_length=16",
        *extra,
    ]


def test_long_documents_are_chunked_with_special_tokens(backbone):
    tokenizer = load_tokenizer(backbone)
    text = " ".join(SENTENCES[:6])
    chunks = chunk_documents(tokenizer, [text, "the array"], max_length=12)
    full = tokenizer(text, add_special_tokens=False)["input_ids"]
    first = [c for c in chunks if c["doc"] == 0]
    assert len(first) == -(-len(full) // 10)
    assert all(len(c["input_ids"]) <= 12 for c in chunks)
    assert [i for c in first for i in c["input_ids"][1:-1]] == full
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert all(c["input_ids"][0] == cls and c["input_ids"][-1] == sep for c in chunks)
    assert all(sum(c["special_tokens_mask"]) == 2 for c in chunks)


def test_whole_words_are_masked_together_with_a_real_tokenizer():
    tokenizer = load_tokenizer(minilm_dir())
    cfg = resolve_config(overrides=["mlm.mlm_probability=0.4"])
    text = "unbelievably tokenization reshapes multidimensional arrays " * 4
    chunks = chunk_documents(tokenizer, [text], max_length=64)
    words = tokenizer(text, add_special_tokens=False).word_ids()
    batch = _collator(cfg, tokenizer, seed=0)(chunks * 8)
    masked = (batch["labels"] != -100)[:, 1 : 1 + len(words)].numpy()
    assert masked.any()
    for word in set(words):
        columns = [i for i, w in enumerate(words) if w == word]
        assert (masked[:, columns].all(axis=1) | ~masked[:, columns].any(axis=1)).all()


def test_masked_positions_loss_equals_the_models_own(backbone):
    from transformers import AutoModelForMaskedLM

    tokenizer = load_tokenizer(backbone)
    model = AutoModelForMaskedLM.from_pretrained(str(backbone)).eval()
    cfg = resolve_config(overrides=["mlm.whole_word_mask=false"])
    batch = _collator(cfg, tokenizer, seed=3)(chunk_documents(tokenizer, SENTENCES[:8], 16))
    with torch.no_grad():
        assert masked_lm_loss(model, batch).item() == pytest.approx(model(**batch).loss.item())


def test_pretraining_lowers_held_out_perplexity_and_writes_a_backbone(project, backbone):
    cfg = resolve_config(
        overrides=overrides(
            backbone,
            "mlm.epochs=12",
            "mlm.batch_size=16",
            "mlm.lr=2e-3",
            "mlm.warmup_ratio=0",
            "mlm.valid_fraction=0.2",
            "mlm.extra_files=[extra.txt]",
        )
    )
    report = run(cfg)
    assert report["documents"] == len(SENTENCES)  # train + test + extra, each once
    losses = [h["train_loss"] for h in report["history"]]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.5
    assert report["perplexity_after"] < 0.5 * report["perplexity_before"]
    folder = mlm_dir(cfg)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mlm.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert json.loads((folder / "mlm.json").read_text())["perplexity_after"] == pytest.approx(
        report["perplexity_after"]
    )
    # A train config can point at it.
    train_cfg = resolve_config(overrides=overrides(folder))
    model = build_model(train_cfg, build_task(train_cfg, pd.read_csv("data/train.csv")))
    saved = load_file(folder / "model.safetensors")
    key = "bert.encoder.layer.1.output.dense.weight"
    assert torch.equal(model.backbone.encoder.layer[1].output.dense.weight.detach(), saved[key])


def test_pretrain_mlm_command_reports_bad_input(project, backbone, caplog):
    assert main(["pretrain-mlm", *overrides(backbone, "mlm.extra_files=[missing.txt]")]) == 2
    assert "mlm.extra_files: file not found: data/missing.txt" in caplog.text
    train = pd.read_csv("data/train.csv")
    train.loc[2, "text"] = None
    train.to_csv("data/train.csv", index=False)
    with pytest.raises(DataError, match="row 2, column 'text'"):
        run(resolve_config(overrides=overrides(backbone)))
    assert main(["pretrain-mlm", *overrides(backbone, "mlm.max_length=100")]) == 2
    assert "mlm.max_length: 100 is over the model's limit of 64" in caplog.text
    assert not mlm_dir(resolve_config(overrides=overrides(backbone))).exists()


def test_missing_mlm_head_is_one_line(tmp_path, caplog, capfd):
    """A backbone without an MLM head (a sentence encoder) gets one line, not the key list."""
    import logging

    from transformers import AutoModelForMaskedLM

    from medalist.modalities.mlm import _load_model

    folder = make_backbone(tmp_path / "encoder", SENTENCES, masked_lm=False)
    _, info = AutoModelForMaskedLM.from_pretrained(folder, output_loading_info=True)
    fresh = info["missing_keys"]
    assert fresh and all(k.startswith("cls.") for k in fresh)
    capfd.readouterr()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _load_model(folder)
    printed = "".join(capfd.readouterr())
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    wanted = f"MLM head not in the checkpoint: initialised fresh ({len(fresh)} tensors)"
    assert messages.count(wanted) == 1
    shown = "\n".join([*messages, printed])
    assert "cls.predictions" not in shown and "LOAD REPORT" not in shown


# ------------------------------------------------------------------------------ the NaN guard


class LossRecorder:
    """Wraps pretraining's loss: records, at each training micro-batch, the weights, learning rate
    and Adam moments its step starts from, and makes the micro-batches in ``bad`` non-finite."""

    def __init__(self, monkeypatch, bad=(), value=float("nan")):
        self.bad, self.value, self.steps, self.optimizers = set(bad), value, [], []
        loss, make_optimizer = mlm.masked_lm_loss, mlm._optimizer

        def optimizer(model, cfg):
            self.optimizers.append(make_optimizer(model, cfg))
            return self.optimizers[-1]

        def faulty(model, batch):
            if not model.training:  # perplexity
                return loss(model, batch)
            self.steps.append(self.snapshot(model))
            return loss(model, batch) * (self.value if len(self.steps) - 1 in self.bad else 1)

        monkeypatch.setattr(mlm, "_optimizer", optimizer)
        monkeypatch.setattr(mlm, "masked_lm_loss", faulty)

    def snapshot(self, model) -> dict:
        optimizer = self.optimizers[-1]
        moments = [
            s[k].clone() for s in optimizer.state.values() for k in ("exp_avg", "exp_avg_sq")
        ]
        weights = [v.detach().clone() for v in model.state_dict().values()]
        return {"weights": weights, "lr": optimizer.param_groups[0]["lr"], "moments": moments}


def same(a: dict, b: dict) -> bool:
    return (
        a["lr"] == b["lr"]
        and len(a["moments"]) == len(b["moments"])
        and all(x.equal(y) for x, y in zip(a["weights"], b["weights"], strict=True))
        and all(x.equal(y) for x, y in zip(a["moments"], b["moments"], strict=True))
    )


GUARDED = ["mlm.epochs=1", "mlm.batch_size=16", "mlm.lr=2e-3", "mlm.warmup_ratio=0"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_loss_skips_its_step_and_pretraining_goes_on(
    project, backbone, monkeypatch, value
):
    """The third step's loss is not finite: the fourth starts from exactly the weights, learning
    rate and Adam moments the third started from; the steps around it do change them."""
    recorder = LossRecorder(monkeypatch, bad={2}, value=value)
    cfg = resolve_config(overrides=overrides(backbone, *GUARDED))
    report = run(cfg)
    steps = recorder.steps
    assert len(steps) >= 5
    assert same(steps[3], steps[2])
    assert not same(steps[2], steps[1]) and not same(steps[4], steps[3])  # the check can tell
    assert math.isfinite(report["history"][0]["train_loss"])
    assert math.isfinite(report["perplexity_after"])
    assert (mlm_dir(cfg) / "model.safetensors").is_file()


def test_pretraining_stops_after_max_bad_steps_in_a_row(project, backbone, monkeypatch):
    LossRecorder(monkeypatch, bad={1, 2})
    cfg = resolve_config(overrides=overrides(backbone, *GUARDED, "train.max_bad_steps=2"))
    with pytest.raises(TrainingDivergedError, match="2 optimizer steps in a row.*lower mlm.lr"):
        run(cfg)
    assert not mlm_dir(cfg).exists()


# ------------------------------------------------------------------------------ resume


def test_a_checkpoint_resumes_only_the_same_pretraining(backbone, tmp_path):
    """What a checkpoint must have been saved with: the mlm settings, the precision, the
    backbone's weights and the tokenised text; not how often checkpoints are taken."""
    chunks = chunk_documents(load_tokenizer(backbone), SENTENCES[:8], 16)

    def fingerprint(*extra, corpus=chunks, folder=backbone):
        return mlm._fingerprint(
            resolve_config(overrides=overrides(backbone, *extra)), folder, corpus
        )

    base = fingerprint()
    assert fingerprint("train.checkpoint_every=3", "train.max_bad_steps=2") == base
    for changed in ("mlm.lr=1e-3", "mlm.seed=1", "mlm.grad_accum=2", "train.mixed_precision=bf16"):
        assert fingerprint(changed) != base, changed
    assert fingerprint(corpus=chunks[:-1]) != base
    other = shutil.copytree(backbone, tmp_path / "other")
    assert fingerprint(folder=other) == base  # the same weights elsewhere
    weights = load_file(other / "model.safetensors")
    weights = {k: v + 1 if k.endswith("bias") else v for k, v in weights.items()}
    save_file(weights, other / "model.safetensors")
    assert fingerprint(folder=other) != base


# Two epochs of six micro-batches, two per optimizer step, a checkpoint after every step; the kill
# comes before micro-batch 9 (the second epoch's fourth), inside an accumulation window.
RESUMED = [
    "mlm.epochs=2",
    "mlm.batch_size=16",
    "mlm.grad_accum=2",
    "mlm.lr=2e-3",
    "train.checkpoint_every=1",
]
KILL = (
    "import sys, faults; faults.kill_pretraining_at({}, {!r}); "
    "from medalist.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.slow
def test_killed_pretraining_resumes_to_the_uninterrupted_weights(project, backbone, caplog):
    want = run(resolve_config(overrides=overrides(backbone, *RESUMED, "mlm.name=reference")))
    reference = project / "outputs" / "mlm" / "reference"
    marker = project / "killed"
    path = os.pathsep.join([str(SUPPORT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path, "TQDM_DISABLE": "1"}
    command = [sys.executable, "-c", KILL.format(9, str(marker)), "pretrain-mlm"]
    killed = subprocess.run(
        [*command, *overrides(backbone, *RESUMED)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9 and marker.exists(), killed.stderr[-2000:]
    assert list((project / "outputs" / "mlm").glob(".*/checkpoint/step-*")), "no checkpoint"
    cfg = resolve_config(overrides=overrides(backbone, *RESUMED))
    assert not mlm_dir(cfg).exists()
    with caplog.at_level(logging.INFO):
        got = run(cfg)
    assert "pretrain-mlm: resumed from step-00000004 (epoch 1, step 4)" in caplog.text
    assert (mlm_dir(cfg) / "model.safetensors").read_bytes() == (
        reference / "model.safetensors"
    ).read_bytes()
    assert got["history"] == want["history"] and got["perplexity_after"] == want["perplexity_after"]
    assert sorted(p.name for p in mlm_dir(cfg).iterdir()) == sorted(
        p.name for p in reference.iterdir()
    )
    # The folder holds what an uninterrupted run writes; the checkpoints beside it are gone.
    assert sorted(p.name for p in mlm_dir(cfg).iterdir()) == sorted(
        p.name for p in reference.iterdir()
    )
    assert sorted(p.name for p in mlm_dir(cfg).parent.iterdir()) == ["mlm", "reference"]
