"""P5: text training throughput, dynamic padding with length buckets against padding to max length.

The demo's real text (``medalist.demo.text``: docstring descriptions of six libraries), all of
its training rows, and its settings (``configs/demo/text.yaml``: all-MiniLM-L6-v2, its
``max_length``, frozen layers, batch size, optimizer, length buckets). The padded length of a
batch depends on the whole epoch (rows are sorted by length within a bucket of up to 50
batches, the demo's epoch being one bucket), so the batches are made from the full training
split as the demo makes them, and a sample of them is timed: ``SAMPLE`` batches at evenly
spaced quantiles of their padded length. A call trains those batches through medalist's loop:

- A: ``text.dynamic_padding: true``: the sampled batches as the bucketed loader made them;
- B: ``text.dynamic_padding: false``: the same rows in the same batches, padded to
  ``max_length``.

The ratio is a throughput ratio (B's seconds / A's, >= 2.0). The same model then predicts the
sampled batches both ways; ``max_abs_diff`` is the largest difference of their logits (padding
is masked, so it is float noise). ``padded_slots_*`` count the token slots of the full epoch.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.harness import benchmark, measure

SEED, SAMPLE = 0, 2  # batches timed, spread over the epoch's padded lengths


def demo_config(*overrides: str):
    from medalist.config import resolve_config
    from medalist.demo.digits import REPO_CONFIGS
    from medalist.demo.text import minilm_dir

    return resolve_config(
        REPO_CONFIGS / "demo" / "text.yaml",
        [
            "modality=text",
            "competition.target_columns=[library]",
            f"text.backbone={minilm_dir()}",
            "train.cpu=true",
            "train.progress=false",
            "train.epochs=1000",  # the schedule stays away from zero for every call
            *overrides,
        ],
    )


def demo_rows(rows: int | None = None):
    """The demo's training split (same corpus, same per-library draw), or ``rows`` of it."""
    from sklearn.model_selection import train_test_split

    from medalist.demo.text import docstring_corpus

    corpus = docstring_corpus(per_library=130, seed=0)
    train, _ = train_test_split(corpus, test_size=0.2, random_state=0, stratify=corpus["library"])
    if rows is not None:
        train = train.sample(rows, random_state=SEED)
    return train.reset_index(drop=True)


def epoch_batches(cfg, task, frame):
    """The dataset of ``frame`` and one training epoch of its batches, as the demo's loader
    makes them (bucketed and dynamically padded, or padded to ``max_length``)."""
    from medalist.modalities.text import build_dataset
    from medalist.training.runtime import make_loader

    dataset = build_dataset(
        cfg, frame, task.encode_targets(frame), split="train", train=True, source="demo"
    )
    return dataset, list(make_loader(dataset, cfg.train.batch_size, shuffle=True, cfg=cfg))


def spread_sample(batches: list[dict], k: int) -> list[dict]:
    """``k`` batches at evenly spaced quantiles of their padded length, in epoch order."""
    order = sorted(range(len(batches)), key=lambda i: batches[i]["input"].shape[-1])
    picks = {order[min(len(order) - 1, int((j + 0.5) * len(order) / k))] for j in range(k)}
    return [batches[i] for i in sorted(picks)]


def steps_runner(cfg, task, model, batches):
    """A callable training ``batches`` through medalist's loop (as a fold's epoch does)."""
    from medalist.training.hooks import Hooks, TrainState
    from medalist.training.loop import train_one_epoch
    from medalist.training.optim import build_optimizer, build_scheduler
    from medalist.training.runtime import make_accelerator

    accelerator = make_accelerator(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(batches))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = TrainState(accelerator, model, optimizer, scheduler, task, fold=0)
    hooks = Hooks()

    def run() -> None:
        with tqdm(total=len(batches), disable=True) as bar:
            train_one_epoch(state, batches, hooks, cfg, bar)

    return run


def slots(batches: list[dict]) -> int:
    """Token slots (padding included) of ``batches``."""
    return sum(b["input"].shape[0] * b["input"].shape[-1] for b in batches)


@benchmark("P5", target=">=2.0", title="text epoch, dynamic padding + buckets vs pad to max")
def text_padding() -> dict:
    from medalist.modalities.text import build_model
    from medalist.tasks import build_task

    dynamic, padded = demo_config(), demo_config("text.dynamic_padding=false")
    frame = demo_rows()
    task = build_task(dynamic, frame)
    data_a, epoch_a = epoch_batches(dynamic, task, frame)
    data_b, epoch_b = epoch_batches(padded, task, frame)
    batches_a = spread_sample(epoch_a, SAMPLE)
    # The same rows in the same batches, padded to max_length.
    batches_b = [data_b.collate([data_b[i] for i in b["index"].tolist()]) for b in batches_a]
    torch.manual_seed(SEED)
    model = build_model(dynamic, task)
    reference = copy.deepcopy(model).eval()
    run_a = steps_runner(dynamic, task, model, batches_a)
    run_b = steps_runner(padded, task, copy.deepcopy(reference), batches_b)
    result = measure(run_a, run_b, warmup=1, repeats=3, throughput=True)
    with torch.no_grad():
        diff = max(
            float((reference(a["input"]) - reference(b["input"])).abs().max())
            for a, b in zip(batches_a, batches_b, strict=True)
        )
    result.update(
        rows=len(frame),
        batches_timed=f"{len(batches_a)} of {len(epoch_a)}",
        max_length=dynamic.text.max_length,
        mean_tokens=float(np.mean(data_a.lengths)),
        padded_slots_dynamic=slots(epoch_a),
        padded_slots_max=slots(epoch_b),
        sample_slots_dynamic=slots(batches_a),
        sample_slots_max=slots(batches_b),
        max_abs_diff=diff,
    )
    return result
