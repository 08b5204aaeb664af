"""Gradient-boosted models on a fold: LightGBM, XGBoost and CatBoost through their own calls.

Each library gets the fold's training rows, early-stops on its validation rows with its own
loss for the task (log loss, multi-class log loss, squared error), and saves the kept rounds in
its own text or JSON format (``model.lgb.txt``, ``model.xgb.json``, ``model.cb.json``), never a
pickle. A task with several outputs that one model cannot give (multilabel, several regression
targets) trains one model per output: ``model.<k>.<suffix>``.

A distilled student (``distill.teacher``) learns from soft targets in [0, 1] through each
library's cross-entropy that takes them (LightGBM ``cross_entropy``, whose ``binary`` would read
every label above 0 as 1; XGBoost ``binary:logistic``; CatBoost ``CrossEntropy``), or from the
mixed values of a regression; it early-stops on the validation rows' labels all the same.

The OOF predictions are made by the saved file read back, as ``infer`` and the offline bundle
make the test predictions, so a model predicts the same bits everywhere.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
from scipy import sparse

from medalist.config import Config
from medalist.errors import ConfigError, DataError, show_value
from medalist.io import write_json
from medalist.modalities.tabular.features import SPEC_FILE, FeatureSpec, every_row
from medalist.modalities.tabular.text import TextVectors, dense_block, has_features, without_text
from medalist.tasks import Task

log = logging.getLogger(__name__)

LEARNING_RATE = 0.05
TEXT_FILE = "text.json"  # a fold's TF-IDF vocabularies (tabular.text_columns)


def library(name: str) -> ModuleType:
    """The library of ``tabular.model``, imported on first use (an extra of medalist)."""
    try:
        return import_module(name)
    except ImportError:
        raise ConfigError(
            f"tabular.model: {name} is not installed; pip install 'medalist[tabular]'"
        ) from None


@dataclass
class Output:
    """One model of a fold: the kind of problem it solves and the targets' column it learns."""

    kind: str  # binary, multiclass or regression
    column: int | None  # the target column it learns (None: the single target)
    classes: int = 2


def outputs(task: Task) -> list[Output]:
    """The models a fold trains for the task (several when one model cannot give every output)."""
    if task.type == "binary":
        return [Output("binary", None)]
    if task.type == "multiclass":
        return [Output("multiclass", None, len(task.classes))]
    kind = "binary" if task.type == "multilabel" else "regression"
    if len(task.target_columns) == 1:
        return [Output(kind, 0)]
    return [Output(kind, k) for k in range(len(task.target_columns))]


@dataclass
class Fitted:
    """A fold's models, trained and saved: what ``train`` records of them."""

    files: list[str]  # written in the fold's folder: the feature spec, then the models
    valid: np.ndarray | None  # the validation rows' predictions, from the saved files
    best_rounds: list[int]
    history: pd.DataFrame  # the validation loss per round and model
    importance: pd.DataFrame  # per feature, summed over the fold's models


class Library:
    """What medalist asks of a boosting library; one subclass per library."""

    name = ""
    suffix = ""
    # The params naming the objective (the first one: the library's own name), and the
    # objectives that learn labels in [0, 1] as they are (a distilled binary student's).
    OBJECTIVE_KEYS: tuple[str, ...] = ()
    SOFT_OBJECTIVES: tuple[str, ...] = ()

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.module = library(self.name)

    def train(self, output: Output, x, y, valid, spec: FeatureSpec, seed: int, soft=False):
        """A model fitted on (x, y), early-stopped on ``valid`` = (x, y) or None; returns the
        model, the kept number of rounds and the validation loss per round. ``soft``: ``y`` are
        probabilities in [0, 1] (a binary output's distilled targets), not 0/1 labels."""
        raise NotImplementedError

    def save(self, model, path: Path) -> None:
        raise NotImplementedError

    def predict(self, path: Path, output: Output, x, spec: FeatureSpec) -> np.ndarray:
        """The saved model's predictions: probabilities (rows x classes for multiclass, rows for
        binary) or values."""
        raise NotImplementedError

    def importance(self, model, width: int) -> np.ndarray:
        """The gain of each of the ``width`` features the model was trained on."""
        raise NotImplementedError

    def refuses(self, output: Output, y: np.ndarray) -> str | None:
        """Why the library cannot fit these training targets (None: it can)."""
        return None

    def params(self, defaults: dict) -> dict:
        """medalist's defaults under ``tabular.params`` (the user's names win)."""
        return {**defaults, **self.cfg.tabular.params}

    @property
    def stopping(self) -> int | None:
        return self.cfg.tabular.early_stopping or None


