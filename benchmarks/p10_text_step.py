"""P10: medalist's text fine-tuning step against ``transformers.Trainer`` doing the same work.

The same model (the demo's: all-MiniLM-L6-v2 with medalist's text head and the demo's frozen
layers), the same pre-collated dynamically padded batches of the demo's real text, the same
optimizer and schedule (medalist's ``build_optimizer`` / ``build_scheduler``, handed to the
Trainer), the same clipping, fp32 on the CPU. Each side has its own copy of the model.

- A: :func:`medalist.training.loop.train_one_epoch` over K batches (hooks dispatch,
  ``accelerator.accumulate``, the finite-step guard, clipping, scheduler, loss bookkeeping).
- B: the Trainer's own step, K times, with model and optimizer prepared by its accelerator as
  ``Trainer.train`` does: ``trainer.training_step`` (its input preparation, loss computation and
  ``accelerator.backward``), then clipping through its accelerator, ``optimizer.step``,
  ``lr_scheduler.step`` and ``zero_grad``, as its training loop does.
"""

from __future__ import annotations

import copy
import tempfile

import torch
from torch import nn
from tqdm.auto import tqdm

from benchmarks.harness import benchmark, measure
from benchmarks.p5_text_padding import demo_config, demo_rows

STEPS, SEED = 2, 0


class ForTrainer(nn.Module):
    """The medalist text model as the Trainer calls models: keyword inputs, a dict with loss."""

    def __init__(self, model: nn.Module, task):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, input, labels):  # noqa: A002 - the batch key medalist uses
        logits = self.model(input)
        return {"loss": self.task.loss(logits, labels).mean(), "logits": logits}


def batches_of(cfg, task, frame) -> list[dict]:
    from medalist.modalities.text import build_dataset
    from medalist.training.runtime import make_loader

    dataset = build_dataset(
        cfg, frame, task.encode_targets(frame), split="train", train=True, source="demo"
    )
    loader = make_loader(dataset, cfg.train.batch_size, shuffle=True, cfg=cfg)
    return list(loader)[:STEPS]


def medalist_side(cfg, task, model, batches):
    from medalist.training.hooks import Hooks, TrainState
    from medalist.training.loop import train_one_epoch
    from medalist.training.optim import build_optimizer, build_scheduler
    from medalist.training.runtime import make_accelerator

    accelerator = make_accelerator(cfg)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, STEPS)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = TrainState(accelerator, model, optimizer, scheduler, task, fold=0)
    hooks = Hooks()

    def run() -> None:
        with tqdm(total=len(batches), disable=True) as bar:
            train_one_epoch(state, batches, hooks, cfg, bar)

    return run


def trainer_steps(cfg, model, inputs: list[dict], folder: str, parameters_of=None):
    """A call of K steps of ``model`` over ``inputs`` (its keyword batches) as ``Trainer.train``
    takes them, with medalist's optimizer and schedule over ``parameters_of`` (the module whose
    parameter groups medalist builds; default ``model``)."""
    from transformers import Trainer, TrainingArguments

    from medalist.training.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model if parameters_of is None else parameters_of, cfg)
    scheduler = build_scheduler(optimizer, cfg, STEPS)
    args = TrainingArguments(
        output_dir=folder,
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=cfg.train.batch_size,
        max_grad_norm=cfg.train.max_grad_norm,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=args, optimizers=(optimizer, scheduler))
    # As Trainer.train sets up its loop: model and optimizer prepared by its accelerator (the
    # optimizer's step then goes through accelerate's wrapper, as medalist's does).
    model, trainer.optimizer = trainer.accelerator.prepare(model, trainer.optimizer)
    trainer.current_gradient_accumulation_steps = 1  # what its loop sets without accumulation

    def run() -> None:
        for batch in inputs:  # training_step puts the model in training mode
            trainer.training_step(model, batch)
            trainer.accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            trainer.optimizer.step()
            trainer.lr_scheduler.step()
            model.zero_grad(set_to_none=True)

    run.inputs = inputs
    return run


def trainer_side(cfg, task, model, batches, folder: str):
    """medalist's model (its head and loss through :class:`ForTrainer`) stepped by Trainer."""
    inputs = [{"input": b["input"], "labels": b["target"]} for b in batches]
    return trainer_steps(cfg, ForTrainer(model, task), inputs, folder, parameters_of=model)


@benchmark("P10", target="<=1.0", title="text fine-tuning step vs transformers.Trainer")
def text_step() -> dict:
    from medalist.modalities.text import build_model
    from medalist.tasks import build_task

    cfg = demo_config()
    frame = demo_rows(STEPS * cfg.train.batch_size)
    task = build_task(cfg, frame)
    torch.manual_seed(SEED)
    model = build_model(cfg, task)
    other = copy.deepcopy(model)
    batches = batches_of(cfg, task, frame)
    with tempfile.TemporaryDirectory(prefix="medalist-p10-") as folder:
        run_a = medalist_side(cfg, task, model, batches)
        run_b = trainer_side(cfg, task, other, batches, folder)
        result = measure(run_a, run_b, warmup=1, repeats=4, budget_s=8)
    result["step_ms"] = 1000 * result["median_a_s"] / STEPS
    result["tokens_per_step"] = sum(b["input"][:, 1].sum().item() for b in batches) / STEPS
    return result
