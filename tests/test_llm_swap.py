"""The swap view of a pairwise task (``text.swap``, ``infer.tta: [identity, swap]``): the two
columns exchanged and the classes permuted back, with and without a prompt template; its
prediction is the model's on the manually swapped rows, merged with the other views like any
view, scored on the OOF rows (``tta.json``); a permutation that does not fit the task is refused
naming its key. A tiny Llama-shaped model is made here (tests/support/tiny_decoder.py).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.demo.digits import working_directory
from medalist.demo.text import docstring_corpus
from medalist.errors import ConfigError
from medalist.modalities.text import build_dataset, build_model
from medalist.modalities.text_views import expand_text_views, swap_outputs
from medalist.prediction.infer import predict
from medalist.prediction.tta import align_views, batched_views, merge
from medalist.tasks import Task, build_task
from medalist.training.runtime import make_accelerator, make_loader
from support.configs import text_cfg
from support.llm_projects import preference_project
from support.tiny_decoder import make_decoder

LIBRARIES = {"numpy": ["numpy", "numpy.linalg"], "pandas": ["pandas"]}
WINNERS = ["winner_model_a", "winner_model_b", "winner_tie"]
SWAP = [
    "text.swap.columns=[response_a, response_b]",
    "text.swap.classes={winner_model_a: winner_model_b}",
]
PAIR = ["text.text_column=response_a", "text.pair_column=response_b"]
TEMPLATE = [
    'text.template.format="Q: {prompt}\\nA: {response_a}\\nB: {response_b}\\nWinner:"',
    "text.template.budgets={prompt: 6}",
    "text.max_length=96",
]


@pytest.fixture(scope="module")
def corpus() -> pd.DataFrame:
    return docstring_corpus(per_library=20, seed=0, libraries=LIBRARIES)


def preference(corpus: pd.DataFrame, rows: int, seed: int = 0) -> pd.DataFrame:
    """A preference table: a prompt and two responses of different lengths, the winner cycling
    through the three classes."""
    rng = np.random.default_rng(seed)
    texts = corpus["text"].to_numpy()
    picks = [rng.choice(len(texts), 4, replace=False) for _ in range(rows)]
    return pd.DataFrame(
        {
            "id": [f"q{i}" for i in range(rows)],
            "prompt": [texts[p[0]] for p in picks],
            "response_a": [" ".join(texts[p[1:3]]) for p in picks],
            "response_b": [texts[p[3]] for p in picks],
            "winner": [WINNERS[i % 3] for i in range(rows)],
        }
    )


def exchanged(df: pd.DataFrame) -> pd.DataFrame:
    """The rows with response A and B exchanged by hand."""
    return df.assign(response_a=df["response_b"], response_b=df["response_a"])


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, corpus) -> Path:
    return make_decoder(tmp_path_factory.mktemp("decoder") / "llama", corpus["text"].tolist())


def swap_cfg(decoder, inputs: list[str], *extra: str):
    return text_cfg(
        decoder,
        "text.pooling=last",
        "text.dropout=0",
        "competition.target_columns=[winner]",
        *inputs,
        *SWAP,
        *extra,
    )


def view_logits(model, dataset, views: list[str], maps: dict) -> torch.Tensor:
    """The aligned logits of every view, (views, rows, outputs), rows in the dataset's order."""
    batch = dataset.collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return align_views(batched_views(model, batch["input"], views), views, maps)


# ---------------------------------------------------------------------------------------------
# The view


@pytest.mark.parametrize("inputs", [PAIR, TEMPLATE], ids=["pair", "template"])
@pytest.mark.parametrize("view", ["swap", "swap_tail"])
def test_swap_view_is_the_manually_swapped_input_with_classes_permuted_back(
    decoder, corpus, inputs, view
):
    df = preference(corpus, 8)
    cfg = swap_cfg(decoder, inputs)
    task = build_task(cfg, df)
    assert task.classes == WINNERS
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    swapped = build_dataset(cfg, df, None, split="train", train=False, source="t", views=[view])
    plain = view.removeprefix("swap").removeprefix("_") or "identity"
    by_hand = build_dataset(
        cfg, exchanged(df), None, split="train", train=False, source="t", views=[plain]
    )
    assert swapped.encoded[view] == by_hand.encoded[plain]  # the same token ids
    maps = swapped.output_maps(task)
    assert maps == {view: ([1, 0, 2], False)}
    got = view_logits(model, swapped, [view], maps)[0]
    want = view_logits(model, by_hand, [plain], {})[0]
    assert torch.equal(got, want[:, [1, 0, 2]])  # A's output is B's on the exchanged row, exactly
    # Through the infer stage's predict: the merged probabilities, classes permuted back.
    accelerator = make_accelerator(cfg)
    probs = predict(
        model, make_loader(swapped, 3, shuffle=False, cfg=cfg), accelerator, task, [view], "mean"
    )
    manual = predict(
        model, make_loader(by_hand, 3, shuffle=False, cfg=cfg), accelerator, task, [plain], "mean"
    )
    np.testing.assert_allclose(probs, manual[:, [1, 0, 2]], rtol=0, atol=1e-7)


