"""The ``segmentation`` section: defaults that validate alone, each bad value refused naming its
key, the same refusals as the building blocks it configures, and the MaskLayout it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from medalist.config import parse_override, resolve_config
from medalist.config import segmentation as section
from medalist.config.schema import Config, added_sections
from medalist.errors import ConfigError
from medalist.layout import training_hash
from medalist.modalities.segmentation import losses, masks, rle, scoring, tiling
from medalist.modalities.segmentation.inputs import mask_layout
from medalist.modalities.segmentation.model import ARCHITECTURES

BASE = ["competition.target_columns=[y]"]


def cfg(*overrides: str) -> Config:
    return resolve_config(None, [*BASE, *overrides])


def test_the_defaults_validate_and_leave_old_fingerprints_alone():
    seg = cfg().segmentation
    assert (seg.task, seg.classes, seg.masks, seg.architecture) == (
        "binary",
        ["mask"],
        "files",
        "unet",
    )
    assert seg.loss_spec == "bce+dice" and seg.mask_channels == 1
    assert "segmentation" in added_sections()  # at its defaults, outside the fingerprint
    assert training_hash(cfg("segmentation.architecture=fpn")) != training_hash(cfg())


def test_the_lists_here_are_the_building_blocks_lists():
    """Reading a config imports neither torch nor pandas, so the section names what the modules
    accept itself; these must not drift apart."""
    assert section.TASKS == masks.TASKS == losses.MODES == scoring.MODES
    assert section.LOSS_FITS == losses.FITS
    assert set(section.ARCHITECTURES) == set(ARCHITECTURES)
    fields = section.SegmentationConfig.model_fields
    literal = {name: set(fields[name].annotation.__args__) for name in ("masks", "rle_order")}
    assert literal == {"masks": set(masks.SOURCES), "rle_order": set(rle.ORDERS)}
    assert set(section.TileConfig.model_fields["window"].annotation.__args__) == set(tiling.WINDOWS)
    assert set(fields["empty"].annotation.__args__) == set(scoring.EMPTY)


# (overrides, the key named, whether MaskLayout refuses the same fields)
BAD = [
    (["segmentation.task=regression"], "segmentation.task", False),
    (["segmentation.classes=[a, b]"], "segmentation.classes", True),
    (["segmentation.task=multiclass", "segmentation.classes=[bg]"], "segmentation.classes", True),
    (["segmentation.task=multilabel", "segmentation.classes=[]"], "segmentation.classes", True),
    (["segmentation.task=multilabel", "segmentation.classes=[a, a]",
      "segmentation.mask_pattern={class}/{stem}.png"], "segmentation.classes", True),
    (["segmentation.masks=json"], "segmentation.masks", False),
    (["segmentation.mask_pattern={stem}_{colour}.png"], "segmentation.mask_pattern", True),
    (["segmentation.mask_pattern=mask.png"], "segmentation.mask_pattern", True),
    (["segmentation.mask_pattern={stem.png"], "segmentation.mask_pattern", True),
    (["segmentation.task=multilabel", "segmentation.classes=[a, b]"],
     "segmentation.mask_pattern", True),
    (["segmentation.task=multiclass", "segmentation.classes=[bg, a]",
      "segmentation.mask_pattern={stem}_{class}.png"], "segmentation.mask_pattern", True),
    (["segmentation.masks=rle"], "segmentation.rle_columns", True),
    (["segmentation.masks=rle", "segmentation.task=multiclass", "segmentation.classes=[bg, a, b]",
      "segmentation.rle_columns=[a, b, c]"], "segmentation.rle_columns", True),
    (["segmentation.masks=rle", "segmentation.rle_columns=[r]", "segmentation.rle_order=diagonal"],
     "segmentation.rle_order", False),
    (["segmentation.architecture=unet3d"], "segmentation.architecture", False),
    (["segmentation.loss=bce+iou"], "segmentation.loss", False),
    (["segmentation.loss=ce"], "segmentation.loss", False),
    (["segmentation.task=multiclass", "segmentation.classes=[bg, a]", "segmentation.loss=bce"],
     "segmentation.loss", False),
    (["segmentation.loss=dice+dice"], "segmentation.loss", False),
    (["segmentation.loss=x*dice"], "segmentation.loss", False),
    (["segmentation.loss={dice: 0}"], "segmentation.loss", False),
    (["segmentation.loss={dice: true}"], "segmentation.loss", False),
    (["segmentation.loss=[bce, dice]"], "segmentation.loss", False),
    (["segmentation.loss=''"], "segmentation.loss", False),
    (["segmentation.focal_gamma=-1"], "segmentation.focal_gamma", False),
    (["segmentation.tversky_alpha=1.5"], "segmentation.tversky_alpha", False),
    (["segmentation.tversky_alpha=0", "segmentation.tversky_beta=0"],
     "segmentation.tversky_alpha", False),
    (["segmentation.crop_size=4"], "segmentation.crop_size", False),
    (["segmentation.tile.size=100"], "segmentation.tile.size", False),
    (["segmentation.tile.size=16"], "segmentation.tile.size", False),
    (["segmentation.tile.size=256", "segmentation.tile.overlap=256"],
     "segmentation.tile.overlap", False),
    (["segmentation.tile.overlap=-1"], "segmentation.tile.overlap", False),
    (["segmentation.tile.window=gauss"], "segmentation.tile.window", False),
    (["segmentation.tile.batch_size=0"], "segmentation.tile.batch_size", False),
    (["segmentation.threshold=1.5"], "segmentation.threshold", False),
    (["segmentation.min_size=-3"], "segmentation.min_size", False),
    (["segmentation.task=multiclass", "segmentation.classes=[bg, a]", "segmentation.threshold=0.5"],
     "segmentation.threshold", False),
    (["segmentation.task=multiclass", "segmentation.classes=[bg, a]", "segmentation.min_size=10"],
     "segmentation.min_size", False),
    (["segmentation.thresholds=[]"], "segmentation.thresholds", False),
    (["segmentation.thresholds=[0.5, 1.2]"], "segmentation.thresholds", False),
    (["segmentation.min_sizes=[]"], "segmentation.min_sizes", False),
    (["segmentation.min_sizes=[0, -5]"], "segmentation.min_sizes", False),
    (["segmentation.empty=zero"], "segmentation.empty", False),
    (["segmentation.connectivity=6"], "segmentation.connectivity", False),
    (["segmentation.cropsize=128"], "segmentation.crop_size", False),  # a typo: the closest key
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "key", "layout_too"), BAD)
def test_each_bad_value_is_refused_naming_its_key(overrides, key, layout_too, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cfg(*overrides)
    if layout_too:  # MaskLayout refuses the same fields, naming the same key
        fields = cfg().segmentation.model_dump()
        for item in overrides:
            fields.update(parse_override(item)["segmentation"])
        kwargs = {k: fields[k] for k in ("task", "classes", "masks", "mask_pattern", "rle_order")}
        kwargs.update(rle_columns=tuple(fields["rle_columns"]), mask_dir=tmp_path)
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            masks.MaskLayout(**kwargs)


GOOD = [
    [],
    ["segmentation.task=multiclass", "segmentation.classes=[0, 1, 2]"],
    ["segmentation.task=multilabel", "segmentation.classes=[a, b]",
     "segmentation.mask_pattern={class}/{stem}.png"],
    ["segmentation.task=multilabel", "segmentation.classes=[a]"],
    ["segmentation.masks=rle", "segmentation.rle_columns=[EncodedPixels]",
     "segmentation.rle_order=row"],
    ["segmentation.masks=rle", "segmentation.task=multiclass", "segmentation.classes=[bg, a, b]",
     "segmentation.rle_columns=[a, b]"],
    ["segmentation.mask_pattern=masks/{name}"],
]  # fmt: skip


@pytest.mark.parametrize("overrides", GOOD)
def test_a_valid_section_builds_its_mask_layout(overrides, tmp_path):
    config = cfg(f"competition.data_dir={tmp_path}", *overrides)
    layout = mask_layout(config)
    seg = config.segmentation
    assert layout.task == seg.task and layout.classes == tuple(str(c) for c in seg.classes)
    assert layout.mask_dir == tmp_path / "train_masks" and layout.rle_order == seg.rle_order
    assert seg.mask_channels == (1 if seg.task == "binary" else len(seg.classes))


def test_an_absolute_mask_dir_stays_where_it_is(tmp_path):
    config = cfg("competition.data_dir=data", f"segmentation.mask_dir={tmp_path}")
    assert mask_layout(config).mask_dir == tmp_path
    assert mask_layout(cfg()).mask_dir == Path("data") / "train_masks"


@pytest.mark.parametrize(
    ("task", "classes", "spec"),
    [
        ("binary", ["m"], None),
        ("multiclass", ["bg", "a"], None),
        ("multilabel", ["a", "b"], "0.5*bce+lovasz"),
        ("multiclass", ["bg", "a"], {"ce": 1.0, "focal": 0.5, "tversky": 2}),
    ],
)
def test_the_loss_the_section_accepts_builds(task, classes, spec):
    seg = section.SegmentationConfig(
        task=task,
        classes=classes,
        mask_pattern="{class}/{stem}.png" if task == "multilabel" else "{stem}.png",
        loss=spec,
    )
    built = losses.build_loss(seg.loss_spec, task)
    assert built.weights == section.loss_weights(seg.loss_spec, task)
    if spec is None:
        assert set(built.weights) == {"ce" if task == "multiclass" else "bce", "dice"}


def test_a_section_file_with_every_key_loads(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(
        "competition: {target_columns: [y]}\n"
        "segmentation:\n"
        "  task: multilabel\n  classes: [a, b]\n  masks: rle\n  rle_columns: [ra, rb]\n"
        "  architecture: deeplabv3plus\n  loss: {bce: 1, dice: 0.5}\n  crop_size: 256\n"
        "  tile: {size: 256, overlap: 64, window: flat, batch_size: 4}\n"
        "  threshold: 0.4\n  min_size: 20\n  empty: skip\n  connectivity: 4\n"
    )
    seg = resolve_config(path).segmentation
    assert seg.tile.size == 256 and seg.tile.window == "flat" and seg.connectivity == 4
    assert seg.loss_spec == {"bce": 1.0, "dice": 0.5} and seg.threshold == 0.4
