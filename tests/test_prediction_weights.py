"""The weights that scored a fold's OOF rows are the weights that predict: infer (test set and the
TTA OOF pass) and the Kaggle bundle, for every combination of EMA, SWA and snapshots; SWA's
batch-norm statistics are those of its own weights."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medalist.cli import main
from medalist.config import resolve_config
from medalist.training.hooks import TrainState
from medalist.tricks.swa import SWA

BASE = ["-c", "configs/tiny.yaml", "train.epochs=2", "train.folds=[0]"]
SWA_ON = ["tricks.swa.enabled=true", "tricks.swa.start_epoch=0", "tricks.swa.lr=0.001"]
SWA_NEVER = ["tricks.swa.enabled=true", "tricks.swa.start_epoch=5"]  # starts after training
EMA_ON = ["tricks.ema.enabled=true", "tricks.ema.decay=0.5"]
SNAPSHOTS = ["snapshot0.safetensors", "snapshot1.safetensors"]
# (overrides, the files the fold predicts with, what each holds). 5 optimizer steps per epoch:
# the first cycle ends at step 5, before the first epoch end, where SWA takes its first average.
CASES = {
    "plain": ([], ["model.safetensors"], ["model"]),
    "ema": (EMA_ON, ["ema.safetensors"], ["ema"]),
    "swa": (SWA_ON, ["swa.safetensors"], ["swa"]),
    "ema+swa": ([*EMA_ON, *SWA_ON], ["swa.safetensors"], ["swa"]),
    "swa not started": (SWA_NEVER, ["model.safetensors"], ["model"]),
    "ema, swa not started": ([*EMA_ON, *SWA_NEVER], ["ema.safetensors"], ["ema"]),
    "snapshots": (["tricks.schedule.restarts=1"], SNAPSHOTS, ["model", "model"]),
    "snapshots of ema": ([*EMA_ON, "tricks.schedule.restarts=1"], SNAPSHOTS, ["ema", "ema"]),
    "snapshots of swa": ([*SWA_ON, "tricks.schedule.restarts=1"], SNAPSHOTS, ["model", "swa"]),
    "snapshots off": (
        ["tricks.schedule.restarts=1", "tricks.schedule.snapshot_ensemble=false"],
        ["model.safetensors"],
        ["model"],
    ),
}


def infer_validation_rows(project, args) -> pd.DataFrame:
    """infer with fold 0's validation rows as the test set, in the batches training evaluated
    them in (2 x 16), and the TTA OOF pass (identity view) over the same rows."""
    oof = pd.read_parquet(project / "outputs" / "tiny" / "fold0" / "oof.parquet")
    train = pd.read_csv(project / "data" / "train.csv")
    train.set_index("id").loc[oof["id"]].reset_index().to_csv(
        project / "data" / "valid_as_test.csv", index=False
    )
    rows = [
        "competition.test_csv=valid_as_test.csv",
        "image.test_dir=train_images",
        "infer.batch_size=32",
        "infer.tta_oof=true",
    ]
    assert main(["infer", *args, *rows]) == 0
    return pd.read_parquet(project / "outputs" / "tiny" / "test.parquet")


@pytest.mark.parametrize("case", list(CASES))
def test_the_weights_that_scored_the_oof_predict(tiny_project, case):
    overrides, files, holds = CASES[case]
    args = [*BASE, *overrides]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    out = tiny_project / "outputs" / "tiny"
    oof = pd.read_parquet(out / "fold0" / "oof.parquet")
    columns = [c for c in oof.columns if c.startswith("p_")]

    # infer predicts the validation rows exactly as the OOF has them, and so does its TTA pass.
    again = infer_validation_rows(tiny_project, args)
    assert list(again["id"]) == list(oof["id"])
    np.testing.assert_array_equal(again[columns].to_numpy(), oof[columns].to_numpy())
    tta = pd.read_parquet(out / "oof_tta.parquet").set_index("id").loc[oof["id"]]
    np.testing.assert_array_equal(tta[columns].to_numpy(), oof[columns].to_numpy())

    # The record says which files, and each file what it holds.
    from medalist.training.weights import read_metadata

    record = json.loads((out / "fold0" / "scores.json").read_text())
    assert record["prediction_weights"] == files
    for name, held in zip(files, holds, strict=True):
        meta = read_metadata(out / "fold0" / name)
        assert meta["weights"] == held and meta["oof"] is True, (name, meta)
    if files != ["model.safetensors"]:
        assert read_metadata(out / "fold0" / "model.safetensors")["oof"] is False
    # The fold's score is its OOF's (the CV of metrics.json is computed from the OOF).
    metrics = json.loads((out / "metrics.json").read_text())
    assert record["scores"]["accuracy"] == pytest.approx(metrics["cv"]["accuracy"], abs=1e-12)

    # The bundle would ship the same files.
    from medalist.offline.package import make_plan

    plan = make_plan(resolve_config("configs/tiny.yaml", [*args[2:], "kaggle.timing_rows=0"]))
    shipped = {f: [p.resolve() for p in paths] for f, paths in plan.experiments[0].weights.items()}
    assert shipped == {"0": [out / "fold0" / name for name in files]}


def test_swa_weights_differ_from_the_model(tiny_project):
    """The SWA case above can fail: its average is not the raw model (nor the old file name)."""
    args = [*BASE, *SWA_ON]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    fold = tiny_project / "outputs" / "tiny" / "fold0"
    from safetensors.torch import load_file

    raw, average = load_file(fold / "model.safetensors"), load_file(fold / "swa.safetensors")
    assert any(not torch.equal(raw[k], average[k]) for k in raw if raw[k].is_floating_point())
    assert not (fold / "ema.safetensors").exists()
    # Removing the file the OOF came from stops infer, rather than predicting with other weights.
    (fold / "swa.safetensors").unlink()
    assert main(["infer", *args]) == 2


def test_a_fold_of_an_older_medalist_predicts_with_its_ema_file(trained_project):
    """scores.json without the record: EMA or SWA weights were saved as ema.safetensors."""
    from medalist.layout import prediction_weights

    fold = Path("outputs/tiny/fold0")  # the config's folders are relative to the project
    record = json.loads((fold / "scores.json").read_text())
    del record["prediction_weights"]
    (fold / "scores.json").write_text(json.dumps(record))
    cfg = resolve_config("configs/tiny.yaml", ["train.epochs=1", "train.folds=[0]"])
    assert prediction_weights(cfg, 0) == [fold / "model.safetensors"]
    (fold / "ema.safetensors").write_bytes((fold / "model.safetensors").read_bytes())
    swa = resolve_config("configs/tiny.yaml", ["train.folds=[0]", "tricks.swa.enabled=true"])
    assert prediction_weights(swa, 0) == [fold / "ema.safetensors"]


class Rows(torch.utils.data.Dataset):
    def __init__(self, n=8):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=generator)
        self.y = torch.arange(n) % 2

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"index": i, "input": self.x[i], "target": self.y[i]}


def test_a_resumed_fold_remembers_which_weights_scored_it(tmp_path):
    """The best epoch's evaluated weights are named in the checkpoint: a fold resumed after its
    best epoch saves them under their own name, not as the model's."""
    from medalist.tasks import build_task
    from medalist.training.hooks import Hooks, Tricks
    from medalist.training.loop import FoldTrainer
    from medalist.training.resume import FoldResult
    from medalist.training.runtime import make_accelerator

    cfg = resolve_config(overrides=["train.batch_size=4", "competition.target_columns=[y]"])
    task = build_task(cfg, pd.DataFrame({"y": [0, 1]}))

    def trainer() -> FoldTrainer:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        tricks = Tricks(Hooks(), task.loss)
        accelerator = make_accelerator(cfg)
        return FoldTrainer(
            cfg,
            task,
            model,
            Rows(),
            Rows(),
            Rows().y.numpy(),
            fold=0,
            tricks=tricks,
            accelerator=accelerator,
            folder=tmp_path,
            config_hash="the config",
        )

    first = trainer()
    weights = {k: v.clone() for k, v in first.model.state_dict().items()}
    first.best = FoldResult(weights, weights, 0, {"accuracy": 0.5}, None, [], "swa")
    first.save()
    second = trainer()
    second.resume()
    assert second.best.eval_name == "swa" and second.best.eval_state_dict is not None


