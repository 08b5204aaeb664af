"""Offline Kaggle inference: the bundle ``medalist package`` writes, and what runs it on Kaggle.

A code competition runs the final notebook with no internet. The bundle is a Kaggle dataset
holding everything that notebook needs (wheels, weights, resolved configs); the notebook installs
medalist from it with ``pip install --no-index`` and predicts the test set exactly as the local
``infer`` and ``submission`` stages do.
"""
