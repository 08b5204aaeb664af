"""The ``package`` stage: the Kaggle dataset an offline notebook needs, and that notebook.

Reads the packaged experiments (``kaggle.experiments``, or the members of ``kaggle.ensemble``,
or ``train.experiment``, and the experiments any of them stacks on) under ``outputs/``, the folds
manifest and the config. Writes
``<kaggle.output_dir>/<dataset slug>/``::

    dataset-metadata.json      title, id and license for `kaggle datasets create`
    medalist-bundle.json       the manifest: what to install, what to run, every file's size
    config.yaml                the resolved config of this command (submission settings)
    wheels/                    medalist, the project's own package, kaggle.wheels
    outputs/<exp>/             config.yaml, task.json, metrics.json, and each fold's prediction
                               files: weights (.safetensors), or a model fitted by its library
                               (a GBDT's features.json and model text or JSON file)
    outputs/ensemble/<name>/   weights.json, ensemble.yaml, task.json, cv.json (with an ensemble)
    backbones/<name>/          config, tokenizer and weight files of a text backbone folder (a
                               local one, or a hub id's cached snapshot); no weight files where
                               every experiment built from it ships whole-model files
    outputs/<exp>/fold<k>/*.merged.safetensors
                               with kaggle.merge_adapters: a LoRA fold's whole model, adapters
                               merged into the base (:mod:`medalist.offline.merge`)
    folds/folds.json           the folds manifest (ids and hashes, no rows)
    timing.json                the run-time estimate against kaggle.time_limit_hours

and ``<kaggle.output_dir>/notebook/`` (``predict.ipynb`` and ``kernel-metadata.json`` for
`kaggle kernels push`), plus ``inference/predict.py`` and ``predict.ipynb`` in the project. Only
the prediction files of each fold go in, as its ``scores.json`` records them
(:func:`medalist.layout.prediction_weights`): the weights that scored its OOF rows (the model's,
the EMA's or SWA's, or its snapshots), or the feature encoding and model files of a fold that a
library fitted. Such a fold's library (``scores.json`` ``learner``: lightgbm, xgboost, catboost)
is not bundled unless ``kaggle.wheels`` names it: the manifest records the version that trained
it, and the run checks that the library imports before predicting anything. The bundle is built
beside its final place, checked (:mod:`medalist.offline.scan`), then moved in.

A model on other experiments' predictions (``tabular.oof_features``) brings those experiments
along, packaged as any other (whether or not the ensemble blends them, each once) and listed
before it in the manifest, whose entry for it names them (``stacks``): the run predicts them
first and hands their test predictions to it (:mod:`medalist.offline.predict`), never a table
of the training machine. They must have been trained on the project's folds, as the model
itself: checked here, against the ``folds.json`` the bundle carries.

A seed-averaged experiment (``train.seeds``: :mod:`medalist.honest.seeds`) has no weights of its
own: each of its seeds, ``<exp>@s<seed>``, is packaged as any other experiment and listed before
it, and its entry names them (``seeds``) in place of weights. The run predicts the seeds and
averages their predictions as ``infer`` averages their test files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import yaml

import medalist
from medalist.config import Config, InferConfig, resolve_config
from medalist.data import read_test
from medalist.ensemble.inputs import check_manifest, expand_members
from medalist.errors import ConfigError, DataError
from medalist.io import sha256_file, write_json, write_text
from medalist.layout import (
    ensemble_folder,
    fold_dir,
    folds_files,
    prediction_weights,
    seed_experiment,
)
from medalist.modalities import get_modality
from medalist.modalities.text_model import CONFIG_FILE
from medalist.modalities.text_views import swapped
from medalist.offline import scan, wheels
from medalist.offline.merge import (
    check_mergeable,
    covers_config_build,
    holds_adapters,
    merge_file,
    merged_name,
    sample_tolerance,
)
from medalist.offline.notebook import notebook, write_entry_point
from medalist.offline.predict import BLENDERS, FORMAT, MANIFEST, read_task
from medalist.offline.timing import estimate
from medalist.prediction.infer import INFERENCE_KEYS, inference_settings, trained_folds
from medalist.pretrained.resolve import snapshot_label
from medalist.tasks import own_task

log = logging.getLogger(__name__)

PLACEHOLDER_OWNER = "INSERT_USERNAME"
BACKBONE_FILES = scan.ALLOWED - {".whl", ".py", ".ipynb"}
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")  # a backbone's weights, sharded or not
SAMPLE_ATOL = 1e-3  # the bundle's sample predictions against test.parquet


@dataclass
class Experiment:
    name: str
    cfg: Config  # the experiment's own resolved config (outputs/<name>/config.yaml)
    weights: dict[str, list[Path]]  # fold -> its prediction files (weights: their mean predicts)
    learners: list[str] = field(default_factory=list)  # what fitted its folds, when not the loop
    stacks: list[str] = field(default_factory=list)  # experiments whose predictions it reads
    seeds: list[str] = field(default_factory=list)  # train.seeds: the experiments it averages


@dataclass
class Plan:
    experiments: list[Experiment]  # each after the experiments it stacks on
    ensemble: dict | None = None
    backbones: dict[Path, str] = field(default_factory=dict)  # source folder -> bundle folder
    prediction: str | None = None  # the experiment submitted, without an ensemble
    merged: list[str] = field(default_factory=list)  # experiments shipped with merged adapters


def competition_slug(cfg: Config) -> str:
    return cfg.kaggle.competition or cfg.competition.name


def dataset_id(cfg: Config) -> str:
    return cfg.kaggle.dataset_id or f"{PLACEHOLDER_OWNER}/{competition_slug(cfg)}-medalist"


def notebook_id(cfg: Config) -> str:
    owner = dataset_id(cfg).split("/")[0]
    return cfg.kaggle.notebook_id or f"{owner}/{competition_slug(cfg)}-medalist-inference"


def bundle_dir(cfg: Config) -> Path:
    return Path(cfg.kaggle.output_dir) / dataset_id(cfg).split("/")[1]


# ------------------------------------------------------------------------------------- planning


def _experiment(outputs: Path, name: str, key: str) -> Experiment:
    """One trained experiment and its prediction weights, as ``infer`` would choose them; a
    seed-averaged one has none, but the names of its seeds' experiments."""

    folder = outputs / name
    for needed in ("config.yaml", "task.json"):
        if not (folder / needed).is_file():
            raise DataError(f"{key}: {folder / needed} not found; train '{name}' first")
    cfg = resolve_config(folder / "config.yaml")
    if cfg.train.seeds:  # the seed-averaged model has no weights of its own
        seeds = [seed_experiment(name, seed) for seed in cfg.train.seeds]
        return Experiment(name, cfg, {}, seeds=seeds)
    settings = folder / "infer.json"  # the views and merge behind its test.parquet
    if settings.is_file():
        saved = json.loads(settings.read_text(encoding="utf-8"))
        cfg = cfg.model_copy(
            update={"infer": cfg.infer.model_copy(update=_inference_keys(saved, settings))}
        )
        _check_swap_views(cfg, name, settings)
    # The saved config's outputs_dir is relative to the project, like every path here.
    cfg = cfg.model_copy(
        update={"competition": cfg.competition.model_copy(update={"outputs_dir": str(outputs)})}
    )
    folds = trained_folds(cfg)
    weights = {str(fold): prediction_weights(cfg, fold) for fold in folds}
    stacked = get_modality(cfg.modality).stacked_experiments(cfg)
    return Experiment(name, cfg, weights, _learners(cfg, folds), stacked)


