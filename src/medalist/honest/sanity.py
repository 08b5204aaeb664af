"""``medalist sanity``: the leak alarm. The experiment is trained on labels that carry no signal;
its CV must then be at chance, and a CV above chance means that something leaks.

**The labels.** Each row's label is replaced by a label drawn at random *as a function of its
content*: rows whose model inputs are identical (after the evaluation preprocessing, found in one
pass over the data) form a group, every group takes its label from the first row of another group
of the same fold (a permutation of the groups within each fold), and every row of a group gets the
group's label. The labels of each fold keep their distribution (stratification is kept), the
inputs say nothing about them (nothing can be learnt that generalises), but everything a leak
needs stays alive:

- a copy of a validation row among the training rows carries the validation row's label (exact
  duplicates across folds: the model memorises the copy and reads its label off it);
- a pipeline that lets labels reach the inputs (a dataset, transform or feature that reads the
  target; target encoding, normalisation or feature selection fitted on every row) carries the
  shuffled labels exactly as it carried the real ones.

A plain row permutation would give a copy and its original independent labels and so hide the
most common leak of all, duplicates across folds.

**Labels that are masks.** A task with its own predictions (``task.own_predictions``) has a mask
per row as its label. A mask fits only an image of its own size, so there the rows of a fold
exchange labels only with rows of the same image size (the permutation runs within each (fold,
image size) block, and identical inputs of different sizes are never one group); the OOF masks
are scored by the task against the shuffled masks, and the prior beside chance is a constant mask
of the foreground fraction per channel (the task's predictions say how: ``sanity_kinds``,
``sanity_scores``).

**Chance and its standard error.** The OOF predictions of the shuffled-label run are held fixed
and scored against ``sanity.permutations`` fresh draws of the same shuffle (other seeds): under
"no leak" the validation rows' labels are exchangeable within their fold given everything the
model saw, so the observed CV is one draw of exactly that distribution. Its mean is chance and its
standard deviation the standard error, for any metric (custom ones included), any task and any
calibration of the model: a noisy model on random labels scores worse than the constant prior
under log loss, and the permutation distribution knows it, where a fixed chance level (the prior's
score) would not. The prior's score is reported beside it, and so is the spread of the fold
scores. The alarm is one-sided (only *better* than chance is suspicious) at ``sanity.z`` standard
errors (3 by default: a false alarm about once in 700 clean runs; a leak worth worrying about is
many standard errors out) with the exact permutation p-value written beside it.

**The metric that judges.** The main metric, unless its null has no spread: a short run whose
predictions have not yet moved an argmax (a text model still predicting the majority class for
every row, with the leak already in its probabilities) gives every shuffle the same accuracy, and
an accuracy then cannot tell a leak from chance. The verdict then rests on the first other metric
whose null has spread (a log loss sees the probabilities move). The choice reads the nulls only,
never the observed scores, so the alarm stays a single test. When no metric's null has spread
(predictions the same for every row) the verdict is ``inconclusive``: the run learnt nothing a
leak could show in.

**The run.** ``sanity.epochs`` epochs on ``sanity.folds`` with ``train.seed = sanity.seed``, the
last epoch's weights (``train.keep: last``: picking the best epoch on the validation labels is
itself a small leak, which would push the CV above chance on few rows), no pseudo labels (their
teachers learnt the real labels) and no trackers, under ``outputs/sanity/<experiment>/``
(its own ``outputs`` folder: the real experiment's files and the ledger are never touched).
``sanity.json`` there holds the scores, chance, standard error, z, p-value, the metric that
judged, the verdict (``leak``, ``chance`` or ``inconclusive``) and the duplicate groups that
cross folds. A CV above chance ends the command with a non-zero exit and a message naming what
to look at; an inconclusive run, with a warning to train it longer.

What it cannot see: leaks that do not carry labels. Near-duplicates (resized or re-encoded copies,
frames of one video, images of one patient) get independent labels here; they need a group split,
and ``medalist adversarial`` and a look at the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import numpy as np
import pandas as pd
import torch

from medalist.config import Config
from medalist.data import read_train
from medalist.errors import ConfigError, MedalistError
from medalist.folds import load_folds
from medalist.io import sha256_bytes, write_json
from medalist.layout import FULL_FIT, sanity_dir, sanity_outputs, train_path
from medalist.metrics import Metric
from medalist.modalities import get_modality
from medalist.tasks import Task, build_task
from medalist.training import stage as training
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)
IGNORED_KEYS = ("index", "target", "weight")  # a sample's keys that are not model inputs
MAX_LISTED = 20  # duplicate groups across folds listed in sanity.json and the message
ROUNDING = 1e-9  # relative spread of a null below which its scores differ by rounding only


class LeakError(MedalistError):
    """The CV on labels without signal is above chance: something leaks."""


def _digest(value, hasher) -> None:
    """Feed a sample's input (tensors, arrays, numbers, nested dicts and lists) to ``hasher``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        hasher.update(f"{value.dtype}{value.shape}".encode())
        hasher.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            hasher.update(str(key).encode())
            _digest(value[key], hasher)
    elif isinstance(value, list | tuple):
        hasher.update(f"[{len(value)}".encode())
        for item in value:
            _digest(item, hasher)
    else:
        hasher.update(repr(value).encode())


