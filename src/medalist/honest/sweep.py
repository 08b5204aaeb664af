"""``medalist sweep``: a hyperparameter search that admits its optimism.

Each trial is the experiment with the values optuna draws from ``sweep.space`` (applied as
``key=value`` overrides are), trained as an experiment of its own,
``<experiment>@sweep<name>-t<number>`` under ``outputs/sweep/<name>/`` (the real experiment's
files are never written), on ``sweep.folds`` only; its score is the mean of those folds' scores
of ``sweep.metric``. A finished trial adds a row to ``outputs/ledger.csv`` with its values in the
``params`` column. After each fold but the last, the median pruner stops a trial whose score is
worse than the median of the finished trials' at that fold.

The study lives in ``outputs/sweep/<name>/study.db`` (SQLite): a killed sweep resumes, the
trial it was training keeps its number and its finished folds, and finished trials are never
trained again; raising ``sweep.trials`` adds trials to the study.

``sweep.json`` holds every trial (values, state, fold scores, score) and the best one, and
``best.yaml`` the experiment file with the best values. The best score is **optimistic**: it
was selected among the trials on the very folds it is reported on, and the more trials, the more
it flatters. The command the sweep prints trains the chosen values on every fold; the folds the
sweep did not train are then scores of rows no trial was chosen on.
"""

from __future__ import annotations

import json
import logging
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import ValidationError

from medalist.config import Config, load_yaml, parse_override
from medalist.config.load import deep_merge, explain
from medalist.config.schema import training_sections
from medalist.config.sweep import Choice, FloatRange, SweepConfig
from medalist.data import read_train
from medalist.errors import ConfigError, MedalistError, TrainingDivergedError
from medalist.folds import load_folds
from medalist.io import write_csv, write_json, write_text
from medalist.layout import KEYS_NOT_TRAINING, ledger_path, outputs_dir, training_config
from medalist.metrics import Metric, get_metric
from medalist.reporting.ledger import append_ledger
from medalist.tasks import DEFAULT_METRICS
from medalist.training import stage as training
from medalist.training.runtime import process_state

log = logging.getLogger(__name__)

STUDY_FILE = "study.db"
RESULT_FILE = "sweep.json"
BEST_FILE = "best.yaml"
PARAMS_COLUMN = "params"  # the ledger column with a trial's values (JSON)
# Keys a sweep may not vary, and why.
FIXED_SECTIONS = ("competition", "task", "folds")
FIXED_KEYS = {
    "train.experiment": "each trial is an experiment of its own name",
    "train.seed": "the best of several seeds is noise selected on the folds it is scored on; "
    "sweep other keys, then train several seeds (train.seeds)",
}


@dataclass(frozen=True)
class Plan:
    """A checked sweep: the experiment, its section, the study's name and folder, the metric
    the trials are ranked by, the task metrics the trials score, and the other folds."""

    cfg: Config
    sweep: SweepConfig
    name: str
    folder: Path
    metric: Metric
    metrics: list[str]
    unseen: list[int]  # the folds of the final run that no trial trains

    @property
    def direction(self) -> str:
        return "maximize" if self.metric.greater_is_better else "minimize"


def sweep_dir(cfg: Config, name: str) -> Path:
    """``outputs/sweep/<name>/``: the trials' outputs folder, ``study.db``, ``sweep.json``,
    ``best.yaml``."""
    return sweep_folder(outputs_dir(cfg), name)


def sweep_folder(outputs: str | Path, name: str) -> Path:
    return Path(outputs) / "sweep" / name


def storage_url(cfg: Config, name: str) -> str:
    """The study's SQLite storage, as optuna names it."""
    return f"sqlite:///{(sweep_dir(cfg, name) / STUDY_FILE).resolve()}"


def trial_experiment(experiment: str, name: str, number: int) -> str:
    return f"{experiment}@sweep{name}-t{number}"


