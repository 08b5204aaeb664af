"""Modalities: how a competition's inputs become batches and a model.

A modality implements :class:`medalist.modalities.protocol.Modality` (read and check the inputs,
build datasets and the model, name its TTA views, say which local files a model starts from and
which folder the offline bundle must carry). The stages ask :func:`get_modality` for the one the
config names and never name a modality themselves. A new modality is one new module (or package)
and one line in :data:`MODALITIES`.

- :mod:`~medalist.modalities.image`: image files named in a table, albumentations, timm.
- :mod:`~medalist.modalities.text`: text columns, a local tokenizer, dynamic padding, truncation
  views (:mod:`~medalist.modalities.text_views`); :mod:`~medalist.modalities.text_model` its
  transformers backbone and pooling; :mod:`~medalist.modalities.mlm` the ``pretrain-mlm`` stage.
- :mod:`~medalist.modalities.tabular`: table columns; GBDTs fitted by their library, an MLP.
- :mod:`~medalist.modalities.segmentation`: images and their masks, smp models, masks predicted
  and submitted as RLE (:mod:`~medalist.modalities.segmentation.modality`); its task is its own
  (:data:`OWN_TASKS`).
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

from medalist.errors import ConfigError

# name -> module implementing the Modality protocol. Imported on first use: an image
# competition never loads transformers, and reading a config loads neither.
MODALITIES = {
    "image": "medalist.modalities.image",
    "text": "medalist.modalities.text",
    "tabular": "medalist.modalities.tabular",
    "segmentation": "medalist.modalities.segmentation.modality",
}
# name -> the module whose ``build_task(cfg, train)`` builds the task of a modality whose targets
# are not train.csv's columns (masks); the other modalities' tasks are medalist.tasks'.
OWN_TASKS = {"segmentation": "medalist.modalities.segmentation.task"}
# name -> the modality that gives one label per row of the same inputs, where a stage needs a
# row classifier (adversarial validation: is this image a test image?); others classify their
# own rows.
ROW_CLASSIFIERS = {"segmentation": "image"}


def get_modality(name: str) -> ModuleType:
    """The module of the modality called ``name`` (a :class:`~.protocol.Modality`)."""
    if name not in MODALITIES:
        raise ConfigError(f"modality: unknown '{name}'; known: {list(MODALITIES)}")
    return import_module(MODALITIES[name])
