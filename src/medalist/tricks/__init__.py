"""Training tricks: small hook classes attached to the loop's events (see medalist.hooks).

This package's ``__init__`` imports nothing heavy: :mod:`medalist.tricks.config` is read by the
config schema, :func:`medalist.tricks.registry.build_hooks` builds the hooks for a run.
"""
