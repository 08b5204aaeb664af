"""What ``medalist report`` shows of mask experiments and mask ensembles, through
:class:`~medalist.modalities.segmentation.predictions.MaskPredictions` (the report never reads
masks itself).

- Scores: those the experiment recorded in ``metrics.json`` (CV, folds, ``cv_postprocessed``),
  or an ensemble's nested CV from ``cv.json`` (``nested_postprocessed`` as its post-processed
  CV): the masks are not scored again.
- Correlation: Pearson's r of two subjects' OOF pixel probabilities over the images they share,
  on :data:`PIXELS_PER_IMAGE` pixels of each image drawn with a seed made from its id (the same
  pixels for every subject): as cheap for 1024-pixel images as for 2-megapixel ones.
- Diagnostics of one subject (the ensemble, else the best experiment): its OOF masks made
  final as its ``postprocess.json`` says (threshold, minimum component size; the plain 0.5
  without one; argmax for multiclass), then the distribution of the per-image Dice, the
  empty-mask confusion (true mask empty or not against final mask empty or not, per image and
  channel as Kaggle's rows go: on many competitions most of the score is there) and the
  :data:`WORST_IMAGES` lowest-scoring images as thumbnails (image, true mask, final mask).

Mask files are read one at a time as uint8 and each image turned to float on its own, so a
large competition's OOF masks are never all in memory as floats.
"""

from __future__ import annotations

import html
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from medalist.errors import DataError
from medalist.modalities import image
from medalist.modalities.segmentation import postprocess, store
from medalist.modalities.segmentation.scoring import from_counts
from medalist.reporting.report import embed, new_figure, png, section

PIXELS_PER_IMAGE = 256
WORST_IMAGES = 4
PLAIN = {"threshold": 0.5, "min_size": 0, "connectivity": 8}  # the scores' own (task.THRESHOLD)


def _json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path} not found (run `medalist train` or `medalist ensemble` first)")
    return json.loads(path.read_text(encoding="utf-8"))


def recorded_scores(folder: Path) -> dict:
    """The scores of an experiment (``metrics.json``) or an ensemble (``cv.json``'s nested CV),
    as the report's tables read them: ``cv``, ``folds``, ``fold_mean``, ``fold_std``, and
    ``cv_test_like``, ``cv_postprocessed`` where recorded."""
    if (folder / "cv.json").is_file() and not (folder / "metrics.json").is_file():
        cv = _json(folder / "cv.json")
        scores = dict(cv["nested"])
        if "nested_postprocessed" in cv:
            scores["cv_postprocessed"] = cv["nested_postprocessed"]
        return scores
    record = _json(folder / "metrics.json")
    if "cv" not in record:
        raise DataError(f"{folder / 'metrics.json'}: no CV recorded (did every fold train?)")
    return record


def _sampled(path: Path) -> dict[str, tuple[tuple[int, ...], np.ndarray]]:
    """Each image's shape and :data:`PIXELS_PER_IMAGE` of its levels, by id (as text)."""
    ids, masks = store.read_quantised(path)
    out = {}
    for image_id, levels in zip(ids, masks, strict=True):
        flat = levels.ravel()
        rng = np.random.default_rng(zlib.crc32(str(image_id).encode("utf-8")))
        chosen = rng.integers(0, flat.size, PIXELS_PER_IMAGE) if flat.size else []
        out[str(image_id)] = (levels.shape, flat[chosen].astype(np.float64))
    return out


