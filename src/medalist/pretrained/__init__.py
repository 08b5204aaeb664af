"""Pretrained backbones by name: timm tags and Hugging Face hub ids resolved to local files.

- :mod:`~medalist.pretrained.resolve`: a name (``convnext_small.fb_in22k``,
  ``microsoft/deberta-v3-base``, a local path) to its safetensors files in the hub cache,
  downloading only where allowed; every bad name, pickled or corrupt file stops with the key and
  the fix.
- :mod:`~medalist.pretrained.manifest`: ``models/weights.json``, the size and sha256 of every
  resolved hub file, re-checked on later runs.
- :mod:`~medalist.pretrained.stage`: ``medalist weights``, which fetches and verifies every name a
  config uses, so that ``train`` (and an offline Kaggle notebook) never downloads.
"""
