"""Ensembles of segmentation experiments: probability masks blended pixel by pixel.

A member is an experiment folder holding ``oof.masks.safetensors`` (every train image, made with
this project's folds) and ``test.masks.safetensors``. The blend of image i is

    blend_i = sum_m c_m q_mi / (255 sum_m c_m)

with ``q_mi`` member m's stored levels (uint8, :mod:`~.store`) and ``c_m`` its pick count: 1 each
for ``mean``, the Caruana hill-climbing picks for ``hill_climb`` (each step adds the member whose
addition gives the best mean Dice or IoU per image at threshold 0.5). The sums are integers, so
a blend scored while climbing is bit for bit the one scored, then written (quantised), with
its weights ``c_m / sum c``.

``cv.json`` holds the in-sample CV (picks fitted on every OOF image) and the nested CV (for each
fold, picks fitted on the other folds' images, scored on that fold), as the table ensemble's
(:mod:`medalist.ensemble.stage`). Written to ``outputs/ensemble/<name>/``: ``weights.json`` (with
each fold's nested weights), ``cv.json``, ``oof.masks.safetensors`` (the nested blend, train
order), ``test.masks.safetensors`` (the in-sample weights), ``postprocess.json`` (searched on the
nested blend), ``task.json``, ``config.yaml``, ``ensemble.yaml``; and ``submissions/<name>.csv``
when ``ensemble.submit`` is on.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from medalist.config import Config
from medalist.config.ensemble import EnsembleConfig
from medalist.ensemble.hill import HillResult, climb
from medalist.ensemble.inputs import Inputs, check_manifest, expand_members, labelled_inputs
from medalist.errors import ConfigError, DataError, FoldsMismatchError
from medalist.io import write_json, write_text
from medalist.layout import ensemble_dir, fold_name, folds_files, submission_path
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.scoring import METRICS, from_counts, mask_metric, mean_score

log = logging.getLogger(__name__)

METHODS = ("mean", "hill_climb")


@dataclass
class MaskMember:
    """One member's stored levels: OOF in train order, test in the first member's id order."""

    name: str
    folder: Path
    oof: list[np.ndarray]
    test: list[np.ndarray]


def check_settings(task, ens_cfg: EnsembleConfig) -> tuple[str, list[str]]:
    """The metric the picks optimise and every metric scored; refuses what masks cannot blend."""
    if ens_cfg.method not in METHODS:
        raise ConfigError(
            f"ensemble.method: '{ens_cfg.method}' does not blend masks; segmentation "
            f"ensembles are {list(METHODS)}"
        )
    if ens_cfg.metric is not None and ens_cfg.metric not in METRICS:
        raise ConfigError(
            f"ensemble.metric: '{ens_cfg.metric}' does not score masks; use one of {list(METRICS)}"
        )
    for entry in ens_cfg.experiments:
        if isinstance(entry, list):
            raise ConfigError(
                f"ensemble.experiments: {entry} is a seed group; mask ensembles take one "
                "experiment folder per member"
            )
    names = [m.name for m in task.metrics]
    metric = ens_cfg.metric or names[0]
    return metric, names if metric in names else [*names, metric]


# Members: read once, checked, aligned.


def _read(path: Path, label: str, stage: str) -> tuple[list, list[np.ndarray]]:
    if not path.is_file():
        raise DataError(f"{label}: {path} not found (run `medalist {stage}` for it first)")
    try:
        return store.read_quantised(path)
    except DataError as exc:
        raise DataError(f"{label}: {exc}") from None


def _aligned(ids: list, masks: list, want: list, where: str, reference: str) -> list[np.ndarray]:
    """``masks`` in the order of ``want`` (ids compared as text), refusing other ids."""
    have = [str(i) for i in ids]
    wanted = [str(i) for i in want]
    if len(set(have)) != len(have) or set(have) != set(wanted):
        missing = sorted(set(wanted) - set(have))[:5]
        extra = sorted(set(have) - set(wanted))[:5]
        raise DataError(
            f"{where}: its ids differ from {reference} ({len(have)} vs {len(want)} ids; "
            f"missing {missing}, extra {extra}, or an id twice)"
        )
    position = {i: row for row, i in enumerate(have)}
    return [masks[position[i]] for i in wanted]


def _check_shapes(member: MaskMember, first: MaskMember) -> None:
    for what, mine, theirs in (("OOF", member.oof, first.oof), ("test", member.test, first.test)):
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            if a.shape != b.shape:
                raise DataError(
                    f"experiment '{member.name}': its {what} mask {i} has shape {a.shape}, "
                    f"{b.shape} in experiment '{first.name}'"
                )


def check_folds(folder: Path, label: str, manifest: dict, inputs: Inputs) -> None:
    """A member's folds are ours: its config's folds manifest, or (a folder without config.yaml)
    the ids of its ``fold{k}/oof.masks.safetensors`` against ``folds.csv``."""
    if (folder / "config.yaml").is_file():
        check_manifest(folder, label, manifest)
        return
    for fold in np.unique(inputs.fold):
        path = folder / fold_name(int(fold)) / store.OOF_MASKS
        if not path.is_file():
            raise DataError(
                f"{label}: no config.yaml and no {path}: its folds cannot be checked; a mask "
                "ensemble needs OOF masks made with this project's folds"
            )
        ids, _ = _read(path, label, "train")
        want = {str(i) for i in inputs.ids[inputs.fold == fold]}
        if {str(i) for i in ids} != want or len(ids) != len(want):
            raise FoldsMismatchError(
                f"{label}: {path} holds other images than fold {fold} of folds.csv; its masks "
                "were made with other folds"
            )


def load_members(cfg: Config, entries: list, inputs: Inputs) -> tuple[list[MaskMember], list]:
    """Every member's OOF (train order) and test levels, checked; and the test ids."""
    manifest = json.loads(folds_files(cfg)[1].read_text(encoding="utf-8"))
    members: list[MaskMember] = []
    test_ids: list = []
    for name, folders in expand_members(entries, Path(cfg.competition.outputs_dir)):
        label = f"experiment '{name}'"
        if len(folders) != 1:
            raise ConfigError(
                f"ensemble.experiments: '{name}' matches {len(folders)} folders; mask ensembles "
                "take one experiment folder per member"
            )
        folder = folders[0]
        check_folds(folder, label, manifest, inputs)
        oof_path, test_path = folder / store.OOF_MASKS, folder / store.TEST_MASKS
        oof_ids, oof = _read(oof_path, label, "train")
        ids, test = _read(test_path, label, "infer")
        test_ids = test_ids or ids
        first = f"experiment '{members[0].name}'" if members else "its own"
        member = MaskMember(
            name,
            folder,
            _aligned(oof_ids, oof, list(inputs.ids), f"{label}: {oof_path}", "train.csv's"),
            _aligned(ids, test, test_ids, f"{label}: {test_path}", f"{first}'s test masks"),
        )
        if members:
            _check_shapes(member, members[0])
        members.append(member)
    log.info("ensemble: %d mask member(s) checked: %s", len(members), [m.name for m in members])
    return members, test_ids


