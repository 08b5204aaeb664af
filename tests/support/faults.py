"""Faults injected at exact points of training: hooks (used through tricks.custom), and a kill
of ``pretrain-mlm``, which has no hooks."""

import itertools
import os
import signal
from pathlib import Path

import torch

from medalist.training.hooks import Hook


class KillAt(Hook):
    """SIGKILL this process before micro-batch ``batch`` of ``epoch``, once (a marker file)."""

    def __init__(self, epoch: int, batch: int, marker: str):
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def before_batch(self, state, batch):
        if (state.epoch, state.batch_in_epoch) == (
            self.epoch,
            self.batch,
        ) and not self.marker.exists():
            self.marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return batch


class NaNLoss(Hook):
    """Make the loss NaN on the given optimizer steps (0-based count of micro-batches)."""

    def __init__(self, batches: list[int]):
        self.batches = set(batches)
        self.seen = 0

    def compute_loss(self, state, batch, outputs, loss):
        self.seen += 1
        return loss * torch.nan if self.seen - 1 in self.batches else loss


def kill_pretraining_at(batch: int, marker: str) -> None:
    """SIGKILL ``pretrain-mlm`` before its training micro-batch ``batch`` (counted from 0 over the
    run), once (a marker file): wraps the masked-LM loss, which the held-out perplexity also
    calls, in eval mode."""
    from medalist.modalities import mlm  # transformers: not for the image runs that use the hooks

    loss, seen, marker_file = mlm.masked_lm_loss, itertools.count(), Path(marker)

    def killing(model, batch_):
        if model.training and next(seen) == batch and not marker_file.exists():
            marker_file.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return loss(model, batch_)

    mlm.masked_lm_loss = killing
