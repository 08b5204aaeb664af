"""The text modality: text columns of a table, a local tokenizer, dynamic padding, length buckets.

The protocol is the image modality's: :func:`check_inputs` (every row and setting, before any
work), :func:`build_dataset` and :func:`build_model`, plus :func:`combine` for pseudo labels.

- One text column, or a pair (``text.pair_column``, e.g. anchor/target); context columns are
  appended to the last segment, joined by the tokenizer's separator.
- Or a prompt template over several columns (``text.template``): each column is truncated to
  its own token budget before the pieces are joined with the template's fixed text
  (:class:`PromptEncoder`), so the prompt and the two responses of a preference task are each cut
  fairly instead of the tail losing everything.
- Every text is tokenised once, in full; truncation (``head``, ``tail``, ``head_tail``) happens on
  token ids, so the TTA views of :mod:`medalist.prediction.tta` (other truncations, other max lengths) cost
  no second tokenisation; nor does the ``swap`` view of a pairwise task (``text.swap``: two
  columns' token ids exchanged, the view's classes permuted back by
  :meth:`TextDataset.output_maps`).
- Dynamic padding: a batch is padded to its longest row, not to ``max_length``. Training batches
  come from length buckets (Sun et al. 2019 truncation; "sortish" batching): rows are shuffled,
  sorted by length within buckets of ``bucket_size`` batches, and the batches shuffled, so the
  order stays random while rows of a batch have similar lengths. Evaluation batches are sorted by
  length; predictions return to row order through each sample's ``index``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from medalist.config import Config
from medalist.errors import ConfigError, DataError, show_value
from medalist.modalities.text_model import (
    backbone_dir,
    build_model,
    check_backbone_settings,
    check_max_length,
    config_only,
    load_tokenizer,
    quiet_transformers,
)
from medalist.modalities.text_views import (
    expand_text_views,
    swap_outputs,
    swapped,
    text_view,
)
from medalist.pretrained import manifest
from medalist.pretrained.resolve import MissingWeights, Weights, resolve, resolve_text
from medalist.tasks import Task, infer_classes

__all__ = ["build_dataset", "build_model", "check_inputs", "combine", "TextDataset"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Input checks


def text_columns(cfg: Config) -> list[str]:
    """The columns a row's input is made of: the template's fields, or the text, pair and
    context columns."""
    text = cfg.text
    if text.template.format is not None:
        return text.template.fields
    return [
        text.text_column,
        *([text.pair_column] if text.pair_column else []),
        *text.context_columns,
    ]


def check_inputs(cfg: Config, df: pd.DataFrame, split: str, source: str) -> Path:
    """Columns, rows, the backbone folder and ``max_length``, before any work; returns the folder.

    For training, a hub id missing from the cache is fetched here (with a warning) and the
    cached files are checked against the project's ``models/weights.json``.

    Raises:
        DataError: a missing text column, or an empty or non-string text (naming row and column).
        ConfigError: a folder without config, weights or tokenizer, a max length over the limit,
            cls pooling on a decoder; a template field that is not a column of ``df`` or is a
            target, budgets and fixed text over ``text.max_length``; swap classes that are not
            the task's.
    """
    check_template_columns(cfg, df, source)
    check_text_rows(df, text_columns(cfg), source)
    check_swap(cfg, df if split == "train" else None)
    if split == "train" and config_only(cfg.text.backbone):
        raise ConfigError(
            f"text.backbone: {cfg.text.backbone} names a config.json, which builds the model "
            "without its weights (the offline bundle does, loading each fold's whole-model file "
            "next); training starts from the weights: name the model folder"
        )
    if split == "train" and cfg.text.backbone:
        manifest.check_recorded(resolve_text(cfg.text.backbone, "text.backbone", download=True))
    folder = backbone_dir(cfg.text.backbone, "text.backbone")
    check_max_length(folder, cfg.text.max_length, "text.max_length")
    check_backbone_settings(folder, cfg.text)
    tokenizer = load_tokenizer(folder)
    if tokenizer.pad_token_id is None:
        raise ConfigError(
            f"text.backbone: the tokenizer in {folder} has neither a padding nor an end-of-text "
            "token to pad with"
        )
    if cfg.text.template.format is not None:  # the fixed text and the budgets fit max_length
        PromptEncoder.of(cfg, tokenizer).shares(cfg.text.max_length, "text.template.budgets")
    return folder


def check_template_columns(cfg: Config, df: pd.DataFrame, source: str) -> None:
    """Every field of ``text.template.format`` is a column of ``df`` and not a target."""
    fields = cfg.text.template.fields if cfg.text.template.format is not None else []
    for field in fields:
        if field in cfg.competition.target_columns:
            raise ConfigError(
                f"text.template.format: {{{field}}} is a target column; the model would read "
                "its own label"
            )
        if field not in df.columns:
            raise ConfigError(
                f"text.template.format: {{{field}}} is not a column of {source}; it has "
                f"{list(df.columns)[:20]}"
            )


def output_names(task: Task) -> list[str]:
    """The names a swap's class pairs refer to, as text: the classes (binary: both, the
    negative one first), or a multilabel task's target columns."""
    if task.type == "multilabel":
        return list(task.target_columns)
    return [str(c) for c in task.classes]


