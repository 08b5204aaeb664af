"""Typed, layered configuration: one section per stage or feature, resolved from YAML layers.

- :mod:`~medalist.config.load`: the layers (defaults < ``configs/base.yaml`` < the experiment file
  < ``key=value``), errors naming the key, ``describe``.
- :mod:`~medalist.config.schema`: the whole :class:`Config`, the checks across sections, and
  which sections retrain.
- the sections: :mod:`~medalist.config.data` (competition, task, folds, submission),
  :mod:`~medalist.config.inputs` (image, model, text, mlm), :mod:`~medalist.config.stages`
  (train, infer, pseudo, tracking), :mod:`~medalist.config.tricks`,
  :mod:`~medalist.config.ensemble`, :mod:`~medalist.config.kaggle`; :mod:`~medalist.config.section`
  is their base class.
"""

from medalist.config.inputs import TextConfig, Transform
from medalist.config.load import describe, load_yaml, parse_override, resolve_config
from medalist.config.schema import Config
from medalist.config.stages import InferConfig, PseudoConfig

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