def _with_stacked_on(outputs: Path, names: list[str], key: str) -> list[Experiment]:
    """The named experiments and those they stack on or average (``train.seeds``), each once and
    after every experiment it reads (the order the run predicts them in)."""
    planned: dict[str, Experiment] = {}

    def add(name: str, key: str, above: tuple[str, ...]) -> None:
        if name in above:
            chain = " -> ".join([*above[above.index(name) :], name])
            raise ConfigError(
                f"tabular.oof_features: the experiments stack on each other in a cycle ({chain}); "
                "no order predicts them"
            )
        if name in planned:
            return
        experiment = _experiment(outputs, name, key)
        for seed in experiment.seeds:
            add(seed, f"train.seeds of '{name}'", (*above, name))
        for member in experiment.stacks:
            add(member, f"tabular.oof_features of '{name}'", (*above, name))
        planned[name] = experiment

    for name in names:
        add(name, key, ())
    return list(planned.values())


def _check_stacked_folds(cfg: Config, plan: Plan) -> None:
    """Every experiment that stacks on others, and those others, were trained on the project's
    folds (the ``folds.json`` the bundle carries), as ``train`` and ``infer`` check."""
    stackers = [e for e in plan.experiments if e.stacks]
    if not stackers:
        return
    project = folds_files(cfg)[1]
    if not project.is_file():
        raise DataError(
            f"{project} not found: the bundle of '{stackers[0].name}' (tabular.oof_features) "
            "carries the folds manifest its experiments were trained on; run `medalist folds`"
        )
    manifest = json.loads(project.read_text(encoding="utf-8"))
    outputs = Path(cfg.competition.outputs_dir)
    for stacker in stackers:
        check_manifest(outputs / stacker.name, f"'{stacker.name}'", manifest)
        for member in stacker.stacks:
            label = f"tabular.oof_features of '{stacker.name}': '{member}'"
            check_manifest(outputs / member, label, manifest)


