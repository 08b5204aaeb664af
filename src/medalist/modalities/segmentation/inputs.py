"""The segmentation inputs checked before any work: the encoder, the images and every mask.

:func:`check_inputs` runs the image modality's checks (the backbone name, its pretrained weights,
every image file), refuses an encoder smp cannot use at every size
(:func:`~medalist.modalities.segmentation.model.check_encoder`), and for training rows checks
every mask against its image (:func:`~medalist.modalities.segmentation.masks.check_masks`): a
missing file, another size, values outside the classes, a bad RLE or an RLE in the other order
stops here, naming the row.
"""

from __future__ import annotations

import pandas as pd

from medalist.config import Config
from medalist.modalities import image
from medalist.modalities.segmentation.masks import MaskLayout, check_masks
from medalist.modalities.segmentation.model import check_encoder


def mask_layout(cfg: Config) -> MaskLayout:
    """Where the masks are, from ``segmentation.*`` (``mask_dir`` under
    ``competition.data_dir``)."""
    return MaskLayout(**cfg.segmentation.layout_fields(cfg.competition.data_dir))


def check_inputs(
    cfg: Config, df: pd.DataFrame, split: str, source: str
) -> list[tuple[int, int]] | None:
    """Check the rows' inputs before training or prediction; for training rows, return each
    image's (height, width) (read from the file headers), else None.

    Raises:
        ConfigError: an unknown or unusable encoder, missing pretrained weights.
        DataError: naming ``source``, the row and the file or column of the first bad image
            or mask.
    """
    image.check_inputs(cfg, df, split, source)
    check_encoder(cfg)
    if split != "train":
        return None
    paths = image.image_paths(cfg, df, split, source)
    return check_masks(mask_layout(cfg), df, paths, source)