def correlations(folders: dict[str, Path]) -> pd.DataFrame:
    """Pearson's r of the OOF pixel probabilities between subjects (name: folder) over the
    images they all hold, on the same sampled pixels of each (module docstring). NaN for a
    subject whose sampled pixels are all equal (a member predicting nothing)."""
    sampled = {name: _sampled(folder / store.OOF_MASKS) for name, folder in folders.items()}
    names = list(sampled)
    first = sampled[names[0]]
    common = [i for i in first if all(i in sampled[n] for n in names[1:])]
    if not common:
        raise DataError(f"report: the OOF masks of {names} share no image id")
    for name in names[1:]:
        for image_id in common:
            if sampled[name][image_id][0] != first[image_id][0]:
                raise DataError(
                    f"report: image {image_id!r} has shape {sampled[name][image_id][0]} in "
                    f"{folders[name]}, {first[image_id][0]} in {folders[names[0]]}"
                )
    values = np.stack([np.concatenate([sampled[n][i][1] for i in common]) for n in names])
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.corrcoef(values)
    return pd.DataFrame(np.atleast_2d(matrix), index=names, columns=names)


def _truth(task, mask: np.ndarray, channels: int) -> np.ndarray:
    """A true mask as booleans (channels, H, W): one-hot class indices for multiclass."""
    if task.mode == "multiclass":
        return np.arange(channels)[:, None, None] == np.asarray(mask)[None]
    mask = mask if mask.ndim == 3 else mask[None]
    return mask >= 0.5


def _final(task, probs: np.ndarray, choice: dict) -> np.ndarray:
    """The final masks (channels, H, W) as the submission makes them
    (:func:`~.postprocess.final_masks`)."""
    return postprocess.final_masks(probs, task.mode == "multiclass", choice)


class Outcome:
    """The final masks of one subject's OOF images against the truth, image by image."""

    def __init__(self, task, inputs, folder: Path):
        choice_file = folder / postprocess.CHOICE_FILE
        self.choice = _json(choice_file) if choice_file.is_file() else None
        choice = self.choice or PLAIN
        position = {str(i): row for row, i in enumerate(inputs.ids)}
        path = folder / store.OOF_MASKS
        ids, masks = store.read_quantised(path)
        missing = [str(i) for i in ids if str(i) not in position]
        if missing:
            raise DataError(f"{path}: ids not in train.csv: {missing[:5]}")
        self.rows = np.array([position[str(i)] for i in ids], dtype=np.int64)
        dice, true_empty, final_empty = [], [], []
        for image_id, row, levels in zip(ids, self.rows, masks, strict=True):
            final = _final(task, store.dequantise(levels), choice)
            truth = _truth(task, inputs.y[int(row)], len(levels))
            if truth.shape != final.shape:
                raise DataError(
                    f"{path}: the mask of id {image_id!r} has shape {final.shape}, its true "
                    f"mask {truth.shape}"
                )
            hits = (final & truth).reshape(len(final), -1).sum(1)
            kept, true = final.reshape(len(final), -1).sum(1), truth.reshape(len(truth), -1).sum(1)
            per_channel = from_counts(hits, kept, true, metric="dice", empty=task.empty)
            dice.append(np.nanmean(per_channel) if np.isfinite(per_channel).any() else np.nan)
            true_empty.append(true == 0)
            final_empty.append(kept == 0)
        self.dice = np.array(dice, dtype=np.float64)  # per image, mean over its channels
        self.true_empty = np.stack(true_empty)  # (images, channels)
        self.final_empty = np.stack(final_empty)

    def confusion(self) -> pd.DataFrame:
        """(image, channel) pairs: true empty or not against final empty or not."""
        t, f = self.true_empty.ravel(), self.final_empty.ravel()
        counts = [
            [int((t & f).sum()), int((t & ~f).sum())],
            [int((~t & f).sum()), int((~t & ~f).sum())],
        ]
        return pd.DataFrame(
            counts,
            index=["true empty", "true not empty"],
            columns=["predicted empty", "predicted not empty"],
        )


def dice_plot(dice: np.ndarray, name: str) -> bytes:
    figure = new_figure(6, 3.2)
    axes = figure.add_subplot()
    axes.hist(dice[np.isfinite(dice)], bins=np.linspace(0, 1, 21), color="tab:blue")
    axes.set(xlabel="Dice per image (final masks)", ylabel="images", title=f"Dice of {name}")
    axes.grid(alpha=0.3)
    return png(figure)