# Blends and their scores.


def blend(levels: list[list[np.ndarray]], picks: np.ndarray) -> list[np.ndarray]:
    """Each image's blend (module docstring) as float32, from members' levels and pick counts."""
    used = [m for m in range(len(levels)) if picks[m]]
    scale = float(picks.sum()) * store.LEVELS
    out = []
    for i in range(len(levels[0])):
        total = sum(int(picks[m]) * levels[m][i].astype(np.int64) for m in used)
        out.append((total / scale).astype(np.float32))
    return out


def counts(task, truth: list[np.ndarray], probs: list[np.ndarray]) -> list[tuple]:
    """Per image: (intersection, predicted, true) pixel counts per channel (task.counts)."""
    return [task.counts(p, t) for p, t in zip(probs, truth, strict=True)]


def scores(task, per_image: list[tuple], names: list[str]) -> dict[str, float]:
    """Each metric's mean over the images (as task.score, for any of dice and iou)."""
    if not per_image:
        return {name: float("nan") for name in names}
    stacked = [np.stack([c[k] for c in per_image]) for k in range(3)]
    return {
        name: mean_score(from_counts(*stacked, metric=name, empty=task.empty)) for name in names
    }


def _added(total: list[np.ndarray], member: list[np.ndarray], count: int) -> list[np.ndarray]:
    """The blend of ``count`` picks whose levels sum to ``total`` plus ``member``'s."""
    scale = float(count) * store.LEVELS
    return [((t + q) / scale).astype(np.float32) for t, q in zip(total, member, strict=True)]


