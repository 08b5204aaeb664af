"""The CV on the train rows most like the test set: what a shifted test set will score like.

``medalist adversarial`` flags the train rows its classifier finds most like the test set
(``test_like.csv``); with ``folds.test_like`` the folds spread them evenly and record them in
``folds.csv`` (:mod:`medalist.folds`). Every experiment's ``metrics.json`` then holds, beside the
CV on all OOF rows, ``cv_test_like``: the same metrics on the flagged OOF rows alone, with their
count. A model whose test-like CV falls well below its CV is fitting what the test set lacks;
choosing between models on the test-like CV is choosing for the test set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medalist.folds import TEST_LIKE
from medalist.tasks import Task


def test_like_scores(
    task: Task, folds: pd.DataFrame, targets: np.ndarray, rows: np.ndarray, predictions: np.ndarray
) -> dict:
    """``cv_test_like`` (the task's metrics on the flagged rows among ``rows``) and
    ``test_like_rows`` (how many), or nothing when the folds flag no rows.

    ``folds`` is :func:`medalist.folds.load_folds`' table in train's row order, ``targets`` every
    train row's, ``rows`` the train rows that ``predictions`` predict, in order.
    """
    if TEST_LIKE not in folds.columns:
        return {}
    flagged = folds[TEST_LIKE].to_numpy()[rows] == 1
    if not flagged.any():
        return {}
    return {
        "cv_test_like": task.score(targets[rows][flagged], predictions[flagged]),
        "test_like_rows": int(flagged.sum()),
    }
