"""Where every artifact of a project lives, and what makes a trained fold stale.

Every stage finds its inputs and writes its outputs through these functions; the folders come
from the ``competition`` config section (defaults shown)::

    data/train.csv, test.csv, sample_submission.csv     train_path, test_path, sample_path
    folds/folds.csv, folds/folds.json                   folds_files
    models/weights.json                                 weights_manifest (pretrained files)
    outputs/<experiment>/                               experiment_dir
        task.json, oof.parquet, test.parquet, metrics.json, log.csv
        fold<k>/ (full/ for a full fit)                 fold_dir
            model.safetensors                           the trained weights (MODEL_WEIGHTS)
            ema|swa|snapshot<c>.safetensors             other weights (weights_file)
            scores.json                                 scores, training_hash, prediction_weights
            checkpoint/step-<n>/                        resumable state while training
    outputs/<experiment>@s<seed>/                       seed_experiment (train.seeds)
    outputs/sanity/<experiment>/                        sanity_dir (shuffled-label run, sanity.json)
    outputs/adversarial/<experiment>/                   adversarial_dir (adversarial.json, weights)
    outputs/sweep/<name>/                               a sweep (trials, study.db, sweep.json, best.yaml)
    outputs/pseudo/<round>/teachers.json                pseudo_dir
    outputs/distill/<teacher>/fold<k>.parquet, teacher.json   distill_dir (distill_record)
    outputs/ensemble/<name>/                            ensemble_dir
    outputs/mlm/<name>/                                 mlm_dir
    outputs/mlm/.<name>.resume/                         mlm_resume_dir (while pretraining)
    outputs/ledger.csv                                  ledger_path
    outputs/tracking/                                   tracking_dir (wandb, mlflow offline)
    outputs/.stamps/<experiment>.<stage>.json           stamp_path (``medalist run``)
    submissions/<name>.csv (and .yaml)                  submission_path

A fold is trained again when :func:`training_hash` changes: it covers the config sections marked
``retrains`` (see :func:`medalist.config.schema.training_sections`), the starting weights by
content, and the pseudo labels or distilled soft targets a student trains on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medalist.config import Config
from medalist.config.schema import added_sections, training_sections
from medalist.errors import ConfigError, DataError
from medalist.io import sha256_file
from medalist.modalities import get_modality

FULL_FIT = -1  # the "fold" of a model trained on every row
MODEL_WEIGHTS = "model.safetensors"
LEGACY_EVAL_WEIGHTS = "ema.safetensors"  # an older medalist's file for EMA and SWA weights alike
# Keys of the training sections that do not change what a fold learns: which folds run, progress
# bars, the speed knobs (compiled or not, memory layout, recomputed activations: the same maths up
# to float rounding), so that a run resumes across a change of them, and the seed list of a
# multi-seed run (each seed trains as its own experiment, with its own train.seed), and the swap
# TTA view's class permutation (predictions only). Dotted paths into the config.
KEYS_NOT_TRAINING = (
    "train.folds",
    "train.progress",
    "train.compile",
    "train.channels_last",
    "train.seeds",
    "model.grad_checkpointing",
    "text.swap",
    # Chosen on the OOF masks after training, applied by the submission.
    "segmentation.threshold",
    "segmentation.min_size",
    "segmentation.thresholds",
    "segmentation.min_sizes",
    "segmentation.connectivity",
)
# Keys added since folds were first fingerprinted, left out while at their default (what training
# did before they existed), so that folds trained earlier are not trained again for nothing.
KEYS_ADDED = {
    "model.pretrained": False,
    "folds.test_like": None,
    "text.template": {"format": None, "budgets": {}},
    "text.lora.quantize": None,
}


# ----------------------------------------------------------------------------- the competition


def train_path(cfg: Config) -> Path:
    return Path(cfg.competition.data_dir) / cfg.competition.train_csv


def test_path(cfg: Config) -> Path:
    return Path(cfg.competition.data_dir) / cfg.competition.test_csv


def sample_path(cfg: Config) -> Path:
    return Path(cfg.competition.data_dir) / cfg.competition.sample_submission


def folds_files(cfg: Config) -> list[Path]:
    """``folds.csv`` (the fold of each row) and ``folds.json`` (its manifest)."""
    folder = Path(cfg.competition.folds_dir)
    return [folder / "folds.csv", folder / "folds.json"]


def weights_manifest() -> Path:
    """The record of the pretrained files resolved through the hub (``medalist weights``),
    in the project folder beside ``data/``: a project's cache may move, its record stays."""
    return Path("models") / "weights.json"