def check_swap(cfg: Config, train: pd.DataFrame | None) -> None:
    """``text.swap.classes`` against the task's classes, where they are known before training:
    the configured ones, the target columns (multilabel) or those of the training rows."""
    swap = cfg.text.swap
    if not swap.columns:
        return
    task = Task(cfg.task.type, list(cfg.competition.target_columns))
    if cfg.task.type in ("binary", "multiclass"):
        column = cfg.competition.target_columns[0]
        if cfg.task.classes is None and (train is None or column not in train.columns):
            return  # checked against task.json's classes when the views are predicted
        task.classes = infer_classes(cfg, train if train is not None else pd.DataFrame())
    swap_outputs(task.type, output_names(task), swap.classes or {})


def check_text_rows(df: pd.DataFrame, columns: list[str], source: str) -> None:
    """Every column exists and holds a non-empty string in every row; else DataError naming it."""
    for column in columns:
        if column not in df.columns:
            raise DataError(
                f"{source}: missing text column '{column}'; it has {list(df.columns)[:20]}"
            )
        values = df[column]
        bad = ~values.map(lambda v: isinstance(v, str) and bool(v.strip())).to_numpy(dtype=bool)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            value = values.iloc[row]
            what = "an empty text" if isinstance(value, str) or pd.isna(value) else "not a string"
            raise DataError(
                f"{source}: row {row}, column '{column}': {what} ({show_value(value)}); "
                f"{int(bad.sum())} such row(s)"
            )


# ---------------------------------------------------------------------------------------------
# Special tokens and truncation


@dataclass(frozen=True)
class Template:
    """Where a tokenizer puts its special tokens around one or two segments, and token types.

    Learnt from the tokenizer's own output on a probe, so any template works ([CLS] a [SEP] b
    [SEP] for BERT, <s> a </s></s> b </s> for RoBERTa, ...).
    """

    single: tuple[tuple[int, ...], tuple[int, ...]]  # prefix, suffix
    pair: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # prefix, middle, suffix
    single_types: tuple[tuple[int, ...], int, tuple[int, ...]] | None
    pair_types: tuple[tuple[int, ...], int, tuple[int, ...], int, tuple[int, ...]] | None

    @classmethod
    def of(cls, tokenizer) -> Template:
        a = tokenizer("hello", add_special_tokens=False)["input_ids"]
        b = tokenizer("world", add_special_tokens=False)["input_ids"]
        uses_types = "token_type_ids" in tokenizer.model_input_names
        one = tokenizer("hello", return_token_type_ids=uses_types)
        two = tokenizer("hello", "world", return_token_type_ids=uses_types)
        i = _find(one["input_ids"], a, 0)
        j = _find(two["input_ids"], a, 0)
        k = _find(two["input_ids"], b, j + len(a))
        if min(i, j, k) < 0:
            raise ConfigError("text.backbone: cannot place the tokenizer's special tokens")
        ids1, ids2 = one["input_ids"], two["input_ids"]
        single = (tuple(ids1[:i]), tuple(ids1[i + len(a) :]))
        pair = (tuple(ids2[:j]), tuple(ids2[j + len(a) : k]), tuple(ids2[k + len(b) :]))
        single_types = pair_types = None
        if uses_types:
            t1, t2 = one["token_type_ids"], two["token_type_ids"]
            single_types = (tuple(t1[:i]), t1[i], tuple(t1[i + len(a) :]))
            pair_types = (
                tuple(t2[:j]),
                t2[j],
                tuple(t2[j + len(a) : k]),
                t2[k],
                tuple(t2[k + len(b) :]),
            )
        return cls(single, pair, single_types, pair_types)

    def specials(self, pair: bool) -> int:
        return sum(map(len, self.pair if pair else self.single))

    def build(self, first: list[int], second: list[int] | None) -> tuple[list[int], list[int]]:
        """Token ids and token types (empty when the model has none) of one row."""
        if second is None:
            prefix, suffix = self.single
            ids = [*prefix, *first, *suffix]
            if self.single_types is None:
                return ids, []
            tp, ta, ts = self.single_types
            return ids, [*tp, *[ta] * len(first), *ts]
        prefix, middle, suffix = self.pair
        ids = [*prefix, *first, *middle, *second, *suffix]
        if self.pair_types is None:
            return ids, []
        tp, ta, tm, tb, ts = self.pair_types
        return ids, [*tp, *[ta] * len(first), *tm, *[tb] * len(second), *ts]


