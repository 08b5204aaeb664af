"""Test-time augmentation: views of each batch through the model together, then merged.

Image views are tensor operations on the batch (on the device, no re-decoding): ``identity``,
``hflip``, ``vflip``, ``transpose``, ``rot90``, ``rot180``, ``rot270``, ``d4`` (the eight
symmetries of the square), ``zoom_<percent>`` (the content magnified about the centre, 110, or
shrunk, 90, at the same input size, the border pixels extended: the test-time side of a training
scale augmentation) and ``scale_<size>`` (the batch resized to size x size: multi-scale, for
models trained at several sizes; a network trained at one size can see a resized input as a
different image). All views of a batch go through the model as one concatenated batch, so n
views cost one pass over n times the rows, not n passes.

Text views are truncations (:mod:`medalist.modalities.text_views`), made by the text dataset
from each row's full token ids: the batch arrives as ``{view: token ids}``, and
:func:`batched_views` passes views of the same padded length through the model together. A view
may also change what its outputs mean: the swap view of a pairwise task (response A and B
exchanged) predicts "B wins" where the identity predicts "A wins". Its dataset says how the
outputs return to the identity's order (``output_maps(task)``), and :func:`align_views` puts
them back before the merge.

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
    """Validate image view names and expand ``d4``; an unknown name is an error naming it."""
    views = []
    for name in names or ["identity"]:
        if name == "d4":
            views += D4
        elif name in VIEWS or any(_sized(kind, name) is not None for kind in ("scale", "zoom")):
            views.append(name)
        else:
            raise ConfigError(
                f"{key}: unknown view '{name}'; known: "
                f"{[*VIEWS, 'd4', 'zoom_<percent>', 'scale_<size>']}"
            )
    return views


def _sized(kind: str, name: str) -> int | None:
    """``_sized('scale', 'scale_34')`` -> 34; None for another kind or a non-positive number."""
    prefix, _, size = name.partition("_")
    return int(size) if prefix == kind and size.isdigit() and int(size) > 0 else None


def zoom(batch: torch.Tensor, percent: int) -> torch.Tensor:
    """The batch magnified (``percent`` > 100) or shrunk about its centre, same size.

    Sampled bilinearly; outside the image the border pixels are extended (a shrunk image is
    padded with its own edge, not with a value that means something else once normalised).
    """
    if percent == 100:
        return batch
    factor = 100.0 / percent  # the sampling grid spans 1 / magnification of the image
    theta = batch.new_zeros((batch.shape[0], 2, 3), dtype=torch.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = factor
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    out = F.grid_sample(
        batch.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.to(batch.dtype)


def view(name: str, batch: torch.Tensor) -> torch.Tensor:
    size = _sized("scale", name)
    if size is not None:
        return F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
    percent = _sized("zoom", name)
    if percent is not None:
        return zoom(batch, percent)
    return VIEWS[name](batch)


def batched_views(
    model: torch.nn.Module, batch: torch.Tensor | dict[str, torch.Tensor], names: list[str]
) -> torch.Tensor:
    """Logits of every view, shape (views, batch, outputs); one forward per input shape.

    On a CPU, image views are grouped into passes of a bounded size (:func:`_forward_groups`).

    ``batch`` is an image tensor, or the text dataset's ``{view: token ids}`` of the same rows.
    """
    by_size: dict[tuple, list[int]] = {}
    if isinstance(batch, dict):
        tensors = [batch[name] for name in names]
    else:
        tensors = [view(name, batch) for name in names]
    for index, tensor in enumerate(tensors):
        by_size.setdefault(tuple(tensor.shape[1:]), []).append(index)
    out: list[torch.Tensor | None] = [None] * len(names)
    for same_size in by_size.values():
        for indices in _forward_groups(same_size, tensors):
            logits = model(torch.cat([tensors[i] for i in indices]))
            for i, chunk in zip(indices, logits.chunk(len(indices)), strict=True):
                out[i] = chunk.float()
    return torch.stack(out)


CPU_FORWARD_VALUES = 1 << 18  # image values per forward pass on a CPU (1 MiB of fp32)


def _forward_groups(indices: list[int], tensors: list[torch.Tensor]) -> list[list[int]]:
    """The views to concatenate per forward pass: all of them, except for images on a CPU.

    A CPU runs a large batch no faster per row than a small one, and a concatenated batch that
    outgrows the caches runs slower (resnet18, 8 views of 64 rows of 32 px: one pass of 512 rows
    took 7% longer than 8 passes, two passes of 256 rows 13% less), so there views are grouped
    up to CPU_FORWARD_VALUES input values per pass.
    """
    first = tensors[indices[0]]
    if first.device.type != "cpu" or not first.is_floating_point():
        return [indices]
    per_pass = max(1, CPU_FORWARD_VALUES // max(first.numel(), 1))
    return [indices[start : start + per_pass] for start in range(0, len(indices), per_pass)]


def align_views(
    logits: torch.Tensor, names: list[str], maps: dict[str, tuple[list[int], bool]]
) -> torch.Tensor:
    """Per-view logits (views, batch, outputs) in the identity's output order: a view in
    ``maps`` has its outputs taken at ``index`` and, when ``negate``, negated (a binary task's
    swapped classes: sigmoid(-x) = 1 - sigmoid(x)). Permuting logits before the merge makes
    every merge (mean, geometric, max) treat the swap view as any other view."""
    if not any(name in maps for name in names):
        return logits
    aligned = []
    for view_logits, name in zip(logits, names, strict=True):
        if name in maps:
            index, negate = maps[name]
            view_logits = view_logits[..., index]
            view_logits = -view_logits if negate else view_logits
        aligned.append(view_logits)
    return torch.stack(aligned)


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
