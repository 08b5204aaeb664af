"""The tiny project's config as the stage tests resolve it, and the command line that trains it."""

from __future__ import annotations

from collections.abc import Sequence

from medalist.config import Config, resolve_config

TINY = "configs/tiny.yaml"
ONE_EPOCH = ("train.epochs=1",)
FOLD_0 = (*ONE_EPOCH, "train.folds=[0]")
# What the trained_project fixture ran (`medalist run`), for a test that runs a stage of its own.
TRAINED = ["-c", TINY, *FOLD_0]


def cfg(*extra: str, base: Sequence[str] = FOLD_0, path: str | None = TINY) -> Config:
    """The config file ``path`` with the overrides ``base``, then ``extra`` (a later one wins).

    The defaults are the trained project's: one epoch of fold 0 of the tiny config. ``path=None``
    starts from the built-in defaults.
    """
    return resolve_config(path, [*base, *extra])


def text_cfg(backbone, *extra: str) -> Config:
    """The text tests' config: ``backbone`` (a folder or a hub id) classifying the docstring
    corpus's ``library`` from 48 tokens, on the CPU without progress bars, then ``extra``."""
    return resolve_config(
        overrides=[
            "modality=text",
            f"text.backbone={backbone}",
            "competition.target_columns=[library]",
            "text.max_length=48",
            "train.cpu=true",
            "train.progress=false",
            *extra,
        ]
    )