def _find(sequence: list[int], part: list[int], start: int) -> int:
    for i in range(start, len(sequence) - len(part) + 1):
        if sequence[i : i + len(part)] == part:
            return i
    return -1


def truncate(ids: list[int], length: int, how: str, head_fraction: float) -> list[int]:
    """Keep ``length`` tokens: the first (``head``), the last (``tail``) or both (``head_tail``)."""
    if len(ids) <= length:
        return ids
    if how == "head":
        return ids[:length]
    if how == "tail":
        return ids[len(ids) - length :]
    head = round(length * head_fraction)
    return ids[:head] + ids[len(ids) - (length - head) :]


def allot(first: int, second: int, budget: int) -> tuple[int, int]:
    """Token budget of two segments: the shorter keeps all it fits in half, the longer the rest."""
    if first + second <= budget:
        return first, second
    half = budget // 2
    if first <= half:
        return first, budget - first
    if second <= budget - half:
        return budget - second, second
    return half, budget - half


def allot_columns(lengths: list[int], shares: list[int], capacity: int) -> list[int]:
    """Tokens each column of a row keeps: its share at most, then what the row has left
    (``capacity`` less what was kept) shared equally among the columns still cut, each up to
    its length (max-min fair water-filling); single tokens left over go to the first columns
    still cut, in order. Never more than ``capacity`` in all (given shares that fit it)."""
    kept = [min(n, share) for n, share in zip(lengths, shares, strict=True)]
    spare = capacity - sum(kept)
    while spare > 0:
        cut = [i for i, n in enumerate(lengths) if kept[i] < n]
        if not cut:
            break
        each = spare // len(cut)
        if each == 0:
            for i in cut[:spare]:
                kept[i] += 1
            break
        for i in cut:
            given = min(each, lengths[i] - kept[i])
            kept[i] += given
            spare -= given
    return kept