def content_groups(cfg: Config, train: pd.DataFrame, kinds: np.ndarray | None = None) -> np.ndarray:
    """For each row, the first row whose model inputs are identical to its own.

    The inputs are the modality's evaluation samples (no augmentation), so the check sees what
    the model sees whatever the modality: decoded and resized pixels, token ids. Rows of
    different ``kinds`` (one number per row; None: one kind) are never identical.
    """
    dataset = get_modality(cfg.modality).build_dataset(
        cfg, train, None, split="train", train=False, source=str(train_path(cfg))
    )
    first: dict[str, int] = {}
    groups = np.empty(len(train), dtype=np.int64)
    for row in range(len(train)):
        sample = dataset[row]
        hasher = hashlib.sha256()
        _digest({k: v for k, v in sample.items() if k not in IGNORED_KEYS}, hasher)
        if kinds is not None:
            hasher.update(f"kind {kinds[row]}".encode())
        groups[row] = first.setdefault(hasher.hexdigest(), row)
    return groups


def shuffle_labels(
    targets: np.ndarray, fold: np.ndarray, groups: np.ndarray, seed: int
) -> np.ndarray:
    """Labels without signal, as a function of content (see the module docstring).

    Each group (``groups``: a row's group is the index of its first row) takes the label of the
    first row of another group whose first row is in the same fold; every row of a group gets
    the group's label. ``fold`` may be any blocks of rows that exchange labels
    (:func:`exchange_blocks`); ``targets`` anything indexed by row arrays as a numpy array is (a
    task's masks).
    """
    rng = np.random.default_rng(seed)
    heads = np.flatnonzero(groups == np.arange(len(groups)))  # each group's first row
    label_row = np.arange(len(groups))
    for f in np.unique(fold[heads]):
        members = heads[fold[heads] == f]
        label_row[members] = rng.permutation(members)
    return targets[label_row[groups]]


def exchange_blocks(fold: np.ndarray, kinds: np.ndarray | None) -> np.ndarray:
    """The rows whose labels may be exchanged, as one number per row: the fold, or with
    ``kinds`` (a mask's image size) each (fold, kind) pair."""
    if kinds is None:
        return fold
    pairs = pd.DataFrame({"fold": fold, "kind": kinds})
    return pairs.groupby(["fold", "kind"], sort=True).ngroup().to_numpy()


def crossing_groups(groups: np.ndarray, fold: np.ndarray, ids: np.ndarray) -> list[list]:
    """The groups of identical rows that lie in more than one fold, as lists of their ids."""
    frame = pd.DataFrame({"group": groups, "fold": fold, "id": ids})
    spread = frame.groupby("group")["fold"].nunique()
    crossing = spread.index[spread.to_numpy() > 1]
    members = frame[frame["group"].isin(crossing)].groupby("group")["id"]
    return [[_plain(i) for i in ids] for _, ids in members]


