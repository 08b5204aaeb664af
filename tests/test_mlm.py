"""``medalist pretrain-mlm``: chunking, masking, the loss, a smoke run, and its errors."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.text import minilm_dir
from medalist.errors import DataError
from medalist.modalities.mlm import _collator, chunk_documents, masked_lm_loss, output_dir, run
from medalist.modalities.text import build_model
from medalist.modalities.text_model import load_tokenizer
from medalist.tasks import build_task
from support.tiny_text import make_backbone

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
    folder = output_dir(cfg)
    files = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "mlm.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    assert json.loads((folder / "mlm.json").read_text())["perplexity_after"] == pytest.approx(
        report["perplexity_after"]
    )
    # A train config can point at it.
    train_cfg = resolve_config(overrides=overrides(folder))
    model = build_model(train_cfg, build_task(train_cfg, pd.read_csv("data/train.csv")))
    from safetensors.torch import load_file

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
    assert not output_dir(resolve_config(overrides=overrides(backbone))).exists()


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
