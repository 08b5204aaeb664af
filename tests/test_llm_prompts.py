"""Prompt templates over several columns (``text.template``): each column cut to its own token
budget before the pieces are joined, short columns giving their budget away, the whole within
``text.max_length``, the template's fixed text never cut (last-token pooling reads its end),
bad templates refused with their key, and a preference competition (prompt, two responses) on a
tiny decoder through folds, train, infer with the swap view, submission and the offline bundle.
The tiny Llama-shaped model is made here (tests/support/tiny_decoder.py), never downloaded.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.demo.digits import working_directory
from medalist.demo.text import docstring_corpus
from medalist.errors import ConfigError
from medalist.modalities.text import Template, allot_columns, build_dataset, build_model, truncate
from medalist.modalities.text_model import load_tokenizer
from medalist.offline.predict import run_bundle
from medalist.tasks import build_task
from medalist.training.runtime import make_accelerator, make_loader, predict_logits
from support.bundles import kaggle_overrides
from support.configs import text_cfg
from support.llm_projects import preference_project
from support.tiny_decoder import make_decoder

LIBRARIES = {"numpy": ["numpy", "numpy.linalg"], "pandas": ["pandas"]}
WINNERS = ["winner_model_a", "winner_model_b", "winner_tie"]
FORMAT = "Prompt: {prompt}\nA: {response_a}\nB: {response_b}\nWinner:"
LITERALS = ("Prompt: ", "\nA: ", "\nB: ", "\nWinner:")
COLUMNS = ("prompt", "response_a", "response_b")


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return docstring_corpus(per_library=20, seed=0, libraries=LIBRARIES)


def preference(corpus: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    """A preference table: a long prompt (three docstrings), two responses (two each), the
    winner cycling through the three classes."""
    rng = np.random.default_rng(seed)
    texts = corpus["text"].to_numpy()
    picks = [rng.choice(len(texts), 7, replace=False) for _ in range(rows)]
    return pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(rows)],
            "prompt": [" ".join(texts[p[:3]]) for p in picks],
            "response_a": [" ".join(texts[p[3:5]]) for p in picks],
            "response_b": [" ".join(texts[p[5:7]]) for p in picks],
            "winner": [WINNERS[i % 3] for i in range(rows)],
        }
    )


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, corpus) -> Path:
    return make_decoder(tmp_path_factory.mktemp("decoder") / "llama", corpus["text"].tolist())


@pytest.fixture(scope="module")
def tokenizer(decoder):
    return load_tokenizer(decoder)


def token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def overhead(tokenizer) -> int:
    """The special tokens and the fixed text of FORMAT, in tokens."""
    fixed = sum(len(token_ids(tokenizer, text)) for text in LITERALS)
    return Template.of(tokenizer).specials(False) + fixed


def prompt_cfg(decoder, *extra: str, budgets: dict | None = None, fmt: str = FORMAT):
    return text_cfg(
        decoder,
        "text.pooling=last",
        "competition.target_columns=[winner]",
        f"text.template.format={json.dumps(fmt)}",
        f"text.template.budgets={json.dumps(budgets or {})}",
        *extra,
    )


def expected_row(tokenizer, row, kept: dict, how: str = "head") -> list[int]:
    """The token ids the template should give ``row``: each column cut to ``kept`` tokens."""
    literal = [token_ids(tokenizer, text) for text in LITERALS]
    ids = [tokenizer.bos_token_id, *literal[0]]
    for column, after in zip(COLUMNS, literal[1:], strict=True):
        ids += truncate(token_ids(tokenizer, row[column]), kept[column], how, 0.25) + after
    return ids


# ---------------------------------------------------------------------------------------------
# Budgets


def test_each_column_keeps_its_budget_on_the_chosen_side(decoder, corpus, tokenizer):
    """A long prompt and two long responses: 8, 12 and 12 tokens each, whatever their length,
    cut on the side text.truncation (or a view) says, and nothing else of max_length used."""
    df = preference(corpus, 6)
    budgets = {"prompt": 8, "response_a": 12, "response_b": 12}
    max_length = overhead(tokenizer) + 32
    cfg = prompt_cfg(decoder, f"text.max_length={max_length}", budgets=budgets)
    views = ["identity", "tail", "head_tail"]
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t", views=views)
    for i, row in df.iterrows():
        lengths = [len(token_ids(tokenizer, row[c])) for c in COLUMNS]
        assert lengths[0] > 3 * 8 and min(lengths[1:]) > 12  # every column is cut
        for view, how in zip(views, ["head", "tail", "head_tail"], strict=True):
            ids, types = dataset.encoded[view][i]
            assert ids == expected_row(tokenizer, row, budgets, how), (i, view)
            assert len(ids) == max_length and types == []


def test_short_columns_give_their_budget_to_the_columns_still_cut(decoder, corpus, tokenizer):
    df = preference(corpus, 4)
    df.loc[0, "prompt"] = "numpy"  # a short prompt: its unused 8 - n tokens go to the responses
    df.loc[1, "response_a"] = "Sum."  # a short response: the prompt and response B share the rest
    df.loc[2, ["prompt", "response_a", "response_b"]] = ["a", "b", "c"]  # nothing is cut
    budgets = {"prompt": 8, "response_a": 12, "response_b": 12}
    max_length = overhead(tokenizer) + 32
    cfg = prompt_cfg(decoder, f"text.max_length={max_length}", budgets=budgets)
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t")
    n = {i: {c: len(token_ids(tokenizer, df.loc[i, c])) for c in COLUMNS} for i in range(4)}
    spare = 8 - n[0]["prompt"]
    assert spare >= 3
    want = {
        0: {
            "prompt": n[0]["prompt"],
            "response_a": 12 + -(-spare // 2),
            "response_b": 12 + spare // 2,
        },
        1: {
            "prompt": 8 + -(-(12 - n[1]["response_a"]) // 2),
            "response_a": n[1]["response_a"],
            "response_b": 12 + (12 - n[1]["response_a"]) // 2,
        },
        2: n[2],
        3: budgets,
    }
    for i in range(4):
        ids, _ = dataset.encoded["identity"][i]
        assert ids == expected_row(tokenizer, df.loc[i], want[i]), i
    assert all(len(ids) == max_length for ids, _ in dataset.encoded["identity"][:2])


def test_columns_without_a_budget_share_the_rest_of_max_length(decoder, corpus, tokenizer):
    df = preference(corpus, 3)
    max_length = overhead(tokenizer) + 8 + 21  # the responses share 21 tokens: 11 and 10
    cfg = prompt_cfg(decoder, f"text.max_length={max_length}", budgets={"prompt": 8})
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t")
    want = {"prompt": 8, "response_a": 11, "response_b": 10}
    for i in range(3):
        assert dataset.encoded["identity"][i][0] == expected_row(tokenizer, df.loc[i], want)


def test_allotment_is_fair_and_never_over_capacity():
    assert allot_columns([100, 3, 100], [10, 10, 10], 30) == [14, 3, 13]
    assert allot_columns([5, 5, 5], [10, 10, 10], 30) == [5, 5, 5]
    rng = np.random.default_rng(0)
    for _ in range(500):
        k = int(rng.integers(1, 5))
        lengths = rng.integers(0, 60, k).tolist()
        shares = rng.integers(1, 20, k).tolist()
        capacity = sum(shares) + int(rng.integers(0, 20))
        kept = allot_columns(lengths, shares, capacity)
        assert sum(kept) == min(capacity, sum(lengths))
        assert all(min(n, s) <= x <= n for n, s, x in zip(lengths, shares, kept, strict=True))
        # What the short columns leave is shared equally: the columns still cut at the end got
        # the same extra over their shares, to a token (one that reached its length got less).
        extra = [x - s for n, s, x in zip(lengths, shares, kept, strict=True) if x < n]
        assert not extra or max(extra) - min(extra) <= 1


@pytest.mark.parametrize(
    ("budgets", "how", "view"),
    [
        ({"prompt": 8, "response_a": 12, "response_b": 12}, "head", ("tail", 32)),
        ({"prompt": 6}, "tail", ("head_tail", 20)),
        ({}, "head_tail", ("head", 3)),
    ],
)
def test_rows_never_exceed_max_length_and_keep_the_fixed_text(
    decoder, corpus, tokenizer, budgets, how, view
):
    """Random lengths, budgets for all, some or no columns, every truncation, and a view with a
    shorter max length (``view``: its truncation and the tokens it leaves the columns)."""
    views = ["identity", f"{view[0]}_{overhead(tokenizer) + view[1]}"]
    rng = np.random.default_rng(1)
    words = " ".join(corpus["text"]).split()
    df = preference(corpus, 30)
    for column in COLUMNS:
        df[column] = [" ".join(rng.choice(words, rng.integers(1, 50))) for _ in range(30)]
    max_length = overhead(tokenizer) + 40
    cfg = prompt_cfg(
        decoder, f"text.max_length={max_length}", f"text.truncation={how}", budgets=budgets
    )
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t", views=views)
    start = [tokenizer.bos_token_id, *token_ids(tokenizer, LITERALS[0])]
    end = token_ids(tokenizer, LITERALS[-1])
    for view in views:
        limit = dataset.max_lengths[view]
        for ids, _ in dataset.encoded[view]:
            assert len(ids) <= limit
            assert ids[: len(start)] == start and ids[-len(end) :] == end


# ---------------------------------------------------------------------------------------------
# Padding and pooling


def test_padded_template_rows_predict_as_each_row_alone(decoder, corpus, tokenizer):
    """Right padding, the last real token: the template's last fixed token, whatever the row's
    length, and a row's logits independent of its batch."""
    df = preference(corpus, 10)
    df["prompt"] = [" ".join(t.split()[:4]) for t in df["prompt"]]
    df["response_a"] = [" ".join(t.split()[:3]) for t in df["response_a"]]
    df["response_b"] = [" ".join(t.split()[: 1 + 2 * i]) for i, t in enumerate(df["response_b"])]
    cfg = prompt_cfg(decoder, "text.max_length=120", "text.dropout=0", budgets={"prompt": 10})
    torch.manual_seed(0)
    model = build_model(cfg, build_task(cfg, df)).eval()
    dataset = build_dataset(cfg, df, None, split="test", train=False, source="t")
    last = token_ids(tokenizer, LITERALS[-1])[-1]
    assert all(ids[-1] == last for ids, _ in dataset.encoded["identity"])
    assert len({len(ids) for ids, _ in dataset.encoded["identity"]}) > 1
    loader = make_loader(dataset, 4, shuffle=False, cfg=cfg)
    assert any((batch["input"][:, 1] == 0).any() for batch in loader)  # rows are padded
    index, batched = predict_logits(model, loader, make_accelerator(cfg))
    assert list(index) == list(range(len(df)))
    with torch.no_grad():
        for row in range(len(df)):
            alone = dataset.collate([dataset[row]])["input"]
            ids = alone[:, :, : int(alone[0, 1].sum())]  # no padding at all
            np.testing.assert_allclose(model(ids).numpy()[0], batched[row], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad templates


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["text.template.format='{}'"], r"text.template.format: \{\} is positional"),
        (["text.template.format='{0} {prompt}'"], r"text.template.format: \{0\} is positional"),
        (["text.template.format='{prompt!r}'"], "text.template.format: the field prompt has a"),
        (["text.template.format='{prompt:>9}'"], "conversion or a format spec"),
        (["text.template.format='A {prompt'"], "text.template.format: not a format string"),
        (["text.template.format='no fields'"], "text.template.format: names no column"),
        (["text.template.format='{a} {b} {a}'"], r"\{a\} appears more than once"),
        (["text.template.budgets={prompt: 4}"], "text.template.budgets: set text.template.format"),
        (
            ["text.template.format='{prompt} {answer}'", "text.template.budgets={answr: 4}"],
            "text.template.budgets: 'answr' is not a field of text.template.format",
        ),
        (
            ["text.template.format='{prompt}'", "text.template.budgets={prompt: 0}"],
            "text.template.budgets.prompt",
        ),
        (
            ["text.template.format='{a} {b}'", "text.template.budgets={a: 30, b: 18}"],
            "text.template.budgets: 48 tokens in all leave none of text.max_length 48",
        ),
        (
            ["text.template.format='{a} {b}'", "text.pair_column=b"],
            "text.pair_column: not with text.template.format",
        ),
        (
            ["text.template.format='{a} {b}'", "text.context_columns=[c]"],
            "text.context_columns: not with text.template.format",
        ),
    ],
)
def test_bad_templates_stop_at_the_config(decoder, overrides, message):
    with pytest.raises(ConfigError, match=message):
        text_cfg(decoder, "competition.target_columns=[winner]", *overrides)