def _plain(value):
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def prior_prediction(task: Task, targets: np.ndarray, n_rows: int) -> np.ndarray:
    """The constant prediction of the labels' prior, in the prediction table's format."""
    if task.type == "multiclass":
        prior = np.bincount(targets, minlength=len(task.classes)) / len(targets)
    elif task.type == "binary":
        prior = np.array([targets.mean()])
    else:
        prior = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1).mean(axis=0)
    return np.tile(prior, (n_rows, 1))


def _better(metric: Metric, a: float, b: float) -> bool:
    return a >= b if metric.greater_is_better else a <= b


def assess(
    metric: Metric,
    observed: float,
    null: np.ndarray,
    z_alarm: float,
) -> dict:
    """Chance (the null mean), its standard error (the null's standard deviation), how many
    standard errors the observed score is better than chance, the one-sided permutation p-value
    and the verdict.

    A null without spread (every permutation scores the same, to rounding: the metric only reads
    what the predictions do not vary, such as an argmax that is one class for every row) cannot
    tell a leak from chance: its standard error is 0, ``informative`` false, and ``z`` is 0 unless
    the observed score is beyond rounding of it.
    """
    chance = float(np.mean(null))
    rounding = ROUNDING * max(1.0, abs(chance))
    informative = bool(np.ptp(null) > rounding)
    se = float(np.std(null, ddof=1)) if informative else 0.0
    gain = observed - chance if metric.greater_is_better else chance - observed
    if informative:
        z = gain / se
    else:
        z = np.inf if gain > rounding else (-np.inf if gain < -rounding else 0.0)
    as_good = int(sum(_better(metric, float(s), observed) for s in null))
    p_value = (1 + as_good) / (1 + len(null))
    return {
        "score": float(observed),
        "chance": chance,
        "standard_error": se,
        "z": float(z),
        "p_value": float(p_value),
        "informative": informative,
        "above_chance": bool(z > z_alarm),
    }


def judging_metric(main: str, scores: dict[str, dict]) -> str | None:
    """The metric the verdict rests on: the main one, or when its null has no spread the first
    other metric whose null has (a log loss sees probabilities move before an accuracy sees an
    argmax change); None when no metric can tell. The choice reads only the nulls, never the
    observed scores, so the alarm stays one test at ``sanity.z``."""
    order = [main, *(name for name in scores if name != main)]
    return next((name for name in order if scores[name]["informative"]), None)


def sanity_config(cfg: Config) -> Config:
    """The experiment as the shuffled-label run trains it, in ``outputs/sanity/``."""
    short = cfg.model_copy(deep=True)
    short.competition.outputs_dir = str(sanity_outputs(cfg))
    short.train.epochs = cfg.sanity.epochs
    short.train.folds = cfg.sanity.folds
    short.train.seed = cfg.sanity.seed
    short.train.seeds = []
    short.train.keep = "last"
    short.tabular.rounds = min(cfg.tabular.rounds, cfg.sanity.rounds)
    short.tabular.early_stopping = 0  # as keep: last, nothing chosen on the shuffled labels
    short.train.pseudo_round = None
    short.distill.teacher = None
    short.tracking.trackers = []
    return short


def _check(cfg: Config) -> None:
    if cfg.sanity.folds is not None and FULL_FIT in cfg.sanity.folds:
        raise ConfigError("sanity.folds: a full fit (-1) has no OOF rows to score; name folds")
    if cfg.train.pseudo_round is not None:
        log.warning(
            "sanity: train.pseudo_round %s is left out (the teachers learnt the real labels)",
            cfg.train.pseudo_round,
        )
    if cfg.distill.teacher is not None:
        log.warning(
            "sanity: distill.teacher %s is left out (the teacher learnt the real labels)",
            cfg.distill.teacher,
        )


def _fresh_folder(cfg: Config, labels_sha: str) -> None:
    """Remove a shuffled-label run made with other labels (another seed, other data), so that
    its finished folds are not taken for this run's."""
    folder = sanity_dir(cfg)
    record = folder / "labels.json"
    if folder.is_dir() and (
        not record.is_file() or json.loads(record.read_text()).get("sha256") != labels_sha
    ):
        log.info("sanity: %s was made with other labels; starting afresh", folder)
        shutil.rmtree(folder)
    write_json(record, {"sha256": labels_sha, "seed": cfg.sanity.seed})


