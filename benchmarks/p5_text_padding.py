"""P5: text training throughput, dynamic padding with length buckets against padding to max length.

The demo's real text (``medalist.demo_text``: docstring descriptions of six libraries) and its
settings (``configs/demo/text.yaml``: all-MiniLM-L6-v2, its ``max_length``, frozen layers, batch
size, optimizer). One call is one training epoch over the same rows through medalist's loop:

- A: ``text.dynamic_padding: true`` (each batch padded to its longest row, rows bucketed by
  length, batches shuffled);
- B: ``text.dynamic_padding: false`` (every batch padded to ``max_length``, rows shuffled).

The ratio is a throughput ratio (B's seconds / A's, >= 2.0). The same model then predicts the rows
with both datasets; ``max_abs_diff`` is the largest difference of their logits (padding is masked,
so it is float noise).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from tqdm.auto import tqdm

from benchmarks.harness import benchmark, measure

ROWS, SEED = 320, 0  # ten batches of the demo's training rows


def demo_config(*overrides: str):
    from medalist.config import resolve_config
    from medalist.demo import REPO_CONFIGS
    from medalist.demo_text import minilm_dir

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


def demo_rows(rows: int = ROWS):
    """``rows`` rows of the demo's training set (same corpus, same per-library draw)."""
    from sklearn.model_selection import train_test_split

    from medalist.demo_text import docstring_corpus

    corpus = docstring_corpus(per_library=130, seed=0)
    train, _ = train_test_split(corpus, test_size=0.2, random_state=0, stratify=corpus["library"])
    return train.sample(rows, random_state=SEED).reset_index(drop=True)


def epoch_runner(cfg, task, frame, model):
    """A callable training one epoch of ``frame`` through medalist's loader and loop."""
    from medalist.hooks import Hooks, TrainState
    from medalist.loop import make_accelerator, make_loader, train_one_epoch
    from medalist.optim import build_optimizer, build_scheduler
    from medalist.text import build_dataset

    dataset = build_dataset(
        cfg, frame, task.encode_targets(frame), split="train", train=True, source="demo"
    )
    accelerator = make_accelerator(cfg)
    loader = make_loader(dataset, cfg.train.batch_size, shuffle=True, cfg=cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    state = TrainState(accelerator, model, optimizer, scheduler, task, fold=0, train_loader=loader)
    hooks, epoch = Hooks(), [0]

    def run() -> None:
        loader.set_epoch(epoch[0])
        epoch[0] += 1
        with tqdm(total=len(loader), disable=True) as bar:
            train_one_epoch(state, loader, hooks, cfg, bar)

    return run, dataset


def padded_tokens(dataset, batch_size: int) -> int:
    """Token slots (padding included) of one epoch's batches."""
    from medalist.loop import make_loader

    cfg = demo_config()
    loader = make_loader(dataset, batch_size, shuffle=True, cfg=cfg)
    return sum(b["input"].shape[0] * b["input"].shape[-1] for b in loader)


@benchmark("P5", target=">=2.0", title="text epoch, dynamic padding + buckets vs pad to max")
def text_padding() -> dict:
    from medalist.loop import make_accelerator, make_loader, predict_logits
    from medalist.tasks import build_task
    from medalist.text import build_model

    dynamic, padded = demo_config(), demo_config("text.dynamic_padding=false")
    frame = demo_rows()
    task = build_task(dynamic, frame)
    torch.manual_seed(SEED)
    model = build_model(dynamic, task)
    reference = copy.deepcopy(model).eval()
    run_a, data_a = epoch_runner(dynamic, task, frame, model)
    run_b, data_b = epoch_runner(padded, task, frame, copy.deepcopy(reference))
    result = measure(run_a, run_b, warmup=1, repeats=3, throughput=True)
    logits = []
    for cfg, dataset in ((dynamic, data_a), (padded, data_b)):
        loader = make_loader(dataset, cfg.infer.batch_size, shuffle=False, cfg=cfg)
        logits.append(predict_logits(reference, loader, make_accelerator(cfg))[1])
    lengths = data_a.lengths
    result.update(
        rows=len(frame),
        max_length=dynamic.text.max_length,
        mean_tokens=float(np.mean(lengths)),
        padded_slots_dynamic=padded_tokens(data_a, dynamic.train.batch_size),
        padded_slots_max=padded_tokens(data_b, dynamic.train.batch_size),
        max_abs_diff=float(np.abs(logits[0] - logits[1]).max()),
    )
    return result
