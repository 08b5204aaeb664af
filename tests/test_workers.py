"""Augmentation is a function of (seed, epoch, row), not of the DataLoader's worker processes:
training with 0 and with 2 workers sees the very same augmented batches, epoch after epoch."""

import pytest
import torch

from medalist.cli import main
from medalist.training.hooks import Hook


class Batches(Hook):
    """Keeps every training batch the loop receives: (epoch, row indices, inputs)."""

    seen: list[tuple[int, list[int], torch.Tensor]] = []

    def before_batch(self, state, batch):
        Batches.seen.append((state.epoch, batch["index"].tolist(), batch["input"].clone()))
        return batch


# Strong enough to change every image (tiny.yaml's 5% shift of 16 pixels rounds to none).
AUGMENT = (
    "image.train_transforms=[{name: Affine, translate_percent: [-0.2, 0.2], p: 1.0}, "
    "{name: HorizontalFlip, p: 0.5}]"
)


def batches(workers: int, experiment: str) -> list[tuple[int, list[int], torch.Tensor]]:
    Batches.seen = []
    args = [
        "-c",
        "configs/tiny.yaml",
        "train.folds=[0]",
        "train.epochs=2",
        f"train.num_workers={workers}",
        AUGMENT,
        f"train.experiment={experiment}",
        "tricks.custom=[{name: 'test_workers:Batches'}]",
    ]
    assert main(["train", *args]) == 0
    return Batches.seen


@pytest.mark.slow
def test_augmented_batches_do_not_depend_on_the_number_of_workers(tiny_project):
    assert main(["folds", "-c", "configs/tiny.yaml"]) == 0
    inline, workers = batches(0, "inline"), batches(2, "workers")
    assert len(inline) == len(workers) == 10  # 2 epochs of 5 batches
    for (epoch, rows, inputs), (epoch2, rows2, inputs2) in zip(inline, workers, strict=True):
        assert (epoch2, rows2) == (epoch, rows)
        assert torch.equal(inputs2, inputs), f"epoch {epoch}: rows {rows}"
    # The comparison is not vacuous: each epoch augments every row afresh.
    first, second = by_row(inline, epoch=0), by_row(inline, epoch=1)
    assert first.keys() == second.keys() and len(first) == 80
    changed = sum(not torch.equal(first[row], second[row]) for row in first)
    assert changed > 70, changed


def by_row(seen, epoch: int) -> dict[int, torch.Tensor]:
    return {
        row: image
        for batch_epoch, rows, inputs in seen
        if batch_epoch == epoch
        for row, image in zip(rows, inputs, strict=True)
    }
