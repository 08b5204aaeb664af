"""Kaggle submission files: predictions mapped onto the sample submission and refused unless
they match it (:mod:`~medalist.submission.format`), and the ``submission`` stage
(:mod:`~medalist.submission.stage`)."""