def _names(width: int) -> list[str]:
    """Feature names as the libraries see them: positions, since a column name may hold
    characters a library refuses (XGBoost: [ ] <; LightGBM: JSON punctuation)."""
    return [f"f{i}" for i in range(width)]


class LightGBM(Library):
    name, suffix = "lightgbm", "lgb.txt"
    OBJECTIVES = {"binary": "binary", "multiclass": "multiclass", "regression": "regression"}
    SOFT = "cross_entropy"  # a binary output's soft labels ("binary" reads any label > 0 as 1)
    OBJECTIVE_KEYS = ("objective", "objective_type", "app", "application", "loss")
    SOFT_OBJECTIVES = ("cross_entropy", "xentropy", "cross_entropy_lambda", "xentlambda")

    def train(self, output, x, y, valid, spec, seed, soft=False):
        lgb = self.module
        binary_soft = soft and output.kind == "binary"
        defaults = {
            "objective": self.SOFT if binary_soft else self.OBJECTIVES[output.kind],
            "learning_rate": LEARNING_RATE,
            "seed": seed,
            "verbosity": -1,
        }
        if output.kind == "multiclass":
            defaults["num_class"] = output.classes
        params = self.params(defaults)
        names, categorical = _names(x.shape[1]), spec.categorical_positions
        data = lgb.Dataset(x, y, feature_name=names, categorical_feature=categorical)
        history: dict = {}
        callbacks = [lgb.record_evaluation(history)]
        sets = {}
        if valid is not None:
            sets = {"valid_sets": [lgb.Dataset(valid[0], valid[1], reference=data)]}
            sets["valid_names"] = ["valid"]
            if self.stopping:
                callbacks.append(lgb.early_stopping(self.stopping, verbose=False))
        model = lgb.train(
            params, data, num_boost_round=self.cfg.tabular.rounds, callbacks=callbacks, **sets
        )
        rounds = model.best_iteration if model.best_iteration > 0 else model.current_iteration()
        return model, rounds, _losses(history)

    def save(self, model, path):
        text = model.model_to_string(num_iteration=model.best_iteration or None)
        _write(path, text)

    def predict(self, path, output, x, spec):
        return self.module.Booster(model_file=str(path)).predict(x)

    def importance(self, model, width):
        return model.feature_importance("gain", iteration=model.best_iteration or None)


class XGBoost(Library):
    name, suffix = "xgboost", "xgb.json"
    OBJECTIVES = {
        "binary": "binary:logistic",
        "multiclass": "multi:softprob",
        "regression": "reg:squarederror",
    }
    OBJECTIVE_KEYS = ("objective",)
    SOFT_OBJECTIVES = ("binary:logistic", "reg:logistic", "binary:logitraw")

    def _matrix(self, x, y, spec):
        types = ["c" if i in spec.categorical_positions else "q" for i in range(x.shape[1])]
        return self.module.DMatrix(
            x,
            label=y,
            feature_names=_names(x.shape[1]),
            feature_types=types,
            enable_categorical=True,
        )

    def train(self, output, x, y, valid, spec, seed, soft=False):
        # binary:logistic takes labels in [0, 1] as they are: soft ones need no other objective.
        xgb = self.module
        defaults = {
            "objective": self.OBJECTIVES[output.kind],
            "learning_rate": LEARNING_RATE,
            "seed": seed,
            "tree_method": "hist",
            "verbosity": 0,
        }
        if output.kind == "multiclass":
            defaults["num_class"] = output.classes
        history: dict = {}
        evals = [] if valid is None else [(self._matrix(*valid, spec), "valid")]
        model = xgb.train(
            self.params(defaults),
            self._matrix(x, y, spec),
            num_boost_round=self.cfg.tabular.rounds,
            evals=evals,
            early_stopping_rounds=self.stopping if evals else None,
            evals_result=history,
            verbose_eval=False,
        )
        return model, _best_rounds(model), _losses(history)

    def save(self, model, path):
        # JSON (the format follows the suffix), the best round recorded in it; written beside
        # and renamed into place, so a reader never sees half a file.
        tmp = path.with_name(f".{path.name}")
        model.save_model(str(tmp))
        tmp.replace(path)

    def predict(self, path, output, x, spec):
        model = self.module.Booster()
        model.load_model(str(path))
        return model.predict(self._matrix(x, None, spec), iteration_range=(0, _best_rounds(model)))

    def importance(self, model, width):
        kept = model[: _best_rounds(model)]  # the rounds it predicts with, as LightGBM's
        gains = kept.get_score(importance_type="total_gain")
        return np.array([gains.get(name, 0.0) for name in _names(width)])


