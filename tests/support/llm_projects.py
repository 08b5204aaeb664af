"""A preference competition (prompt, response_a, response_b; target ``winner``) baked from the
template, with a tiny decoder in ``models/decoder`` and ``configs/tiny.yaml``."""

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
