"""The image modality: files named in a table, albumentations pipelines, a timm backbone.

Augmentation randomness is a function of (seed, epoch, row): each sample re-seeds the pipeline, so
the same run gives the same images whatever the number of workers or processes, and a resumed run
sees what an uninterrupted one would have seen.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import timm
import torch
from albumentations.pytorch import ToTensorV2
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import Dataset

from medalist.config import Config, Transform
from medalist.errors import CheckpointError, ConfigError, DataError
from medalist.prediction import tta
from medalist.pretrained import manifest
from medalist.pretrained.resolve import MissingWeights, Weights, check_timm_name, resolve
from medalist.tasks import Task

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _transform(spec: Transform, key: str) -> A.BasicTransform:
    cls = getattr(A, spec.name, None)
    if cls is None or not isinstance(cls, type):
        raise ConfigError(f"{key}: albumentations has no transform '{spec.name}'")
    kwargs = spec.model_dump(exclude={"name"})
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}: {spec.name}({kwargs}) is invalid: {exc}") from exc


def configured_transforms(cfg: Config, train: bool) -> list[A.BasicTransform]:
    """``image.train_transforms`` (or ``eval_transforms``), each refused by its key if invalid."""
    section = "train_transforms" if train else "eval_transforms"
    specs = cfg.image.train_transforms if train else cfg.image.eval_transforms
    return [_transform(spec, f"image.{section}[{i}]") for i, spec in enumerate(specs)]


def normalize(cfg: Config) -> A.Normalize:
    """``image.mean``/``image.std``, else ImageNet's for RGB and 0.5 for grayscale, on the 0-255
    scale."""
    channels = cfg.image.channels
    mean = cfg.image.mean or (IMAGENET_MEAN if channels == 3 else (0.5,))
    std = cfg.image.std or (IMAGENET_STD if channels == 3 else (0.5,))
    if len(mean) != channels or len(std) != channels:
        raise ConfigError("image.mean/image.std: one value per channel is needed")
    return A.Normalize(mean=mean, std=std, max_pixel_value=255.0)


def build_pipeline(cfg: Config, train: bool) -> A.Compose:
    """Resize, the configured transforms, normalisation and conversion to a CHW tensor."""
    steps = [A.Resize(cfg.image.size, cfg.image.size), *configured_transforms(cfg, train)]
    return A.Compose([*steps, normalize(cfg), ToTensorV2()])


def image_paths(cfg: Config, df: pd.DataFrame, split: str, source: str) -> list[Path]:
    """The image file of every row; a missing column or file stops here, naming it."""
    column = cfg.image.image_column
    if column not in df.columns:
        raise DataError(f"{source}: missing image column '{column}'")
    folder = Path(cfg.competition.data_dir) / (
        cfg.image.train_dir if split == "train" else cfg.image.test_dir
    )
    paths = [folder / str(name) for name in df[column]]
    for row, path in enumerate(paths):
        if not path.is_file():
            raise DataError(f"{source}: row {row}: image file not found: {path}")
    return paths


def read_image(path: Path, channels: int) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imread(str(path), flag)
    if image is None:
        raise DataError(f"cannot decode image file {path} (corrupt or not an image)")
    if channels == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


class Reseeder:
    """Re-seeds an albumentations pipeline for each sample, cheaply and deterministically.

    albumentations' ``set_random_seed`` builds a new numpy and Python generator for every
    transform, about 20 us each: a quarter of a small image's time in the loader. Here every
    transform draws from one shared pair, re-keyed per sample: a Philox generator keyed by the
    seed (counter-based, so distinct keys give independent streams) and a Python ``Random``.
    """

    def __init__(self, pipeline: A.BaseCompose):
        self.transforms, stack = [], [pipeline]
        while stack:
            transform = stack.pop()
            self.transforms.append(transform)
            stack.extend(getattr(transform, "transforms", []))
        self.bit_generator = np.random.Philox(key=0)
        self.state = self.bit_generator.state
        self.random_generator = np.random.Generator(self.bit_generator)
        self.py_random = random.Random(0)

    def __call__(self, seed: int) -> None:
        state = self.state
        state["state"]["key"] = np.array([seed, 0], dtype=np.uint64)
        state["state"]["counter"] = np.zeros(4, dtype=np.uint64)
        state["buffer_pos"], state["has_uint32"] = len(state["buffer"]), 0  # nothing buffered
        self.bit_generator.state = state
        self.py_random.seed(seed)
        for transform in self.transforms:
            transform.seed = seed
            transform.random_generator, transform.py_random = self.random_generator, self.py_random


class EpochSeeded(Dataset):
    """A dataset whose augmentation is seeded per (seed, epoch, row): the epoch set by the loop
    (``set_epoch``) reaches every loader worker.

    Persistent loader workers keep the copy of the dataset they started with: a plain attribute
    set in the main process would never reach them, and every epoch would repeat the first one's
    augmentation. One integer in shared memory reaches them all.
    """

    def __init__(self):
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch


class ImageDataset(EpochSeeded):
    """Rows of a table as ``{'index', 'input', 'target'}`` samples.

    Args:
        paths: one image file per row.
        targets: the task's target array, or None for test data.
        pipeline: the albumentations pipeline.
        channels: 1 or 3.
        seed: base seed of the augmentation; combined with the epoch and the row.
    """

    def __init__(
        self, paths, targets, pipeline: A.Compose, channels: int, seed: int = 0, weights=None
    ):
        self.paths = list(paths)
        # Tensors once, indexed per sample (a tensor per sample costs more than the indexing).
        self.targets = None if targets is None else torch.tensor(np.asarray(targets))
        self.weights = None if weights is None else torch.tensor(np.asarray(weights))
        self.pipeline = pipeline
        self.reseed = Reseeder(pipeline)
        self.channels = channels
        self.seed = seed
        super().__init__()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = read_image(self.paths[index], self.channels)
        # A per-sample seed keeps augmentation independent of workers and of resumption.
        self.reseed(hash((self.seed, self.epoch, index)) % (2**32))
        sample = {"index": index, "input": self.pipeline(image=image)["image"]}
        if self.targets is not None:
            sample["target"] = self.targets[index]
        if self.weights is not None:
            sample["weight"] = self.weights[index]
        return sample


def check_inputs(cfg: Config, df: pd.DataFrame, split: str, source: str) -> None:
    """The modality's input check before any work: the backbone name, the pretrained weights
    (training only: fetched here, with a warning, when missing and allowed), and every row's image
    file exists and starts like an image OpenCV can decode (its signature: about 10 us a file, no
    decoding).

    A file cut short after a valid header still fails later, when it is read, naming the file.
    """
    check_timm_name(cfg.model.backbone)
    if split == "train":
        weights = pretrained_weights(cfg, download=True)
        if weights is not None:
            manifest.check_recorded(weights)
            _log_stem(cfg, weights)
    for row, path in enumerate(image_paths(cfg, df, split, source)):
        if not cv2.haveImageReader(str(path)):
            raise DataError(f"{source}: row {row}: {path} is not an image (corrupt or empty file)")


def fold_learner(cfg: Config, task: Task) -> None:
    """None: folds train in medalist's loop."""
    return None


