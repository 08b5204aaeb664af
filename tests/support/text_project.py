"""A tiny text competition for the honest-CV tools' tests: real docstrings of numpy and pandas
labelled by library, a tiny BERT and tokenizer trained here (no downloads), baked from the
template with the text modality, ``configs/tiny.yaml`` training it in seconds.

Some docstrings can carry :data:`MARKER`, a notice no docstring has: a test set whose rows all
carry it differs from train in a way the tools must see.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.demo.digits import bake
from medalist.demo.text import docstring_corpus

LIBRARIES = {"numpy": ["numpy", "numpy.linalg"], "pandas": ["pandas"]}
MARKER = "Deprecated since version 3.0: moved to the legacy compatibility module, to be removed."
CONFIG = "configs/tiny.yaml"
EXPERIMENT = "tiny_text"
TINY_TEXT = f"""\
text:
  backbone: models/backbone
  max_length: 32
  pooling: attention
  dropout: 0.0
  hidden_dropout: 0.0  # a tiny model learns its few rows fast without it
folds:
  n_splits: 2
train:
  experiment: {EXPERIMENT}
  epochs: 2
  batch_size: 8
  lr: 6.0e-3
  num_workers: 0
  progress: false
"""


def docstrings(per_library: int) -> pd.DataFrame:
    """``id``, ``text`` and ``library``: ``per_library`` docstring summaries of each library."""
    corpus = docstring_corpus(per_library=per_library, seed=0, libraries=LIBRARIES)
    return corpus.assign(id=[f"d{i:03d}" for i in range(len(corpus))])[["id", "text", "library"]]


def marked(texts: pd.Series) -> pd.Series:
    """The texts with the marker notice appended."""
    return texts + " " + MARKER


def labelled(texts: pd.Series, labels) -> pd.Series:
    """The texts with their labels written before them (a leak, when a pipeline does it; before,
    where truncation to ``text.max_length`` keeps it)."""
    return labels + " " + texts


def tokenizer_corpus(corpus: pd.DataFrame) -> list[str]:
    """What the tiny tokenizer learns its vocabulary from: the texts, plain, marked and
    labelled (so that the notice's and the labels' words are tokens of their own)."""
    texts = corpus["text"]
    return [*texts, *marked(texts), *labelled(texts, corpus["library"])]


def write_text_project(root: Path, backbone: Path, train: pd.DataFrame, test: pd.DataFrame) -> Path:
    """Bake the text template under ``root`` with ``train`` (``id``, ``text``, ``library``) and
    ``test`` (``id``, ``text``) as its data, ``backbone`` copied to ``models/backbone`` and
    :data:`TINY_TEXT` as ``configs/tiny.yaml``; return the project folder."""
    project = bake(
        root, {"competition_name": "Docs", "modality": "text", "target_columns": "library"}
    )
    data = project / "data"
    train[["id", "text", "library"]].to_csv(data / "train.csv", index=False)
    test[["id", "text"]].to_csv(data / "test.csv", index=False)
    sample = pd.DataFrame({"id": test["id"], "library": "numpy"})
    sample.to_csv(data / "sample_submission.csv", index=False)
    shutil.copytree(backbone, project / "models" / "backbone")
    (project / CONFIG).write_text(TINY_TEXT)
    return project


def random_split(corpus: pd.DataFrame, n_test: int, seed: int = 0):
    """(train, test): ``n_test`` rows drawn at random for test, the rest train."""
    order = np.random.default_rng(seed).permutation(len(corpus))
    test = corpus.iloc[np.sort(order[:n_test])].reset_index(drop=True)
    train = corpus.iloc[np.sort(order[n_test:])].reset_index(drop=True)
    return train, test
