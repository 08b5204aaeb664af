"""Ensembling: blends, hill climbing, stacking, with nested (honest) CV.

Entry point: :func:`medalist.ensemble.stage.run` with an
:class:`~medalist.config.ensemble.EnsembleConfig`.
"""