def _learners(cfg: Config, folds: list[int]) -> list[str]:
    """What fitted the folds when medalist's loop did not (``scores.json`` ``learner``)."""
    names = []
    for fold in folds:
        record = json.loads((fold_dir(cfg, fold) / "scores.json").read_text(encoding="utf-8"))
        if record.get("learner") and record["learner"] not in names:
            names.append(record["learner"])
    return names


def _libraries(learners: list[str]) -> dict[str, str]:
    """The installed packages among the learners (lightgbm, xgboost, catboost; not a network
    medalist trains), with the version that trained and predicted here."""
    found = {}
    for name in learners:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _inference_keys(saved: dict, source: Path) -> dict:
    """The known infer keys of an ``infer.json``, checked (a view name as the stage would); one
    written before ``precision`` existed predicted in fp32."""

    saved = {"precision": "fp32", **saved} if isinstance(saved, dict) else saved
    try:
        settings = InferConfig.model_validate({key: saved[key] for key in INFERENCE_KEYS})
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(
            f"{source}: not an infer settings file ({error}); run infer again"
        ) from None
    return {key: getattr(settings, key) for key in INFERENCE_KEYS}


def _check_swap_views(cfg: Config, name: str, settings: Path) -> None:
    """A swap view (``infer.tta``) needs ``text.swap`` in the experiment's own ``config.yaml``.

    The bundle predicts with that file (written by ``train``) and the views of ``infer.json``
    (written by ``infer``). ``text.swap`` changes no trained weight, so it may be given to
    ``infer`` alone, on its command line: ``infer.json`` then lists a swap view that the shipped
    config cannot make, and the bundle would fail on Kaggle, with no internet to fix it. Refused
    here, before anything is built.
    """
    views = [view for view in cfg.infer.tta if swapped(view)[0]]
    if not views or cfg.text.swap.columns:
        return
    raise ConfigError(
        f"text.swap: {settings} lists the swap TTA view(s) {views} of the last infer, but "
        f"{settings.parent / 'config.yaml'}, the config the bundle predicts '{name}' with, has "
        "no text.swap (it was given to infer only); set text.swap.columns and "
        "text.swap.classes in the experiment's config file, run `medalist train` with it (which "
        "rewrites that config.yaml; text.swap retrains no fold) and `medalist infer` again, "
        "then package"
    )