def _shown(task, mask: np.ndarray) -> np.ndarray:
    """A (channels, H, W) boolean mask as one picture: the class map, or the channels' count."""
    return mask.argmax(0) if task.mode == "multiclass" else mask.sum(0)


def worst_plot(task, inputs, folder: Path, outcome: Outcome, rows: list[int]) -> bytes:
    """Image, true mask and final mask of the OOF images at positions ``rows`` of the file."""
    ids, masks = store.read_quantised(folder / store.OOF_MASKS)
    figure = new_figure(4.5, 1.5 * len(rows) + 0.4)
    grid = figure.subplots(len(rows), 3, squeeze=False)
    top = task.num_outputs if task.mode != "multiclass" else len(task.classes) - 1
    for axes, k in zip(grid, rows, strict=True):
        row = int(outcome.rows[k])
        path = inputs.y.targets.image_paths[int(inputs.y.rows[row])]
        pixels = image.read_image(path, inputs.cfg.image.channels)
        final = _final(task, store.dequantise(masks[k]), outcome.choice or PLAIN)
        truth = _truth(task, inputs.y[row], len(masks[k]))
        axes[0].imshow(pixels, cmap="gray" if pixels.ndim == 2 else None)
        axes[1].imshow(_shown(task, truth), vmin=0, vmax=max(top, 1), cmap="viridis")
        axes[2].imshow(_shown(task, final), vmin=0, vmax=max(top, 1), cmap="viridis")
        axes[0].set_ylabel(f"{ids[k]}\nDice {outcome.dice[k]:.3f}", fontsize="small")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(grid[0], ["image", "true mask", "final mask"], strict=True):
        ax.set_title(title, fontsize="small")
    return png(figure)


def diagnostics(task, inputs, name: str, folder: Path) -> list[str]:
    """The report's mask sections for one subject: the per-image Dice, the empty-mask confusion
    and the worst images (module docstring)."""
    outcome = Outcome(task, inputs, folder)
    choice = outcome.choice
    if task.mode == "multiclass":
        made = "argmax over the classes"
    elif choice is None:
        made = f"threshold {PLAIN['threshold']:g}, no {postprocess.CHOICE_FILE} in {folder}"
    else:
        made = (
            f"threshold {choice['threshold']:g} and minimum component size "
            f"{choice['min_size']} px chosen on OOF ({folder / postprocess.CHOICE_FILE})"
        )
    scored = outcome.dice[np.isfinite(outcome.dice)]
    mean = float(scored.mean()) if scored.size else float("nan")
    dice = section(
        "mask-dice",
        f"Dice per image of {name}",
        f'<p class="note">{len(outcome.dice)} OOF images, final masks: {html.escape(made)}. '
        f'Mean Dice per image <span id="mean-dice">{mean:.5f}</span> ({int((scored == 1).sum())} '
        f"at 1, {int((scored == 0).sum())} at 0; empty pairs: {html.escape(task.empty)}).</p>",
        embed(dice_plot(outcome.dice, name), "Dice per image"),
    )
    confusion = outcome.confusion()
    false_alarms = int(confusion.iloc[0, 1])
    empties = section(
        "empty-masks",
        f"Empty masks of {name}",
        '<p class="note">Each (image, channel) pair: is the true mask empty, is the final mask '
        f"empty? A mask predicted on an empty image scores 0 ({false_alarms} here), as does an "
        "empty prediction on a mask.</p>",
        confusion.to_html(table_id="empty-confusion", escape=True),
    )
    parts = [dice, empties]
    worst = np.argsort(np.where(np.isfinite(outcome.dice), outcome.dice, np.inf), kind="stable")
    rows = [int(k) for k in worst[:WORST_IMAGES] if np.isfinite(outcome.dice[k])]
    if rows:
        plot = worst_plot(task, inputs, folder, outcome, rows)
        parts.append(
            section(
                "worst-images",
                f"The {len(rows)} lowest-scoring images of {name}",
                embed(plot, "worst images: image, true mask, final mask"),
            )
        )
    return parts