def run(cfg: Config) -> dict:
    """Train on labels without signal, score the CV against chance, write ``sanity.json``.

    Raises:
        LeakError: the CV is above chance (after ``sanity.json`` is written).
    """
    _check(cfg)
    train = read_train(cfg)
    task = build_task(cfg, train)
    own = task.own_predictions
    source = str(train_path(cfg))
    targets = task.encode_targets(train, source=source)
    c = cfg.competition
    fold = load_folds(c.folds_dir, train, id_column=c.id_column, target_columns=c.target_columns)[
        "fold"
    ].to_numpy()
    ids = train[c.id_column].to_numpy()
    kinds = None if own is None else own.sanity_kinds(cfg, train, source)
    blocks = exchange_blocks(fold, kinds)
    singletons = np.arange(len(train))  # every row a group of its own
    groups = content_groups(cfg, train, kinds) if cfg.sanity.duplicates else singletons
    crossing = crossing_groups(groups, fold, ids)
    if crossing:
        log.warning(
            "sanity: %d group(s) of identical rows lie in several folds, e.g. ids %s",
            len(crossing),
            crossing[0],
        )
    shuffled = shuffle_labels(targets, blocks, groups, cfg.sanity.seed)
    short = sanity_config(cfg)
    state = process_state(cfg)
    if state.is_main_process:
        if own is None:
            labels_sha = sha256_bytes(np.ascontiguousarray(shuffled).tobytes())
        else:
            labels_sha = own.sanity_sha256(shuffled)
        _fresh_folder(cfg, labels_sha)
    state.wait_for_everyone()
    metrics = training.run(short, targets=shuffled, ledger=False)
    if not state.is_main_process:
        return {}
    result = _score(cfg, task, shuffled, targets, blocks, groups, crossing, ids)
    result["folds"] = metrics.get("folds", {})
    write_json(sanity_dir(cfg) / "sanity.json", result)
    if result["verdict"] == "leak":
        raise LeakError(leak_message(cfg, result))
    if result["verdict"] == "inconclusive":
        log.warning("%s", inconclusive_message(cfg, result))
        return result
    log.info(
        "sanity: %s: no leak found. Label shuffling cannot see leaks that carry no labels "
        "(near-duplicates: a group split). %s",
        _summary(result),
        sanity_dir(cfg) / "sanity.json",
    )
    return result


def _score(cfg, task, shuffled, targets, blocks, groups, crossing, ids) -> dict:
    """Every metric of the shuffled-label OOF against its permutation null (see the module);
    ``blocks`` are :func:`exchange_blocks`, ``ids`` train.csv's, in row order."""
    own = task.own_predictions
    if own is None:
        oof = pd.read_parquet(sanity_dir(cfg) / "oof.parquet")
        oof_ids = oof[cfg.competition.id_column]
        predictions = oof[task.pred_columns].to_numpy()
    else:
        oof_ids, predictions = own.sanity_oof(sanity_dir(cfg))
    position = pd.Series(np.arange(len(ids)), index=pd.Series(ids).astype(str).to_numpy())
    rows = position.loc[pd.Series(oof_ids).astype(str).to_numpy()].to_numpy()
    seeds = np.random.SeedSequence(cfg.sanity.seed).generate_state(cfg.sanity.permutations)
    nulls = [shuffle_labels(targets, blocks, groups, int(s))[rows] for s in seeds]
    if own is None:
        raw = _table_scores(task, shuffled[rows], nulls, predictions)
    else:
        raw = own.sanity_scores(shuffled[rows], nulls, predictions)
    scores = {}
    for metric in task.metrics:
        observed, null, at_prior = raw[metric.name]
        scores[metric.name] = assess(metric, observed, null, cfg.sanity.z)
        scores[metric.name]["constant_prior"] = at_prior
    judge = judging_metric(task.main_metric.name, scores)
    if judge is None:
        verdict = "inconclusive"
    else:
        verdict = "leak" if scores[judge]["above_chance"] else "chance"
    return {
        "experiment": cfg.train.experiment,
        "main_metric": task.main_metric.name,
        "verdict": verdict,
        "judged_by": judge,
        "z_alarm": cfg.sanity.z,
        "permutations": cfg.sanity.permutations,
        "epochs": cfg.sanity.epochs,
        "rounds": min(cfg.tabular.rounds, cfg.sanity.rounds),
        "seed": cfg.sanity.seed,
        "rows_scored": len(rows),
        "duplicates_checked": cfg.sanity.duplicates,
        "duplicate_groups_across_folds": len(crossing),
        "duplicate_ids_across_folds": crossing[:MAX_LISTED],
        "main": scores[task.main_metric.name],
        "metrics": scores,
    }


