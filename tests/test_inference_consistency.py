"""The infer stage predicts what the trained model predicts: the identity view is bitwise one
plain forward pass of the saved weights; predicting the validation rows from the saved weights
reproduces the OOF predictions made in training bitwise (the weights round-trip exactly); and the
batch size does not change a prediction. The TTA maths: test_tta.py; text batching: test_text.py."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from medalist.modalities import image
from medalist.prediction.infer import load_task
from medalist.prediction.infer import run as infer
from medalist.training.weights import load_weights
from support.configs import cfg


def test_identity_view_is_one_plain_forward_pass(trained_project):
    config = cfg("infer.tta=[identity]", "infer.batch_size=7")
    table = infer(config)
    train, test = pd.read_csv("data/train.csv"), pd.read_csv("data/test.csv")
    task = load_task(config, train)
    model = load_weights(
        image.build_model(config, task), "outputs/tiny/fold0/model.safetensors"
    ).eval()
    dataset = image.build_dataset(config, test, None, split="test", train=False, source="test")
    with torch.no_grad():
        plain = torch.cat(
            [model(batch["input"]).softmax(-1) for batch in DataLoader(dataset, batch_size=7)]
        )
    fold0 = pd.read_parquet("outputs/tiny/fold0/test.parquet")
    assert list(table["id"]) == list(fold0["id"]) == list(test["id"])
    np.testing.assert_array_equal(fold0[task.pred_columns].to_numpy(), plain.numpy())
    np.testing.assert_array_equal(table[task.pred_columns].to_numpy(), plain.numpy())


def test_saved_weights_reproduce_the_oof_predictions_exactly(trained_project):
    """Validation rows as a test set, in the batches training evaluated them in (2 x 16)."""
    oof = pd.read_parquet("outputs/tiny/fold0/oof.parquet")
    train = pd.read_csv("data/train.csv")
    rows = train.set_index("id").loc[oof["id"]].reset_index()
    rows.to_csv("data/valid_as_test.csv", index=False)
    again = infer(
        cfg(
            "competition.test_csv=valid_as_test.csv",
            "image.test_dir=train_images",
            "infer.batch_size=32",
        )
    )
    assert list(again["id"]) == list(oof["id"])
    columns = [c for c in oof.columns if c.startswith("p_")]
    np.testing.assert_array_equal(again[columns].to_numpy(), oof[columns].to_numpy())


def test_predictions_do_not_depend_on_the_batch_size(trained_project):
    small = infer(cfg("infer.batch_size=3"))
    large = infer(cfg("infer.batch_size=64"))
    np.testing.assert_allclose(small.filter(like="p_"), large.filter(like="p_"), rtol=0, atol=1e-6)
    # The task the predictions are for is recorded beside them.
    assert json.loads(Path("outputs/tiny/task.json").read_text())["type"] == "multiclass"
