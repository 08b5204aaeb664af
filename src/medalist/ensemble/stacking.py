"""Level-2 stacking: a scikit-learn model (or LightGBM) fitted on the members' OOF predictions.

Features are each member's predictions: log-odds for binary and multilabel probabilities,
log-probabilities for multiclass, raw values for regression. Fitted per fold on the other
folds' OOF rows (:mod:`medalist.ensemble.nested`), so the stack's own CV never sees the rows it
scores. Multilabel and multi-target tasks get one level-2 model per column.
"""

from __future__ import annotations

import importlib.util

import numpy as np
from scipy.special import logit
from sklearn.linear_model import LogisticRegression, Ridge

from medalist.ensemble.blend import CLIP, Blender
from medalist.errors import ConfigError
from medalist.metrics import Metric

SUPPORTED = {
    "logistic": ("binary", "multiclass", "multilabel"),
    "ridge": ("binary", "multilabel", "regression"),
    "lightgbm": ("binary", "multiclass", "multilabel", "regression"),
}


def check_stacker(kind: str, task_type: str) -> None:
    """Refuse a level-2 model that cannot serve this task, or is not installed."""
    if task_type not in SUPPORTED[kind]:
        raise ConfigError(
            f"ensemble.stacker: '{kind}' cannot stack a {task_type} task; use one of "
            f"{[k for k, tasks in SUPPORTED.items() if task_type in tasks]}"
        )
    if kind == "lightgbm" and importlib.util.find_spec("lightgbm") is None:
        raise ConfigError("ensemble.stacker: lightgbm is not installed; use logistic or ridge")


def features(preds: np.ndarray, task_type: str) -> np.ndarray:
    """(n_models, n_rows, n_columns) predictions as level-2 features (n_rows, n_models * n)."""
    if task_type == "regression":
        values = preds
    elif task_type == "multiclass":
        values = np.log(np.clip(preds, CLIP, 1.0))
    else:
        values = logit(np.clip(preds, CLIP, 1 - CLIP))
    return np.concatenate(list(values), axis=1)


class Stacker(Blender):
    """A level-2 model per output column (one multinomial model for multiclass)."""

    learns = True

    def __init__(self, task_type: str, metric: Metric, kind: str, strength: float, seed: int):
        super().__init__(task_type, metric)
        self.kind, self.strength, self.seed = kind, strength, seed
        self.models: list = []

    def _model(self, classify: bool):
        if self.kind == "lightgbm":
            import lightgbm

            params = {"n_estimators": 200, "learning_rate": 0.05, "num_leaves": 15}
            params |= {"random_state": self.seed, "verbose": -1}
            return (
                lightgbm.LGBMClassifier(**params) if classify else lightgbm.LGBMRegressor(**params)
            )
        if self.kind == "ridge":
            return Ridge(alpha=self.strength)
        return LogisticRegression(C=self.strength, max_iter=1000)

    def _targets(self, y: np.ndarray) -> list[np.ndarray]:
        if self.task_type == "multiclass" or y.ndim == 1:
            return [y]
        return [y[:, k] for k in range(y.shape[1])]

    def fit(self, preds: np.ndarray, y: np.ndarray) -> Stacker:
        x = features(preds, self.task_type)
        classify = self.task_type != "regression" and self.kind != "ridge"
        self.models = [self._model(classify).fit(x, target) for target in self._targets(y)]
        self.n_columns = preds.shape[2]
        return self

    def _column(self, model, x: np.ndarray) -> np.ndarray:
        if not hasattr(model, "predict_proba"):
            out = model.predict(x)
            return out if self.task_type == "regression" else np.clip(out, 0.0, 1.0)
        proba = model.predict_proba(x)
        return proba[:, list(model.classes_).index(1)] if 1 in model.classes_ else proba[:, 0] * 0

    def predict(self, preds: np.ndarray) -> np.ndarray:
        x = features(preds, self.task_type)
        if self.task_type == "multiclass":
            model, out = self.models[0], np.zeros((len(x), self.n_columns))
            out[:, model.classes_.astype(int)] = model.predict_proba(x)
            return out
        return np.stack([self._column(model, x) for model in self.models], axis=1)

    def describe(self, names: list[str]) -> dict:
        """Each member's share of the level-2 model's |coefficients| (or importances)."""
        shares = np.zeros(len(names))
        for model in self.models:
            raw = getattr(model, "coef_", getattr(model, "feature_importances_", None))
            per_feature = np.abs(np.atleast_2d(raw)).sum(axis=0)
            shares += per_feature.reshape(len(names), -1).sum(axis=1)
        shares = shares / shares.sum() if shares.sum() > 0 else shares
        return {
            "stacker": self.kind,
            "weights": dict(zip(names, map(float, shares), strict=True)),
            "weights_meaning": "share of the level-2 model's |coefficients| per member",
        }