# ----------------------------------------------------------------------------- experiments


def outputs_dir(cfg: Config) -> Path:
    return Path(cfg.competition.outputs_dir)


def experiment_dir(cfg: Config) -> Path:
    return outputs_dir(cfg) / cfg.train.experiment


def fold_name(fold: int) -> str:
    """``fold3``, or ``full`` for a full fit: a fold's folder, and its key in records."""
    return "full" if fold == FULL_FIT else f"fold{fold}"


def fold_dir(cfg: Config, fold: int) -> Path:
    return experiment_dir(cfg) / fold_name(fold)


def weights_file(name: str) -> str:
    """The file of the fold's weights called ``name`` (``model``, ``ema``, ``swa``)."""
    return f"{name}.safetensors"


def prediction_weights(cfg: Config, fold: int) -> list[Path]:
    """The weight files a fold predicts with; its prediction is the mean of theirs.

    Training records them in ``fold{k}/scores.json`` (``prediction_weights``): the weights that
    scored the OOF rows (``model``, ``ema`` or ``swa.safetensors``), or the cycle snapshots of a
    snapshot ensemble. ``infer`` (test set and TTA OOF) and ``package`` read the record, so they
    predict with the weights the CV was measured with, whatever the config says now.

    Raises:
        DataError: the fold has no ``scores.json`` (its training never finished).
    """
    folder = fold_dir(cfg, fold)
    record = folder / "scores.json"
    if not record.is_file():
        raise DataError(f"{record} not found: fold {fold} is not trained; run train first")
    names = json.loads(record.read_text()).get("prediction_weights")
    if names is None:  # a fold trained before the record existed
        names = [_legacy_weights(cfg, folder)]
    return [folder / name for name in names]


def _legacy_weights(cfg: Config, folder: Path) -> str:
    """An older medalist scored the OOF with the EMA or SWA weights when it saved any."""
    averaged = cfg.tricks.ema.enabled or cfg.tricks.swa.enabled
    if averaged and (folder / LEGACY_EVAL_WEIGHTS).is_file():
        return LEGACY_EVAL_WEIGHTS
    return MODEL_WEIGHTS


def has_prediction_weights(cfg: Config, fold: int) -> bool:
    """Whether the fold finished training and every file it predicts with is there."""
    if not (fold_dir(cfg, fold) / "scores.json").is_file():
        return False
    return all(path.is_file() for path in prediction_weights(cfg, fold))


def training_config(cfg: Config) -> dict:
    """The config as training sees it: the sections that change a fold's weights."""
    data = _without_keys_not_training(cfg.model_dump(mode="json", include=set(training_sections())))
    for key, default in KEYS_ADDED.items():
        holder, name = _holder(data, key)
        if holder.get(name) == default:
            del holder[name]
    for section in added_sections():  # likewise whole sections, while at their defaults
        default = _without_keys_not_training(
            {section: type(getattr(cfg, section))().model_dump(mode="json")}
        )
        if data[section] == default[section]:
            del data[section]
    return data


def _without_keys_not_training(data: dict) -> dict:
    """``data`` (a config dump, or some of its sections) without :data:`KEYS_NOT_TRAINING`."""
    for key in KEYS_NOT_TRAINING:
        if key.split(".")[0] in data:
            holder, name = _holder(data, key)
            holder.pop(name, None)
    return data


def _holder(data: dict, key: str) -> tuple[dict, str]:
    """The dict that holds the dotted ``key`` in ``data``, and the key's last part."""
    *parents, name = key.split(".")
    for parent in parents:
        data = data[parent]
    return data, name


def training_hash(cfg: Config) -> str:
    """Hash of what changes a fold's weights (not which folds run, inference or submission).

    The starting weights count by content, so folds trained from a backbone that MLM pretraining
    has since rewritten in place are trained again.
    """
    data = training_config(cfg)
    data["backbone_weights"] = [sha256_file(path) for path in starting_weights(cfg)]
    if cfg.train.pseudo_round is not None:  # new labels for the same round retrain the folds
        record = pseudo_dir(cfg, cfg.train.pseudo_round) / "teachers.json"
        data["pseudo_labels"] = sha256_file(record) if record.is_file() else None
    if cfg.distill.teacher is not None:  # new soft targets from the teacher retrain the folds
        record = distill_record(cfg)
        data["distilled_targets"] = sha256_file(record) if record.is_file() else None
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def starting_weights(cfg: Config) -> list[Path]:
    """The local files a model starts from (the modality says which), for the fingerprint."""
    return get_modality(cfg.modality).starting_weights(cfg)


