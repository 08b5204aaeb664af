"""Predicting with trained folds: the ``infer`` stage (:mod:`~medalist.prediction.infer`),
test-time augmentation views (:mod:`~medalist.prediction.tta`) and the ``pseudo`` stage
(:mod:`~medalist.prediction.pseudo`), whose labels never leak a validation fold."""
