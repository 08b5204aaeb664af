# %% [markdown]
# # Offline inference with a medalist bundle
#
# Made by `medalist package`. Attach the bundle's dataset and the competition to this notebook,
# leave the internet off, and run every cell: medalist is installed from the bundle's wheels,
# every packaged fold predicts the test set with its test-time views, the ensemble (when one is
# packaged) blends them, and `submission.csv` is written after checking it against the sample
# submission.
#
# The same cells run on a workstation (profile `local`: the bundle under the project, the data in
# `data/`, the output in `outputs/offline/`). Environment variables choose otherwise:
# `MEDALIST_PROFILE` (kaggle or local), `MEDALIST_BUNDLE`, `MEDALIST_INPUT`, `MEDALIST_DATA` and
# `MEDALIST_WORKING`.


# %%
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
log.info("profile %s, bundle %s", PROFILE, BUNDLE)


# %%
# The bundle's wheels only, without dependencies: the image provides torch and the rest.
# Pinned versions already installed (a workstation's medalist) are left as they are.
manifest = json.loads((BUNDLE / MANIFEST).read_text())
pip = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps"]
pip += ["--disable-pip-version-check", "--find-links", str(BUNDLE / "wheels")]
subprocess.run([*pip, *manifest["install"]], check=True)
importlib.invalidate_caches()


# %%
from medalist.offline.predict import run_bundle  # noqa: E402 - installed by the cell above

submission = run_bundle(BUNDLE, PROFILE)
log.info("written: %s", submission)