def _best_rounds(model) -> int:
    """The rounds an XGBoost model keeps: up to its best one when it early-stopped."""
    try:
        return int(model.best_iteration) + 1
    except AttributeError:  # no early stopping: every round
        return model.num_boosted_rounds()


UNIQUE_STAMPS = re.compile(r'"(model_guid|train_finish_time)":"[^"]*"')


class CatBoost(Library):
    name, suffix = "catboost", "cb.json"
    LOSSES = {"binary": "Logloss", "multiclass": "MultiClass", "regression": "RMSE"}
    SOFT = "CrossEntropy"  # a binary output's soft labels (Logloss takes two values only)
    OBJECTIVE_KEYS = ("loss_function",)
    SOFT_OBJECTIVES = ("CrossEntropy",)

    def _pool(self, x, y, spec):
        categorical = set(spec.categorical_positions)
        columns = {  # CatBoost reads categories as integers or text, never NaN: -1 is missing
            name: np.nan_to_num(x[:, i], nan=-1).astype(np.int64) if i in categorical else x[:, i]
            for i, name in enumerate(_names(x.shape[1]))
        }
        return self.module.Pool(pd.DataFrame(columns), y, cat_features=sorted(categorical))

    def train(self, output, x, y, valid, spec, seed, soft=False):
        binary_soft = soft and output.kind == "binary"
        defaults = {
            "loss_function": self.SOFT if binary_soft else self.LOSSES[output.kind],
            "learning_rate": LEARNING_RATE,
            "random_seed": seed,
            "iterations": self.cfg.tabular.rounds,
            "verbose": False,
            "allow_writing_files": False,
        }
        if output.kind == "multiclass":  # every class, even one the fold's rows lack
            defaults["class_names"] = list(range(output.classes))
        model = self.module.CatBoost(self.params(defaults))
        fit = {}
        if valid is not None:
            # The best round only with early stopping: without, nothing is chosen on the
            # validation rows (CatBoost would keep its best round all the same).
            fit = {"eval_set": self._pool(*valid, spec), "use_best_model": bool(self.stopping)}
            fit["early_stopping_rounds"] = self.stopping
        model.fit(self._pool(x, y, spec), **fit)
        history = model.get_evals_result().get("validation", {})
        losses = pd.DataFrame(history) if history else pd.DataFrame()
        return model, int(model.tree_count_), losses

    def save(self, model, path):
        tmp = path.with_name(path.name + ".catboost")
        model.save_model(str(tmp), format="json")
        # The same model in the same bytes: CatBoost stamps each file with a random id and the
        # time it was trained, which nothing reads back.
        text = UNIQUE_STAMPS.sub(r'"\1":""', tmp.read_text(encoding="utf-8"))
        _write(path, text)
        tmp.unlink()

    def predict(self, path, output, x, spec):
        model = self.module.CatBoost()
        model.load_model(str(path), format="json")
        pool = self._pool(x, None, spec)
        if output.kind == "regression":
            return model.predict(pool)
        probs = model.predict(pool, prediction_type="Probability")
        return probs[:, 1] if output.kind == "binary" else probs

    def importance(self, model, width):
        return np.asarray(model.get_feature_importance(), dtype=np.float64)

    def refuses(self, output, y):
        if output.kind != "regression" and np.unique(y).size < 2:
            return "CatBoost cannot fit a target with a single value (LightGBM and XGBoost can)"
        return None


