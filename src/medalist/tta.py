"""Test-time augmentation: views of each batch through the model together, then merged.

Image views are tensor operations on the batch (on the device, no re-decoding): ``identity``,
``hflip``, ``vflip``, ``transpose``, ``rot90``, ``rot180``, ``rot270``, ``d4`` (the eight
symmetries of the square) and ``scale_<size>`` (the batch resized to size x size). All views of a
batch go through the model as one concatenated batch, so n views cost one pass over n times the
rows, not n passes.

Merges: ``mean`` of probabilities; ``geometric``, through log-probabilities (softmax of the mean
log-softmax for classes, the mean logit for sigmoid outputs: finite for any finite logits);
``max`` of probabilities (renormalised for classes). Regression outputs are always averaged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from medalist.errors import ConfigError

D4 = ["identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose"]
VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "transpose": lambda x: x.transpose(-1, -2),
    "antitranspose": lambda x: x.flip(-1, -2).transpose(-1, -2),
    "rot90": lambda x: x.rot90(1, (-2, -1)),
    "rot180": lambda x: x.rot90(2, (-2, -1)),
    "rot270": lambda x: x.rot90(3, (-2, -1)),
}
MERGES = ("mean", "geometric", "max")


def expand_views(names: list[str], key: str = "infer.tta") -> list[str]:
    """Validate view names and expand ``d4``; an unknown name is an error naming it."""
    views = []
    for name in names or ["identity"]:
        if name == "d4":
            views += D4
        elif name in VIEWS or _scale(name) is not None:
            views.append(name)
        else:
            raise ConfigError(
                f"{key}: unknown view '{name}'; known: {[*VIEWS, 'd4', 'scale_<size>']}"
            )
    return views


def _scale(name: str) -> int | None:
    prefix, _, size = name.partition("_")
    return int(size) if prefix == "scale" and size.isdigit() and int(size) > 0 else None


def view(name: str, batch: torch.Tensor) -> torch.Tensor:
    size = _scale(name)
    if size is not None:
        return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    return VIEWS[name](batch)


def batched_views(model: torch.nn.Module, batch: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Logits of every view, shape (views, batch, outputs); one forward per image size."""
    by_size: dict[tuple, list[int]] = {}
    tensors = [view(name, batch) for name in names]
    for index, tensor in enumerate(tensors):
        by_size.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    out: list[torch.Tensor | None] = [None] * len(names)
    for indices in by_size.values():
        logits = model(torch.cat([tensors[i] for i in indices]))
        for i, chunk in zip(indices, logits.chunk(len(indices)), strict=True):
            out[i] = chunk.float()
    return torch.stack(out)


def merge(task_type: str, logits: torch.Tensor, how: str) -> torch.Tensor:
    """Predictions (probabilities or values) from per-view logits (views, batch, outputs)."""
    if how not in MERGES:
        raise ConfigError(f"infer.tta_merge: '{how}' is not one of {MERGES}")
    if task_type == "regression":
        return logits.mean(0)
    if task_type == "multiclass":
        if how == "geometric":
            return logits.log_softmax(-1).mean(0).softmax(-1)
        probs = logits.softmax(-1)
        if how == "max":
            top = probs.amax(0)
            return top / top.sum(-1, keepdim=True)
        return probs.mean(0)
    if how == "geometric":  # the geometric mean of the odds: the mean logit
        return logits.mean(0).sigmoid()
    probs = logits.sigmoid()
    return probs.amax(0) if how == "max" else probs.mean(0)
