"""The text modality: encoding, batching, the model and its parameter groups, bad input, and a
full text competition through the stages (template baked with modality text, real docstrings, a
tiny BERT and a tokenizer trained here)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import bake, working_directory
from medalist.demo.text import description, docstring_corpus, minilm_dir
from medalist.errors import ConfigError, DataError
from medalist.modalities.text import (
    LengthBatchSampler,
    Template,
    allot,
    build_dataset,
    build_model,
    combine,
    truncate,
)
from medalist.modalities.text_model import load_tokenizer, transformer_layers
from medalist.tasks import build_task
from medalist.training.optim import build_optimizer
from medalist.training.runtime import make_accelerator, make_loader, predict_logits
from support.configs import text_cfg
from support.tiny_text import make_backbone

LIBRARIES = {"numpy": ["numpy", "numpy.linalg"], "pandas": ["pandas"]}


@pytest.fixture(scope="session")
def corpus() -> pd.DataFrame:
    """Real text: 40 numpy and 40 pandas docstring descriptions."""
    return docstring_corpus(per_library=40, seed=0, libraries=LIBRARIES)


@pytest.fixture(scope="session")
def backbone(tmp_path_factory, corpus) -> Path:
    folder = tmp_path_factory.mktemp("backbone") / "tiny-bert"
    return make_backbone(folder, corpus["text"].tolist(), masked_lm=True)


def frame(corpus, rows=None) -> pd.DataFrame:
    df = corpus.iloc[: rows or len(corpus)].reset_index(drop=True)
    return df.assign(id=[f"r{i}" for i in range(len(df))])


# ---------------------------------------------------------------------------------------------
# Encoding


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_template_matches_the_tokenizers_own_special_tokens(which, backbone, corpus):
    tokenizer = load_tokenizer(backbone if which == "tiny" else minilm_dir())
    template = Template.of(tokenizer)
    for first, second in zip(corpus["text"][:10], corpus["text"][10:20], strict=True):
        a = tokenizer(first, add_special_tokens=False)["input_ids"]
        b = tokenizer(second, add_special_tokens=False)["input_ids"]
        own = tokenizer(first, second, return_token_type_ids=True)
        assert template.build(a, b) == (own["input_ids"], own["token_type_ids"])
        single = tokenizer(first, return_token_type_ids=True)
        assert template.build(a, None) == (single["input_ids"], single["token_type_ids"])


def test_truncation_keeps_the_chosen_ends():
    ids = list(range(20))
    assert truncate(ids, 6, "head", 0.25) == [0, 1, 2, 3, 4, 5]
    assert truncate(ids, 6, "tail", 0.25) == [14, 15, 16, 17, 18, 19]
    assert truncate(ids, 8, "head_tail", 0.25) == [0, 1, 14, 15, 16, 17, 18, 19]
    assert truncate(ids[:5], 6, "tail", 0.25) == ids[:5]
    for first, second, budget in [(3, 30, 10), (30, 3, 10), (30, 30, 11), (2, 2, 10)]:
        n1, n2 = allot(first, second, budget)
        assert n1 <= first and n2 <= second and n1 + n2 == min(budget, first + second)


def test_dataset_respects_max_length_for_pairs_and_context(backbone, corpus):
    df = frame(corpus, 20).assign(other=corpus["text"][20:40].to_numpy(), ctx="numpy pandas")
    cfg = text_cfg(backbone, "text.pair_column=other", "text.context_columns=[ctx]")
    dataset = build_dataset(cfg, df, None, split="train", train=False, source="t")
    tokenizer = load_tokenizer(backbone)
    for ids, types in dataset.encoded["identity"]:
        assert len(ids) <= 48 and len(types) == len(ids)
        assert ids.count(tokenizer.sep_token_id) == 3  # [SEP] a [SEP] b [SEP] ctx [SEP]
        assert set(types) == {0, 1}


# ---------------------------------------------------------------------------------------------
# Batching


def test_bucketed_batches_are_random_complete_and_homogeneous():
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    sampler = LengthBatchSampler(lengths, 32, shuffle=True, bucket_size=10, sort=True, seed=1)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1000))  # every row once
        assert len(batches) == len(sampler) and all(len(b) == 32 for b in batches[:-1])
        epochs.append(flat)
        assert batches == list(sampler)  # the same epoch gives the same batches (resume)
    assert epochs[0] != epochs[1]
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in np.array_split(np.arange(1000), 32)])
    assert spread < 0.25 * random_spread
    evaluation = LengthBatchSampler(lengths, 32, shuffle=False, bucket_size=10, sort=True, seed=1)
    order = [i for b in evaluation for i in b]
    assert list(lengths[order]) == sorted(lengths, reverse=True)


@pytest.mark.parametrize("pooling", ["cls", "mean", "attention"])
def test_dynamic_padding_gives_the_same_predictions_in_row_order(backbone, corpus, pooling):
    df = frame(corpus, 24)
    df["text"] = [" ".join(t.split()[: 2 + 2 * i]) for i, t in enumerate(df["text"])]  # 2-48 words
    args = (f"text.pooling={pooling}", "text.concat_layers=2", "text.multi_sample_dropout=3")
    dynamic = text_cfg(backbone, *args)
    padded = text_cfg(backbone, *args, "text.dynamic_padding=false")
    task = build_task(dynamic, df)
    torch.manual_seed(0)
    model = build_model(dynamic, task).eval()
    logits = {}
    for name, cfg in (("dynamic", dynamic), ("padded", padded)):
        dataset = build_dataset(cfg, df, None, split="test", train=False, source="t")
        loader = make_loader(dataset, 8, shuffle=False, cfg=cfg)
        widths = {batch["input"].shape[-1] for batch in loader}
        assert (widths == {48}) == (name == "padded")
        index, logits[name] = predict_logits(model, loader, make_accelerator(cfg))
        assert list(index) == list(range(len(df)))
    np.testing.assert_allclose(logits["dynamic"], logits["padded"], atol=1e-5)
    one = build_dataset(dynamic, df.iloc[[5]], None, split="test", train=False, source="t")
    with torch.no_grad():
        alone = model(one.collate([one[0]])["input"])
    np.testing.assert_allclose(alone.numpy()[0], logits["dynamic"][5], atol=1e-5)


def test_text_views_are_truncations_of_the_same_rows(backbone, corpus):
    df = frame(corpus, 12)
    cfg = text_cfg(backbone)
    views = ["identity", "tail", "head_tail_16"]
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t", views=views)
    batch = dataset.collate([dataset[i] for i in range(len(df))])
    assert set(batch["input"]) == set(views)
    assert batch["input"]["head_tail_16"].shape[-1] <= 16
    longest = int(np.argmax([len(ids) for ids, _ in dataset.encoded["identity"]]))
    head = dataset.encoded["identity"][longest][0]
    tail = dataset.encoded["tail"][longest][0]
    assert head[0] == tail[0] and head[-1] == tail[-1]  # the same special tokens around
    tokenizer = load_tokenizer(backbone)
    full = tokenizer(df["text"][longest], add_special_tokens=False)["input_ids"]
    if len(full) > 46:
        assert tail[1:-1] == full[-46:] and head[1:-1] == full[:46]


def test_combine_weights_labelled_rows_one(backbone, corpus):
    df = frame(corpus, 10)
    cfg = text_cfg(backbone)
    labelled = build_dataset(
        cfg, df[:6], np.eye(2)[[0, 1, 0, 1, 0, 1]], split="train", train=True, source="t"
    )
    pseudo = build_dataset(
        cfg,
        df[6:],
        np.full((4, 2), 0.5),
        split="test",
        train=True,
        source="t",
        weights=np.full(4, 0.3),
    )
    both = combine([labelled, pseudo])
    batch = both.collate([both[i] for i in range(10)])
    assert batch["weight"].tolist() == pytest.approx([1.0] * 6 + [0.3] * 4)
    assert batch["target"].shape == (10, 2) and len(both.lengths) == 10


# ---------------------------------------------------------------------------------------------
# The model


def test_layer_wise_decay_groups_and_head_rate(backbone, corpus):
    cfg = text_cfg(
        backbone,
        "train.lr=1e-3",
        "train.layer_decay=0.5",
        "train.head_lr=1e-2",
        "text.pooling=attention",
        "text.freeze_layers=1",
    )
    model = build_model(cfg, build_task(cfg, frame(corpus)))
    optimizer = build_optimizer(model, cfg)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(trainable) == len(lr_of)
    layers = transformer_layers(model.backbone)  # depths: embeddings 0, layers 1-2, head 3
    embeddings = model.backbone.embeddings.word_embeddings.weight
    assert lr_of[id(embeddings)] == pytest.approx(1e-3 * 0.5**3)
    assert all(id(p) not in lr_of for p in layers[0].parameters())  # frozen
    # The top layer one decay step below the head's depth (timm's convention), the head its own.
    assert [lr_of[id(p)] for p in layers[1].parameters()] == pytest.approx([5e-4] * 16)
    assert [lr_of[id(p)] for p in model.head.parameters()] == pytest.approx([1e-2] * 6)
    assert all(id(p) not in lr_of for p in model.backbone.pooler.parameters())
    decays = {g["weight_decay"] for g in optimizer.param_groups if g["params"][0].ndim == 1}
    assert decays == {0.0}  # no decay on biases and norms


def test_reinit_freeze_and_checkpointing(backbone, corpus):
    df = frame(corpus, 8)
    plain = text_cfg(backbone, "text.dropout=0", "text.hidden_dropout=0")
    task = build_task(plain, df)
    torch.manual_seed(0)
    reference = build_model(plain, task)
    changed = build_model(
        text_cfg(backbone, "text.reinit_layers=1", "text.freeze_embeddings=true"), task
    )
    top_ref, top_new = (
        transformer_layers(reference.backbone)[-1],
        transformer_layers(changed.backbone)[-1],
    )
    bottom_ref, bottom_new = (
        transformer_layers(reference.backbone)[0],
        transformer_layers(changed.backbone)[0],
    )
    query = "attention.self.query.weight"
    assert not torch.equal(top_ref.get_parameter(query), top_new.get_parameter(query))
    assert torch.equal(bottom_ref.get_parameter(query), bottom_new.get_parameter(query))
    assert not any(p.requires_grad for p in changed.backbone.embeddings.parameters())

    dataset = build_dataset(
        plain, df, task.encode_targets(df), split="train", train=True, source="t"
    )
    batch = dataset.collate([dataset[i] for i in range(8)])
    checkpointed = build_model(
        text_cfg(
            backbone, "text.dropout=0", "text.hidden_dropout=0", "text.gradient_checkpointing=true"
        ),
        task,
    )
    checkpointed.load_state_dict(reference.state_dict())
    assert checkpointed.backbone.is_activation_checkpointing
    losses = []
    for model in (reference, checkpointed):
        model.train()
        loss = task.loss(model(batch["input"]), batch["target"]).mean()
        loss.backward()
        losses.append((loss.item(), model.head.fc.weight.grad.clone()))
    assert losses[0][0] == pytest.approx(losses[1][0], abs=1e-6)
    torch.testing.assert_close(losses[0][1], losses[1][1])


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("   ", "row 3, column 'text': an empty text"),
        (None, "row 3, column 'text': an empty"),
        (7, "row 3, column 'text': not a string"),
    ],
)
def test_bad_text_names_row_and_column(backbone, corpus, value, message):
    df = frame(corpus, 6).astype({"text": object})
    df.loc[3, "text"] = value
    with pytest.raises(DataError, match=message):
        build_dataset(text_cfg(backbone), df, None, split="test", train=False, source="test.csv")


def test_missing_column_folder_without_tokenizer_and_long_max_length(backbone, corpus, tmp_path):
    df = frame(corpus, 6)
    with pytest.raises(DataError, match="missing text column 'body'"):
        build_dataset(
            text_cfg(backbone, "text.text_column=body"),
            df,
            None,
            split="test",
            train=False,
            source="t",
        )
    bare = tmp_path / "no-tokenizer"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(backbone / name, bare / name)
    with pytest.raises(ConfigError, match=f"text.backbone: {bare} has no tokenizer"):
        build_dataset(text_cfg(bare), df, None, split="test", train=False, source="t")
    with pytest.raises(ConfigError, match="text.max_length: 100 is over the model's limit of 64"):
        build_dataset(
            text_cfg(backbone, "text.max_length=100"),
            df,
            None,
            split="test",
            train=False,
            source="t",
        )
    with pytest.raises(ConfigError, match=r"infer.tta \(tail_80\): 80 is over"):
        build_dataset(
            text_cfg(backbone), df, None, split="test", train=False, source="t", views=["tail_80"]
        )
    pickled = tmp_path / "pickled"
    shutil.copytree(backbone, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="no safetensors weights"):
        build_model(text_cfg(pickled), build_task(text_cfg(pickled), df))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["text.backbone=null"], "text.backbone"),
        (["infer.tta=[hflip]"], "infer.tta: 'hflip' is not a text view"),
        (["tricks.mix.enabled=true", "tricks.mix.mixup_alpha=0.2"], "tricks.mix"),
        (["text.text_column=library"], "also target columns"),
    ],
)
def test_impossible_text_configs_stop_before_work(overrides, key):
    base = ["modality=text", "text.backbone=models/x", "competition.target_columns=[library]"]
    with pytest.raises(ConfigError, match=key):
        resolve_config(overrides=[*base, *overrides])


def test_docstring_summaries_stop_at_the_first_paragraph_or_section():
    doc = "Add two\n  arrays.\n\nElement by element.\n\nParameters\n----------\nx : array\n"
    assert description(doc) == "Add two arrays."
    assert description("Sum of a tensor\nArgs:\n    x: a tensor") == "Sum of a tensor"
    assert description(">>> f(1)\n2") == ""


# ---------------------------------------------------------------------------------------------
# A text competition through the stages


TINY_TEXT = """\
text:
  backbone: models/backbone
  max_length: 32
  pooling: attention
  concat_layers: 2
  multi_sample_dropout: 2
