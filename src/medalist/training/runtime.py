"""What every stage that runs a model shares: the accelerator, loaders, seeding, prediction.

Training, inference, pseudo labelling, MLM pretraining and the offline bundle all go through
these functions, so a precision, a loader setting or the order of predicted rows means the same
thing in each.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DataLoaderConfiguration,
    parse_flag_from_env,
    set_seed,
)
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm.auto import tqdm

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.tasks import Task


def check_precision(cfg: Config) -> None:
    """fp16 needs a CUDA GPU (its grad scaler and kernels); refused before any work elsewhere."""
    if cfg.train.mixed_precision == "fp16" and (cfg.train.cpu or not torch.cuda.is_available()):
        raise ConfigError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on the CPU")


def make_accelerator(
    cfg: Config, log_with: list[str] | None = None, grad_accum: int | None = None
) -> Accelerator:
    """An Accelerator with seedable (resumable, process-independent) data order.

    Args:
        cfg: the config; ``train.mixed_precision`` and ``train.cpu`` choose precision and device
            (a precision the device cannot run is refused, :func:`check_precision`).
        log_with: the experiment trackers it starts (see :mod:`medalist.training.tracking`).
        grad_accum: micro-batches per optimizer step; None: ``train.grad_accum``
            (``pretrain-mlm`` passes ``mlm.grad_accum``).
    """
    check_precision(cfg)
    return Accelerator(
        log_with=log_with or None,
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=grad_accum or cfg.train.grad_accum,
        cpu=cfg.train.cpu,
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=cfg.train.seed
        ),
    )


def process_state(cfg: Config) -> PartialState:
    """This process among the launched ones (``accelerate launch``, ``torchrun``) for stages that
    write files without an Accelerator: only ``is_main_process`` writes.

    ``ACCELERATE_USE_CPU`` counts as ``train.cpu``, as in :class:`Accelerator`; without it,
    processes launched on a machine with no GPU would each believe they are the only one.
    """
    return PartialState(cpu=cfg.train.cpu or parse_flag_from_env("ACCELERATE_USE_CPU"))


def to_channels_last(batch):
    """``batch`` with its 4-D floating tensors in channels_last memory format (images, N C H W);
    anything else (token ids, targets, indices) as it was. Values are unchanged."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: to_channels_last(value) for key, value in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_channels_last(value) for value in batch)
    return batch


class ChannelsLastCollate:
    """A collate function whose batches' model inputs are channels_last (``train.channels_last``).

    Only ``batch["input"]`` is converted: what the model sees. Moving a batch to the device keeps
    its memory format. A class, not a closure, so worker processes can receive it.
    """

    def __init__(self, collate=None):
        self.collate = collate or default_collate

    def __call__(self, samples):
        batch = self.collate(samples)
        if isinstance(batch, dict) and "input" in batch:
            batch = {**batch, "input": to_channels_last(batch["input"])}
        return batch


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, cfg: Config, sampler=None
) -> DataLoader:
    """A DataLoader; a dataset may bring its own ``collate`` and ``batch_sampler(...)``.

    Text datasets do (dynamic padding, length-bucketed or length-sorted batches). With a trick's
    ``sampler`` the dataset's batching gives way, its collate stays. With
    ``train.channels_last``, image batches come in channels_last memory format (a no-op for
    inputs that are not 4-D, such as token ids), in training, evaluation and prediction alike.
    """
    collate = getattr(dataset, "collate", None)
    if cfg.train.channels_last:
        collate = ChannelsLastCollate(collate)
    workers = {
        "num_workers": cfg.train.num_workers,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": cfg.train.num_workers > 0,
        "collate_fn": collate,
    }
    make_batches = getattr(dataset, "batch_sampler", None)
    if callable(make_batches) and sampler is None:
        batches = make_batches(batch_size, shuffle=shuffle, seed=cfg.train.seed)
        return DataLoader(dataset, batch_sampler=batches, **workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        **workers,
    )


def set_loader_epoch(loader, epoch: int) -> None:
    """Tell a prepared loader, and the batch sampler inside it, which epoch begins.

    With several processes accelerate wraps a custom batch sampler (pretrain-mlm's length-bucketed
    batches) in a shard that does not pass ``set_epoch`` on: without this, every epoch would
    repeat the first one's order there, and differ from a single process from the second on.
    """
    loader.set_epoch(epoch)
    inner = getattr(getattr(loader, "batch_sampler", None), "batch_sampler", None)
    if callable(getattr(inner, "set_epoch", None)):
        inner.set_epoch(epoch)


def bar_off(show: bool) -> bool | None:
    """tqdm's ``disable``: off when not wanted; None hides it when output is not a terminal."""
    return None if show else True


@torch.no_grad()
def predict_logits(model, loader, accelerator: Accelerator, progress: bool = False):
    """Row indices and logits of every sample, gathered once each over all processes.

    Returns:
        (indices (n,), logits (n, outputs)) sorted by row index, as numpy arrays on the CPU.
    """
    model.eval()
    indices, outputs = [], []
    bar = tqdm(
        loader,
        desc="predict",
        leave=False,
        disable=bar_off(progress and accelerator.is_main_process),
    )
    for batch in bar:
        logits = model(batch["input"])
        index, logits = accelerator.gather_for_metrics((batch["index"], logits.float()))
        indices.append(index.cpu())
        outputs.append(logits.cpu())
    index = torch.cat(indices).numpy()
    order = np.argsort(index, kind="stable")
    return index[order], torch.cat(outputs).numpy()[order]


def evaluate(
    task: Task, model, loader, targets: np.ndarray, accelerator: Accelerator
) -> tuple[dict, np.ndarray]:
    """Scores (with the plain task loss as ``valid_loss``) and logits on the validation rows.

    A task that evaluates itself (``task.evaluate``: masks, scored image by image as batches
    come, no logits kept) returns its scores and None."""
    own = getattr(task, "evaluate", None)
    if own is not None:
        return own(model, loader, targets, accelerator)
    _, logits = predict_logits(model, loader, accelerator)
    logits_t = torch.from_numpy(logits)
    scores = task.score(targets, task.activate(logits_t).numpy())
    valid_loss = task.loss(logits_t, torch.from_numpy(targets)).mean().item()
    return {"valid_loss": valid_loss, **scores}, logits


def seed_everything(seed: int) -> None:
    set_seed(seed, deterministic=False)
