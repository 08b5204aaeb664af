"""Text competitions baked from the template for the decoder tests, each with a tiny decoder in
``models/decoder`` and ``configs/tiny.yaml``: a preference task (prompt, response_a, response_b;
target ``winner``) and the docstring task (text; target ``library``)."""

import shutil
from pathlib import Path

import pandas as pd
import yaml

from medalist.config.load import deep_merge
from medalist.demo.digits import bake
from medalist.demo.text import docstring_corpus

# The libraries whose docstrings the decoder tests classify.
LIBRARIES = {"numpy": ["numpy", "numpy.linalg"], "pandas": ["pandas"]}

# The docstring task on the tiny Llama with LoRA and EMA: each test's configs/tiny.yaml is this
# with its own changes merged in (tiny_llm).
TINY_LLM = {
    "text": {
        "backbone": "models/decoder",
        "max_length": 32,
        "pooling": "last",
        "dropout": 0.0,
        "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
    },
    "folds": {"n_splits": 2},
    "train": {
        "experiment": "tiny_llm",
        "epochs": 2,
        "batch_size": 8,
        "lr": 3.0e-3,
        "num_workers": 0,
        "progress": False,
    },
    "tricks": {"ema": {"enabled": True, "decay": 0.9}},
}


def docstring_rows(per_library: int) -> pd.DataFrame:
    """``per_library`` docstring summaries of each of :data:`LIBRARIES` (``text``,
    ``library``), with ids ``r0``, ``r1``, ..."""
    data = docstring_corpus(per_library=per_library, seed=0, libraries=LIBRARIES)
    return data.assign(id=[f"r{i}" for i in range(len(data))])


def tiny_llm(changes: dict | None = None) -> str:
    """configs/tiny.yaml: :data:`TINY_LLM` with ``changes`` merged in (nested keys merge)."""
    return yaml.safe_dump(deep_merge(TINY_LLM, changes or {}), sort_keys=False)


def preference_project(
    root: Path, decoder: Path, data: pd.DataFrame, train_rows: int, config: str
) -> Path:
    """The first ``train_rows`` rows of ``data`` as train.csv, the others as test.csv (no
    winner) with a sample submission; ``config`` as configs/tiny.yaml."""
    project = bake(
        root, {"competition_name": "Prefs", "modality": "text", "target_columns": "winner"}
    )
    train, test = data.iloc[:train_rows], data.iloc[train_rows:]
    train.to_csv(project / "data" / "train.csv", index=False)
    test.drop(columns="winner").to_csv(project / "data" / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "winner": "winner_tie"}).to_csv(
        project / "data" / "sample_submission.csv", index=False
    )
    shutil.copytree(decoder, project / "models" / "decoder")
    (project / "configs" / "tiny.yaml").write_text(config)
    return project


def docstring_project(
    root: Path, decoder: Path, corpus: pd.DataFrame, train_rows: int, config: str
) -> Path:
    """Which library a docstring comes from (``text``; target ``library``): the first
    ``train_rows`` rows of ``corpus`` (columns id, text, library) as train.csv, the others as
    test.csv with a sample submission; the decoder in models/decoder, ``config`` as
    configs/tiny.yaml."""
    project = bake(
        root, {"competition_name": "Docs", "modality": "text", "target_columns": "library"}
    )
    train, test = corpus.iloc[:train_rows], corpus.iloc[train_rows:]
    train[["id", "text", "library"]].to_csv(project / "data" / "train.csv", index=False)
    test[["id", "text"]].to_csv(project / "data" / "test.csv", index=False)
    pd.DataFrame({"id": test["id"], "library": "numpy"}).to_csv(
        project / "data" / "sample_submission.csv", index=False
    )
    shutil.copytree(decoder, project / "models" / "decoder")
    (project / "configs" / "tiny.yaml").write_text(config)
    return project
