"""Two processes equal one for a LoRA decoder: a tiny Llama-shaped model (made here,
tests/support/tiny_decoder.py) with adapters trained under two gloo processes on the CPU gives
the one-process OOF predictions, scores and adapters, every id exactly once, the files written by
the main process only.

The same effective batch on both sides: one process accumulates two batches of 4 a step, two
processes take one batch of 4 each (the length-bucketed batches of the text modality, as in
tests/test_distributed.py). No dropout anywhere, the adapters' included: each process draws its
own masks by design, which would make the two runs different models.

Tolerance: the distributed run sums the two halves' gradients in another order (gloo's
all-reduce) than one process accumulating them, so its weights differ from the one-process
run's in the last float bits, and AdamW's normalised steps carry that into the predictions;
the OOF probabilities and the adapters are compared to 1e-5, as tests/test_distributed.py does
(measured here: equal to the bit, two halves summing as the accumulated pair does).
"""

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file

from medalist.cli import main
from medalist.demo.digits import working_directory
from support.launch import launch_two
from support.tiny_decoder import make_decoder

SENTENCES = [
    f"{s} {v} the {o}"
    for s in ["the array", "the frame", "the tensor", "the model", "the series"]
    for v in ["holds", "returns", "sorts", "copies"]
    for o in ["numbers", "labels", "values", "rows"]
]
# Fold 0: 32 validation rows, 32 training rows in 8 batches of 4 an epoch.
TRAIN = [
    "modality=text",
    "text.backbone=models/decoder",
    "competition.target_columns=[label]",
    "folds.n_splits=2",
    "train.folds=[0]",
    "text.max_length=16",
    "text.pooling=last",
    "text.dropout=0",
    "text.lora.enabled=true",
    "text.lora.r=4",
    "text.lora.alpha=8",
    "text.lora.dropout=0",
    "text.lora.target_modules=[q_proj,v_proj]",
    "train.epochs=2",
    "train.batch_size=4",
    "train.lr=2e-3",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Fold 0 trained in this process (experiment ``one``) and in two (``two``)."""
    root = tmp_path_factory.mktemp("llm_distributed")
    project = root / "decoder"
    (project / "data").mkdir(parents=True)
    labels = [i % 2 for i in range(64)]
    pd.DataFrame({"id": range(64), "text": SENTENCES[:64], "label": labels}).to_csv(
        project / "data" / "train.csv", index=False
    )
    make_decoder(project / "models" / "decoder", SENTENCES)
    with working_directory(project):
        assert main(["folds", *TRAIN]) == 0
        assert main(["train", *TRAIN, "train.grad_accum=2", "train.experiment=one"]) == 0
    writes = root / "writes.log"
    done = launch_two(project, writes, ["train", *TRAIN, "train.experiment=two"], port=29619)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return {
        "out": project / "outputs",
        "log": done.stdout + done.stderr,
        "writes": [line.split(" ", 1) for line in writes.read_text().splitlines()],
    }


@pytest.mark.slow
def test_two_processes_train_a_lora_decoder_like_one(runs):
    assert "MULTI_CPU with 2 process(es)" in runs["log"]
    out = runs["out"]
    one, two = pd.read_parquet(out / "one/oof.parquet"), pd.read_parquet(out / "two/oof.parquet")
    assert len(set(two["id"])) == len(two) == 32 and list(two["id"]) == list(one["id"])
    columns = [c for c in one.columns if c.startswith("p_")]
    np.testing.assert_allclose(two[columns], one[columns], rtol=0, atol=1e-5)
    assert not np.allclose(one[columns].to_numpy(), 0.5, atol=1e-3)  # the model did learn
    one_metrics = json.loads((out / "one/metrics.json").read_text())
    two_metrics = json.loads((out / "two/metrics.json").read_text())
    assert two_metrics["cv"] == pytest.approx(one_metrics["cv"], abs=1e-5)
    a = load_file(out / "one/fold0/model.safetensors")
    b = load_file(out / "two/fold0/model.safetensors")
    assert a.keys() == b.keys() and all(".lora_" in k or k.startswith("head.") for k in a)
    for key in a:
        np.testing.assert_allclose(b[key].numpy(), a[key].numpy(), rtol=0, atol=1e-5, err_msg=key)
    # The same trainable count in the log, the DDP wrapper's parameters being the model's.
    one_log = pd.read_csv(out / "one/log.csv")
    two_log = pd.read_csv(out / "two/log.csv")
    assert list(two_log["trainable_params"]) == list(one_log["trainable_params"])


@pytest.mark.slow
def test_two_processes_write_the_lora_fold_once_from_the_main_process(runs):
    ranks = Counter(rank for rank, _ in runs["writes"])
    assert set(ranks) == {"0"}, ranks
    seen = Counter(path for _, path in runs["writes"])
    out = str(runs["out"].resolve())
    assert seen[f"{out}/two/fold0/model.safetensors"] == 1
    assert seen[f"{out}/two/oof.parquet"] == 1