def _ensemble(cfg: Config, outputs: Path) -> tuple[dict, list[str]]:
    """The packaged ensemble: method, members (their experiments) and saved weights."""

    name = cfg.kaggle.ensemble
    folder = ensemble_folder(outputs, name)
    for needed in ("weights.json", "ensemble.yaml", "task.json"):
        if not (folder / needed).is_file():
            raise DataError(
                f"kaggle.ensemble: {folder / needed} not found; run `medalist ensemble`"
            )
    settings = yaml.safe_load((folder / "ensemble.yaml").read_text(encoding="utf-8"))
    method = settings["method"]
    if method not in BLENDERS:
        raise ConfigError(
            f"kaggle.ensemble: '{name}' is a {method}; a level-2 model cannot ship without "
            f"pickling, so only blends with saved weights can be packaged ({sorted(BLENDERS)})"
        )
    record = json.loads((folder / "weights.json").read_text(encoding="utf-8"))
    saved, picks = record["weights"], record.get("picks")  # picks: a mask blend's integers
    members, experiments = [], []
    for member, folders in expand_members(settings["experiments"], outputs):
        names = []
        for path in folders:
            if outputs.resolve() not in path.resolve().parents:
                raise DataError(
                    f"kaggle.ensemble: member '{member}' is the folder {path}, outside "
                    f"{outputs}; only experiments trained here have weights to package"
                )
            names.append(path.resolve().relative_to(outputs.resolve()).as_posix())
        if member not in saved:
            raise DataError(f"kaggle.ensemble: {folder}/weights.json has no weight for '{member}'")
        entry = {"name": member, "experiments": names, "weight": float(saved[member])}
        if picks is not None:
            entry["picks"] = int(picks[member])
        members.append(entry)
        experiments += [n for n in names if n not in experiments]
    return {"name": name, "method": method, "members": members}, experiments


def make_plan(cfg: Config) -> Plan:
    """What goes in the bundle; every input is checked here, before any work."""
    outputs = Path(cfg.competition.outputs_dir)
    ensemble, key, prediction = None, "kaggle.experiments", None
    if cfg.kaggle.ensemble:
        ensemble, names = _ensemble(cfg, outputs)
        key = "kaggle.ensemble"
    else:
        names = list(cfg.kaggle.experiments) or [cfg.train.experiment]
        if len(names) > 1:
            raise ConfigError(
                f"kaggle.experiments: {names} need kaggle.ensemble to say how they blend"
            )
        prediction = names[0]
    plan = Plan(_with_stacked_on(outputs, names, key), ensemble, prediction=prediction)
    _check_stacked_folds(cfg, plan)
    plan.merged = _to_merge(cfg, plan)
    for experiment in plan.experiments:
        carried = _packaged_folder(experiment)
        backbone = carried[1] if carried else None
        if backbone is not None and backbone.resolve() not in plan.backbones:
            if not backbone.is_dir():
                raise DataError(f"{experiment.name}: {carried[0]} folder {backbone} not found")
            taken = set(plan.backbones.values())
            # A hub id's cached snapshot is named by its commit: the bundle names it by the model.
            stem = snapshot_label(backbone) or backbone.name
            label, index = stem, 1
            while f"backbones/{label}" in taken:
                index += 1
                label = f"{stem}-{index}"
            plan.backbones[backbone.resolve()] = f"backbones/{label}"
    wheels.check_sources(cfg)
    if cfg.kaggle.timing_rows:
        read_test(cfg)  # the estimate needs the local test table
    return plan


def _to_merge(cfg: Config, plan: Plan) -> list[str]:
    """The experiments whose adapters ``kaggle.merge_adapters`` merges: those whose fold files
    hold adapters; each checked, before any model is built."""
    if not cfg.kaggle.merge_adapters:
        return []
    names = [e.name for e in plan.experiments if holds_adapters(e.weights)]
    if not names:
        raise ConfigError(
            f"kaggle.merge_adapters: none of the packaged experiments "
            f"({[e.name for e in plan.experiments]}) trained adapters (text.lora.enabled); "
            "there is nothing to merge: set kaggle.merge_adapters=false"
        )
    for experiment in plan.experiments:
        if experiment.name in names:
            check_mergeable(experiment.cfg, experiment.name)
    return names


def _packaged_folder(experiment: Experiment) -> tuple[str, Path] | None:
    """The config key and local folder the modality needs besides the weights (a text
    backbone's config and tokenizer), if any; none for a seed average, whose seeds carry it."""
    if experiment.seeds:
        return None
    return get_modality(experiment.cfg.modality).packaged_folder(experiment.cfg)


# ------------------------------------------------------------------------------------- writing


