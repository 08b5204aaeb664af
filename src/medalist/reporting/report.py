"""``medalist report``: one self-contained HTML page about experiments and an ensemble.

Sections: CV per metric and per fold for every experiment (and the ensemble's nested CV), the
correlation of their OOF predictions, the seeds of a multi-seed experiment (each seed's CV, mean,
standard deviation, the seed-averaged model's CV), the leak alarm's result where ``medalist
sanity`` ran, the train-versus-test classifier's where ``medalist adversarial`` ran, the
ensemble's weights with its in-sample and nested CV,
and diagnostics of the ensemble (or of the best experiment): a confusion matrix and a
calibration curve for classification, residuals for regression.

A task that writes its own predictions (``task.own_predictions``: masks, not table rows) shows
the same sections from its own files: the scores its experiments and ensemble recorded
(``metrics.json``, the ensemble's ``cv.json``), the correlation and the diagnostics its
``own_predictions`` computes from the OOF files. Figures are drawn with
matplotlib's Agg canvas (no display, no global pyplot state) and embedded as base64 PNGs, so
the file opens anywhere, offline.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.calibration import calibration_curve
from sklearn.metrics import confusion_matrix

from medalist.config import Config
from medalist.ensemble.inputs import (
    Inputs,
    align_oof,
    expand_members,
    labelled_inputs,
    read_prediction,
)
from medalist.ensemble.nested import score
from medalist.errors import ConfigError, MedalistError
from medalist.honest.sweep import sweep_results, trials_table
from medalist.io import write_text
from medalist.layout import adversarial_file, ensemble_folder, sanity_file
from medalist.reporting.importance import Importance, feature_importance, gain_meaning

log = logging.getLogger(__name__)


@dataclass
class Subject:
    """One column of the report: an experiment (seed-averaged) or the ensemble."""

    name: str
    oof: np.ndarray | None  # (n_rows, n_columns), train row order; None: read from ``folder``
    scores: dict
    folder: Path | None = None  # its OOF files, for a task with its own predictions


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot, no backend switch), ``png``-ready.

    matplotlib is imported here, by the report alone: it takes a second to load.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MedalistError("the report needs matplotlib (pip install matplotlib)") from exc
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png(figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _config_of(outputs_dir: Path, experiments: list, ensemble: str | None) -> Config:
    """The resolved config saved beside the first experiment (or the ensemble)."""
    folders = [ensemble_folder(outputs_dir, ensemble)] if ensemble else []
    folders += [outputs_dir / e for e in experiments if isinstance(e, str)]
    for folder in folders:
        if (folder / "config.yaml").is_file():
            data = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
            return Config.model_validate(data)
    raise ConfigError("report: no config.yaml beside the experiments; pass the config (-c)")


def _subject(inputs: Inputs, name: str, folders: list[Path]) -> Subject:
    label = f"experiment '{name}'"
    oof = np.mean(
        [align_oof(read_prediction(f / "oof.parquet", label), inputs, label) for f in folders],
        axis=0,
    )
    return Subject(
        name, oof, score(inputs.task.metrics, inputs.y, oof, inputs.fold, inputs.test_like)
    )


def _recorded(own, name: str, folders: list[Path]) -> Subject:
    """An experiment of a task with its own predictions: the scores it recorded, its folder."""
    if len(folders) != 1:
        raise ConfigError(
            f"report: '{name}' names {len(folders)} folders; experiments whose predictions are "
            "not table rows are reported one folder each"
        )
    return Subject(name, None, own.report_scores(folders[0]), folders[0])


def _members(outputs_dir: Path, experiments: list, ensemble: str | None) -> list:
    if experiments or not ensemble:
        return expand_members(list(experiments), outputs_dir)
    cv = json.loads((ensemble_folder(outputs_dir, ensemble) / "cv.json").read_text("utf-8"))
    # A table ensemble lists each member's folders (one per seed), a mask ensemble its folder.
    return [
        (name, [Path(f) for f in info.get("folders", [info.get("folder")])])
        for name, info in cv["members"].items()
    ]


def fold_plot(subjects: list[Subject], metric: str) -> bytes:
    """The main metric of every fold, one line per experiment (the ensemble's is nested)."""
    figure = new_figure(8, 3.6)
    axes = figure.add_subplot()
    for subject in subjects:
        folds = subject.scores["folds"]
        x = [int(k) for k in folds]
        axes.plot(x, [s[metric] for s in folds.values()], marker="o", label=subject.name)
        axes.set_xticks(x)
    axes.set(xlabel="fold", ylabel=metric, title=f"{metric} per fold")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    return png(figure)


def correlations(subjects: list[Subject]) -> pd.DataFrame:
    """Pearson correlation of OOF predictions between subjects, averaged over columns."""
    names = [s.name for s in subjects]
    stacked = np.stack([s.oof for s in subjects])  # (n_subjects, n_rows, n_columns)
    per_column = [np.corrcoef(stacked[:, :, c]) for c in range(stacked.shape[2])]
    return pd.DataFrame(np.nanmean(per_column, axis=0), index=names, columns=names)


def correlation_plot(matrix: pd.DataFrame) -> bytes:
    size = 2.5 + 0.6 * len(matrix)
    figure = new_figure(size + 1, size)
    axes = figure.add_subplot()
    image = axes.imshow(
        matrix.to_numpy(), vmin=min(0.0, matrix.min().min()), vmax=1, cmap="viridis"
    )
    axes.set_xticks(range(len(matrix)), matrix.columns, rotation=45, ha="right")
    axes.set_yticks(range(len(matrix)), matrix.index)
    for (i, j), value in np.ndenumerate(matrix.to_numpy()):
        axes.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value < 0.8 else "k")
    axes.set_title("OOF correlation")
    figure.colorbar(image, ax=axes, shrink=0.8)
    return png(figure)


