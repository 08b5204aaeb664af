"""Training tricks: small hook classes attached to the loop's events (see medalist.training.hooks).

This package's ``__init__`` imports nothing heavy: :mod:`medalist.config.tricks` is read by the
config schema, :func:`medalist.tricks.registry.build_hooks` builds the hooks for a run.
"""