def _place(source: Path, target: Path) -> None:
    """Copy a file; safetensors weights (gigabytes, and only ever replaced whole) are hard-linked
    if possible. Everything else is copied: a library may rewrite its model file in place when
    a fold is fitted again (XGBoost's ``save_model`` does), which would change a linked copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.suffix == ".safetensors":
        try:
            os.link(source, target)
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


def _copy_experiment(experiment: Experiment, outputs: Path, root: Path, plan: Plan) -> dict:
    source = outputs / experiment.name
    target = f"outputs/{experiment.name}"
    # postprocess.json: the threshold and minimum size the submission applies to masks, or
    # tta.json's (searched on TTA OOF masks) while its views are infer.json's, as locally.
    names = ("config.yaml", "task.json", "metrics.json", "postprocess.json")
    for name in (*names, "tta.json", "infer.json"):
        if (source / name).is_file():
            _place(source / name, root / target / name)
    entry: dict = {"config": f"{target}/config.yaml", "task": f"{target}/task.json"}
    if experiment.seeds:  # no weights: the mean of its seeds' predictions
        return _with_cv({**entry, "seeds": list(experiment.seeds), "weights": {}}, source)
    # The views and merge of the last `infer` (test.parquet's), not the training config's.
    entry["infer"] = inference_settings(experiment.cfg)
    if experiment.learners:  # folds fitted by a library: the run checks that it imports
        entry["learners"] = experiment.learners
        entry["libraries"] = _libraries(experiment.learners)
    # Paths of the training machine mean nothing on Kaggle: the fine-tuned weights replace the
    # pretrained ones, and a text backbone folder (its config, tokenizer) travels in the bundle.
    entry["paths"] = {"model.pretrained_path": None}
    # Nor does its hub cache: the bundle's models are built without pretrained weights.
    entry["settings"] = {"model.pretrained": False}
    merge = experiment.name in plan.merged
    task = read_task(source / "task.json") if merge else None
    entry["weights"] = {}
    for fold, files in experiment.weights.items():
        entry["weights"][fold] = []
        for path in files:
            relative = f"{target}/{path.parent.name}/"
            if merge:  # the whole model, built without adapters (no peft)
                relative += merged_name(path)
                entry["settings"] |= merge_file(experiment.cfg, task, path, root / relative)
            else:
                relative += path.name
                _place(path, root / relative)
            entry["weights"][fold].append(relative)
    if merge:
        entry["adapters"] = "merged"
    if experiment.stacks:  # predicted after these, on the folds manifest the bundle carries
        entry["stacks"] = list(experiment.stacks)
        entry["paths"]["competition.folds_dir"] = "folds"
    carried = _packaged_folder(experiment)
    if carried is not None:
        key, folder = carried
        entry["paths"][key] = plan.backbones[folder.resolve()]
    return _with_cv(entry, source)


def _with_cv(entry: dict, source: Path) -> dict:
    """The entry with the experiment's CV (``cv``), where its ``metrics.json`` records one."""
    metrics_file = source / "metrics.json"
    if metrics_file.is_file():
        entry["cv"] = json.loads(metrics_file.read_text(encoding="utf-8")).get("cv")
    return entry


def _log_libraries(experiments: dict, install: list[str]) -> None:
    """Say which libraries the bundle leaves to the image, and how to pin one instead."""
    bundled = {requirement.split("==")[0].lower().replace("-", "_") for requirement in install}
    needed: dict[str, str] = {}
    for entry in experiments.values():
        needed |= entry.get("libraries", {})
    for name, version in sorted(needed.items()):
        if name.lower().replace("-", "_") in bundled:
            continue
        log.info(
            "%s: the bundle uses the Kaggle image's %s (%s trained here; the run stops if it "
            "cannot import it and warns on another version); to ship this one, add "
            "'%s==%s' to kaggle.wheels",
            name,
            name,
            version,
            name,
            version,
        )