def weights_plot(weights: dict[str, float], title: str) -> bytes:
    figure = new_figure(6, 1.2 + 0.45 * len(weights))
    axes = figure.add_subplot()
    names = list(weights)
    axes.barh(names, [weights[n] for n in names], color="tab:blue")
    axes.invert_yaxis()
    for i, name in enumerate(names):
        axes.text(weights[name], i, f" {weights[name]:.3f}", va="center")
    axes.set(xlabel="weight", title=title, xlim=(0, max(1.0, max(weights.values()) * 1.15)))
    return png(figure)


def importance_plot(importance: Importance, name: str) -> bytes:
    """The top features' mean share of gain, the standard deviation across folds as error bars."""
    table = importance.table
    mean, std = table["mean share"].to_numpy(), table["std"].fillna(0.0).to_numpy()
    figure = new_figure(7, 1.2 + 0.3 * len(table))
    axes = figure.add_subplot()
    axes.barh(
        [str(f) for f in table.index],
        mean,
        xerr=[np.minimum(std, mean), std],  # a share is never below 0
        color="tab:blue",
        ecolor="grey",
        capsize=2,
    )
    axes.invert_yaxis()
    axes.set(
        xlabel=f"share of gain (mean over {importance.n_folds} folds; bars: std)",
        title=f"top {len(table)} features of {name}",
        xlim=(0, None),
    )
    axes.grid(axis="x", alpha=0.3)
    return png(figure)


def confusion_plot(y: np.ndarray, pred: np.ndarray, classes: list) -> bytes:
    """Row-normalised confusion matrix with counts (binary and multiclass)."""

    labels = pred.argmax(1) if pred.shape[1] > 1 else (pred[:, 0] >= 0.5).astype(int)
    counts = confusion_matrix(y, labels, labels=np.arange(len(classes)))
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.5 + 0.5 * len(classes)
    figure = new_figure(size + 1, size)
    axes = figure.add_subplot()
    axes.imshow(share, vmin=0, vmax=1, cmap="Blues")
    names = [str(c) for c in classes]
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), names)
    for (i, j), count in np.ndenumerate(counts):
        axes.text(
            j, i, str(count), ha="center", va="center", color="w" if share[i, j] > 0.5 else "k"
        )
    axes.set(xlabel="predicted", ylabel="true", title="confusion matrix (OOF)")
    return png(figure)


