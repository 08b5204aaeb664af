"""A neural network for tables, trained by medalist's loop: the tricks (EMA, SWA, AWP, R-Drop,
label smoothing, ...) apply as they do to image and text models.

Each fold fits its inputs on its training rows only: the categories (``features.json``, as the
boosted models do) and, per numeric column, the mean and standard deviation that standardise
it, with a missing-value indicator for each column that has missing values there
(``scaling.json``). A category becomes an embedding (index 0: missing or unseen in the fold's
training rows), a numeric value its standardised value (missing: 0, and its indicator 1). The
model is an MLP: the embeddings and the numbers concatenated, ``tabular.hidden`` layers of
Linear, LayerNorm, SiLU and dropout, then the head. Weights are safetensors, as every network's.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from medalist.config import Config
from medalist.errors import ConfigError, DataError
from medalist.io import write_json
from medalist.layout import training_hash, weights_file
from medalist.modalities.tabular.boosters import Fitted
from medalist.modalities.tabular.features import SPEC_FILE, FeatureSpec, every_row
from medalist.tasks import Task
from medalist.training.checkpoint import clear_checkpoints
from medalist.training.loop import fit_fold
from medalist.training.runtime import make_accelerator, make_loader, predict_logits, process_state
from medalist.training.weights import load_weights, save_weights
from medalist.tricks.registry import build_tricks

log = logging.getLogger(__name__)

SCALING_FILE = "scaling.json"


class Scaling:
    """How a fold's numeric columns are standardised, and which get a missing indicator."""

    def __init__(self, mean: list[float], std: list[float], indicators: list[int]):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        self.indicators = list(indicators)  # positions among the numeric columns

    @classmethod
    def fit(cls, numbers: np.ndarray) -> Scaling:
        """From the fold's training rows' numeric columns (rows x columns, NaN missing)."""
        present = ~np.isnan(numbers)
        count = present.sum(axis=0)
        mean = np.where(count > 0, np.nansum(numbers, axis=0) / np.maximum(count, 1), 0.0)
        centred = np.where(present, numbers - mean, 0.0)
        std = np.sqrt((centred**2).sum(axis=0) / np.maximum(count, 1))
        std = np.where(std > 0, std, 1.0)
        indicators = np.flatnonzero(~present.all(axis=0)).tolist()
        return cls(mean.tolist(), std.tolist(), indicators)

    def apply(self, numbers: np.ndarray) -> np.ndarray:
        """Standardised values (missing: 0), then one 0/1 column per indicator."""
        missing = np.isnan(numbers)
        scaled = np.where(missing, 0.0, (numbers - self.mean) / self.std)
        flags = missing[:, self.indicators].astype(np.float64)
        return np.concatenate([scaled, flags], axis=1).astype(np.float32)

    @property
    def width(self) -> int:
        return len(self.mean) + len(self.indicators)

    def save(self, path: Path) -> None:
        write_json(
            path,
            {"mean": self.mean.tolist(), "std": self.std.tolist(), "indicators": self.indicators},
        )

    @classmethod
    def load(cls, path: Path) -> Scaling:
        if not path.is_file():
            raise DataError(f"{path} not found: the fold's input scaling; train it again")
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(data["mean"], data["std"], data["indicators"])


class Inputs:
    """A fold's inputs: the feature spec and the scaling, fitted on its training rows."""

    def __init__(self, spec: FeatureSpec, scaling: Scaling):
        self.spec, self.scaling = spec, scaling
        self.categorical = spec.categorical_positions
        self.numeric = [i for i in range(len(spec.columns)) if i not in self.categorical]

    @classmethod
    def fit(cls, cfg: Config, frame: pd.DataFrame, source: str, table=None) -> Inputs:
        """Fitted on the fold's training rows ``frame``; ``table``: every row, which decides
        the columns' kinds (see :meth:`FeatureSpec.fit`)."""
        spec = FeatureSpec.fit(cfg, frame, source, table=table)
        numeric = [i for i in range(len(spec.columns)) if i not in spec.categorical_positions]
        return cls(spec, Scaling.fit(spec.encode(frame, source)[:, numeric]))

    @property
    def cardinalities(self) -> list[int]:
        """Embedding rows per categorical column: its categories and one for missing/unseen."""
        return [len(self.spec.categories[self.spec.columns[i]]) + 1 for i in self.categorical]

    def tensors(self, frame: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
        matrix = self.spec.encode(frame, source)
        numbers = self.scaling.apply(matrix[:, self.numeric])
        codes = matrix[:, self.categorical]
        codes = np.where(np.isnan(codes), 0, codes + 1).astype(np.int64)
        return numbers, codes

    def save(self, folder: Path) -> None:
        self.spec.save(folder / SPEC_FILE)
        self.scaling.save(folder / SCALING_FILE)

    @classmethod
    def load(cls, spec_path: Path, scaling_path: Path) -> Inputs:
        return cls(FeatureSpec.load(spec_path), Scaling.load(scaling_path))


class TableTensors(Dataset):
    """Encoded rows as the loop takes them: ``{"index", "input": {numbers, codes}, "target"}``."""

    def __init__(self, numbers: np.ndarray, codes: np.ndarray, targets: np.ndarray | None):
        self.numbers, self.codes = torch.from_numpy(numbers), torch.from_numpy(codes)
        self.targets = None if targets is None else torch.from_numpy(np.asarray(targets))

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, index: int) -> dict:
        sample = {
            "index": index,
            "input": {"numbers": self.numbers[index], "codes": self.codes[index]},
        }
        if self.targets is not None:
            sample["target"] = self.targets[index]
        return sample