def test_merging_averages_the_identity_and_the_swap(decoder, corpus):
    df = preference(corpus, 8)
    cfg = swap_cfg(decoder, PAIR)
    task = build_task(cfg, df)
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    accelerator = make_accelerator(cfg)

    def predicted(views: list[str], how: str = "mean") -> np.ndarray:
        data = build_dataset(cfg, df, None, split="test", train=False, source="t", views=views)
        loader = make_loader(data, 4, shuffle=False, cfg=cfg)
        return predict(model, loader, accelerator, task, views, how)

    identity, swap = predicted(["identity"]), predicted(["swap"])
    assert not np.allclose(identity, swap, atol=1e-3)  # the random model is not symmetric
    np.testing.assert_allclose(predicted(["identity", "swap"]), (identity + swap) / 2, atol=1e-6)
    # The geometric merge of the two views: the softmax of their mean log-probabilities.
    geometric = np.exp((np.log(identity) + np.log(swap)) / 2)
    np.testing.assert_allclose(
        predicted(["identity", "swap"], "geometric"),
        geometric / geometric.sum(1, keepdims=True),
        atol=1e-6,
    )


def test_binary_swap_gives_one_minus_p(decoder, corpus):
    """Binary: exchanging the two classes negates the logit (p becomes 1 - p)."""
    df = preference(corpus, 8).assign(a_wins=lambda d: np.where(np.arange(8) % 2, "yes", "no"))
    cfg = text_cfg(
        decoder,
        "text.pooling=last",
        "task.type=binary",
        "competition.target_columns=[a_wins]",
        *PAIR,
        "text.swap.columns=[response_a, response_b]",
        "text.swap.classes={yes: no}",
    )
    task = build_task(cfg, df)
    torch.manual_seed(0)
    model = build_model(cfg, task).eval()
    swapped = build_dataset(cfg, df, None, split="train", train=False, source="t", views=["swap"])
    by_hand = build_dataset(cfg, exchanged(df), None, split="train", train=False, source="t")
    maps = swapped.output_maps(task)
    assert maps == {"swap": ([0], True)}
    got = view_logits(model, swapped, ["swap"], maps)[0]
    want = view_logits(model, by_hand, ["identity"], {})[0]
    assert torch.equal(got, -want)
    np.testing.assert_allclose(
        merge("binary", got[None], "mean"), 1 - want.sigmoid(), rtol=0, atol=1e-6
    )


def test_outputs_are_permuted_per_task():
    assert swap_outputs("multiclass", WINNERS, {"winner_model_b": "winner_model_a"}) == (
        [1, 0, 2],
        False,
    )
    assert swap_outputs("multiclass", WINNERS, {}) == ([0, 1, 2], False)  # a symmetric label
    assert swap_outputs("binary", ["0", "1"], {"0": "1"}) == ([0], True)
    assert swap_outputs("binary", ["0", "1"], {}) == ([0], False)
    multilabel = swap_outputs("multilabel", ["a_good", "b_good", "off"], {"a_good": "b_good"})
    assert multilabel == ([1, 0, 2], False)
    logits = torch.arange(12.0).reshape(2, 2, 3)  # (views, rows, outputs)
    aligned = align_views(logits, ["identity", "swap"], {"swap": multilabel})
    assert torch.equal(aligned[0], logits[0]) and torch.equal(aligned[1], logits[1][:, [1, 0, 2]])
    assert expand_text_views(["identity", "swap", "swap_head_tail_64"]) == [
        "identity",
        "swap",
        "swap_head_tail_64",
    ]


# ---------------------------------------------------------------------------------------------
# Bad swaps


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (
            "{winner_model_a: winner_model_c}",
            "text.swap.classes: 'winner_model_c' is not one of the task's classes",
        ),
        (
            "{winner_model_a: winner_model_b, winner_model_b: winner_tie}",
            "text.swap.classes: 'winner_model_b' is exchanged with both 'winner_model_a' and "
            "'winner_tie'",
        ),
    ],
)
def test_a_permutation_that_does_not_fit_the_classes_is_refused_before_training(
    decoder, corpus, classes, message
):
    df = preference(corpus, 6)
    cfg = swap_cfg(decoder, PAIR, f"text.swap.classes={classes}")
    with pytest.raises(ConfigError, match=message):
        build_dataset(cfg, df, None, split="train", train=False, source="t")
    # Configured classes are checked on the test rows too (no target to read them from).
    with pytest.raises(ConfigError, match=message):
        build_dataset(
            swap_cfg(decoder, PAIR, f"text.swap.classes={classes}", f"task.classes={WINNERS}"),
            df.drop(columns="winner"),
            None,
            split="test",
            train=False,
            source="t",
        )