LIBRARIES = {"lightgbm": LightGBM, "xgboost": XGBoost, "catboost": CatBoost}


def _losses(history: dict) -> pd.DataFrame:
    """The validation set's loss per round, as the library recorded it (metric -> values)."""
    valid = history.get("valid", {})
    return pd.DataFrame({name: list(values) for name, values in valid.items()})


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


class BoostedLearner:
    """A fold of a boosted model: fit on its training rows, predict any rows from its files."""

    def __init__(self, cfg: Config, task: Task):
        self.cfg, self.task = cfg, task
        self.name = cfg.tabular.model
        self.library = LIBRARIES[self.name](cfg)
        self.outputs = outputs(task)

    def refuses_soft_targets(self) -> str | None:
        """A multiclass model (none of the libraries takes a class distribution per row), or a
        binary or multilabel one whose objective, named in ``tabular.params``, reads class
        labels only (LightGBM's ``binary`` takes every soft target above 0 for a 1)."""
        if self.task.type == "multiclass":
            return (
                f"a multiclass {self.name} student (tabular.model) cannot train on the teacher's "
                "class distributions: LightGBM, XGBoost and CatBoost fit one class per row in "
                "their multiclass objectives; distil into tabular.model: mlp"
            )
        if self.task.type == "regression":
            return None
        library, params = self.library, self.cfg.tabular.params
        for key in library.OBJECTIVE_KEYS:
            named = params.get(key)
            # CatBoost may give a loss its own options: "CrossEntropy:use_weights=false".
            soft = {str(named), str(named).split(":")[0]} & set(library.SOFT_OBJECTIVES)
            if named is not None and not soft:
                return (
                    f"tabular.params: {key}: {named} fits class labels, not the teacher's soft "
                    f"targets of a {self.task.type} student; leave it out (medalist then uses "
                    f"{library.SOFT_OBJECTIVES[0]}) or name one of {list(library.SOFT_OBJECTIVES)}"
                )
        return None

    def model_files(self) -> list[str]:
        if len(self.outputs) == 1:
            return [f"model.{self.library.suffix}"]
        return [f"model.{k}.{self.library.suffix}" for k in range(len(self.outputs))]

    def fit(
        self,
        train: pd.DataFrame,
        targets: np.ndarray,
        valid: pd.DataFrame | None,
        valid_targets: np.ndarray | None,
        folder: Path,
        source: str,
        fold: int = 0,
        distilled: np.ndarray | None = None,
    ) -> Fitted:
        """Train the fold's models on ``train``, early-stopped on ``valid`` (None: a full fit,
        every round); write them and the feature spec into ``folder``. Targets the library
        cannot fit are named (with ``fold``) before anything is written. ``distilled``: the
        training rows' soft targets (binary, multilabel) or values (regression) to learn from
        instead of ``targets`` (see :class:`~medalist.modalities.protocol.FoldLearner`)."""
        for output in self.outputs:
            y = _column(targets, output)
            reason = self.library.refuses(output, y)
            if reason:
                name = self.task.target_columns[output.column or 0]
                raise DataError(
                    f"{source}: fold {fold}: target '{name}' has the single value "
                    f"{show_value(y[0])} in the fold's training rows: {reason}; give every "
                    f"fold's training rows several values (folds.scheme, fewer folds.n_splits) "
                    f"or use another tabular.model"
                )
        folder.mkdir(parents=True, exist_ok=True)
        # The columns' checks and kinds from every row of the table, the categories from the
        # fold's training rows (FeatureSpec.fit).
        others, table = without_text(self.cfg), every_row(train, valid)
        spec = FeatureSpec([])  # a model of text columns alone has no other feature
        if has_features(others, table):
            spec = FeatureSpec.fit(others, train, source, table=table)
        text = TextVectors.fit(self.cfg, train, source) if self.cfg.tabular.text_columns else None
        x = _inputs(spec, text, train, source)
        x_valid = None if valid is None else _inputs(spec, text, valid, source)
        spec.save(folder / SPEC_FILE)
        if text is not None:
            write_json(folder / TEXT_FILE, {"vectorizers": text.to_list()})
        best, histories, gains = [], [], np.zeros(x.shape[1])
        learnt = targets if distilled is None else distilled
        for output, name in zip(self.outputs, self.model_files(), strict=True):
            y = _column(learnt, output)
            checked = None if valid is None else (x_valid, _column(valid_targets, output))
            model, rounds, losses = self.library.train(
                output, x, y, checked, spec, self.cfg.train.seed, soft=distilled is not None
            )
            self.library.save(model, folder / name)
            gains += self.library.importance(model, x.shape[1])
            best.append(rounds)
            losses.insert(0, "round", np.arange(1, len(losses) + 1))
            losses.insert(0, "model", name)
            histories.append(losses)
        inputs = [SPEC_FILE] if text is None else [SPEC_FILE, TEXT_FILE]
        files = [*inputs, *self.model_files()]
        predicted = None
        if valid is not None:  # from the saved models, on the validation rows encoded above
            models = [folder / f for f in self.model_files()]
            predicted = self._predict_encoded(x_valid, spec, models)
        importance = _importance(spec, text, gains)
        history = pd.concat(histories, ignore_index=True)
        return Fitted(files, predicted, best, history, importance)

    def predict(self, frame: pd.DataFrame, paths: list[Path], source: str) -> np.ndarray:
        """Rows x task outputs (the prediction table's columns) from a fold's saved files."""
        spec_path, *models = paths
        spec, text = FeatureSpec.load(spec_path), None
        if models and models[0].name == TEXT_FILE:
            text_path, *models = models
            text = TextVectors.from_list(self.cfg, _read_json(text_path)["vectorizers"])
        return self._predict_encoded(_inputs(spec, text, frame, source), spec, models)

    def _predict_encoded(self, x: np.ndarray, spec: FeatureSpec, models: list[Path]) -> np.ndarray:
        """Rows x task outputs from the saved model files, on rows already encoded by ``spec``."""
        columns = []
        for output, path in zip(self.outputs, models, strict=True):
            library = self._reader(path)
            values = np.asarray(library.predict(path, output, x, spec), dtype=np.float64)
            columns.append(values.reshape(x.shape[0], -1))
        return np.concatenate(columns, axis=1).astype(np.float32)

    def _reader(self, path: Path) -> Library:
        """The library that wrote a model file (by its name: the fold may have been trained
        with another ``tabular.model`` than the config now names)."""
        for cls in LIBRARIES.values():
            if path.name.endswith("." + cls.suffix):
                return self.library if isinstance(self.library, cls) else cls(self.cfg)
        raise DataError(f"{path}: not a model file of {sorted(LIBRARIES)}")


def _inputs(spec: FeatureSpec, text: TextVectors | None, frame: pd.DataFrame, source: str):
    """The rows as the models read them: the encoded features (dense), then, with text columns,
    their TF-IDF blocks beside them (one sparse matrix, every dense entry kept)."""
    x = spec.encode(frame, source)
    if text is None:
        return x
    return sparse.hstack([dense_block(x), *text.transform(frame, source)], format="csr")


def _importance(spec: FeatureSpec, text: TextVectors | None, gains: np.ndarray) -> pd.DataFrame:
    """Gain per feature; a text column's terms summed per TF-IDF block."""
    names, values = list(spec.columns), list(gains[: len(spec.columns)])
    if text is not None:
        edges = np.cumsum([len(spec.columns), *text.widths()])
        names += text.block_names()
        values += [float(gains[a:b].sum()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return pd.DataFrame({"feature": names, "gain": values})


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found: the fold's text vocabularies; train it again")
    return json.loads(path.read_text(encoding="utf-8"))


def _column(targets: np.ndarray, output: Output) -> np.ndarray:
    return targets if output.column is None else targets[:, output.column]