@dataclass
class PromptEncoder:
    """Rows of ``text.template``: each column cut to its share, joined with the fixed text.

    The fixed text between the fields is tokenised once, each piece on its own (tokens never
    merge across a field's edge; a special token written in it, such as ``</s>``, is that
    token), and the tokenizer's special tokens of a single text go around the whole. Shares and
    how a short column's leftover is given away: :class:`medalist.config.inputs.TemplateConfig`.
    """

    template: Template
    fields: tuple[str, ...]
    pieces: tuple[tuple[int, ...], ...]  # the fixed text before each field, then after the last
    budgets: dict[str, int]
    head_fraction: float

    @classmethod
    def of(cls, cfg: Config, tokenizer) -> PromptEncoder:
        parts = cfg.text.template.parts()
        with quiet_transformers():
            pieces = tokenizer([text for text, _ in parts], add_special_tokens=False)["input_ids"]
        return cls(
            Template.of(tokenizer),
            tuple(field for _, field in parts if field is not None),
            tuple(tuple(piece) for piece in pieces),
            dict(cfg.text.template.budgets),
            cfg.text.head_fraction,
        )

    @property
    def fixed(self) -> int:
        """Tokens of the template's fixed text."""
        return sum(map(len, self.pieces))

    def capacity(self, max_length: int) -> int:
        """Tokens left for the columns within ``max_length``."""
        return max_length - self.template.specials(False) - self.fixed

    def shares(self, max_length: int, key: str) -> list[int]:
        """Each field's share of ``max_length``: its budget, or an equal part of the rest.

        Raises:
            ConfigError: naming ``key``, when the budgets, the fixed text, the special tokens
                and one token per column without a budget do not fit.
        """
        capacity = self.capacity(max_length)
        budgets = [self.budgets.get(field) for field in self.fields]
        free = [i for i, budget in enumerate(budgets) if budget is None]
        claimed = sum(b for b in budgets if b is not None)
        rest = capacity - claimed
        if rest < len(free) or rest < 0:
            specials = self.template.specials(False)
            need = claimed + self.fixed + specials + len(free)
            unbudgeted = f", 1 per column without a budget {len(free)}" if free else ""
            raise ConfigError(
                f"{key}: the template needs {need} tokens (budgets {claimed}, its fixed text "
                f"{self.fixed}, special tokens {specials}{unbudgeted}), over the max length "
                f"of {max_length}; lower text.template.budgets or raise the max length"
            )
        shares = [b or 0 for b in budgets]
        for rank, i in enumerate(free):
            shares[i] = rest // len(free) + (rank < rest % len(free))
        return shares

    def encode(
        self, columns: dict[str, list[list[int]]], max_length: int, how: str, key: str
    ) -> list[tuple[list[int], list[int]]]:
        """Token ids and types of every row, from each column's full token ids."""
        shares, capacity = self.shares(max_length, key), self.capacity(max_length)
        rows = []
        for values in zip(*(columns[field] for field in self.fields), strict=True):
            kept = allot_columns([len(v) for v in values], shares, capacity)
            body = list(self.pieces[0])
            for ids, keep, piece in zip(values, kept, self.pieces[1:], strict=True):
                body += truncate(ids, keep, how, self.head_fraction)
                body += piece
            rows.append(self.template.build(body, None))
        return rows


