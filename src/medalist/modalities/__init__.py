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
}


def get_modality(name: str) -> ModuleType:
    """The module of the modality called ``name`` (a :class:`~.protocol.Modality`)."""
    if name not in MODALITIES:
        raise ConfigError(f"modality: unknown '{name}'; known: {list(MODALITIES)}")
    return import_module(MODALITIES[name])
