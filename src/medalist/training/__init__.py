"""Training: the ``train`` stage and everything a fold's training runs on.

- :mod:`~medalist.training.stage`: the ``train`` stage (every fold, OOF, metrics, the ledger).
- :mod:`~medalist.training.loop`: one fold's loop, with hooks at named events
  (:mod:`~medalist.training.hooks`); :mod:`~medalist.training.checkpoint` saves and resumes it.
- :mod:`~medalist.training.runtime`: what every stage that runs a model shares (accelerator,
  loaders, seeding, prediction).
- :mod:`~medalist.training.optim`, :mod:`~medalist.training.syncbn`,
  :mod:`~medalist.training.tracking`, :mod:`~medalist.training.weights` (safetensors files).
"""