def _table_scores(task, labels, nulls, predictions) -> dict[str, tuple]:
    """Each metric's (score against ``labels``, scores against each of ``nulls``, score of the
    constant prior: None for a metric that refuses a constant prediction)."""
    prior = prior_prediction(task, labels, len(labels))
    raw = {}
    for metric in task.metrics:
        try:
            at_prior = metric(labels, prior)
        except ValueError:  # a metric that refuses a constant prediction
            at_prior = None
        null = np.array([metric(y, predictions) for y in nulls])
        raw[metric.name] = (metric(labels, predictions), null, at_prior)
    return raw


def leak_message(cfg: Config, result: dict) -> str:
    """What the alarm says: the numbers, then where leaks come from, most likely first."""
    alarm = f" > {cfg.sanity.z:g}, p {result['metrics'][result['judged_by']]['p_value']:.3g}"
    lines = [
        f"sanity: {_summary(result, alarm)}: something leaks into the validation folds. Look at:"
    ]
    crossing = result["duplicate_groups_across_folds"]
    if crossing:
        lines.append(
            f"- duplicates across folds: {crossing} group(s) of identical rows lie in several "
            f"folds, e.g. ids {result['duplicate_ids_across_folds'][0]}; drop the copies or "
            "give each group one fold (folds.scheme: group with folds.group_column)"
        )
    lines += [
        "- labels reaching the inputs: a dataset, transform or feature that reads the target, "
        "or preprocessing (target encoding, normalisation, feature selection) fitted on every "
        "row instead of the training folds",
        "- ids or row order used as features: a column derived from the id, the file name or "
        "the row position lets the model recognise rows it has seen",
        "- rows of one subject (patient, user, session, video) or near-duplicates in several "
        "folds: a group split (folds.scheme: group or stratified_group, folds.group_column)",
        f"Details: {sanity_dir(cfg) / 'sanity.json'}",
    ]
    if not cfg.sanity.duplicates:
        lines.insert(1, "- (sanity.duplicates is false: identical rows were not looked for)")
    return "\n".join(lines)


def _summary(result: dict, alarm: str = "") -> str:
    """The judging metric's CV against chance (``alarm`` inside the parentheses), and why the
    main metric does not judge when it does not."""
    name = result["judged_by"]
    judged = result["metrics"][name]
    text = (
        f"CV {name} {judged['score']:.5g} on labels without signal, chance "
        f"{judged['chance']:.5g} +- {judged['standard_error']:.3g} (z {judged['z']:.2f}{alarm})"
    )
    main = result["main_metric"]
    if name != main:
        text += (
            f" [{main} cannot tell: every shuffle of the labels scores the same {main}, the short "
            "run's predictions do not vary in what it reads]"
        )
    return text


def inconclusive_message(cfg: Config, result: dict) -> str:
    """What the command says when no metric can tell a leak from chance."""
    return (
        f"sanity: inconclusive: every shuffle of the labels scores the same on every metric "
        f"({', '.join(result['metrics'])}): the short run's predictions do not vary from row to "
        f"row, so a leak could not show. Train it longer (sanity.epochs, now "
        f"{cfg.sanity.epochs}) or faster (train.lr), and run it again. "
        f"{sanity_dir(cfg) / 'sanity.json'}"
    )
