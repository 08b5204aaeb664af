"""The ``weights`` stage: every pretrained backbone the config names, fetched and verified.

For each name the modality lists (:func:`medalist.modalities.image.backbone_names`,
:func:`medalist.modalities.text.backbone_names`) it logs one line saying where the weights come
from (the hub cache, a download, a local path), checks each safetensors header, and records or
re-checks size and sha256 in ``models/weights.json`` (:mod:`medalist.pretrained.manifest`).
Offline (``HF_HUB_OFFLINE=1`` or no network), every name missing from the cache gets a line
saying how to get it, and the stage fails. Run it once on a machine with internet; then ``train``
finds everything in the cache.
"""

from __future__ import annotations

import logging

from medalist.config import Config
from medalist.layout import weights_manifest
from medalist.modalities import get_modality
from medalist.pretrained import manifest
from medalist.pretrained.resolve import MissingWeights, Weights, resolve

log = logging.getLogger(__name__)


def describe(weights: Weights) -> str:
    """One line: the key, the name, where its files came from."""
    size = sum(path.stat().st_size for path in weights.files) / 1e6
    where = weights.folder if weights.folder is not None else weights.files[0]
    origin = {"cache": "hub cache", "downloaded": "downloaded", "local": "local path"}
    return f"{weights.key}: {weights.name} <- {origin[weights.source]} {where} ({size:.1f} MB)"


def run(cfg: Config) -> list[Weights]:
    """Resolve, fetch and verify every backbone of the config; returns what was resolved.

    Raises:
        MissingWeights: names missing from the cache that could not be downloaded (each with
            how to get it), after every other name was resolved.
        ConfigError, CheckpointError: a bad name, pickled or corrupt files, a changed file.
    """
    names = get_modality(cfg.modality).backbone_names(cfg)
    if not names:
        log.info("no pretrained backbone named (modality %s): nothing to fetch", cfg.modality)
        return []
    path = weights_manifest()
    resolved, missing, fresh = [], [], {}
    for key, name in names:
        try:
            weights = resolve(key, name, download=True)
        except MissingWeights as exc:
            missing.append(str(exc))
            continue
        fresh.update(manifest.verify(path, weights, content=True))
        resolved.append(weights)
        log.info("%s", describe(weights))
    if fresh:
        manifest.record(path, fresh)
        log.info("%d file(s) verified and recorded in %s", len(fresh), path)
    if missing:
        raise MissingWeights(
            f"{len(missing)} of {len(names)} pretrained name(s) missing:\n" + "\n".join(missing)
        )
    return resolved
