"""The report's feature importance: a GBDT experiment's top features by mean share of gain across
folds, from its folds' importance.parquet; no section for a model that writes none."""

from __future__ import annotations

import base64
import html
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medalist.errors import DataError
from medalist.io import write_json, write_parquet
from medalist.reporting.importance import feature_importance
from medalist.reporting.report import write_report
from medalist.training import stage as train_stage
from support.tables import table_cfg, write_table_competition, write_table_folds

MLP = ("tabular.model=mlp", "tabular.hidden=[16]", "train.epochs=2", "train.batch_size=64")
ROW = re.compile(r"<tr>\s*<th>([^<]+)</th>\s*<td>([^<]+)</td>\s*<td>([^<]+)</td>\s*<td>(\d+)</td>")


def image(text: str, alt: str) -> Image.Image:
    """The embedded PNG with that alt text, decoded."""
    data = re.search(rf'<img alt="{re.escape(alt)}" src="data:image/png;base64,([^"]+)">', text)
    return Image.open(io.BytesIO(base64.b64decode(data.group(1))))


def section(text: str, anchor: str) -> str | None:
    found = re.search(rf'<section id="{re.escape(anchor)}">(.*?)</section>', text, re.S)
    return found and found.group(1)


def expected_top(folder, n_folds: int, top: int = 20) -> pd.Series:
    """Mean share of gain across folds, straight from the parquet files."""
    shares = []
    for fold in range(n_folds):
        frame = pd.read_parquet(folder / f"fold{fold}" / "importance.parquet")
        shares.append(frame.set_index("feature")["gain"] / frame["gain"].sum())
    mean = pd.concat(shares, axis=1).fillna(0.0).mean(axis=1)
    return mean.sort_values(ascending=False, kind="stable").head(top)


def test_a_gbdt_experiment_has_its_top_features_and_an_mlp_none(tmp_path):
    write_table_competition(tmp_path, n_rows=180, n_test=20)
    cfg = table_cfg(
        tmp_path, "train.experiment=lgbm", "tabular.params={num_threads: 1, learning_rate: 0.2}"
    )
    write_table_folds(cfg)
    train_stage.run(cfg)
    train_stage.run(table_cfg(tmp_path, *MLP, "train.experiment=mlp", threads=None))

    outputs = tmp_path / "outputs"
    text = write_report(outputs, ["lgbm", "mlp"], cfg=cfg).read_text()
    assert 'id="importance-mlp"' not in text
    part = section(text, "importance-lgbm")
    assert part is not None
    assert "Feature importance of lgbm (lightgbm)" in part
    assert "LightGBM&#x27;s gain" in part and "training rows" in part and "OOF rows" in part

    expected = expected_top(outputs / "lgbm", n_folds=3)
    rows = ROW.findall(part)
    assert [html.unescape(r[0]) for r in rows] == list(expected.index)
    assert [r[1] for r in rows] == [f"{v:.2%}" for v in expected]
    assert all(0 <= int(r[3]) <= 3 for r in rows) and int(rows[0][3]) >= 1
    picture = image(part, "feature importance of lgbm")
    assert picture.size[0] > 200 and picture.size[1] > 100


def _fold(folder, name: str, gains: dict[str, float], learner: str = "xgboost") -> None:
    frame = pd.DataFrame({"feature": list(gains), "gain": list(gains.values())})
    write_parquet(folder / name / "importance.parquet", frame)
    write_json(folder / name / "scores.json", {"learner": learner})


def test_each_fold_counts_by_its_shares_not_by_its_raw_gain(tmp_path):
    """A fold with a large total does not outweigh the others; a fold with no split and the full
    fit are left out; a feature a fold lacks has a share of 0 there."""
    folder = tmp_path / "exp"
    _fold(folder, "fold0", {"a": 900.0, "b": 100.0})
    _fold(folder, "fold1", {"b": 10.0})
    _fold(folder, "fold2", {"b": 5.0, "c": 5.0})
    _fold(folder, "fold3", {"a": 0.0, "b": 0.0})  # no split
    _fold(folder, "full", {"d": 1e9})  # not a fold
    found = feature_importance([folder], top=1)
    assert found.learners == ["xgboost"] and found.n_folds == 3 and found.n_empty == 1
    assert list(found.table.index) == ["b"]  # the top 1; raw gains sum would put a first
    np.testing.assert_allclose(found.table.loc["b", "mean share"], (0.1 + 1 + 0.5) / 3)
    np.testing.assert_allclose(found.table.loc["b", "std"], np.std([0.1, 1, 0.5], ddof=1))
    assert found.table.loc["b", "in top 1 (of 3 folds)"] == 2  # a leads fold0
    everything = feature_importance([folder], top=5).table
    assert list(everything.index) == ["b", "a", "c"]
    np.testing.assert_allclose(everything["mean share"].sum(), 1.0)


def test_seeds_pool_their_folds_and_no_file_means_no_section(tmp_path):
    _fold(tmp_path / "exp@s1", "fold0", {"a": 1.0, "b": 3.0}, learner="catboost")
    _fold(tmp_path / "exp@s2", "fold0", {"a": 3.0, "b": 1.0}, learner="catboost")
    found = feature_importance([tmp_path / "exp@s1", tmp_path / "exp@s2"])
    assert found.n_folds == 2 and found.learners == ["catboost"]
    assert list(found.table.index) == ["a", "b"]  # tied at 0.5: by name
    (tmp_path / "net" / "fold0").mkdir(parents=True)
    assert feature_importance([tmp_path / "net"]) is None


def test_a_malformed_importance_file_names_itself(tmp_path):
    folder = tmp_path / "exp"
    write_parquet(folder / "fold0" / "importance.parquet", pd.DataFrame({"feature": ["a"]}))
    with pytest.raises(DataError, match="fold0/importance.parquet.*feature and gain"):
        feature_importance([folder])