def multilabel_confusion_plot(y: np.ndarray, pred: np.ndarray, labels: list[str]) -> bytes:
    """TP, FP, FN, TN of every label at threshold 0.5."""
    hard = pred >= 0.5
    truth = y.astype(bool)
    counts = np.stack(
        [
            (hard & truth).sum(0),
            (hard & ~truth).sum(0),
            (~hard & truth).sum(0),
            (~hard & ~truth).sum(0),
        ],
        axis=1,
    )
    figure = new_figure(5, 1.5 + 0.45 * len(labels))
    axes = figure.add_subplot()
    axes.imshow(counts / counts.sum(1, keepdims=True), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    axes.set_xticks(range(4), ["TP", "FP", "FN", "TN"])
    axes.set_yticks(range(len(labels)), labels)
    for (i, j), count in np.ndenumerate(counts):
        axes.text(j, i, str(count), ha="center", va="center")
    axes.set_title("confusion per label (OOF, threshold 0.5)")
    return png(figure)


def _calibration_points(task_type: str, y: np.ndarray, pred: np.ndarray):
    """(probability, outcome) pairs: P(class 1), top-label confidence, or every label."""
    if task_type == "multiclass":
        return pred.max(1), (pred.argmax(1) == y).astype(int)
    if task_type == "binary":
        return pred[:, 0], y.astype(int)
    return pred.ravel(), y.ravel().astype(int)


def calibration_plot(subjects: list[Subject], task_type: str, y: np.ndarray) -> bytes:
    figure = new_figure(5.5, 4.5)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect")
    for subject in subjects:
        prob, outcome = _calibration_points(task_type, y, subject.oof)
        observed, predicted = calibration_curve(outcome, np.clip(prob, 0, 1), n_bins=10)
        axes.plot(predicted, observed, marker="o", label=subject.name)
    what = "top-label confidence" if task_type == "multiclass" else "predicted probability"
    axes.set(xlabel=what, ylabel="observed frequency", title="calibration (OOF)")
    axes.legend(fontsize="small")
    return png(figure)


def residuals_plot(y: np.ndarray, pred: np.ndarray, name: str) -> bytes:
    truth = y.reshape(pred.shape)
    residual = (truth - pred).ravel()
    figure = new_figure(9, 3.6)
    scatter, histogram = figure.subplots(1, 2)
    scatter.scatter(pred.ravel(), residual, s=6, alpha=0.5)
    scatter.axhline(0, color="grey", ls="--")
    scatter.set(xlabel="prediction", ylabel="target - prediction", title=f"residuals: {name}")
    histogram.hist(residual, bins=40, color="tab:blue")
    histogram.set(xlabel="target - prediction", ylabel="rows", title="residual distribution")
    return png(figure)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222;padding:0 1rem}h1{margin-bottom:.2rem}section{margin:2rem 0}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}td,th{border:1px solid #ccc;
padding:.25rem .6rem;text-align:right}th{background:#f3f3f3}img{max-width:100%;
border:1px solid #eee}.note{color:#666;font-size:.9rem}
"""


def embed(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def _length(result: dict) -> str:
    """How long the shuffled-label run trained: epochs, and a GBDT's rounds where recorded."""
    rounds = result.get("rounds")
    epochs = f"{result['epochs']} epochs"
    return epochs if rounds is None else f"{epochs}; a GBDT: {rounds} rounds, no early stopping"


def section(anchor: str, title: str, *parts: str) -> str:
    body = "\n".join(parts)
    return f'<section id="{anchor}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _scores_table(subjects: list[Subject], metrics: list[str]) -> str:
    rows = {
        s.name: {
            **{f"CV {m}": s.scores["cv"][m] for m in metrics},
            **{f"fold mean {m}": s.scores["fold_mean"][m] for m in metrics[:1]},
            **{f"fold std {m}": s.scores["fold_std"][m] for m in metrics[:1]},
            **{
                f"test-like CV {m}": s.scores["cv_test_like"][m]
                for m in metrics[:1]
                if "cv_test_like" in s.scores
            },
            **{  # masks: the CV after the threshold and minimum size chosen on OOF
                f"post-processed CV {m}": s.scores["cv_postprocessed"][m]
                for m in metrics[:1]
                if m in s.scores.get("cv_postprocessed", {})
            },
        }
        for s in subjects
    }
    return pd.DataFrame(rows).T.to_html(float_format=lambda v: f"{v:.5f}", escape=True)


def _fold_table(subjects: list[Subject], metric: str) -> str:
    rows = {
        s.name: {f"fold {k}": v[metric] for k, v in s.scores["folds"].items()} for s in subjects
    }
    return pd.DataFrame(rows).T.to_html(float_format=lambda v: f"{v:.5f}", escape=True)


def _ensemble_section(folder: Path, metrics: list[str]) -> str:
    weights = json.loads((folder / "weights.json").read_text(encoding="utf-8"))
    cv = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    scored = [m for m in metrics if m in cv["nested"]["cv"]]
    columns = {
        "in-sample (fitted on every OOF row)": [cv["in_sample"]["cv"][m] for m in scored],
        "nested (fitted without the scored fold)": [cv["nested"]["cv"][m] for m in scored],
    }
    if "cv_test_like" in cv["nested"]:  # folds.test_like: the rows most like the test set
        columns["nested, test-like rows"] = [cv["nested"]["cv_test_like"][m] for m in scored]
    if "nested_postprocessed" in cv:  # masks: post-processing searched on the nested blend
        after = cv["nested_postprocessed"]
        columns["nested, post-processed"] = [after.get(m, np.nan) for m in scored]
    table = pd.DataFrame(columns, index=scored).to_html(
        float_format=lambda v: f"{v:.5f}", escape=True, na_rep=""
    )
    note = weights.get("weights_meaning", "blend weights fitted on every OOF row")
    oof = cv.get("oof_parquet") or cv.get("oof_masks", "")
    parts = [
        f'<p class="note">method {html.escape(cv["method"])}, optimised metric '
        f"{html.escape(cv['optimised_metric'])}; weights: {html.escape(note)}; OOF "
        f"predictions: {html.escape(oof)}</p>",
        embed(weights_plot(weights["weights"], f"{cv['method']} weights"), "ensemble weights"),
        table,
    ]
    if "picks" in weights:  # a mask blend: integer pick counts, the selection in order
        picks = pd.DataFrame({"picks": weights["picks"]}).to_html(escape=True)
        order = ", ".join(weights.get("selection", []))
        parts += [f'<p class="note">Picks (selection in order: {html.escape(order)}):</p>', picks]
    return section("weights", f"Ensemble {folder.name}: weights and honest CV", *parts)


def _seeds_section(folder: Path, metrics: list[str]) -> str | None:
    """A multi-seed experiment (``train.seeds``): each seed's CV, their mean and standard
    deviation, and the seed-averaged model's CV; no best seed."""
    path = folder / "metrics.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if not record.get("seeds") or "cv" not in record:
        return None
    scored = [m for m in metrics if m in record["cv"]]
    rows = {
        name: record["seed_cv"][str(seed)]
        for seed, name in zip(record["seeds"], record["seed_experiments"], strict=True)
    }
    rows["mean across seeds"] = record["seed_mean"]
    rows["std across seeds (ddof=1)"] = record["seed_std"]
    rows["seed-averaged model"] = record["cv"]
    table = pd.DataFrame({k: {m: v[m] for m in scored} for k, v in rows.items()}).T
    return section(
        f"seeds-{folder.name}",
        f"Seeds of {folder.name}",
        f'<p class="note">{len(record["seeds"])} seeds on the same folds. The seed-averaged '
        "model is what the experiment submits; a single seed's CV is one draw from the spread "
        "shown here.</p>",
        table.to_html(float_format=lambda v: f"{v:.5f}", escape=True),
    )


def _sanity_section(outputs_dir: Path, experiment: str) -> str | None:
    """The leak alarm's result (``medalist sanity``) for an experiment, when it exists."""
    path = sanity_file(outputs_dir, experiment)
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    table = pd.DataFrame(
        {
            m: {k: v[k] for k in ("score", "chance", "standard_error", "z", "p_value")}
            for m, v in result["metrics"].items()
        }
    ).T.to_html(float_format=lambda v: f"{v:.5g}", escape=True)
    verdict = SANITY_VERDICTS.get(result["verdict"], result["verdict"])
    judge = result.get("judged_by")  # absent from an older medalist's sanity.json
    if judge and judge != result["main_metric"]:
        verdict += f" (judged by {judge}: every shuffle scored the same {result['main_metric']})"
    duplicates = result.get("duplicate_groups_across_folds", 0)
    return section(
        f"sanity-{experiment}",
        f"Leak alarm of {experiment}: {verdict}",
        f'<p class="note">CV of a short run ({_length(result)}) on labels without signal '
        f"(shuffled within folds, identical rows sharing a label), against chance: the mean "
        f"and standard deviation of the metric over {result['permutations']} label "
        f"permutations of the same OOF predictions; alarm above z = {result['z_alarm']:g}. "
        f"Groups of identical rows across folds: {duplicates}.</p>",
        table,
    )


SANITY_VERDICTS = {
    "leak": "ABOVE CHANCE: something leaks into the validation folds",
    "chance": "at chance: no leak found by label shuffling",
    "inconclusive": "inconclusive: the short run's predictions did not vary, train it longer",
}
ADVERSARIAL_VERDICTS = {
    "shift": "SHIFT: the test set differs from train",
    "slight shift": "a slight shift",
    "no shift": "no shift found",
}


def _sweep_sections(outputs_dir: Path, experiment: str) -> list[str]:
    """The hyperparameter sweeps of an experiment (``medalist sweep``), with their optimism."""
    sections = []
    for result in sweep_results(outputs_dir, experiment):
        best = result["best"]
        title = f"Sweep {result['name']} of {experiment}: " + (
            f"best {result['metric']} {best['score']:.5g} (trial {best['number']}, optimistic)"
            if best
            else "no trial completed"
        )
        table = trials_table(result).to_html(
            index=False, float_format=lambda v: f"{v:.5g}", escape=True, na_rep=""
        )
        command = result.get("command", "")
        sections.append(
            section(
                f"sweep-{result['name']}",
                title,
                f'<p class="note">{html.escape(result.get("note", ""))}</p>',
                f"<pre>{html.escape(command)}</pre>" if command else "",
                table,
            )
        )
    return sections


def _adversarial_section(outputs_dir: Path, experiment: str) -> str | None:
    """The train-versus-test classifier's result (``medalist adversarial``), when it exists."""
    path = adversarial_file(outputs_dir, experiment)
    if not path.is_file():
        return None
    result = json.loads(path.read_text(encoding="utf-8"))
    scores = {
        "ROC AUC (OOF, every row)": result["auc"],
        "standard error at no shift": result["standard_error"],
        "z": result["z"],
        **{f"fold {k}": v for k, v in result["fold_auc"].items()},
    }
    table = pd.DataFrame({"value": scores}).to_html(float_format=lambda v: f"{v:.4f}")
    verdict = ADVERSARIAL_VERDICTS.get(result["verdict"], result["verdict"])
    weights, test_like = result["weights"], result["test_like"]
    parts = [
        f'<p class="note">The experiment\'s model trained to tell its {result["n_test"]} test '
        f"rows from its {result['n_train']} train rows ({result['n_splits']} folds of its own"
        f"{', grouped' if result.get('grouped') else ''}; a short run: {_length(result)}). "
        "0.5 is no shift; a shift is found beyond "
        f"{result['z_alarm']:g} standard errors, and called a shift from AUC "
        f"{result['shift_auc']:g}. {html.escape(str(path.parent))}/weights.csv holds "
        f"density-ratio weights of the train rows (effective sample size "
        f"{weights['effective_sample_size']:.0f} of {result['n_train']}), test_like.csv the "
        f"{test_like['rows']} most test-like train rows.</p>",
        table,
    ]
    if result.get("features"):
        features = pd.DataFrame(result["features"]).set_index("feature")
        features.columns = ["mean share of gain", "std"]
        parts.append("<p>The features that separate them:</p>")
        parts.append(features.to_html(formatters=[_percent, _percent], escape=True))
    rows = pd.DataFrame(result["test_like_rows"][:10])
    if not rows.empty:
        rows.columns = ["id", "OOF probability of being a test row"]
        parts.append("<p>The most test-like train rows:</p>")
        parts.append(rows.to_html(index=False, float_format=lambda v: f"{v:.4f}", escape=True))
    return section(
        f"adversarial-{experiment}", f"Train versus test of {experiment}: {verdict}", *parts
    )


def _percent(value: float) -> str:
    """A share as a percentage; a dash for none (the std of a single fold)."""
    return "-" if pd.isna(value) else f"{value:.2%}"


def _importance_section(name: str, folders: list[Path]) -> str | None:
    """A GBDT experiment's top features by mean share of gain across folds; None for a model
    that writes no ``importance.parquet`` (a network, a linear model)."""
    importance = feature_importance(folders)
    if importance is None:
        return None
    learners = ", ".join(importance.learners)
    title = f"Feature importance of {name} ({learners})"
    meaning = html.escape(gain_meaning(importance.learners))
    anchor = f"importance-{html.escape(name)}"
    if importance.table.empty:
        return section(anchor, title, '<p class="note">No fold\'s models made a split.</p>')
    empty = ""
    if importance.n_empty:
        empty = f" {importance.n_empty} fold(s) made no split and are left out."
    note = (
        f"<p class=\"note\">{meaning}, summed over a fold's models. Each fold's gains "
        f"are divided by their sum, then averaged across {importance.n_folds} folds (std with "
        f"ddof=1), so folds and libraries compare.{empty} It is the gain on the training rows: "
        "what the models use, not what generalises (a feature they memorise the training rows "
        "with ranks high all the same); permutation importance on the OOF rows would measure "
        "that, and is not computed here.</p>"
    )
    shares = {"mean share": _percent, "std": _percent}
    table = importance.table.to_html(formatters=shares, escape=True)
    plot = embed(importance_plot(importance, name), f"feature importance of {name}")
    return section(anchor, title, note, plot, table)


def _diagnostics(inputs: Inputs, subjects: list[Subject], focus: Subject) -> list[str]:
    task = inputs.task
    if task.type == "regression":
        plot = residuals_plot(inputs.y, focus.oof, focus.name)
        return [section("residuals", f"Residuals of {focus.name}", embed(plot, "residuals"))]
    if task.type == "multilabel":
        confusion = multilabel_confusion_plot(inputs.y, focus.oof, task.target_columns)
    else:
        confusion = confusion_plot(inputs.y, focus.oof, task.classes)
    calibration = calibration_plot(subjects, task.type, inputs.y)
    return [
        section(
            "confusion", f"Confusion matrix of {focus.name}", embed(confusion, "confusion matrix")
        ),
        section("calibration", "Calibration", embed(calibration, "calibration curve")),
    ]


def _page(cfg: Config, inputs: Inputs, sections: list[str]) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_folds = len(np.unique(inputs.fold))
    header = (
        f"<h1>{html.escape(cfg.competition.name)}: experiment report</h1>\n"
        f'<p class="note">{html.escape(inputs.task.type)} task, {len(inputs.y)} train rows, '
        f"{n_folds} folds; generated {stamp}. Every figure comes from OOF predictions.</p>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(cfg.competition.name)} report</title>\n<style>{STYLE}</style>\n"
        f"</head>\n<body>\n{header}\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


def _focus(inputs: Inputs, subjects: list[Subject], ensemble: Subject | None) -> Subject:
    if ensemble is not None:
        return ensemble
    main = inputs.task.main_metric
    best = subjects[0]
    for subject in subjects[1:]:
        if main.better(subject.scores["cv"][main.name], best.scores["cv"][main.name]):
            best = subject
    return best


def write_report(
    outputs_dir: str | Path,
    experiments: list,
    ensemble: str | None = None,
    *,
    cfg: Config | None = None,
    path: str | Path | None = None,
) -> Path:
    """Write the HTML report and return its path (``outputs/report.html`` by default).

    Args:
        outputs_dir: the outputs folder holding the experiments (and ``ensemble/<name>/``).
        experiments: experiment names or folders, as in ``ensemble.experiments`` (a list is
            one member run with several seeds); empty with ``ensemble``: its members.
        ensemble: the name of an ensemble under ``outputs/ensemble/``.
        cfg: the project config (train labels and folds); default: the experiments' saved one.
        path: where to write the report.
    """
    outputs_dir = Path(outputs_dir)
    cfg = cfg or _config_of(outputs_dir, list(experiments), ensemble)
    inputs = labelled_inputs(cfg)
    own = inputs.task.own_predictions
    members = _members(outputs_dir, list(experiments), ensemble)
    blend = None
    blend_name = f"ensemble {ensemble} (nested)"
    if own is None:
        subjects = [_subject(inputs, name, folders) for name, folders in members]
        if ensemble:
            blend = _subject(inputs, blend_name, [ensemble_folder(outputs_dir, ensemble)])
    else:
        subjects = [_recorded(own, name, folders) for name, folders in members]
        if ensemble:
            blend = _recorded(own, blend_name, [ensemble_folder(outputs_dir, ensemble)])
    everyone = subjects + ([blend] if blend else [])
    metrics = [m.name for m in inputs.task.metrics]
    sections = [
        section("scores", "CV of every experiment", _scores_table(everyone, metrics)),
        section(
            "cv-per-fold",
            f"{metrics[0]} per fold",
            embed(fold_plot(everyone, metrics[0]), "CV per fold"),
            _fold_table(everyone, metrics[0]),
        ),
    ]
    if len(everyone) > 1:
        if own is None:
            matrix = correlations(everyone)
        else:
            matrix = own.report_correlations({s.name: s.folder for s in everyone})
        sections.append(
            section(
                "correlation",
                "OOF correlation between experiments",
                embed(correlation_plot(matrix), "OOF correlation"),
            )
        )
    for name, folders in members:
        extra = [_seeds_section(folder, metrics) for folder in folders]
        extra.append(_sanity_section(outputs_dir, name))
        extra.append(_adversarial_section(outputs_dir, name))
        extra.extend(_sweep_sections(outputs_dir, name))
        extra.append(_importance_section(name, folders))
        sections += [part for part in extra if part]
    if ensemble:
        sections.append(_ensemble_section(ensemble_folder(outputs_dir, ensemble), metrics))
    focus = _focus(inputs, subjects, blend)
    if own is None:
        sections += _diagnostics(inputs, everyone, focus)
    else:
        sections += own.report_diagnostics(inputs, focus.name, focus.folder)
    target = Path(path) if path else outputs_dir / "report.html"
    write_text(target, _page(cfg, inputs, sections))
    log.info("report written: %s", target)
    return target
