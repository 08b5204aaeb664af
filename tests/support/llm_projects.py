"""Text competitions baked from the template for the decoder tests, each with a tiny decoder in
``models/decoder`` and ``configs/tiny.yaml``: a preference task (prompt, response_a, response_b;
target ``winner``) and the docstring task (text; target ``library``)."""

import shutil
from pathlib import Path

import pandas as pd

from medalist.demo.digits import bake


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
