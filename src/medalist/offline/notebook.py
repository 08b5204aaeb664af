"""The offline entry point, a script and a notebook made from the same cells.

The cells find the bundle, install medalist from it (``pip install --no-index --find-links``,
no dependencies: the Kaggle image has torch and the rest), and call
:func:`medalist.offline.predict.run_bundle`. Nothing in them is specific to a competition: the
bundle's manifest says the rest, so the same two files serve every project, on Kaggle and on a
workstation. ``python -m medalist.offline.notebook DIR`` writes ``predict.py`` and
``predict.ipynb`` into DIR.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

from medalist.io import write_text

INTRO = """\
# Offline inference with a medalist bundle

Made by `medalist package`. Attach the bundle's dataset and the competition to this notebook,
leave the internet off, and run every cell: medalist is installed from the bundle's wheels,
every packaged fold predicts the test set with its test-time views, the ensemble (when one is
packaged) blends them, and `submission.csv` is written after checking it against the sample
submission.

The same cells run on a workstation (profile `local`: the bundle under the project, the data in
`data/`, the output in `outputs/offline/`). Environment variables choose otherwise:
`MEDALIST_PROFILE` (kaggle or local), `MEDALIST_BUNDLE`, `MEDALIST_INPUT`, `MEDALIST_DATA` and
`MEDALIST_WORKING`."""

FIND = '''\
import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
log = logging.getLogger("medalist.offline")
MANIFEST = "medalist-bundle.json"
KAGGLE_INPUT = Path(os.environ.get("MEDALIST_INPUT", "/kaggle/input"))
PROFILE = os.environ.get("MEDALIST_PROFILE") or ("kaggle" if KAGGLE_INPUT.is_dir() else "local")


def find_bundle(profile: str) -> Path:
    """The folder holding the bundle's manifest: $MEDALIST_BUNDLE, else the only one found."""
    if os.environ.get("MEDALIST_BUNDLE"):
        return Path(os.environ["MEDALIST_BUNDLE"])
    root = KAGGLE_INPUT if profile == "kaggle" else Path(".")
    for depth in range(1, 4):  # <input>/<dataset>/ or deeper mounts
        found = sorted(path.parent for path in root.glob("*/" * depth + MANIFEST))
        if len(found) > 1:
            raise FileNotFoundError(f"several bundles: {found}; set MEDALIST_BUNDLE to one")
        if found:
            return found[0]
    raise FileNotFoundError(f"no {MANIFEST} under {root.resolve()}: attach the bundle's dataset")


BUNDLE = find_bundle(PROFILE)
log.info("profile %s, bundle %s", PROFILE, BUNDLE)'''

INSTALL = """\
# The bundle's wheels only, without dependencies: the image provides torch and the rest.
# Pinned versions already installed (a workstation's medalist) are left as they are.
manifest = json.loads((BUNDLE / MANIFEST).read_text())
pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps"]
pip += ["--disable-pip-version-check", "--find-links", str(BUNDLE / "wheels")]
subprocess.run([*pip, *manifest["install"]], check=True)
importlib.invalidate_caches()"""

RUN = """\
from medalist.offline.predict import run_bundle  # noqa: E402 - installed by the cell above

submission = run_bundle(BUNDLE, PROFILE)
log.info("written: %s", submission)"""

CELLS = [("markdown", INTRO), ("code", FIND), ("code", INSTALL), ("code", RUN)]


def script() -> str:
    """The cells as a percent-format Python script (``# %%`` starts a cell)."""
    parts = []
    for kind, source in CELLS:
        if kind == "markdown":
            lines = [f"# {line}".rstrip() for line in source.splitlines()]
            parts.append("# %% [markdown]\n" + "\n".join(lines))
        else:
            parts.append("# %%\n" + source)
    return "\n\n\n".join(parts) + "\n"


def notebook() -> nbformat.NotebookNode:
    """The cells as a Jupyter notebook (fixed cell ids, so the file is the same every time)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
    }
    for index, (kind, source) in enumerate(CELLS):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(source, id=f"medalist-{index}"))
    nbformat.validate(nb)
    return nb


def write_entry_point(folder: str | Path) -> tuple[Path, Path]:
    """Write ``predict.py`` and ``predict.ipynb`` into ``folder``."""
    folder = Path(folder)
    py = write_text(folder / "predict.py", script())
    ipynb = write_text(folder / "predict.ipynb", nbformat.writes(notebook()) + "\n")
    return py, ipynb


if __name__ == "__main__":
    for written in write_entry_point(sys.argv[1] if len(sys.argv) > 1 else "inference"):
        sys.stdout.write(f"{written}\n")