def backbone_names(cfg: Config) -> list[tuple[str, str]]:
    """The pretrained weights the config names, as (config key, name): ``model.pretrained_path``
    (it wins), else ``model.backbone`` when ``model.pretrained``; none for a random start."""
    if cfg.model.pretrained_path:
        return [("model.pretrained_path", cfg.model.pretrained_path)]
    if cfg.model.pretrained:
        return [("model.backbone", cfg.model.backbone)]
    return []


def pretrained_weights(cfg: Config, *, download: bool = False) -> Weights | None:
    """The resolved file the model starts from, or None for a random start (see
    :mod:`medalist.pretrained.resolve` for the errors)."""
    names = backbone_names(cfg)
    return resolve(*names[0], download=download) if names else None


def _log_stem(cfg: Config, weights: Weights) -> None:
    if weights.in_chans is not None and weights.in_chans != cfg.image.channels:
        log.info(
            "model.backbone: %s was pretrained on %d input channels; timm adapts its stem to "
            "image.channels=%d",
            weights.name,
            weights.in_chans,
            cfg.image.channels,
        )


def build_dataset(
    cfg: Config,
    df: pd.DataFrame,
    targets,
    *,
    split: str,
    train: bool,
    source: str,
    weights=None,
    views=None,
):
    """The rows as a dataset; ``views`` (TTA) are applied to whole batches, not here."""
    paths = image_paths(cfg, df, split, source)
    pipeline = build_pipeline(cfg, train)
    return ImageDataset(paths, targets, pipeline, cfg.image.channels, cfg.train.seed, weights)