def _optuna():
    """optuna, imported on first use (an extra of medalist), its per-trial logs silenced."""
    try:
        import optuna
    except ImportError:
        raise ConfigError("sweep: optuna is not installed; pip install 'medalist[sweep]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# ----------------------------------------------------------------------------- the checks


def apply_values(cfg: Config, values: dict, source: str) -> Config:
    """``cfg`` with ``values`` (dotted key -> value) applied as ``key=value`` overrides are.

    Raises:
        ConfigError: an unknown key (with the closest valid one) or a value the schema refuses.
    """
    merged = cfg.model_dump(mode="json")
    for key, value in values.items():
        merged = deep_merge(merged, parse_override(f"{key}={json.dumps(value)}"))
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(explain(exc, source)) from None


def _bounds(distribution) -> list:
    if isinstance(distribution, Choice):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def _check_key(cfg: Config, key: str, distribution) -> None:
    """Every value the key can take passes the schema, and the key changes what a fold learns
    without changing what trials are compared on."""
    for value in _bounds(distribution):
        apply_values(cfg, {key: value}, "sweep.space")
    section, _, rest = key.partition(".")
    if section in FIXED_SECTIONS:
        raise ConfigError(
            f"sweep.space: {key}: trials are compared on the same data, task and folds; "
            f"{section}.* stays fixed"
        )
    if key in FIXED_KEYS:
        raise ConfigError(f"sweep.space: {key}: {FIXED_KEYS[key]}")
    fixed = [k for k in KEYS_NOT_TRAINING if key == k or key.startswith(f"{k}.")]
    if section not in training_sections() or fixed:
        raise ConfigError(f"sweep.space: {key} does not change what a fold learns")


def plan_sweep(cfg: Config, sweep: SweepConfig) -> Plan:
    """Check the sweep against the experiment before anything trains.

    Raises:
        ConfigError: an empty space, a key or value the config refuses or that may not vary,
            folds that are not in the fold file, an unknown metric.
    """
    name = sweep.name or cfg.train.experiment
    if "/" in name or name in ("", ".", ".."):
        raise ConfigError(f"sweep.name: the experiment '{name}' is no folder name; name the sweep")
    if not sweep.space:
        raise ConfigError("sweep.space: empty; map dotted config keys to distributions")
    for key, distribution in sweep.space.items():
        _check_key(cfg, key, distribution)
    if sweep.epochs is not None and "train.epochs" in sweep.space:
        raise ConfigError("sweep.epochs: train.epochs is in sweep.space; set one of them")
    train = read_train(cfg)
    c = cfg.competition
    folds = load_folds(c.folds_dir, train, id_column=c.id_column, target_columns=c.target_columns)
    available = set(folds["fold"].astype(int))
    unknown = [fold for fold in sweep.folds if fold not in available]
    if unknown:
        raise ConfigError(
            f"sweep.folds: {unknown} not in the fold file (folds {sorted(available)})"
        )
    metrics = list(cfg.task.metrics or DEFAULT_METRICS[cfg.task.type])
    wanted = sweep.metric or metrics[0]
    try:
        metric = get_metric(wanted, cfg.task.metric_direction)
    except ConfigError as exc:
        raise ConfigError(f"sweep.metric: {exc}") from None
    if wanted not in metrics:  # scored by the trials too (the first still picks epochs)
        metrics.append(wanted)
    unseen = sorted(available - set(sweep.folds))
    return Plan(cfg, sweep, name, sweep_dir(cfg, name), metric, metrics, unseen)


# ----------------------------------------------------------------------------- the study


def _definition(plan: Plan) -> dict:
    """What makes the study's trials comparable: a study made for another is refused."""
    definition = {
        "experiment": plan.cfg.train.experiment,
        "space": {key: dist.model_dump() for key, dist in plan.sweep.space.items()},
        "folds": plan.sweep.folds,
        "epochs": plan.sweep.epochs,
        "metric": plan.metric.name,
        "training": training_config(plan.cfg),
    }
    return json.loads(json.dumps(definition))


def open_study(plan: Plan):
    """The optuna study of the sweep in ``study.db``, created or loaded.

    Raises:
        ConfigError: the study was made for another space, folds, epochs, metric or training
            config.
    """
    optuna = _optuna()
    plan.folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=plan.name,
        storage=storage_url(plan.cfg, plan.name),
        direction=plan.direction,
        load_if_exists=True,
    )
    definition, stored = _definition(plan), study.user_attrs.get("definition")
    if stored is None:
        study.set_user_attr("definition", definition)
    elif stored != definition:
        changed = [key for key in definition if stored.get(key) != definition[key]]
        raise ConfigError(
            f"sweep '{plan.name}': {plan.folder / STUDY_FILE} holds trials of another "
            f"{', '.join(changed)}; name another sweep.name, or delete {plan.folder} to start "
            "afresh"
        )
    sweep = plan.sweep
    # A resumed sweep draws on from where it stopped, not again from the first draw.
    seed = int(np.random.SeedSequence([sweep.seed, len(study.trials)]).generate_state(1)[0])
    if sweep.sampler == "tpe":
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.startup_trials)
    else:
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    study.pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=sweep.startup_trials)
        if sweep.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    return study