folds:
  n_splits: 2
train:
  experiment: tiny_text
  epochs: 2
  batch_size: 8
  lr: 3.0e-4
  head_lr: 3.0e-3
  layer_decay: 0.8
  num_workers: 0
  progress: false
infer:
  tta: [identity, tail, head_tail_24]
  tta_oof: true
"""


@pytest.fixture
def text_project(tmp_path, backbone, corpus):
    project = bake(
        tmp_path, {"competition_name": "Docs", "modality": "text", "target_columns": "library"}
    )
    data = frame(corpus)
    train, test = data.iloc[:60], data.iloc[60:]
    train[["id", "text", "library"]].to_csv(project / "data" / "train.csv", index=False)
    test[["id", "text"]].to_csv(project / "data" / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "library": "numpy"}).to_csv(
        project / "data" / "sample_submission.csv", index=False
    )
    shutil.copytree(backbone, project / "models" / "backbone")
    (project / "configs" / "tiny.yaml").write_text(TINY_TEXT)
    with working_directory(project):
        yield project


def test_text_competition_through_the_stages(text_project):
    config = ["-c", "configs/tiny.yaml"]
    for stage in ("folds", "train", "infer", "submission"):
        assert main([stage, *config]) == 0, stage
    out = text_project / "outputs" / "tiny_text"
    train = pd.read_csv("data/train.csv")
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", "p_numpy", "p_pandas"]
    assert sorted(oof["id"]) == sorted(train["id"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["folds"]) == {"0", "1"}
    # The CV is the OOF table's score (sklearn on the rows joined to their labels by id).
    labels = train.set_index("id").loc[oof["id"], "library"].to_numpy()
    predicted = np.array(["numpy", "pandas"])[oof[["p_numpy", "p_pandas"]].to_numpy().argmax(1)]
    assert metrics["cv"]["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    test = pd.read_parquet(out / "test.parquet")
    assert list(test["id"]) == list(pd.read_csv("data/test.csv")["id"])
    assert np.allclose(test[["p_numpy", "p_pandas"]].sum(axis=1), 1.0, atol=1e-5)
    tta = json.loads((out / "tta.json").read_text())
    assert tta["views"] == ["identity", "tail", "head_tail_24"]
    sub = pd.read_csv("submissions/tiny_text.csv")
    assert list(sub["id"]) == list(pd.read_csv("data/sample_submission.csv")["id"])
    assert sub["library"].isin(["numpy", "pandas"]).all()
    assert main(["validate", "submissions/tiny_text.csv", *config]) == 0
    resolved = resolve_config(out / "config.yaml")
    assert resolved.modality == "text" and resolved.text.backbone == "models/backbone"


def test_text_stage_refuses_bad_rows_before_training(text_project, caplog):
    train = pd.read_csv("data/train.csv")
    train.loc[4, "text"] = ""
    train.to_csv("data/train.csv", index=False)
    assert main(["folds", "-c", "configs/tiny.yaml"]) == 0
    assert main(["train", "-c", "configs/tiny.yaml"]) == 2
    assert "train.csv: row 4, column 'text': an empty text" in caplog.text
    assert not (text_project / "outputs" / "tiny_text" / "fold0").exists()