def build_model(cfg: Config, task: Task) -> torch.nn.Module:
    """A timm model with the task's head, from its pretrained weights when configured.

    ``model.pretrained_path`` is loaded as a local file; ``model.pretrained`` builds the model
    through timm from the cached hub file (timm drops a head of another size and adapts the stem
    to ``image.channels``). A cached file is never downloaded here: training fetched it in
    :func:`check_inputs`, and inference replaces every weight with the fine-tuned ones, so a
    machine without the file (the offline bundle) builds from random init instead, with a warning.
    """
    model_cfg = cfg.model
    check_timm_name(model_cfg.backbone)
    kwargs = {
        "num_classes": task.num_outputs,
        "in_chans": cfg.image.channels,
        "drop_rate": model_cfg.drop_rate,
        "drop_path_rate": model_cfg.drop_path_rate or None,
    }
    weights = None if model_cfg.pretrained_path else cached_pretrained(cfg)
    if weights is None:
        model = timm.create_model(model_cfg.backbone, pretrained=False, **kwargs)
    else:
        log.info("model.backbone: %s from %s", weights.name, weights.files[0])
        model = timm.create_model(
            weights.name,
            pretrained=True,
            pretrained_cfg_overlay={"file": str(weights.files[0])},
            **kwargs,
        )
    if model_cfg.pretrained_path:
        load_backbone_weights(model, Path(model_cfg.pretrained_path))
    return model


def cached_pretrained(cfg: Config) -> Weights | None:
    """The cached pretrained weights of ``model.backbone`` when ``model.pretrained``; None (a
    random start, with a warning when they are missing from the cache) otherwise."""
    if not cfg.model.pretrained:
        return None
    try:
        return pretrained_weights(cfg)
    except MissingWeights:
        log.warning(
            "model.backbone: the pretrained weights of %s are not in the cache: random init "
            "(right before loading fine-tuned weights; to train, run `medalist weights`)",
            cfg.model.backbone,
        )
        return None


def load_backbone_weights(model: torch.nn.Module, path: Path) -> None:
    """Load matching tensors from a safetensors file; the head may differ, little else may."""
    if not path.is_file():
        raise ConfigError(f"model.pretrained_path: file not found: {path}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.5 * len(own):
        raise CheckpointError(
            f"{path}: only {len(matched)} of {len(own)} tensors match '{type(model).__name__}'; "
            "is it a checkpoint of another model?"
        )
    skipped = sorted(set(own) - set(matched))
    if skipped:
        log.info(
            "pretrained weights: %d tensors not loaded (head or shape change): %s",
            len(skipped),
            skipped[:6],
        )
    model.load_state_dict(matched, strict=False)


class Combined(torch.utils.data.ConcatDataset):
    """Labelled and pseudo-labelled rows; every sample carries a loss weight."""

    def set_epoch(self, epoch: int) -> None:
        for dataset in self.datasets:
            dataset.set_epoch(epoch)

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        sample.setdefault("weight", torch.tensor(1.0))
        return sample


def combine(datasets: list[Dataset]) -> Combined:
    """Labelled and pseudo-labelled rows as one training set (see :class:`Combined`)."""
    return Combined(datasets)


def expand_views(names: list[str], key: str = "infer.tta") -> list[str]:
    """The image TTA views checked and expanded (see :mod:`medalist.prediction.tta`)."""
    return tta.expand_views(names, key)


def starting_weights(cfg: Config) -> list[Path]:
    """The weights file the model starts from: ``model.pretrained_path``, or the cached file of
    the pretrained backbone (none when it is not cached yet: training fetches it first)."""
    if cfg.model.pretrained_path:
        path = Path(cfg.model.pretrained_path)
        return [path] if path.is_file() else []
    try:
        weights = pretrained_weights(cfg)
    except MissingWeights:
        return []
    return list(weights.files) if weights else []


def stacked_experiments(cfg: Config) -> list[str]:
    """None: the inputs are the rows' own."""
    return []


def packaged_folder(cfg: Config) -> None:
    """Nothing besides the trained weights: they hold the whole model."""
    return None