def _pending(study, total: int):
    """The trials to train, with the steps they reported: those a killed sweep left running
    (their number, and so their folder and finished folds, kept), then new ones until
    ``total`` trials were started."""
    optuna = _optuna()
    state = optuna.trial.TrialState
    for frozen in study.get_trials(deepcopy=False, states=(state.RUNNING,)):
        # The trial again by its storage id (optuna keeps it on the frozen trial only).
        yield optuna.trial.Trial(study, frozen._trial_id), set(frozen.intermediate_values)
    started = (state.COMPLETE, state.PRUNED, state.FAIL, state.RUNNING)
    while len(study.get_trials(deepcopy=False, states=started)) < total:
        yield study.ask(), set()


def _suggest(trial, key: str, distribution):
    if isinstance(distribution, Choice):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, FloatRange):
        return trial.suggest_float(key, distribution.low, distribution.high, log=distribution.log)
    return trial.suggest_int(
        key, distribution.low, distribution.high, step=distribution.step, log=distribution.log
    )


def trial_config(plan: Plan, number: int, values: dict) -> Config:
    """The experiment as trial ``number`` trains it (every fold of ``sweep.folds``)."""
    cfg = apply_values(plan.cfg, values, f"sweep trial {number}")
    cfg.competition.outputs_dir = str(plan.folder)
    cfg.train.experiment = trial_experiment(plan.cfg.train.experiment, plan.name, number)
    cfg.train.folds = list(plan.sweep.folds)
    cfg.train.seeds = []
    cfg.task.metrics = list(plan.metrics)
    cfg.tracking.trackers = []
    if plan.sweep.epochs is not None:
        cfg.train.epochs = plan.sweep.epochs
    return cfg


def _run_trial(plan: Plan, study, trial, reported: set[int]) -> None:
    """Train the trial fold by fold, reporting each fold's score to the pruner; tell the study
    how it ended (complete, pruned, or failed on its values)."""
    state = _optuna().trial.TrialState
    values = {key: _suggest(trial, key, dist) for key, dist in plan.sweep.space.items()}
    label = f"sweep {plan.name} trial {trial.number}"
    folds, scores, seconds = plan.sweep.folds, [], 0.0
    try:
        cfg = trial_config(plan, trial.number, values)
        log.info("%s: %s", label, values)
        for step, fold in enumerate(folds):
            one = cfg.model_copy(deep=True)
            one.train.folds = [fold]
            metrics = training.run(one, ledger=False)
            seconds += metrics.get("seconds", 0.0)
            scores.append(metrics["folds"][str(fold)][plan.metric.name])
            if step not in reported:
                trial.report(scores[-1], step)
            if step < len(folds) - 1 and trial.should_prune():
                log.info("%s: pruned after fold %s (%.5g)", label, fold, scores[-1])
                study.tell(trial, state=state.PRUNED)
                return
    except (ConfigError, TrainingDivergedError) as exc:  # the values' fault: the next trial
        log.warning("%s failed: %s", label, exc)
        trial.set_user_attr("error", str(exc))
        study.tell(trial, state=state.FAIL)
        return
    metrics = training.run(cfg, ledger=False)  # every fold is done: the OOF joined and scored
    metrics["seconds"] = round(seconds + metrics.get("seconds", 0.0), 1)  # this run's training
    _add_to_ledger(plan, cfg, metrics, values)
    score = float(np.mean(scores))
    log.info("%s: %s %.5g on folds %s", label, plan.metric.name, score, folds)
    study.tell(trial, score)