def test_the_trained_tasks_classes_are_checked_when_the_views_are_predicted(decoder, corpus):
    df = preference(corpus, 6)
    cfg = swap_cfg(decoder, PAIR)
    dataset = build_dataset(
        cfg, df.drop(columns="winner"), None, split="test", train=False, source="t", views=["swap"]
    )
    other = Task("multiclass", ["winner"], ["a", "b", "tie"])
    with pytest.raises(ConfigError, match="text.swap.classes: 'winner_model_a' is not one of"):
        dataset.output_maps(other)


def test_regression_and_unknown_target_columns_are_refused(decoder, corpus):
    df = preference(corpus, 6).assign(margin=np.linspace(-1, 1, 6), a=0, b=1)
    regression = text_cfg(
        decoder,
        "task.type=regression",
        "folds.scheme=kfold",
        "competition.target_columns=[margin]",
        *PAIR,
        "text.swap.columns=[response_a, response_b]",
        "text.swap.classes={}",
    )
    with pytest.raises(ConfigError, match="text.swap.classes: a regression task has no classes"):
        build_dataset(regression, df, None, split="train", train=False, source="t")
    multilabel = text_cfg(
        decoder,
        "task.type=multilabel",
        "folds.scheme=kfold",
        "competition.target_columns=[a, b]",
        *PAIR,
        "text.swap.columns=[response_a, response_b]",
        "text.swap.classes={a: c}",
    )
    with pytest.raises(ConfigError, match="'c' is not one of the task's target columns"):
        build_dataset(multilabel, df, None, split="test", train=False, source="t")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            [*PAIR, "text.swap.columns=[response_a, prompt]", "text.swap.classes={}"],
            "text.swap.columns: 'prompt' is not among text.text_column, text.pair_column",
        ),
        (
            [*TEMPLATE, "text.swap.columns=[response_a, answer]", "text.swap.classes={}"],
            "text.swap.columns: 'answer' is not among the fields of text.template.format",
        ),
        (
            [*PAIR, "text.swap.columns=[response_a]", "text.swap.classes={}"],
            "text.swap.columns: .* name two different columns",
        ),
        (
            [*PAIR, "text.swap.columns=[response_a, response_a]", "text.swap.classes={}"],
            "name two different columns",
        ),
        (
            [*PAIR, "text.swap.columns=[response_a, response_b]"],
            "text.swap.classes: name the class pairs",
        ),
        ([*PAIR, "text.swap.classes={a: b}"], "text.swap.classes: set text.swap.columns"),
        ([*PAIR, "infer.tta=[identity, swap_sideways]"], "infer.tta: 'swap_sideways' is not"),
    ],
)
def test_bad_swap_configs_stop_at_the_config(decoder, overrides, message):
    with pytest.raises(ConfigError, match=message):
        text_cfg(decoder, "competition.target_columns=[winner]", *overrides)


def test_a_swap_view_without_swap_columns_is_refused(decoder, corpus):
    cfg = text_cfg(decoder, "competition.target_columns=[winner]", *PAIR)
    with pytest.raises(ConfigError, match="infer.tta: 'swap' exchanges the two columns of"):
        build_dataset(
            cfg, preference(corpus, 4), None, split="test", train=False, source="t", views=["swap"]
        )


# ---------------------------------------------------------------------------------------------
# Scored on the OOF rows

TINY_SWAP = """\
text:
  backbone: models/decoder
  text_column: response_a
  pair_column: response_b
  max_length: 48
  pooling: last
  dropout: 0.0
  swap:
    columns: [response_a, response_b]
    classes: {winner_model_a: winner_model_b}
folds:
  n_splits: 2
train:
  experiment: tiny_swap
  epochs: 1
  batch_size: 8
  lr: 3.0e-3
  num_workers: 0
  progress: false
infer:
  tta: [identity, swap]
  tta_oof: true
"""


def test_swap_tta_is_scored_on_the_oof_rows(tmp_path, decoder, corpus):
    data = preference(corpus, 30)
    train = data.iloc[:24]
    project = preference_project(tmp_path, decoder, data, 24, TINY_SWAP)
    with working_directory(project):
        for stage in ("folds", "train", "infer"):
            assert main([stage, "-c", "configs/tiny.yaml"]) == 0, stage
    out = project / "outputs" / "tiny_swap"
    tta = json.loads((out / "tta.json").read_text())
    assert tta["views"] == ["identity", "swap"] and tta["merge"] == "mean"
    oof = pd.read_parquet(out / "oof.parquet")
    oof_tta = pd.read_parquet(out / "oof_tta.parquet")
    columns = [f"p_{w}" for w in WINNERS]
    assert sorted(oof_tta["id"]) == sorted(train["id"])
    assert np.allclose(oof_tta[columns].sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(
        oof.set_index("id").loc[oof_tta["id"], columns].to_numpy(),
        oof_tta[columns].to_numpy(),
        atol=1e-4,
    )  # the swap view changed the OOF predictions
    task = build_task(swap_cfg(decoder, PAIR), train)
    targets = task.encode_targets(train.set_index("id").loc[oof_tta["id"]].reset_index())
    assert tta["cv_tta"] == pytest.approx(task.score(targets, oof_tta[columns].to_numpy()))
