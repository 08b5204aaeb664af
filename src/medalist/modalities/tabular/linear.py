"""A linear model on word and character TF-IDF of text columns (and the other features): the
classical member of text competitions, on the same folds and in the same files as the others.

Each fold fits, on its training rows only: a word and a character TF-IDF per text column
(scikit-learn's ``TfidfVectorizer``: its vocabulary and inverse document frequencies), the
standardisation of the numeric features and the categories (one-hot); then scikit-learn's
logistic regression (binary, multiclass; multilabel: one per label) or ridge regression. The
fold's whole model is one JSON file, ``model.linear.json``: the vocabularies, idf weights,
scaling, categories, coefficients and intercepts; predicting is the vectorizers rebuilt from it
and one matrix product, so nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.special import expit, softmax
from sklearn.linear_model import LogisticRegression, Ridge

from medalist.config import Config
from medalist.errors import DataError
from medalist.io import write_json
from medalist.modalities.tabular.boosters import Fitted
from medalist.modalities.tabular.features import FeatureSpec, every_row
from medalist.modalities.tabular.network import Scaling
from medalist.modalities.tabular.text import TextVectors, has_features, without_text
from medalist.tasks import Task

MODEL_FILE = "model.linear.json"


class Encoder:
    """A fold's inputs as one sparse matrix: TF-IDF blocks, scaled numbers, one-hot categories."""

    def __init__(self, cfg: Config, text: TextVectors, spec: FeatureSpec | None, scaling):
        self.cfg, self.text, self.spec, self.scaling = cfg, text, spec, scaling

    @classmethod
    def fit(cls, cfg: Config, frame: pd.DataFrame, source: str, table=None) -> Encoder:
        """Fitted on the fold's training rows ``frame``; ``table``: every row, which decides
        the columns' kinds (see :meth:`FeatureSpec.fit`)."""
        encoder = cls(cfg, TextVectors.fit(cfg, frame, source), None, None)
        others = without_text(cfg)
        if has_features(others, frame):
            encoder.spec = FeatureSpec.fit(others, frame, source, table=table)
            encoder.scaling = Scaling.fit(encoder._numbers(encoder.spec.encode(frame, source)))
        return encoder

    def _numbers(self, matrix: np.ndarray) -> np.ndarray:
        return matrix[:, [i for i in range(matrix.shape[1]) if i not in self._categorical]]

    @property
    def _categorical(self) -> list[int]:
        return self.spec.categorical_positions if self.spec else []

    def transform(self, frame: pd.DataFrame, source: str) -> sparse.csr_matrix:
        blocks = self.text.transform(frame, source)
        if self.spec is not None:
            matrix = self.spec.encode(frame, source)
            blocks.append(sparse.csr_matrix(self.scaling.apply(self._numbers(matrix))))
            for i in self._categorical:
                size = len(self.spec.categories[self.spec.columns[i]])
                codes = matrix[:, i]
                rows = np.flatnonzero(~np.isnan(codes))
                ones = np.ones(len(rows))
                shape = (len(frame), size)
                blocks.append(sparse.csr_matrix((ones, (rows, codes[rows].astype(int))), shape))
        return sparse.hstack(blocks, format="csr", dtype=np.float64)

    def to_dict(self) -> dict:
        return {
            "vectorizers": self.text.to_list(),
            "features": None
            if self.spec is None
            else {"columns": self.spec.columns, "categories": self.spec.categories},
            "scaling": None
            if self.scaling is None
            else {
                "mean": self.scaling.mean.tolist(),
                "std": self.scaling.std.tolist(),
                "indicators": self.scaling.indicators,
            },
        }

    @classmethod
    def from_dict(cls, cfg: Config, data: dict) -> Encoder:
        encoder = cls(cfg, TextVectors.from_list(cfg, data["vectorizers"]), None, None)
        if data["features"] is not None:
            encoder.spec = FeatureSpec(data["features"]["columns"], data["features"]["categories"])
            encoder.scaling = Scaling(**data["scaling"])
        return encoder


class LinearLearner:
    """A fold of logistic or ridge regression on the encoded rows (see the module)."""

    name = "linear"

    def __init__(self, cfg: Config, task: Task):
        self.cfg, self.task = cfg, task

    def refuses_soft_targets(self) -> str | None:
        """Classification: scikit-learn's logistic regression takes class labels only."""
        if self.task.type == "regression":
            return None
        return (
            f"tabular.model linear fits a {self.task.type} task with scikit-learn's "
            "LogisticRegression, which takes class labels, not soft targets; distil into "
            "tabular.model: mlp (or, for a binary or multilabel task, a GBDT)"
        )

    def _models(self, x, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coefficients (outputs x features) and intercepts (outputs) of the fitted model(s)."""
        params = {**self.cfg.tabular.params}
        if self.task.type == "regression":
            model = Ridge(**{"random_state": self.cfg.train.seed, **params}).fit(x, targets)
            return np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
        params = {"max_iter": 1000, "random_state": self.cfg.train.seed, **params}
        columns = targets.T if self.task.type == "multilabel" else [targets]
        coefs, intercepts = [], []
        for y in columns:
            model = LogisticRegression(**params).fit(x, y)
            coefs.append(model.coef_)
            intercepts.append(model.intercept_)
        return np.concatenate(coefs), np.concatenate(intercepts)

    def fit(
        self,
        train,
        targets,
        valid,
        valid_targets,
        folder: Path,
        source: str,
        fold=0,
        distilled=None,
    ):
        """``distilled``: a regression's mixed values to fit instead of ``targets``
        (``distill.teacher``; a logistic regression takes class labels only and is refused
        before training)."""
        folder.mkdir(parents=True, exist_ok=True)
        encoder = Encoder.fit(self.cfg, train, source, table=every_row(train, valid))
        x = encoder.transform(train, source)
        classes = self.task.num_outputs if self.task.type == "multiclass" else None
        if classes is not None and len(np.unique(targets)) < classes:
            raise DataError(
                f"{source}: fold {fold}'s training rows lack some of the {classes} classes"
            )
        coef, intercept = self._models(x, targets if distilled is None else distilled)
        record = {
            "encoder": encoder.to_dict(),
            "coef": coef.tolist(),
            "intercept": intercept.tolist(),
        }
        write_json(folder / MODEL_FILE, record)
        predicted = None if valid is None else self.predict(valid, [folder / MODEL_FILE], source)
        history = pd.DataFrame({"fold": [fold], "features": [x.shape[1]]})
        return Fitted([MODEL_FILE], predicted, [1], history, None)

    def predict(self, frame: pd.DataFrame, paths: list[Path], source: str) -> np.ndarray:
        (path,) = paths
        if not path.is_file():
            raise DataError(f"{path} not found: the fold's linear model; train it again")
        record = json.loads(path.read_text(encoding="utf-8"))
        encoder = Encoder.from_dict(self.cfg, record["encoder"])
        x = encoder.transform(frame, source)
        scores = np.asarray(x @ np.asarray(record["coef"]).T) + np.asarray(record["intercept"])
        if self.task.type == "multiclass":
            return softmax(scores, axis=1).astype(np.float32)
        if self.task.type in ("binary", "multilabel"):
            return expit(scores).astype(np.float32)
        return scores.astype(np.float32)