def _weightless_backbones(plan: Plan, experiments: dict, root: Path) -> set[Path]:
    """The backbone folders whose weights no packaged model reads: every experiment built from
    one ships files that hold its whole model (merged adapters, a full fine-tune's folds:
    :func:`covers_config_build`). Those experiments' entries are pointed at the folder's config,
    the model built from it alone."""
    users: dict[Path, list[tuple[str, str]]] = {folder: [] for folder in plan.backbones}
    for experiment in plan.experiments:
        carried = _packaged_folder(experiment)
        if carried is not None:
            users[carried[1].resolve()].append((experiment.name, carried[0]))
    weightless = set()
    for folder, named in users.items():
        if named and all(
            covers_config_build(root, experiments[name], key, folder) for name, key in named
        ):
            weightless.add(folder)
            for name, key in named:
                experiments[name]["paths"][key] = f"{plan.backbones[folder]}/{CONFIG_FILE}"
            log.info(
                "backbone %s: shipped without its weights; %s build it from its config and load "
                "their whole-model files",
                folder,
                [name for name, _ in named],
            )
    return weightless


def _copy_backbone(source: Path, target: Path, weights: bool = True) -> None:
    """A backbone folder's config, tokenizer and (with ``weights``) safetensors files; nothing
    pickled."""
    left_out = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        if not weights and any(path.match(pattern) for pattern in WEIGHT_FILES):
            continue
        if path.suffix.lower() in BACKBONE_FILES:
            _place(path, target / path.relative_to(source))
        else:
            left_out.append(path.name)
    if left_out:
        log.info("backbone %s: left out %s (not needed, or pickled)", source, left_out)


def _metadata(cfg: Config) -> dict:
    slug = competition_slug(cfg)
    title = cfg.kaggle.dataset_title or f"{slug} medalist bundle"[:50]
    return {
        "title": title,
        "id": dataset_id(cfg),
        "licenses": [{"name": cfg.kaggle.dataset_license}],
    }


def _profiles(cfg: Config) -> dict:
    k = cfg.kaggle
    return {
        "kaggle": {"input": k.input_dir, "working": k.working_dir},
        "local": {"data": cfg.competition.data_dir, "working": k.local_working_dir},
    }


def _check_against_local(
    outputs: Path, id_column: str, name: str, test, values, merged: bool = False, atol=SAMPLE_ATOL
) -> None:
    """The bundle's predictions of the sample must be the experiment's own ``test.parquet``
    (within ``atol``: wider for adapters merged in half precision, :func:`sample_tolerance`)."""
    local = outputs / name / "test.parquet"
    if not local.is_file():
        log.info("%s: no %s to compare the bundle's predictions with", name, local)
        return
    table = pd.read_parquet(local)
    table.index = table[id_column].astype(str)
    try:
        expected = table.loc[test[id_column].astype(str)].drop(columns=[id_column]).to_numpy()
    except KeyError:
        raise DataError(
            f"{local} does not hold the ids of the test table; run infer again"
        ) from None
    if expected.shape != values.shape or not np.allclose(expected, values, rtol=0, atol=atol):
        hint = " (or ship its adapters: kaggle.merge_adapters=false)" if merged else ""
        raise DataError(
            f"{name}: the bundle predicts other values than {local} (largest difference "
            f"{np.max(np.abs(expected - values)) if expected.shape == values.shape else 'shape'}, "
            f"tolerance {atol:g}); run `medalist infer` again for {name} with the settings to "
            f"ship (it records its views in infer.json) and package after it{hint}"
        )
    if merged:
        log.info(
            "%s: with its adapters merged the bundle predicts the sample within %.2g of %s",
            name,
            np.max(np.abs(expected - values)),
            local,
        )


def _timing(cfg: Config, root: Path, manifest: dict) -> dict | None:
    k = cfg.kaggle
    if not k.timing_rows:
        return None
    total = k.test_rows or len(read_test(cfg))
    data = Path(cfg.competition.data_dir)
    report, samples = estimate(
        root, manifest["experiments"], data, k.timing_rows, total, k.time_limit_hours
    )
    outputs = Path(cfg.competition.outputs_dir)
    own = own_task(cfg)
    for name, (test, values) in samples.items():
        if own is not None:  # masks: against the experiment's own test masks
            ids = test[cfg.competition.id_column].tolist()
            own.own_predictions.check_against_local(outputs / name, name, ids, values)
            continue
        entry = manifest["experiments"][name]
        # A seed average is as close to its test.parquet as the least exact of its seeds.
        shipped = [manifest["experiments"][seed] for seed in entry.get("seeds", [])] or [entry]
        merged = any(one.get("adapters") == "merged" for one in shipped)
        atol = max(sample_tolerance(root, one, SAMPLE_ATOL) for one in shipped)
        _check_against_local(outputs, cfg.competition.id_column, name, test, values, merged, atol)
    write_json(root / "timing.json", report)
    return {key: value for key, value in report.items() if key != "models"}