# ------------------------------------------------------------------ SWA's batch-norm statistics


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3)
        self.norm = torch.nn.BatchNorm2d(3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


class FakeAccelerator:
    is_main_process = True

    @staticmethod
    def unwrap_model(model):
        return model


def test_swa_recomputes_batch_norm_statistics_of_the_average():
    """After an epoch end, the average's running mean and variance are the per-batch mean of the
    batch statistics of its own conv outputs over the training loader (cumulative average)."""
    torch.manual_seed(0)
    model = ConvBN()
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(20, 1, 6, 6, generator=generator) * 3 + 1
    loader = [{"input": inputs[i : i + 8]} for i in range(0, 20, 8)]  # 8, 8 and 4 rows
    state = TrainState(FakeAccelerator(), model, None, None, None, 0, train_loader=loader)
    swa = SWA(resolve_config(overrides=["tricks.swa.start_epoch=0"]).tricks.swa)
    swa.on_fit_start(state)
    epochs = []
    for shift in (0.5, -0.25):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(shift)
        epochs.append({k: v.clone() for k, v in model.named_parameters()})
        swa.on_epoch_end(state)
    average = swa.eval_model(state)
    for name, value in average.named_parameters():
        assert torch.allclose(value, (epochs[0][name] + epochs[1][name]) / 2, atol=1e-6), name
    # Reference: the averaged conv's outputs, batch by batch, reduced per channel.
    conv = torch.nn.Conv2d(1, 3, 3)
    conv.load_state_dict({k[5:]: v for k, v in average.state_dict().items() if k[:5] == "conv."})
    with torch.no_grad():
        outputs = [conv(batch["input"]).transpose(0, 1).flatten(1) for batch in loader]
    mean = torch.stack([o.mean(1) for o in outputs]).mean(0)
    var = torch.stack([o.var(1, unbiased=True) for o in outputs]).mean(0)
    norm = average.norm
    assert torch.allclose(norm.running_mean, mean, atol=1e-5)
    assert torch.allclose(norm.running_var, var, atol=1e-4)
    assert int(norm.num_batches_tracked) == len(loader)
    assert norm.momentum == 0.1  # the module's own momentum again after the pass