def _add_to_ledger(plan: Plan, cfg: Config, metrics: dict, values: dict) -> None:
    """The trial's row in the project's ledger, its values in the ``params`` column."""
    listed = cfg.model_copy(deep=True)
    listed.competition.outputs_dir = plan.cfg.competition.outputs_dir
    ledger = append_ledger(listed, metrics, device=str(process_state(cfg).device))
    ledger.loc[ledger.index[-1], PARAMS_COLUMN] = json.dumps(values)
    write_csv(ledger_path(plan.cfg), ledger)


# ----------------------------------------------------------------------------- the result


def _trial_record(plan: Plan, frozen) -> dict:
    scores = {str(plan.sweep.folds[step]): v for step, v in frozen.intermediate_values.items()}
    complete = frozen.state.name == "COMPLETE"
    return {
        "number": frozen.number,
        "experiment": trial_experiment(plan.cfg.train.experiment, plan.name, frozen.number),
        "state": frozen.state.name.lower(),
        "values": dict(frozen.params),
        "score": float(frozen.value) if complete else None,
        "fold_scores": scores,
        **({"error": frozen.user_attrs["error"]} if "error" in frozen.user_attrs else {}),
    }


def final_items(plan: Plan, values: dict, overrides=()) -> list[str]:
    """The ``key=value`` items of the final run: the sweep's own overrides (less those of the
    sweep, the name, the folds and the swept keys), every fold, the name ``<experiment>-best``
    and the chosen values."""
    replaced = ("train.experiment", "train.folds", *plan.sweep.space)
    kept = [
        item
        for item in overrides
        if not _key(item).startswith("sweep.") and _key(item) not in replaced
    ]
    if plan.cfg.train.folds is not None:
        kept.append("train.folds=null")
    kept.append(f"train.experiment={plan.cfg.train.experiment}-best")
    return kept + [f"{key}={json.dumps(value)}" for key, value in values.items()]


def _key(item: str) -> str:
    return item.split("=", 1)[0].strip()


def final_command(items: list[str], config_path=None) -> str:
    """``medalist run`` with the experiment file (when known) and ``items``, quoted for a
    shell."""
    config = ["-c", shlex.quote(str(config_path))] if config_path else []
    return " ".join(["medalist", "run", *config, *map(shlex.quote, items)])


def _write_best(plan: Plan, items: list[str], config_path, header: list[str]) -> None:
    """``best.yaml``: the experiment file (when known) with the final run's overrides merged
    in, without its sweep section; beside ``configs/base.yaml`` it runs the final run alone."""
    layer = load_yaml(Path(config_path).read_text(encoding="utf-8")) if config_path else None
    layer = layer or {}
    for item in items:
        layer = deep_merge(layer, parse_override(item))
    layer.pop("sweep", None)
    comment = "".join(f"# {line}\n" for line in header)
    write_text(plan.folder / BEST_FILE, comment + yaml.safe_dump(layer, sort_keys=False))


def _note(plan: Plan, best: dict, tried: int) -> str:
    unseen = plan.unseen
    judge = (
        f"by the folds no trial trained ({', '.join(map(str, unseen))})"
        if unseen
        else "by rows no trial saw"
    )
    return (
        f"The best {plan.metric.name} {best['score']:.5g} (trial {best['number']}) is optimistic: "
        f"it was selected among {tried} trials on the very folds {plan.sweep.folds} it is scored "
        "on, and the more trials, the more it flatters. Train the chosen values on every fold "
        f"(the command below) and judge them {judge}; better still on a holdout no trial saw, or "
        "by a nested search (a sweep inside each outer fold)."
    )


