"""Optional experiment trackers for the train stage: wandb and mlflow, through accelerate.

The CSV files are always written whatever is configured here: ``outputs/<experiment>/log.csv``
(every epoch of every fold) and ``outputs/ledger.csv`` (a row per run). With
``tracking.trackers`` the same figures also go to each tracker named, one tracker run per
``medalist train``: the resolved config as its parameters, every epoch's row under
``fold<k>/<name>`` (train loss, learning rate, validation loss and metrics, seconds), then the
CV of every metric under ``cv/<metric>``.

``tracking.offline`` (the default) writes the runs to files under ``tracking.dir`` and reaches no
server, as on Kaggle or any machine without network: wandb in its offline mode (``wandb sync``
uploads such a run later) and mlflow in a local file store (``MLFLOW_ALLOW_FILE_STORE=true mlflow
ui --backend-store-uri <dir>/mlruns`` shows it). With ``offline: false`` each tracker follows its
own settings (``WANDB_API_KEY``/``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``, ...). A tracker that is
named but not installed is refused before any training starts.
"""

from __future__ import annotations

import importlib.util
import math
import os

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.layout import tracking_dir


def check_trackers(cfg: Config) -> None:
    """Every tracker named in ``tracking.trackers`` can be imported (else a ConfigError)."""
    for name in cfg.tracking.trackers:
        if importlib.util.find_spec(name) is None:
            raise ConfigError(
                f"tracking.trackers: {name} is not installed; `pip install {name}` "
                f"or take {name} out of the list (the CSV logs are written either way)"
            )


class RunTracker:
    """One tracker run for a train stage (nothing at all when no tracker is configured); only
    the main process logs."""

    def __init__(self, cfg: Config, accelerator):
        self.cfg, self.accelerator = cfg, accelerator
        self.active = bool(cfg.tracking.trackers) and accelerator.is_main_process
        self.step = 0

    def start(self) -> None:
        if not self.active:
            return
        cfg, folder = self.cfg, tracking_dir(self.cfg)
        folder.mkdir(parents=True, exist_ok=True)
        name = cfg.train.experiment
        init = {}
        if "wandb" in cfg.tracking.trackers:
            init["wandb"] = {"dir": str(folder), "name": name}
            if cfg.tracking.offline:
                init["wandb"]["mode"] = "offline"
        if "mlflow" in cfg.tracking.trackers:
            init["mlflow"] = {"run_name": name}
            if cfg.tracking.offline:
                import mlflow

                # A folder of files, no server or database; mlflow asks for this opt-in.
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
                mlflow.set_tracking_uri((folder / "mlruns").as_uri())
        self.accelerator.init_trackers(
            cfg.tracking.project, config=_flat(cfg.model_dump(mode="json")), init_kwargs=init
        )

    def epoch(self, row: dict) -> None:
        """One epoch's row of ``log.csv``, under ``fold<k>/``."""
        if self.active:
            prefix = f"fold{row['fold']}/"
            values = {prefix + key: value for key, value in _numbers(row).items() if key != "fold"}
            self.accelerator.log(values, step=self.step)
            self.step += 1

    def finish(self, metrics: dict) -> None:
        """The run's CV, then the trackers are closed."""
        if self.active:
            cv = {f"cv/{key}": value for key, value in _numbers(metrics.get("cv", {})).items()}
            self.accelerator.log(cv, step=self.step)
            self.accelerator.end_training()
            self.active = False


def _numbers(values: dict) -> dict:
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and math.isfinite(value)
    }


def _flat(values: dict, prefix: str = "") -> dict:
    """A nested config as ``section.key`` parameters (lists as text)."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def format_row(row: dict) -> str:
    """An epoch's row as the log shows it: ``key=value``, floats to four decimals."""
    parts = [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()]
    return " ".join(parts)
