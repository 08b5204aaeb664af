"""medalist: a tested Kaggle competition pipeline.

Stages read and write files (see ``docs`` and the README); each stage is a ``run(cfg)`` function
in its own module with a thin command-line wrapper in :mod:`medalist.cli`.
"""

__version__ = "0.1.0"