# ----------------------------------------------------------------------------- other stages


def seed_experiment(experiment: str, seed: int) -> str:
    """The experiment one seed of a multi-seed run trains as: ``<experiment>@s<seed>``, the
    form the ensemble (``'exp@*'``) and the ledger's seed groups read."""
    return f"{experiment}@s{seed}"


def sanity_outputs(cfg: Config) -> Path:
    """The outputs folder of the shuffled-label runs: the real experiments' files, ledger and
    trackers are never written by them."""
    return outputs_dir(cfg) / "sanity"


def sanity_dir(cfg: Config) -> Path:
    """``outputs/sanity/<experiment>/``: the shuffled-label run and its ``sanity.json``."""
    return sanity_outputs(cfg) / cfg.train.experiment


def sanity_file(outputs: Path, experiment: str) -> Path:
    """An experiment's ``sanity.json`` under an outputs folder (the report reads it)."""
    return Path(outputs) / "sanity" / experiment / "sanity.json"


def adversarial_outputs(cfg: Config) -> Path:
    """The outputs folder of the train-versus-test runs: the real experiments' files, ledger and
    trackers are never written by them."""
    return outputs_dir(cfg) / "adversarial"


def adversarial_dir(cfg: Config) -> Path:
    """``outputs/adversarial/<experiment>/``: the train-versus-test run (its table in ``data/``,
    its folds in ``folds/``), ``adversarial.json``, ``weights.csv`` and ``test_like.csv``."""
    return adversarial_outputs(cfg) / cfg.train.experiment


def adversarial_file(outputs: Path, experiment: str) -> Path:
    """An experiment's ``adversarial.json`` under an outputs folder (the report reads it)."""
    return Path(outputs) / "adversarial" / experiment / "adversarial.json"


def pseudo_dir(cfg: Config, round_: int) -> Path:
    return outputs_dir(cfg) / "pseudo" / str(round_)


def distill_dir(cfg: Config) -> Path:
    """``outputs/distill/<teacher>/``: ``distill.teacher``'s soft targets of each fold's
    training rows (``fold<k>.parquet``) and their record (:func:`distill_record`)."""
    if cfg.distill.teacher is None:
        raise ConfigError("distill.teacher: not set; name the teacher experiment")
    return outputs_dir(cfg) / "distill" / cfg.distill.teacher


def distill_record(cfg: Config) -> Path:
    """``teacher.json``: the teacher, its folds' hash, the temperature and each file's sha256;
    its hash is part of the student's fingerprint (:func:`training_hash`)."""
    return distill_dir(cfg) / "teacher.json"


def ensemble_dir(cfg: Config, name: str) -> Path:
    return ensemble_folder(outputs_dir(cfg), name)


def ensemble_folder(outputs: Path, name: str) -> Path:
    """An ensemble's folder under an outputs folder (the report reads one without a config)."""
    return Path(outputs) / "ensemble" / name


def mlm_dir(cfg: Config) -> Path:
    return outputs_dir(cfg) / "mlm" / cfg.mlm.name


def mlm_resume_dir(cfg: Config) -> Path:
    """Where pretraining keeps its checkpoints: beside its folder, never inside it."""
    folder = mlm_dir(cfg)
    return folder.with_name(f".{folder.name}.resume")


def ledger_path(cfg: Config) -> Path:
    return outputs_dir(cfg) / "ledger.csv"


def stamp_path(cfg: Config, stage: str) -> Path:
    return outputs_dir(cfg) / ".stamps" / f"{cfg.train.experiment}.{stage}.json"


def submission_path(cfg: Config, name: str | None = None) -> Path:
    """``submissions/<name>.csv``; the name defaults to ``submission.name`` or the experiment."""
    name = name or cfg.submission.name or cfg.train.experiment
    return Path(cfg.competition.submissions_dir) / f"{name}.csv"


def tracking_dir(cfg: Config) -> Path:
    """Where offline tracker runs are written: ``tracking.dir`` or ``<outputs>/tracking``."""
    return Path(cfg.tracking.dir or outputs_dir(cfg) / "tracking").resolve()
