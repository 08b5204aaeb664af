"""``medalist submit``: a validated submission sent with the official ``kaggle`` client.

The file is checked against the sample submission first: a bad file costs a day's quota. The
message names the experiment (or ensemble) and its CV. A code competition scores a version of
the packaged notebook (``--kernel-version``, printed by ``kaggle kernels push``); otherwise the
CSV itself is uploaded. Credentials are the client's business: it reads ``~/.kaggle/kaggle.json``
or ``KAGGLE_USERNAME``/``KAGGLE_KEY`` itself, and medalist never reads, logs or copies them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medalist.config import Config
from medalist.errors import ConfigError, MedalistError
from medalist.layout import ensemble_dir, outputs_dir, sample_path, submission_path
from medalist.offline.package import competition_slug, notebook_id
from medalist.submission.format import validate_submission_file

log = logging.getLogger(__name__)


def client():
    """An authenticated ``KaggleApi``: the boundary between medalist and Kaggle."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise MedalistError(
            "the kaggle client is not installed: pip install 'medalist[kaggle]'"
        ) from None
    api = KaggleApi()
    try:
        api.authenticate()
    except SystemExit:  # the client exits when it finds no credentials
        raise MedalistError(
            "kaggle: no credentials; put kaggle.json (from your Kaggle account settings) in "
            "~/.kaggle/ or set KAGGLE_USERNAME and KAGGLE_KEY"
        ) from None
    return api


def _packaged(cfg: Config) -> tuple[str, Path, Path]:
    """(name, its CV file, its submission file) of what was packaged."""
    if cfg.kaggle.ensemble:
        name = cfg.kaggle.ensemble
        return name, ensemble_dir(cfg, name) / "cv.json", submission_path(cfg, name)
    name = (cfg.kaggle.experiments or [cfg.train.experiment])[0]
    file = submission_path(cfg, cfg.submission.name or name)
    return name, outputs_dir(cfg) / name / "metrics.json", file


def cv_message(name: str, scores_file: Path) -> str:
    """``'<name> CV <metric> <value>'`` from metrics.json (experiment) or cv.json (ensemble)."""
    if not scores_file.is_file():
        return f"{name} (no CV: {scores_file} not found)"
    scores = json.loads(scores_file.read_text(encoding="utf-8"))
    if "nested" in scores:  # an ensemble: its honest, nested CV
        metric, cv = scores["optimised_metric"], scores["nested"]["cv"]
    else:
        metric, cv = scores.get("main_metric"), scores.get("cv", {})
    if metric not in cv:
        return f"{name} (no CV in {scores_file})"
    return f"{name} CV {metric} {cv[metric]:.5f}"


def run(
    cfg: Config,
    file: str | Path | None = None,
    message: str | None = None,
    kernel_version: int | None = None,
) -> dict:
    """Validate the file, then submit it (or the notebook's version); returns what was sent."""
    name, scores_file, default_file = _packaged(cfg)
    path = Path(file) if file is not None else default_file
    if cfg.kaggle.code_competition and kernel_version is None:
        raise ConfigError(
            "--kernel-version: kaggle.code_competition is true, so Kaggle scores a version of "
            f"the notebook {notebook_id(cfg)} (`kaggle kernels push` prints it); or set "
            "kaggle.code_competition=false to upload the CSV"
        )
    validate_submission_file(path, sample_path(cfg), id_column=cfg.competition.id_column)
    sent = {
        "competition": competition_slug(cfg),
        "file": str(path),
        "message": message or cv_message(name, scores_file),
    }
    api = client()
    if cfg.kaggle.code_competition:
        sent |= {"kernel": notebook_id(cfg), "kernel_version": kernel_version}
        api.competition_submit_code(
            file_name="submission.csv",
            message=sent["message"],
            competition=sent["competition"],
            kernel=sent["kernel"],
            kernel_version=kernel_version,
        )
    else:
        api.competition_submit(
            file_name=str(path), message=sent["message"], competition=sent["competition"]
        )
    log.info("submitted to %s: %s", sent["competition"], sent["message"])
    return sent