def summarize(plan: Plan, study, config_path=None, overrides=()) -> dict:
    """Write ``sweep.json`` (and ``best.yaml`` once a trial is complete) and log the result."""
    trials = [_trial_record(plan, t) for t in study.get_trials(deepcopy=False)]
    trials = [t for t in trials if t["state"] != "waiting"]
    complete = [t for t in trials if t["state"] == "complete"]
    counts = {s: sum(t["state"] == s for t in trials) for s in ("complete", "pruned", "fail")}
    result = {
        "name": plan.name,
        "experiment": plan.cfg.train.experiment,
        "metric": plan.metric.name,
        "direction": plan.direction,
        "folds": plan.sweep.folds,
        "epochs": plan.sweep.epochs,
        "space": {key: dist.model_dump() for key, dist in plan.sweep.space.items()},
        "trials_requested": plan.sweep.trials,
        "counts": counts,
        "optimistic": True,
        "best": None,
        "trials": trials,
    }
    if not complete:
        write_json(plan.folder / RESULT_FILE, result)
        raise MedalistError(
            f"sweep {plan.name}: no trial completed ({counts}); see {plan.folder / RESULT_FILE}"
        )
    sign = 1 if plan.metric.greater_is_better else -1
    best = max(complete, key=lambda t: (sign * t["score"], -t["number"]))
    items = final_items(plan, best["values"], overrides)
    command = final_command(items, config_path)
    note = _note(plan, best, len(trials))
    result |= {"best": best, "note": note, "command": command, "best_file": BEST_FILE}
    write_json(plan.folder / RESULT_FILE, result)
    header = [
        *textwrap.wrap(f"Sweep {plan.name}: {note}", 96),
        "Final run on every fold:",
        f"  {command}",
    ]
    _write_best(plan, items, config_path, header)
    chosen = (
        f"trial {best['number']}, {plan.metric.name} {best['score']:.5g} on folds "
        f"{plan.sweep.folds}, {best['values']}"
    )
    log.info("sweep %s: trials %s; best: %s", plan.name, counts, chosen)
    log.warning("sweep %s: %s", plan.name, note)
    log.info("sweep %s: the final run on every fold (%s):\n%s", plan.name, BEST_FILE, command)
    return result


def run(
    cfg: Config,
    sweep_cfg: SweepConfig | None = None,
    *,
    config_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Run the sweep's pending trials, then write ``sweep.json`` and ``best.yaml``.

    Args:
        cfg: the experiment.
        sweep_cfg: its sweep section (default ``cfg.sweep``).
        config_path, overrides: the experiment file and ``key=value`` items the sweep was called
            with, which the printed final command and ``best.yaml`` repeat.

    Raises:
        ConfigError: the sweep is refused before anything trains (see :func:`plan_sweep`).
        MedalistError: no trial completed.
    """
    sweep = sweep_cfg if sweep_cfg is not None else cfg.sweep
    plan = plan_sweep(cfg, sweep)
    if process_state(cfg).num_processes > 1:
        raise ConfigError("sweep: trials run one after the other; start it as one process")
    study = open_study(plan)
    for trial, reported in _pending(study, sweep.trials):
        _run_trial(plan, study, trial, reported)
    return summarize(plan, study, config_path, overrides)


def sweep_results(outputs: str | Path, experiment: str) -> list[dict]:
    """The ``sweep.json`` of every sweep of ``experiment`` under an outputs folder, by name."""
    found = []
    for path in sorted(Path(outputs).glob(f"sweep/*/{RESULT_FILE}")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("experiment") == experiment:
            found.append(result)
    return found


def trials_table(result: dict) -> pd.DataFrame:
    """A sweep's trials, one row each: number, state, score, fold scores, values."""
    rows = [
        {
            "trial": t["number"],
            "state": t["state"],
            "score": t["score"],
            **{f"fold {f}": s for f, s in t["fold_scores"].items()},
            **t["values"],
        }
        for t in result["trials"]
    ]
    return pd.DataFrame(rows)