@dataclass
class Encoder:
    """Turns a row's full token ids into model input for one truncation and max length.

    The context (already joined by separators) is kept first, up to half the budget, and ends
    the last segment; the text (and the pair) share the rest and are truncated as configured.
    """

    template: Template
    sep_id: int | None
    head_fraction: float

    def encode(
        self,
        first: list[int],
        pair: list[int] | None,
        context: list[int] | None,
        max_length: int,
        how: str,
    ) -> tuple[list[int], list[int]]:
        budget = max_length - self.template.specials(pair is not None or context is not None)
        tail: list[int] = []
        if context is not None:
            joiner = [self.sep_id] if pair is not None else []
            tail = joiner + context[: max(budget // 2 - len(joiner), 0)]
            budget -= len(tail)
        if pair is None:
            first = truncate(first, budget, how, self.head_fraction)
            return self.template.build(first, tail if context is not None else None)
        n1, n2 = allot(len(first), len(pair), budget)
        return self.template.build(
            truncate(first, n1, how, self.head_fraction),
            truncate(pair, n2, how, self.head_fraction) + tail,
        )

    def encode_rows(
        self, cfg: Config, columns: dict[str, list[list[int]]], max_length: int, how: str
    ) -> list[tuple[list[int], list[int]]]:
        """Token ids and types of every row, from each column's full token ids."""
        return [self.encode(*row, max_length, how) for row in segments(cfg, self.sep_id, columns)]


# ---------------------------------------------------------------------------------------------
# Batching


class LengthBatchSampler:
    """Batches of row indices: length-bucketed and shuffled (training) or length-sorted.

    Args:
        lengths: token count of every row.
        batch_size: rows per batch; only the last batch may be shorter (it comes last).
        shuffle: training order (random, bucketed) rather than evaluation order (sorted).
        bucket_size: batches per bucket when shuffling; 0 shuffles rows without bucketing.
        sort: sort evaluation batches by length (False: row order, for padding to max length).
        seed: with the epoch, decides the order, so a resumed run sees the same batches.
    """

    drop_last = False

    def __init__(
        self, lengths, batch_size: int, *, shuffle: bool, bucket_size: int, sort: bool, seed: int
    ):
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle, self.bucket_size, self.sort, self.seed = shuffle, bucket_size, sort, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def order(self) -> np.ndarray:
        if not self.shuffle:
            if not self.sort:
                return np.arange(len(self.lengths))
            return np.argsort(-self.lengths, kind="stable")  # longest first: memory peaks early
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        if self.bucket_size:
            size = self.bucket_size * self.batch_size
            buckets = [order[i : i + size] for i in range(0, len(order), size)]
            order = np.concatenate(
                [b[np.argsort(-self.lengths[b], kind="stable")] for b in buckets]
            )
        return order

    def __iter__(self):
        order = self.order()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.shuffle and len(batches) > 1:
            rng = np.random.default_rng([self.seed, self.epoch, 1])
            full = [b for b in batches if len(b) == self.batch_size]
            short = [b for b in batches if len(b) < self.batch_size]
            batches = [full[i] for i in rng.permutation(len(full))] + short
        for batch in batches:
            yield batch.tolist()


class TextDataset(Dataset):
    """Encoded rows; samples are ``{'index', 'tokens', 'target', 'weight'}``, batches hold
    ``input``: a packed (batch, 2 or 3, seq) tensor of token ids, attention mask and token types,
    or ``{view: packed}`` when built with TTA views.

    Args:
        encoded: per view, one ``(ids, types)`` per row.
        targets, weights: per row, or None.
        views: the TTA view names (None: training or validation, input is one tensor).
        max_lengths: per view, the length a batch is padded to without dynamic padding.
        pad_id: the tokenizer's padding id.
        dynamic_padding, bucket_size, pad_to_multiple_of: see ``text.*`` in the config.
        view_outputs: per swap view, the class pairs its outputs exchange (``text.swap.classes``;
            :meth:`output_maps`).
    """

    def __init__(
        self,
        encoded: dict[str, list[tuple[list[int], list[int]]]],
        targets=None,
        weights=None,
        *,
        views: list[str] | None,
        max_lengths: dict[str, int],
        pad_id: int,
        dynamic_padding: bool = True,
        bucket_size: int = 50,
        pad_to_multiple_of: int | None = 8,
        view_outputs: dict[str, dict[str, str]] | None = None,
    ):
        self.encoded, self.targets, self.weights, self.views = encoded, targets, weights, views
        self.view_outputs = dict(view_outputs or {})
        self.max_lengths, self.pad_id = max_lengths, pad_id
        self.dynamic_padding, self.bucket_size = dynamic_padding, bucket_size
        self.pad_to_multiple_of = pad_to_multiple_of
        rows = next(iter(encoded.values()))
        self.lengths = np.max([[len(ids) for ids, _ in e] for e in encoded.values()], axis=0)
        self.uses_types = bool(rows and rows[0][1])
        self._samplers: list[LengthBatchSampler] = []

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        for sampler in self._samplers:
            sampler.set_epoch(epoch)

    def output_maps(self, task: Task) -> dict[str, tuple[list[int], bool]]:
        """Per swap view, how its outputs return to the identity's order: ``(index, negate)``
        (:func:`medalist.modalities.text_views.swap_outputs`); the infer stage applies them
        before merging the views. A ConfigError names ``text.swap.classes`` when the pairs are
        not the task's classes."""
        names = output_names(task)
        return {
            view: swap_outputs(task.type, names, classes)
            for view, classes in self.view_outputs.items()
            if view in self.encoded
        }

    def __getitem__(self, index: int) -> dict:
        sample = {"index": index, "tokens": {v: e[index] for v, e in self.encoded.items()}}
        if self.targets is not None:
            sample["target"] = self.targets[index]
        if self.weights is not None:
            sample["weight"] = self.weights[index]
        return sample

    def batch_sampler(self, batch_size: int, *, shuffle: bool, seed: int) -> LengthBatchSampler:
        sampler = LengthBatchSampler(
            self.lengths,
            batch_size,
            shuffle=shuffle,
            bucket_size=self.bucket_size if self.dynamic_padding else 0,
            sort=self.dynamic_padding,
            seed=seed,
        )
        self._samplers.append(sampler)
        return sampler

    def pad(self, rows: list[tuple[list[int], list[int]]], max_length: int) -> torch.Tensor:
        """(batch, 2 or 3, seq): ids, attention mask [, token types], padded on the right."""
        longest = max(len(ids) for ids, _ in rows)
        length = longest if self.dynamic_padding else max_length
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            length = min(-(-length // multiple) * multiple, max(max_length, longest))
        packed = np.zeros((len(rows), 3 if self.uses_types else 2, length), dtype=np.int64)
        packed[:, 0] = self.pad_id
        for i, (ids, types) in enumerate(rows):
            packed[i, 0, : len(ids)] = ids
            packed[i, 1, : len(ids)] = 1
            if self.uses_types:
                packed[i, 2, : len(types)] = types
        return torch.from_numpy(packed)

    def collate(self, samples: list[dict]) -> dict:
        batch = {"index": torch.tensor([s["index"] for s in samples])}
        inputs = {
            view: self.pad([s["tokens"][view] for s in samples], self.max_lengths[view])
            for view in self.encoded
        }
        batch["input"] = inputs if self.views is not None else inputs["identity"]
        if "target" in samples[0]:
            batch["target"] = torch.as_tensor(np.stack([s["target"] for s in samples]))
        if "weight" in samples[0]:
            batch["weight"] = torch.as_tensor(
                np.asarray([s["weight"] for s in samples], dtype=np.float32)
            )
        return batch


# ---------------------------------------------------------------------------------------------
# Building datasets


def tokenize_column(tokenizer, values: pd.Series) -> list[list[int]]:
    """Full token ids (no special tokens, no truncation) of every value; each distinct text once."""
    texts = values.astype(str)
    unique = pd.unique(texts)
    with quiet_transformers():  # no warning about texts longer than the model: we truncate
        ids = tokenizer(list(unique), add_special_tokens=False)["input_ids"]
    lookup = dict(zip(unique, ids, strict=True))
    return [lookup[t] for t in texts]


def segments(cfg: Config, sep: int | None, columns: dict[str, list[list[int]]]) -> list[tuple]:
    """Per row: (text ids, pair ids or None, context ids joined by separators or None), from
    each column's full token ids."""
    text = cfg.text
    first = columns[text.text_column]
    pair = columns[text.pair_column] if text.pair_column else None
    parts = [columns[c] for c in text.context_columns]
    if sep is None and (len(parts) > 1 or (parts and pair is not None)):
        raise ConfigError("text.context_columns: the tokenizer has no separator token to join them")
    rows = []
    for row, ids in enumerate(first):
        context = None
        if parts:
            context = list(parts[0][row])
            for part in parts[1:]:
                context += [sep, *part[row]]
        rows.append((ids, None if pair is None else pair[row], context))
    return rows


def view_settings(cfg: Config, views: list[str] | None) -> dict[str, tuple[str, int, bool]]:
    """Per view: (truncation, max length, whether the swap columns are exchanged)."""
    settings = {}
    for name in views or ["identity"]:
        swap, base = swapped(name)
        parsed = text_view(base)
        if parsed is None:
            raise ConfigError(f"infer.tta: '{name}' is not a text view")
        if swap and not cfg.text.swap.columns:
            raise ConfigError(
                f"infer.tta: '{name}' exchanges the two columns of text.swap.columns, which is "
                "empty; set text.swap.columns and text.swap.classes"
            )
        how, length = parsed
        how = cfg.text.truncation if how == "identity" else how
        settings[name] = (how, length or cfg.text.max_length, swap)
    return settings


def swap_columns(
    columns: dict[str, list[list[int]]], pair: list[str]
) -> dict[str, list[list[int]]]:
    """The columns' token ids with the two of ``pair`` exchanged."""
    a, b = pair
    return {**columns, a: columns[b], b: columns[a]}


def build_dataset(
    cfg: Config,
    df: pd.DataFrame,
    targets,
    *,
    split: str,
    train: bool,
    source: str,
    weights=None,
    views: list[str] | None = None,
) -> TextDataset:
    """The rows of ``df`` encoded for the model; ``views`` (TTA) are encoded side by side."""
    folder = check_inputs(cfg, df, split, source)
    tokenizer = load_tokenizer(folder)
    settings = view_settings(cfg, views)
    for name, (_, length, _) in settings.items():
        if name != "identity":
            check_max_length(folder, length, f"infer.tta ({name})")
    # Every column is tokenised once, in full; every view (a swap too) is made from those ids.
    columns = {c: tokenize_column(tokenizer, df[c]) for c in dict.fromkeys(text_columns(cfg))}
    if cfg.text.template.format is not None:
        prompt = PromptEncoder.of(cfg, tokenizer)

        def encode(columns, length, how, name):
            key = "text.template.budgets" if name == "identity" else f"infer.tta ({name})"
            return prompt.encode(columns, length, how, key)
    else:
        encoder = Encoder(Template.of(tokenizer), tokenizer.sep_token_id, cfg.text.head_fraction)

        def encode(columns, length, how, name):
            return encoder.encode_rows(cfg, columns, length, how)

    exchanged = swap_columns(columns, cfg.text.swap.columns) if cfg.text.swap.columns else None
    encoded = {
        name: encode(exchanged if swap else columns, length, how, name)
        for name, (how, length, swap) in settings.items()
    }
    return TextDataset(
        encoded,
        targets,
        weights,
        views=views,
        max_lengths={name: length for name, (_, length, _) in settings.items()},
        pad_id=tokenizer.pad_token_id,
        dynamic_padding=cfg.text.dynamic_padding,
        bucket_size=cfg.text.bucket_size,
        pad_to_multiple_of=cfg.text.pad_to_multiple_of,
        view_outputs={
            name: dict(cfg.text.swap.classes or {})
            for name, (_, _, swap) in settings.items()
            if swap
        },
    )


def combine(datasets: list[TextDataset]) -> TextDataset:
    """Labelled and pseudo-labelled rows as one dataset; every row gets a loss weight."""
    first = datasets[0]
    encoded = {view: [row for d in datasets for row in d.encoded[view]] for view in first.encoded}
    targets = np.concatenate([np.asarray(d.targets, dtype=np.float32) for d in datasets])
    weights = np.concatenate(
        [
            np.ones(len(d), np.float32) if d.weights is None else np.asarray(d.weights, np.float32)
            for d in datasets
        ]
    )
    return TextDataset(
        encoded,
        targets,
        weights,
        views=first.views,
        max_lengths=first.max_lengths,
        pad_id=first.pad_id,
        dynamic_padding=first.dynamic_padding,
        bucket_size=first.bucket_size,
        pad_to_multiple_of=first.pad_to_multiple_of,
        view_outputs=first.view_outputs,
    )


def expand_views(names: list[str], key: str = "infer.tta") -> list[str]:
    """The text TTA views checked (see :mod:`medalist.modalities.text_views`)."""
    return expand_text_views(names, key)


def fold_learner(cfg: Config, task: Task) -> None:
    """None: folds train in medalist's loop."""
    return None


def backbone_names(cfg: Config) -> list[tuple[str, str]]:
    """The backbones the config names, as (config key, name): ``text.backbone`` and a different
    ``mlm.backbone``, local folders or hub ids."""
    names = [("text.backbone", cfg.text.backbone)] if cfg.text.backbone else []
    if cfg.mlm.backbone and cfg.mlm.backbone != cfg.text.backbone:
        names.append(("mlm.backbone", cfg.mlm.backbone))
    return names


def pretrained_weights(cfg: Config, *, download: bool = False) -> Weights | None:
    """``text.backbone`` resolved (a local folder, or a hub id's cached snapshot)."""
    return (
        resolve("text.backbone", cfg.text.backbone, download=download)
        if cfg.text.backbone
        else None
    )


def starting_weights(cfg: Config) -> list[Path]:
    """The safetensors files of the ``text.backbone`` folder (a hub id's cached snapshot; none
    when it is not cached yet: training fetches it first)."""
    try:
        weights = pretrained_weights(cfg)
    except MissingWeights:
        return []
    return list(weights.files) if weights else []


def stacked_experiments(cfg: Config) -> list[str]:
    """None: the inputs are the rows' own."""
    return []


def packaged_folder(cfg: Config) -> tuple[str, Path] | None:
    """The backbone folder (config, tokenizer) the model and the tokenizer are built from: the
    local folder, or the cached snapshot of a hub id."""
    weights = pretrained_weights(cfg)
    return ("text.backbone", weights.folder) if weights else None