def test_templates_that_do_not_fit_the_data_or_the_model_stop_before_work(
    decoder, corpus, tokenizer
):
    df = preference(corpus, 4)
    with pytest.raises(ConfigError, match=r"\{answer\} is not a column of data/test.csv; it has"):
        build_dataset(
            prompt_cfg(decoder, fmt="{prompt} {answer}"),
            df,
            None,
            split="test",
            train=False,
            source="data/test.csv",
        )
    with pytest.raises(ConfigError, match=r"\{winner\} is a target column"):
        build_dataset(
            prompt_cfg(decoder, fmt="{prompt} {winner}"),
            df,
            None,
            split="train",
            train=False,
            source="t",
        )
    # 40 budgeted tokens fit 48, not with the fixed text and the begin-of-text token around them.
    need = 40 + overhead(tokenizer)
    too_long = prompt_cfg(decoder, budgets={"prompt": 14, "response_a": 13, "response_b": 13})
    with pytest.raises(
        ConfigError, match=f"text.template.budgets: the template needs {need} tokens .* of 48"
    ):
        build_dataset(too_long, df, None, split="test", train=False, source="t")
    # Two columns without a budget need a token each besides the prompt's 8.
    view = f"tail_{overhead(tokenizer) + 9}"
    fits = prompt_cfg(decoder, "text.max_length=100", budgets={"prompt": 8})
    with pytest.raises(ConfigError, match=rf"infer.tta \({view}\): the template needs"):
        build_dataset(fits, df, None, split="test", train=False, source="t", views=[view])