def _score(task, truth: list[np.ndarray], probs: list[np.ndarray], metric: str) -> float:
    return scores(task, counts(task, truth, probs), [metric])[metric]


def hill_climb(task, metric, levels, truth, iterations, replacement, patience) -> HillResult:
    """Caruana selection on masks (:func:`medalist.ensemble.hill.climb`, as for tables): start
    empty, add the member whose blend scores best (the first on ties; NaN never wins), go on
    ``patience`` steps past the best and keep the best selection. ``picks`` are the counts."""
    total = [np.zeros(q.shape, dtype=np.int64) for q in levels[0]]  # the picked members' levels

    def score(candidates: np.ndarray, count: int) -> np.ndarray:
        return np.array(
            [_score(task, truth, _added(total, levels[m], count + 1), metric) for m in candidates]
        )

    def add(model: int) -> None:
        for t, q in zip(total, levels[model], strict=True):
            t += q

    scored = mask_metric(metric, task.mode, task.empty)
    return climb(len(levels), scored, iterations, replacement, patience, score, add)


def fit_picks(task, ens_cfg, metric, levels, truth) -> tuple[np.ndarray, list[int]]:
    """Pick counts and the selection in order (every member once for ``mean``)."""
    if ens_cfg.method == "mean":
        return np.ones(len(levels), dtype=np.int64), list(range(len(levels)))
    result = hill_climb(
        task,
        metric,
        levels,
        truth,
        ens_cfg.hill_iterations,
        ens_cfg.hill_replacement,
        ens_cfg.hill_patience,
    )
    return result.picks, result.selection


def score_report(task, names, truth, probs, fold, test_like) -> dict:
    """Pooled CV per metric, per-fold scores with their mean and std, and ``cv_test_like``
    (the flagged rows of ``folds.test_like``), as :func:`medalist.ensemble.nested.score`."""
    per_image = counts(task, truth, probs)

    def on(rows: np.ndarray) -> dict[str, float]:
        return scores(task, [per_image[i] for i in np.flatnonzero(rows)], names)

    per_fold = {str(k): on(fold == k) for k in np.unique(fold)}
    report = {}
    if test_like is not None and (test_like == 1).any():
        report["cv_test_like"] = on(test_like == 1)
    report["cv"] = on(np.ones(len(fold), dtype=bool))
    report["folds"] = per_fold
    report["fold_mean"] = {n: float(np.mean([s[n] for s in per_fold.values()])) for n in names}
    report["fold_std"] = {n: float(np.std([s[n] for s in per_fold.values()])) for n in names}
    return report


def _weights(names: list[str], picks: np.ndarray) -> dict[str, float]:
    return {name: float(p / picks.sum()) for name, p in zip(names, picks, strict=True)}


def nested_blend(task, ens_cfg, metric, levels, truth, fold) -> tuple[list, dict]:
    """Each fold's images blended with picks fitted on the other folds; the picks per fold."""
    out: list = [None] * len(truth)
    per_fold = {}
    for held_out in np.unique(fold):
        fit_rows, rows = np.flatnonzero(fold != held_out), np.flatnonzero(fold == held_out)
        fit_levels = [[m[i] for i in fit_rows] for m in levels]
        picks, _ = fit_picks(task, ens_cfg, metric, fit_levels, [truth[i] for i in fit_rows])
        for i, probs in zip(
            rows, blend([[m[i] for i in rows] for m in levels], picks), strict=True
        ):
            out[i] = probs
        per_fold[int(held_out)] = picks
    return out, per_fold


# The stage.


