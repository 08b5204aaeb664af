"""Training: the ``train`` stage and everything a fold's training runs on.

- :mod:`~medalist.training.stage`: the ``train`` stage (every fold, OOF, metrics, the ledger).
- :mod:`~medalist.training.loop`: one fold's loop (``pretrain-mlm`` runs on it too), with hooks
  at named events (:mod:`~medalist.training.hooks`); :mod:`~medalist.training.guard` skips a
  step with a non-finite loss or gradient; :mod:`~medalist.training.resume` saves and resumes a
  run through the checkpoint files of :mod:`~medalist.training.checkpoint`.
- :mod:`~medalist.training.runtime`: what every stage that runs a model shares (accelerator,
  loaders, seeding, prediction).
- :mod:`~medalist.training.optim`, :mod:`~medalist.training.syncbn`,
  :mod:`~medalist.training.tracking`, :mod:`~medalist.training.weights` (safetensors files).
"""
