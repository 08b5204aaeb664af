"""Segmentation under two gloo processes (``ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2``):
training, the loop's per-image scores gathered from both processes, the masks written by the
main process, infer and the RLE submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.scoring import mean_score, score_table
from medalist.tasks import build_task
from support.launch import launch_two
from support.segmentation_project import CONFIG, EXPERIMENT, segmentation_project

# 13 validation images a fold: batches of 4 (4, 4, 4, 1) split across two processes, which the
# shard evens out by repeating images.
ARGS = ["-c", CONFIG, "train.keep=last", "train.epochs=2"]


@pytest.mark.slow
def test_two_processes_train_score_every_image_once_and_submit(tmp_path):
    project = segmentation_project(tmp_path, n_train=26, n_test=6)
    with working_directory(project):
        assert main(["folds", *ARGS]) == 0
    writes = tmp_path / "writes.log"
    commands = [["train", *ARGS], ["infer", *ARGS], ["submission", *ARGS]]
    done = launch_two(project, writes, *commands, port=29623)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "MULTI_CPU with 2 process(es)" in done.stdout + done.stderr
    out = project / "outputs" / EXPERIMENT
    folds = pd.read_csv(project / "folds" / "folds.csv")
    train = pd.read_csv(project / "data" / "train.csv")
    with working_directory(project):
        cfg = resolve_config(CONFIG)
        targets = build_task(cfg, train).encode_targets(train)
        log = pd.read_csv(out / "log.csv")
        for fold in (0, 1):
            ids, masks = store.read_masks(out / f"fold{fold}" / "oof.masks.safetensors")
            assert sorted(ids) == sorted(folds.loc[folds["fold"] == fold, "id"].tolist())
            rows = [int(np.flatnonzero(train["id"] == i)[0]) for i in ids]
            truth = np.stack([np.asarray(targets[r]) for r in rows])
            oof_dice = mean_score(score_table(np.stack(masks), truth, "binary"))
            # The loop's last epoch (kept: train.keep=last) scored every validation image once,
            # gathered from both processes: as the main process's OOF masks of the same weights
            # score (up to their uint8 quantisation and batch-of-one float sums).
            last = log[log["fold"] == fold].iloc[-1]
            assert last["dice"] == pytest.approx(oof_dice, abs=0.02)
            scores = json.loads((out / f"fold{fold}" / "scores.json").read_text())["scores"]
            assert scores["dice"] == pytest.approx(oof_dice, abs=1e-2)
    assert (project / "submissions" / f"{EXPERIMENT}.csv").is_file()
    # Only the main process wrote files.
    writers = {line.split(" ", 1)[0] for line in writes.read_text().splitlines()}
    assert writers == {"0"}