def as_experiment(cfg: Config, ens_cfg: EnsembleConfig) -> Config:
    """``cfg`` with the ensemble folder as its experiment folder and its name as the submission's."""
    train = cfg.train.model_copy(update={"experiment": f"ensemble/{ens_cfg.name}"})
    sub = cfg.submission.model_copy(update={"name": ens_cfg.name})
    return cfg.model_copy(update={"train": train, "submission": sub})


def run_ensemble(own, cfg: Config, ens_cfg: EnsembleConfig) -> dict:
    """Check, blend, score and write a mask ensemble; returns its folder, weights and CV.

    Args:
        own: the task's mask predictions (``task.own_predictions``): scores through ``own.task``,
            post-processing search and the RLE submission.

    Raises:
        ConfigError: a method other than mean or hill_climb, a metric other than dice or iou,
            a seed group, an empty member list.
        DataError, FoldsMismatchError: a member's mask files are missing, unreadable, of other
            ids or shapes, or made with other folds (the message names the member).
    """
    task = own.task
    metric, names = check_settings(task, ens_cfg)
    inputs = labelled_inputs(cfg)
    members, test_ids = load_members(cfg, ens_cfg.experiments, inputs)
    member_names = [m.name for m in members]
    truth = [np.asarray(inputs.y[i]) for i in range(len(inputs.ids))]
    levels = [m.oof for m in members]

    picks, selection = fit_picks(task, ens_cfg, metric, levels, truth)
    in_sample = blend(levels, picks)
    nested, per_fold = nested_blend(task, ens_cfg, metric, levels, truth, inputs.fold)
    test = blend([m.test for m in members], picks)

    weights = {
        "method": ens_cfg.method,
        "optimised_metric": metric,
        "weights": _weights(member_names, picks),
        # The blend's integers: the offline bundle blends the test masks with them, bit for bit.
        "picks": {name: int(p) for name, p in zip(member_names, picks, strict=True)},
        "selection": [member_names[m] for m in selection],
        "nested": {str(k): _weights(member_names, p) for k, p in per_fold.items()},
    }
    cv = {
        "method": ens_cfg.method,
        "optimised_metric": metric,
        "learns_from_labels": ens_cfg.method != "mean",
        "in_sample": score_report(task, names, truth, in_sample, inputs.fold, inputs.test_like),
        "nested": score_report(task, names, truth, nested, inputs.fold, inputs.test_like),
        "oof_masks": "the nested (out-of-fold) blend",
        "test_masks": "the blend fitted on every OOF image",
        "members": {
            m.name: {
                "folder": str(m.folder),
                "cv": scores(task, counts(task, truth, blend([m.oof], np.ones(1))), names),
            }
            for m in members
        },
    }

    folder = ensemble_dir(cfg, ens_cfg.name)
    store.write_masks(folder / store.OOF_MASKS, list(inputs.ids), nested)
    store.write_masks(folder / store.TEST_MASKS, test_ids, test)
    experiment = as_experiment(cfg, ens_cfg)
    choice = own.search(experiment, truth, nested)
    if choice is not None:
        cv["nested_postprocessed"] = {choice["metric"]: choice["score"]}
    write_json(folder / "weights.json", weights)
    write_json(folder / "cv.json", cv)
    write_json(
        folder / "task.json",
        {
            "type": task.type,
            "mode": task.mode,
            "classes": task.classes,
            "target_columns": task.target_columns,
            "pred_columns": [],
            "metrics": [m.name for m in task.metrics],
        },
    )
    write_text(folder / "config.yaml", cfg.to_yaml())
    write_text(folder / "ensemble.yaml", yaml.safe_dump(ens_cfg.model_dump(mode="json")))
    log.info(
        "ensemble %s (%s): %s in-sample %.6f, nested %.6f",
        ens_cfg.name,
        ens_cfg.method,
        metric,
        cv["in_sample"]["cv"][metric],
        cv["nested"]["cv"][metric],
    )
    summary = {"folder": str(folder), "weights": weights, "cv": cv}
    if ens_cfg.submit:
        path = submission_path(experiment)
        summary["submission"] = str(
            own.submission(experiment, path, masks_path=folder / store.TEST_MASKS)
        )
    return summary
