"""``medalist adversarial``: adversarial validation. The experiment's own model is trained to tell
test rows from train rows; if it cannot (a CV ROC AUC of 0.5), the test set looks like train and a
random CV should track the leaderboard.

**The data.** Every train row (label 0) and every test row (label 1), as the model reads them:
the columns train and test share, never the targets (a train column the test set lacks would
give the rows away, and the model never reads it on the test set either); another experiment's
predictions joined as the model stacks them (``tabular.oof_features``: OOF for train rows, the
fold average for test rows, a difference the model does meet); image files as absolute paths, so
the train and test folders both resolve from one table (nothing is copied). The run has folds of
its own (``adversarial.n_splits``, stratified on the label, grouped when the project's folds are),
never the project's ``folds/``.

**The run.** The experiment's config as it is (modality, model, preprocessing) on that binary
task: ``adversarial.epochs`` epochs of a network with the last epoch's weights
(``train.keep: last``), or ``adversarial.rounds`` rounds of a GBDT (at most ``tabular.rounds``)
without early stopping, since choosing the epoch or round on the validation rows would choose the
one that separates them best; no pseudo labels, no trackers, under
``outputs/adversarial/<experiment>/`` (its own ``outputs`` folder: the real experiment's files and
``outputs/ledger.csv`` are never touched). What belongs to the experiment's task is left to the
binary one: the objective, metric and class keys of ``tabular.params``, the class weights of
``tricks.loss`` and balanced sampling (the natural prior keeps ``p / (1 - p)`` a density ratio).

**The verdict.** Under "no shift" the pooled OOF AUC is a Mann-Whitney statistic of exchangeable
rows: mean 0.5, standard deviation ``sqrt((n0 + n1 + 1) / (12 n0 n1))`` for ``n0`` train and ``n1``
test rows, whatever the model. That is the standard error here (the spread of five fold AUCs is
reported too, but an estimate from four degrees of freedom would make a 3-sigma rule fire about
one time in fifty). ``no shift`` when the AUC is within ``adversarial.z`` standard errors of 0.5;
beyond, ``shift`` at or above ``adversarial.shift_auc`` (0.6) and ``slight shift`` below it (on a
large table a tiny, harmless difference is many standard errors out). It is a measurement, not an
alarm: the command exits 0 whatever it finds.

**What it writes.** ``adversarial.json`` (the AUC, per fold, the verdict, the most test-like train
rows, the features that separate by mean share of gain for a GBDT); ``weights.csv`` (each train
row's density ratio ``p / (1 - p)``, ``p`` its OOF probability of being a test row, normalised to
mean 1 over the train rows and clipped at ``adversarial.max_weight``: weights that make the train
rows look like the test set, for a weighted validation score); ``test_like.csv`` (the
``adversarial.test_like_fraction`` most test-like train rows flagged 1: a validation set that
resembles the test set).
"""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medalist.config import Config
from medalist.data import read_test, read_train
from medalist.errors import ConfigError, DataError
from medalist.folds import GROUP_SCHEMES, build_manifest, make_splitter, write_folds
from medalist.io import sha256_bytes, sha256_frame, write_csv, write_json
from medalist.layout import (
    adversarial_dir,
    adversarial_outputs,
    experiment_dir,
    test_path,
    train_path,
)
from medalist.modalities import ROW_CLASSIFIERS, get_modality
from medalist.modalities.tabular.stacking import stacked_on, stacking_config, with_stacked
from medalist.reporting.importance import feature_importance
from medalist.tasks import build_task
from medalist.training import stage as training
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)

TARGET = "is_test"  # the label of the run (another name when a table already has the column)
TABLE = "train.csv"  # the run's table, in its data/ folder
TOP_FEATURES = 10
# Keys of tabular.params that belong to the experiment's task, under each library's names and
# aliases: the run is binary and takes medalist's binary defaults for them.
TASK_PARAMS = frozenset(
    {
        "objective", "objective_type", "app", "application", "loss", "metric", "metrics",
        "metric_types", "num_class", "num_classes", "eval_metric", "loss_function",
        "custom_metric", "class_names", "classes_count", "class_weights", "auto_class_weights",
    }
)  # fmt: skip