def _files(root: Path) -> dict:
    return {
        path.relative_to(root).as_posix(): {
            "size": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }


def _kernel_metadata(cfg: Config) -> dict:
    identifier = notebook_id(cfg)
    machine = {"machine_shape": cfg.kaggle.accelerator} if cfg.kaggle.accelerator else {}
    return {
        "id": identifier,
        "title": identifier.split("/")[1].replace("-", " "),
        "code_file": "predict.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": cfg.kaggle.gpu,
        "enable_internet": False,
        "dataset_sources": [dataset_id(cfg)],
        "competition_sources": [competition_slug(cfg)],
        "kernel_sources": [],
        "model_sources": [],
        **machine,
    }


def _write_notebook(cfg: Config) -> Path:
    folder = Path(cfg.kaggle.output_dir) / "notebook"
    write_text(folder / "predict.ipynb", nbformat.writes(notebook()) + "\n")
    write_json(folder / "kernel-metadata.json", _kernel_metadata(cfg))
    if Path("inference").is_dir():  # the project's own copy of the entry point
        write_entry_point("inference")
    return folder


def _swap(staging: Path, target: Path) -> None:
    """Put the finished bundle in place; the previous one is removed only after."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def build(cfg: Config, plan: Plan, root: Path) -> dict:
    """Write every file of the bundle into ``root``; returns the manifest."""
    outputs = Path(cfg.competition.outputs_dir)
    built = wheels.collect(cfg, root / "wheels", Path("."))
    experiments = {e.name: _copy_experiment(e, outputs, root, plan) for e in plan.experiments}
    weightless = _weightless_backbones(plan, experiments, root)
    for source, relative in plan.backbones.items():
        _copy_backbone(source, root / relative, weights=source not in weightless)
    if plan.ensemble:
        folder = ensemble_folder(outputs, plan.ensemble["name"])
        for name in ("weights.json", "ensemble.yaml", "task.json", "cv.json", "postprocess.json"):
            if (folder / name).is_file():
                _place(folder / name, root / "outputs" / "ensemble" / plan.ensemble["name"] / name)
    folds_manifest = folds_files(cfg)[1]
    if folds_manifest.is_file():
        _place(folds_manifest, root / "folds" / "folds.json")
    write_text(root / "config.yaml", cfg.to_yaml())
    write_json(root / "dataset-metadata.json", _metadata(cfg))
    manifest = {
        "format": FORMAT,
        "medalist": medalist.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "competition": competition_slug(cfg),
        "id_column": cfg.competition.id_column,
        "dataset": _metadata(cfg),
        "install": [wheels.requirement(w) for w in built],
        "profiles": _profiles(cfg),
        "experiments": experiments,
        "ensemble": plan.ensemble,
        "prediction": plan.prediction,
    }
    _log_libraries(experiments, manifest["install"])
    manifest["timing"] = _timing(cfg, root, manifest)
    manifest["files"] = _files(root)
    write_json(root / MANIFEST, manifest)
    return manifest


def run(cfg: Config) -> Path:
    """Write the bundle and the notebook; returns the bundle folder."""
    plan = make_plan(cfg)
    target = bundle_dir(cfg)
    if dataset_id(cfg).startswith(f"{PLACEHOLDER_OWNER}/"):
        log.warning("kaggle.dataset_id is not set: set your Kaggle user name before uploading")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        manifest = build(cfg, plan, staging)
        scan.check_bundle(staging, cfg.competition.data_dir)
        _swap(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    folder = _write_notebook(cfg)
    size = sum(info["size"] for info in manifest["files"].values())
    log.info(
        "bundle %s: %d files, %.1f MB (%d wheel(s), %d prediction file(s)); notebook in %s",
        target,
        len(manifest["files"]) + 1,
        size / 1e6,
        len(manifest["install"]),
        sum(
            len(files) for e in manifest["experiments"].values() for files in e["weights"].values()
        ),
        folder,
    )
    return target