# ---------------------------------------------------------------------------------------------
# A preference competition through the stages

TINY_PROMPT = f"""\
text:
  backbone: models/decoder
  max_length: 48
  pooling: last
  dropout: 0.0
  template:
    format: {json.dumps(FORMAT)}
    budgets: {{prompt: 8}}
  swap:
    columns: [response_a, response_b]
    classes: {{winner_model_a: winner_model_b}}
folds:
  n_splits: 2
train:
  experiment: tiny_prompt
  epochs: 1
  batch_size: 8
  lr: 3.0e-3
  num_workers: 0
  progress: false
infer:
  tta: [identity, swap]
  tta_oof: true
"""


@pytest.fixture(scope="module")
def prompt_project(tmp_path_factory, decoder, corpus) -> Path:
    """A baked preference project on the tiny Llama with a template, through the stages."""
    root = tmp_path_factory.mktemp("prompt")
    project = preference_project(root, decoder, preference(corpus, 30), 24, TINY_PROMPT)
    with working_directory(project):
        for stage in ("folds", "train", "infer", "submission"):
            assert main([stage, "-c", "configs/tiny.yaml"]) == 0, stage
    return project


def test_a_template_project_trains_infers_and_submits(prompt_project):
    out = prompt_project / "outputs" / "tiny_prompt"
    columns = [f"p_{w}" for w in WINNERS]
    oof = pd.read_parquet(out / "oof.parquet")
    assert list(oof.columns) == ["id", "fold", *columns] and len(oof) == 24
    test = pd.read_parquet(out / "test.parquet")
    assert len(test) == 6 and np.allclose(test[columns].sum(axis=1), 1.0, atol=1e-5)
    tta = json.loads((out / "tta.json").read_text())
    assert tta["views"] == ["identity", "swap"] and set(tta["cv_tta"]) == set(tta["cv"])
    sub = pd.read_csv(prompt_project / "submissions" / "tiny_prompt.csv")
    assert sub["winner"].isin(WINNERS).all() and len(sub) == 6


def test_bundle_of_a_template_project_predicts_as_infer(prompt_project, tmp_path):
    """The bundle rebuilds the template and the swap view from the experiment's config: offline
    predictions equal infer's, value for value."""
    project = tmp_path / "prefs"
    shutil.copytree(prompt_project, project)
    kaggle = kaggle_overrides(tmp_path, "tester/prefs-test", "kaggle.timing_rows=0")
    with working_directory(project):
        assert main(["package", "-c", "configs/tiny.yaml", *kaggle]) == 0
        run_bundle(Path("package/prefs-test"), "local", environ={})
        offline = pd.read_parquet("outputs/offline/predictions/tiny_prompt.parquet")
        local = pd.read_parquet("outputs/tiny_prompt/test.parquet")
    assert np.array_equal(offline.to_numpy(), local.to_numpy())
