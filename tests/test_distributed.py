"""R10: two processes (gloo on CPU) give the single-process OOF and test predictions, every id
exactly once, and files written once."""

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main

# A model without batch norm (per-process statistics would differ by design) and the same
# effective batch: 16 rows in one process, 8 in each of two.
COMMON = [
    "-c",
    "configs/tiny.yaml",
    "model.backbone=test_convnext",
    "image.size=32",
    "train.epochs=2",
    "train.max_grad_norm=null",
    "tricks.ema.enabled=true",
    "tricks.ema.decay=0.5",
]


def two_processes(project, stage, *args):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29617",
        "-m",
        "medalist",
        stage,
        *args,
    ]
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_processes_match_one(tiny_project):
    assert main(["folds", *COMMON]) == 0
    assert main(["train", *COMMON, "train.batch_size=16", "train.experiment=one"]) == 0
    assert main(["infer", *COMMON, "train.experiment=one"]) == 0
    done = two_processes(
        tiny_project, "train", *COMMON, "train.batch_size=8", "train.experiment=two"
    )
    assert "MULTI_CPU with 2 process(es)" in done.stdout + done.stderr
    two_processes(tiny_project, "infer", *COMMON, "train.experiment=two")

    out = tiny_project / "outputs"
    one_oof, two_oof = (
        pd.read_parquet(out / "one/oof.parquet"),
        pd.read_parquet(out / "two/oof.parquet"),
    )
    train = pd.read_csv(tiny_project / "data/train.csv")
    assert sorted(two_oof["id"]) == sorted(train["id"])  # every id exactly once
    assert list(two_oof["id"]) == list(one_oof["id"])
    columns = [c for c in one_oof.columns if c.startswith("p_")]
    np.testing.assert_allclose(two_oof[columns], one_oof[columns], atol=2e-4)
    one_test, two_test = (
        pd.read_parquet(out / "one/test.parquet"),
        pd.read_parquet(out / "two/test.parquet"),
    )
    assert list(two_test["id"]) == list(pd.read_csv(tiny_project / "data/test.csv")["id"])
    np.testing.assert_allclose(two_test[columns], one_test[columns], atol=2e-4)
    ledger = pd.read_csv(out / "ledger.csv")
    assert ledger["experiment"].tolist() == ["one", "two"]  # the two-process run wrote one row
