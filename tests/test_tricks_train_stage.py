"""Every trick, alone and all together, in a smoke run of the train stage on tiny real images."""

import json

import pandas as pd
import pytest
from sklearn.metrics import accuracy_score

from medalist.cli import main

TRICKS = {
    "ema": ["tricks.ema.enabled=true", "tricks.ema.decay=0.9", "tricks.ema.warmup=true"],
    "awp": ["tricks.awp.enabled=true", "tricks.awp.start_epoch=0"],
    "fgm": ["tricks.fgm.enabled=true"],
    "pgd": ["tricks.pgd.enabled=true", "tricks.pgd.steps=2"],
    "swa": ["tricks.swa.enabled=true", "tricks.swa.start_epoch=0", "tricks.swa.lr=0.001"],
    "rdrop": ["tricks.rdrop.enabled=true", "model.drop_rate=0.2"],
    "loss": [
        "tricks.loss.label_smoothing=0.1",
        "tricks.loss.focal_gamma=2",
        "tricks.loss.class_weights=balanced",
        "tricks.loss.flooding=0.01",
        "tricks.loss.ohem_ratio=0.7",
    ],
    "sampler": ["tricks.sampler.balanced=true"],
    "mix": ["tricks.mix.enabled=true", "tricks.mix.cutmix_alpha=1.0"],
    "drop_path": ["model.drop_path_rate=0.1"],
    "restarts": ["tricks.schedule.restarts=1"],
    "sgd": ["tricks.schedule.sgd_epoch=1", "train.layer_decay=0.8"],
    "llrd": ["train.layer_decay=0.8", "train.head_lr=0.005"],
    "accumulation": ["train.grad_accum=2", "train.max_grad_norm=0.5"],
}
ALL = [
    *TRICKS["ema"],
    *TRICKS["awp"],
    *TRICKS["swa"],
    *TRICKS["rdrop"],
    *TRICKS["loss"],
    *TRICKS["mix"],
    *TRICKS["restarts"],
    *TRICKS["accumulation"],
]
SNAPSHOTS = ["snapshot0.safetensors", "snapshot1.safetensors"]
PREDICTING = {
    "ema": ["ema.safetensors"],
    "swa": ["swa.safetensors"],
    "restarts": SNAPSHOTS,
    "all": SNAPSHOTS,
}


@pytest.mark.parametrize("name", [*TRICKS, "all"])
def test_trick_in_train_stage(tiny_project, name):
    overrides = ALL if name == "all" else TRICKS[name]
    args = ["-c", "configs/tiny.yaml", "train.folds=[0]", "train.epochs=2", *overrides]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    fold = tiny_project / "outputs" / "tiny" / "fold0"
    scores = json.loads((fold / "scores.json").read_text())
    # The fold's score is its OOF table's (sklearn, rows joined to their labels by id).
    oof = pd.read_parquet(fold / "oof.parquet")
    labels = pd.read_csv("data/train.csv").set_index("id").loc[oof["id"], "label"].to_numpy()
    predicted = oof.filter(like="p_").to_numpy().argmax(1)
    assert scores["scores"]["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    if name in ("restarts", "all"):
        assert sorted(p.name for p in fold.glob("snapshot*")) == [
            "snapshot0.safetensors",
            "snapshot1.safetensors",
        ]
    # The fold predicts with what scored its OOF: the snapshots, else SWA's or EMA's weights.
    expected = PREDICTING.get(name, ["model.safetensors"])
    assert scores["prediction_weights"] == expected
    assert all((fold / file).is_file() for file in expected)
    assert main(["infer", *args]) == 0