def embedding_size(cardinality: int) -> int:
    """A categorical column's embedding width: about 1.6 x cardinality^0.56, at most 64 (the
    rule of thumb fastai's tabular models use)."""
    return int(min(64, round(1.6 * cardinality**0.56)))


class TableMLP(nn.Module):
    """Embeddings for the categories, the numbers as they are, an MLP, a head."""

    def __init__(self, width: int, cardinalities: list[int], outputs: int, hidden, dropout):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_size(n)) for n in cardinalities)
        size = width + sum(e.embedding_dim for e in self.embeddings)
        layers = []
        for units in hidden:
            layers += [nn.Linear(size, units), nn.LayerNorm(units), nn.SiLU(), nn.Dropout(dropout)]
            size = units
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(size, outputs)

    def get_classifier(self) -> nn.Module:
        """The head (``train.head_lr`` gives it its own learning rate)."""
        return self.head

    def forward(self, inputs: dict) -> torch.Tensor:
        parts = [inputs["numbers"]]
        parts += [emb(inputs["codes"][:, i]) for i, emb in enumerate(self.embeddings)]
        return self.head(self.body(torch.cat(parts, dim=1)))


def build_network(cfg: Config, task: Task, inputs: Inputs) -> TableMLP:
    return TableMLP(
        inputs.scaling.width,
        inputs.cardinalities,
        task.num_outputs,
        cfg.tabular.hidden,
        cfg.tabular.dropout,
    )


class NetworkLearner:
    """A fold of the table MLP: its inputs fitted on the fold's training rows, then medalist's
    loop (``train.*``, ``tricks.*``) with its checkpoints and resume in the fold's folder."""

    name = "mlp"

    def __init__(self, cfg: Config, task: Task):
        self.cfg, self.task = cfg, task

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
        """The fold trained by the loop on ``targets``, or on the final soft targets
        ``distilled`` (``distill.teacher``); class weights and samplers read the labels."""
        cfg, task = self.cfg, self.task
        if process_state(cfg).num_processes > 1:
            raise ConfigError(
                "tabular.model: mlp trains on one process (a table's network is small); "
                "run train without accelerate launch or torchrun"
            )
        folder.mkdir(parents=True, exist_ok=True)
        inputs = Inputs.fit(cfg, train, source, table=every_row(train, valid))
        learnt = _loss_targets(task, targets) if distilled is None else distilled
        train_set = TableTensors(*inputs.tensors(train, source), learnt)
        valid_set = None
        if valid is not None:
            valid_set = TableTensors(*inputs.tensors(valid, source), valid_targets)
        torch.manual_seed(cfg.train.seed)
        model = build_network(cfg, task, inputs)
        result = fit_fold(
            cfg,
            task,
            model,
            train_set,
            valid_set,
            valid_targets,
            fold=fold,
            tricks=build_tricks(cfg, task, targets),
            folder=folder,
            config_hash=training_hash(cfg),
            accelerator=make_accelerator(cfg),
        )
        inputs.save(folder)
        states = {"model": result.state_dict}
        if result.eval_state_dict is not None:
            states[result.eval_name] = result.eval_state_dict
        for weights, state in states.items():
            model.load_state_dict(state)
            meta = {"fold": fold, "epoch": result.best_epoch, "weights": weights}
            meta["oof"] = weights == result.eval_name
            save_weights(model, folder / weights_file(weights), meta)
        files = [SPEC_FILE, SCALING_FILE, weights_file(result.eval_name)]
        predicted = None
        if valid is not None:
            predicted = self.predict(valid, [folder / f for f in files], source)
        clear_checkpoints(folder)
        history = pd.DataFrame(result.history)
        return Fitted(files, predicted, [result.best_epoch + 1], history, None)

    def refuses_soft_targets(self) -> None:
        """None: the loop's loss takes soft targets."""
        return None

    def predict(self, frame: pd.DataFrame, paths: list[Path], source: str) -> np.ndarray:
        spec_path, scaling_path, weights_path = paths
        inputs = Inputs.load(spec_path, scaling_path)
        dataset = TableTensors(*inputs.tensors(frame, source), None)
        model = load_weights(build_network(self.cfg, self.task, inputs), weights_path)
        accelerator = make_accelerator(self.cfg)
        loader = make_loader(dataset, self.cfg.infer.batch_size, shuffle=False, cfg=self.cfg)
        model, loader = accelerator.prepare(model, loader)
        with torch.no_grad():
            _, logits = predict_logits(model, loader, accelerator)
        accelerator.free_memory(model)
        return self.task.activate(torch.from_numpy(logits)).numpy()


def _loss_targets(task: Task, targets: np.ndarray) -> np.ndarray:
    """Targets as the loss takes them (hard multilabel labels as integers, as the train stage
    gives them)."""
    return targets.astype(np.int64) if task.type == "multilabel" else targets