def model_inputs(cfg: Config, frame: pd.DataFrame, split: str, source: str) -> pd.DataFrame:
    """A table's rows as the experiment's model reads them, in a form that reads the same from
    the run's one table: the predictions of the experiments it stacks on joined (train rows'
    OOF, test rows' test predictions), image files as absolute paths of their own folder's files
    (``image.train_dir`` or ``image.test_dir``; a missing file stops here, naming it)."""
    if stacked_on(cfg):
        frame = with_stacked(cfg, frame, split, source)
    if classifier(cfg) == "image":  # the one modality whose rows name files in a split's folder
        paths = get_modality("image").image_paths(cfg, frame, split, source)
        frame = frame.assign(**{cfg.image.image_column: [str(p.absolute()) for p in paths]})
    return frame


def combined_table(
    cfg: Config, train: pd.DataFrame, test: pd.DataFrame
) -> tuple[pd.DataFrame, str, list[str]]:
    """The run's table: every train row, then every test row, with the columns they share but
    the targets, a fresh unique id (``train:<id>``, ``test:<id>``) and the label.

    Returns:
        The table, the label's column name and the train columns left out because the test set
        lacks them (the targets aside).
    """
    c = cfg.competition
    train = model_inputs(cfg, train, "train", str(train_path(cfg)))
    test = model_inputs(cfg, test, "test", str(test_path(cfg)))
    skipped = {c.id_column, *c.target_columns}
    shared = [col for col in train.columns if col in test.columns and col not in skipped]
    left_out = [col for col in train.columns if col not in test.columns and col not in skipped]
    if classifier(cfg) == "image" and cfg.image.image_column == c.id_column:
        ids = [*train[c.id_column], *test[c.id_column]]  # the files' paths: unique, and read
    else:
        ids = [f"train:{v}" for v in train[c.id_column]] + [f"test:{v}" for v in test[c.id_column]]
    table = pd.concat([train[shared], test[shared]], ignore_index=True)
    table.insert(0, c.id_column, ids)
    target = TARGET
    while target in table.columns:
        target = f"_{target}"
    table[target] = np.r_[np.zeros(len(train), np.int64), np.ones(len(test), np.int64)]
    return table, target, left_out


