"""Typed, layered configuration: one section per stage or feature, resolved from YAML layers.

- :mod:`~medalist.config.load`: the layers (defaults < ``configs/base.yaml`` < the experiment file
  < ``key=value``), errors naming the key, ``describe``.
- :mod:`~medalist.config.schema`: the sections and the whole :class:`Config`;
  :mod:`~medalist.config.tricks`, :mod:`~medalist.config.ensemble` and
  :mod:`~medalist.config.kaggle` hold the sections of those features;
  :mod:`~medalist.config.section` their base class.
"""

from medalist.config.load import describe, load_yaml, parse_override, resolve_config
from medalist.config.schema import (
    Config,
    InferConfig,
    PseudoConfig,
    TextConfig,
    Transform,
)

__all__ = [
    "Config",
    "InferConfig",
    "PseudoConfig",
    "TextConfig",
    "Transform",
    "describe",
    "load_yaml",
    "parse_override",
    "resolve_config",
]