def row_groups(cfg: Config, train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray | None:
    """Each row's group when the project's folds are grouped (``folds.group_column``), else None.

    Rows of one group (a patient's images) in several folds of the run would let the model
    recognise the group, on the test side as on the train side, and read a shift where there is
    none: a group stays in one fold. Test rows without the column are groups of their own.
    """
    column = cfg.folds.group_column
    if cfg.folds.scheme not in GROUP_SCHEMES or not column:
        return None
    if column in test.columns:
        test_groups = test[column].astype(str).to_numpy()
    else:
        log.warning(
            "adversarial: %s has no group column '%s'; test rows of one group may fall in "
            "several folds and make the AUC look higher than the shift is",
            test_path(cfg),
            column,
        )
        test_groups = np.array([f"\x00test row {row}" for row in range(len(test))])
    return np.r_[train[column].astype(str).to_numpy(), test_groups]


def adversarial_folds(
    is_test: np.ndarray, groups: np.ndarray | None, n_splits: int, seed: int
) -> np.ndarray:
    """The run's folds: shuffled, stratified on the label (train or test), grouped if groups."""
    scheme = "stratified" if groups is None else "stratified_group"
    splitter = make_splitter(scheme, n_splits, seed)
    fold = np.full(len(is_test), -1, dtype=np.int64)
    for k, (_, valid) in enumerate(splitter.split(np.zeros((len(is_test), 1)), is_test, groups)):
        fold[valid] = k
    return fold


def classifier(cfg: Config) -> str:
    """The modality of the run's row classifier: the experiment's, or the one that classifies its
    rows (:data:`medalist.modalities.ROW_CLASSIFIERS`: segmentation's images by ``image``)."""
    return ROW_CLASSIFIERS.get(cfg.modality, cfg.modality)


def adversarial_config(cfg: Config, target: str) -> Config:
    """The experiment as the train-versus-test run trains it (see the module docstring)."""
    a, folder = cfg.adversarial, adversarial_dir(cfg)
    data = cfg.model_dump(mode="python")
    data["competition"].update(
        data_dir=str(folder / "data"),
        train_csv=TABLE,
        folds_dir=str(folder / "folds"),
        outputs_dir=str(adversarial_outputs(cfg)),
        target_columns=[target],
    )
    data["task"] = {"type": "binary", "classes": [0, 1], "metrics": ["roc_auc"]}
    # Segmentation's images are told apart by the image classifier on the same encoder.
    data["modality"] = classifier(cfg)
    data["folds"].update(scheme="stratified", n_splits=a.n_splits, random_state=a.seed)
    data["folds"]["group_column"] = None  # the run's folds are written here, groups included
    data["train"].update(
        epochs=a.epochs, folds=None, seed=a.seed, seeds=[], keep="last", pseudo_round=None
    )
    params = cfg.tabular.params
    dropped = sorted(key for key in params if key in TASK_PARAMS)
    if dropped:
        log.info(
            "adversarial: tabular.params %s belong to the experiment's task; left out", dropped
        )
    data["tabular"].update(
        rounds=min(cfg.tabular.rounds, a.rounds),
        early_stopping=0,  # as keep: last, nothing chosen on the validation rows
        oof_features=[],  # joined into the table already
        features=stacking_config(cfg).tabular.features if stacked_on(cfg) else cfg.tabular.features,
        params={key: value for key, value in params.items() if key not in TASK_PARAMS},
    )
    data["distill"]["teacher"] = None  # its soft targets are the experiment's task's
    data["tricks"]["loss"]["class_weights"] = None  # the experiment's classes, not these
    data["tricks"]["sampler"]["balanced"] = False  # the natural prior: p / (1 - p) stays a ratio
    data["tracking"]["trackers"] = []
    return Config.model_validate(data)


def null_standard_error(n_train: int, n_test: int) -> float:
    """The AUC's standard deviation when train and test rows are exchangeable (Mann-Whitney)."""
    return float(np.sqrt((n_train + n_test + 1) / (12.0 * n_train * n_test)))


def verdict(auc: float, standard_error: float, z_alarm: float, shift_auc: float) -> str:
    """``no shift`` within ``z_alarm`` standard errors of 0.5 (one-sided: below 0.5 is noise or a
    model worse than chance, not a shift); beyond, ``shift`` from ``shift_auc`` on, else
    ``slight shift``."""
    if (auc - 0.5) <= z_alarm * standard_error:
        return "no shift"
    return "shift" if auc >= shift_auc else "slight shift"


def density_weights(p_test: np.ndarray, max_weight: float) -> np.ndarray:
    """Each train row's ``p / (1 - p)`` (proportional to test density over train density at its
    inputs), normalised to mean 1, then clipped at ``max_weight``."""
    p = np.clip(np.asarray(p_test, dtype=np.float64), 1e-6, 1 - 1e-6)
    ratio = p / (1 - p)
    return np.minimum(ratio / ratio.mean(), max_weight)


def flag_test_like(p_test: np.ndarray, fraction: float) -> np.ndarray:
    """1 for the ``fraction`` of train rows most likely to be test rows (at least one), else 0;
    ties keep row order."""
    count = max(1, round(fraction * len(p_test)))
    flags = np.zeros(len(p_test), dtype=np.int64)
    flags[np.argsort(-np.asarray(p_test), kind="stable")[:count]] = 1
    return flags


def _check_sizes(cfg: Config, is_test: np.ndarray, groups: np.ndarray | None) -> None:
    n_splits = cfg.adversarial.n_splits
    for label, path in ((0, train_path(cfg)), (1, test_path(cfg))):
        if int((is_test == label).sum()) < n_splits:
            raise DataError(
                f"{path}: {int((is_test == label).sum())} row(s), fewer than "
                f"adversarial.n_splits={n_splits}; lower adversarial.n_splits"
            )
    if groups is not None and len(np.unique(groups)) < n_splits:
        raise ConfigError(
            f"adversarial.n_splits: {n_splits} folds but only {len(np.unique(groups))} groups "
            f"(folds.group_column '{cfg.folds.group_column}')"
        )


def _table_hash(table: pd.DataFrame) -> str:
    """A hash of the table's column names and values (pandas' row hashes: fast, any dtype)."""
    rows = pd.util.hash_pandas_object(table, index=False).to_numpy()
    return sha256_bytes(json.dumps([str(c) for c in table.columns]).encode() + rows.tobytes())


def _write_run(
    cfg: Config, short: Config, table: pd.DataFrame, fold: np.ndarray, grouped: bool
) -> None:
    """The run's table and folds; a run made for another table or other folds is removed first,
    so that its finished folds are not taken for this run's."""
    c = short.competition
    folds = pd.DataFrame({c.id_column: table[c.id_column].to_numpy(), "fold": fold})
    record = {"table_sha256": _table_hash(table), "folds_sha256": sha256_frame(folds)}
    folder = adversarial_dir(cfg)
    previous = folder / "inputs.json"
    if folder.is_dir() and (
        not previous.is_file() or json.loads(previous.read_text(encoding="utf-8")) != record
    ):
        log.info("adversarial: %s was made for other data or folds; starting afresh", folder)
        shutil.rmtree(folder)
    write_csv(train_path(short), table)
    scheme = "stratified_group" if grouped else "stratified"
    manifest = build_manifest(
        table,
        folds,
        id_column=c.id_column,
        target_columns=list(c.target_columns),
        scheme=scheme,
        n_splits=short.folds.n_splits,
        random_state=short.folds.random_state,
        group_column=cfg.folds.group_column if grouped else None,
    )
    write_folds(folds, manifest, c.folds_dir)
    write_json(previous, record)


def run(cfg: Config) -> dict:
    """Train the experiment's model to tell test rows from train rows; write
    ``adversarial.json``, ``weights.csv`` and ``test_like.csv`` and log the AUC and verdict."""
    train, test = read_train(cfg), read_test(cfg)
    # What the experiment needs of the test rows, checked against test.csv itself (the run's
    # table is checked again by the train stage).
    get_modality(cfg.modality).check_inputs(cfg, test, "test", str(test_path(cfg)))
    table, target, left_out = combined_table(cfg, train, test)
    if left_out:
        log.info(
            "adversarial: train column(s) %s are not in %s: left out", left_out, test_path(cfg)
        )
    is_test = table[target].to_numpy()
    groups = row_groups(cfg, train, test)
    _check_sizes(cfg, is_test, groups)
    fold = adversarial_folds(is_test, groups, cfg.adversarial.n_splits, cfg.adversarial.seed)
    short = adversarial_config(cfg, target)
    state = process_state(cfg)
    if state.is_main_process:
        _write_run(cfg, short, table, fold, grouped=groups is not None)
    state.wait_for_everyone()
    training.run(short, ledger=False)
    if not state.is_main_process:
        return {}
    result = _assess(cfg, short, table, train, left_out, grouped=groups is not None)
    log.info("%s", verdict_line(result, adversarial_dir(cfg) / "adversarial.json"))
    return result


def _oof_probability(short: Config, table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's OOF probability of being a test row and its fold, in the table's row order."""
    oof = pd.read_parquet(experiment_dir(short) / "oof.parquet")  # the real one's adversarial_dir
    id_column = short.competition.id_column
    column = build_task(short, table).pred_columns[0]
    position = pd.Series(np.arange(len(table)), index=table[id_column].astype(str).to_numpy())
    rows = position.loc[oof[id_column].astype(str).to_numpy()].to_numpy()
    p, fold = np.full(len(table), np.nan), np.full(len(table), -1)
    p[rows], fold[rows] = oof[column].to_numpy(dtype=np.float64), oof["fold"].to_numpy()
    return p, fold


def _features(cfg: Config) -> list[dict] | None:
    """The features that separate train from test, by mean share of gain across folds (a GBDT)."""
    importance = feature_importance([adversarial_dir(cfg)], top=TOP_FEATURES)
    if importance is None or importance.table.empty:
        return None
    return [
        {
            "feature": str(name),
            "mean_share": float(row["mean share"]),
            "std": None if pd.isna(row["std"]) else float(row["std"]),  # one fold: none
        }
        for name, row in importance.table.iterrows()
    ]


def _fold_auc(is_test: np.ndarray, p: np.ndarray, fold: np.ndarray) -> dict[str, float | None]:
    """Each fold's AUC; None for a fold without both train and test rows (grouped folds)."""
    aucs = {}
    for k in np.unique(fold):
        rows = fold == k
        both = len(np.unique(is_test[rows])) == 2
        aucs[str(k)] = float(roc_auc_score(is_test[rows], p[rows])) if both else None
    return aucs


def _assess(
    cfg: Config,
    short: Config,
    table: pd.DataFrame,
    train: pd.DataFrame,
    left_out: list[str],
    grouped: bool,
) -> dict:
    """Score the run, write ``adversarial.json``, ``weights.csv`` and ``test_like.csv``."""
    a, folder = cfg.adversarial, adversarial_dir(cfg)
    target = short.competition.target_columns[0]
    is_test = table[target].to_numpy()
    p, fold = _oof_probability(short, table)
    n_train, n_test = int((is_test == 0).sum()), int((is_test == 1).sum())
    auc = float(roc_auc_score(is_test, p))
    per_fold = _fold_auc(is_test, p, fold)
    se = null_standard_error(n_train, n_test)
    p_train = p[:n_train]
    ids = train[cfg.competition.id_column].to_numpy()
    weights = density_weights(p_train, a.max_weight)
    flags = flag_test_like(p_train, a.test_like_fraction)
    id_column = cfg.competition.id_column
    write_csv(folder / "weights.csv", pd.DataFrame({id_column: ids, "weight": weights}))
    write_csv(folder / "test_like.csv", pd.DataFrame({id_column: ids, "test_like": flags}))
    top = np.argsort(-p_train, kind="stable")[: a.top]
    fold_values = np.array([v for v in per_fold.values() if v is not None])
    result = {
        "experiment": cfg.train.experiment,
        "verdict": verdict(auc, se, a.z, a.shift_auc),
        "auc": auc,
        "standard_error": se,
        "z": (auc - 0.5) / se,
        "z_alarm": a.z,
        "shift_auc": a.shift_auc,
        "fold_auc": per_fold,
        "fold_mean": float(fold_values.mean()),
        "fold_std": float(fold_values.std(ddof=1)) if len(fold_values) > 1 else None,
        "n_train": n_train,
        "n_test": n_test,
        "n_splits": a.n_splits,
        "grouped": grouped,
        "seed": a.seed,
        "epochs": a.epochs,
        "rounds": short.tabular.rounds,
        "columns_left_out": left_out,
        "test_like_rows": [{"id": _plain(ids[i]), "p_test": float(p_train[i])} for i in top],
        "features": _features(cfg),
        "weights": {
            "file": "weights.csv",
            "max_weight": a.max_weight,
            "clipped": int((weights >= a.max_weight).sum()),
            "effective_sample_size": float(weights.sum() ** 2 / (weights**2).sum()),
        },
        "test_like": {
            "file": "test_like.csv",
            "fraction": a.test_like_fraction,
            "rows": int(flags.sum()),
        },
    }
    write_json(folder / "adversarial.json", result)
    return result


def _plain(value):
    item = getattr(value, "item", None)
    return item() if callable(item) else value


ADVICE = {
    "no shift": "no difference found between train and test: a random CV should track the "
    "leaderboard.",
    "slight shift": "a small but real difference (AUC below adversarial.shift_auc): the CV "
    "should still rank models; on close calls, compare them on the test-like rows too "
    "(test_like.csv).",
    "shift": "the test set differs from train. Look at what separates them (adversarial.json: "
    "features, test-like rows); validate on the test-like rows (test_like.csv) or weight the "
    "validation rows (weights.csv), and trust the random CV less.",
}


def verdict_line(result: dict, path) -> str:
    """The command's summary: the AUC, its spread, the verdict and what to do."""
    folds = [v for v in result["fold_auc"].values() if v is not None]
    features = result["features"] or []
    named = ", ".join(f"{f['feature']} ({f['mean_share']:.0%})" for f in features[:3])
    separating = (
        f" Separating features: {named}." if named and result["verdict"] != "no shift" else ""
    )
    return (
        f"adversarial: train vs test ROC AUC {result['auc']:.4f} (folds {min(folds):.3f}-"
        f"{max(folds):.3f}; 0.5 is no shift, standard error {result['standard_error']:.3g}, "
        f"z {result['z']:.1f}): {result['verdict']}: {ADVICE[result['verdict']]}{separating} "
        f"Details: {path}"
    )
