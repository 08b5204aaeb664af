"""P12 (step): medalist's segmentation training step against a plain smp + accelerate loop.

A tiny segmentation-models-pytorch U-Net on timm's ``test_resnet`` encoder (random weights,
nothing downloaded), one output channel, binary masks, random 3 x 64 x 64 images and blob masks,
batch 8, fp32 on the CPU; a call is 4 optimizer steps over the same pre-collated batches. The
same optimizer and schedule on both sides (medalist's ``build_optimizer`` / ``build_scheduler``:
AdamW, decay on kernels only, foreach) and the same clipping (norm 1).

- A: the model as medalist builds it for segmentation
  (:func:`medalist.modalities.segmentation.model.build_model`: the smp U-Net inside
  :class:`PaddedSegmenter`, which pads nothing at 64 px) and its loss
  (:func:`medalist.modalities.segmentation.losses.build_loss` of ``bce+dice``: the terms in fp32,
  autocast off), given to the loop as a run without tricks is (``Tricks(Hooks(), loss)``, its
  criterion on the :class:`TrainState`), through :func:`medalist.training.loop.train_one_epoch`
  as P1 sets it up (accelerate's prepared loader, model, optimizer and scheduler; hooks
  dispatch, ``accelerator.accumulate``, the finite-step guard, loss bookkeeping).
- B: the loop a Kaggler writes: ``smp.Unet`` itself, model, optimizer and scheduler prepared by
  a plain ``Accelerator``; for each batch ``loss = bce(logits, y) + dice(logits, y)``
  (``BCEWithLogitsLoss``, ``smp.losses.DiceLoss("binary")``), ``accelerator.backward``, clip,
  ``optimizer.step``, ``scheduler.step``, ``zero_grad``.

Before timing, B's model is given A's weights, the first batch's loss is checked to be the same
on both sides, and after one call of each the two models' tensors (running statistics included)
to be the same within float rounding. B' (the control) is a second B built the same way.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from benchmarks.harness import NotAvailable, benchmark, measure
from benchmarks.steps import Tensors, loop_steps

SEED, BATCH, SIZE, STEPS = 0, 8, 64, 4


def segmentation_config():
    from medalist.config import resolve_config

    return resolve_config(
        overrides=[
            "competition.target_columns=[mask]",
            "model.backbone=test_resnet",
            "model.pretrained=false",
            "segmentation.architecture=unet",
            "segmentation.task=binary",
            "segmentation.loss='bce+dice'",
            "image.channels=3",
            f"image.size={SIZE}",
            "train.cpu=true",
            "train.progress=false",
            "train.mixed_precision='no'",
            f"train.batch_size={BATCH}",
            "train.epochs=1000",  # the schedule stays away from zero however long the timing runs
            "train.max_grad_norm=1.0",
            "train.num_workers=0",
        ]
    )


def images_and_masks() -> Tensors:
    """Random images and masks of smooth blobs (about half the pixels), ``STEPS`` batches."""
    generator = torch.Generator().manual_seed(SEED)
    rows = BATCH * STEPS
    images = torch.randn(rows, 3, SIZE, SIZE, generator=generator)
    noise = torch.randn(rows, 1, SIZE, SIZE, generator=generator)
    masks = (F.avg_pool2d(noise, 9, stride=1, padding=4) > 0).float()
    return Tensors(images, masks)


def medalist_side(cfg, model: torch.nn.Module, criterion, dataset: Tensors):
    """A callable running ``STEPS`` steps through medalist's loop, as P1's medalist side does,
    with ``criterion`` as the loss of a run without tricks (what FoldTrainer builds then); the
    task is asked for nothing (no hook reads it, the criterion is the loss)."""
    from medalist.training.hooks import Hooks, Tricks

    return loop_steps(cfg, None, dataset, model, Tricks(Hooks(), criterion), STEPS)


def plain_steps(cfg, model: torch.nn.Module, batches: list[dict]):
    """A callable running the same steps as the plain smp + accelerate loop."""
    import segmentation_models_pytorch as smp
    from accelerate import Accelerator

    from medalist.training.optim import build_optimizer, build_scheduler

    accelerator = Accelerator(cpu=True, mixed_precision="no")
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(batches))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    bce, dice = torch.nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary", from_logits=True)
    max_norm = cfg.train.max_grad_norm

    def run() -> None:
        model.train()
        for batch in batches:
            logits = model(batch["input"])
            loss = bce(logits, batch["target"]) + dice(logits, batch["target"])
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), max_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

    run.loss = lambda logits, target: bce(logits, target) + dice(logits, target)
    return run


def check_same_work(ours, theirs, criterion, batch: dict, run_a, run_b) -> dict:
    """The first batch's loss on both sides, then one call of each; raises if they differ."""
    with torch.no_grad():
        ours.eval()
        theirs.eval()
        logits = theirs(batch["input"])
        loss_a = criterion(ours(batch["input"]), batch["target"]).item()
        loss_b = run_b.loss(logits, batch["target"]).item()
    if abs(loss_a - loss_b) > 1e-5 * abs(loss_b):
        raise AssertionError(f"the first batch's loss differs: {loss_a} vs {loss_b}")
    start = {n: t.clone() for n, t in theirs.state_dict().items()}
    run_a()
    run_b()
    mine, other = ours.model.state_dict(), theirs.state_dict()
    if mine.keys() != other.keys():
        raise AssertionError(f"the models' tensors differ: {sorted(mine.keys() ^ other.keys())}")
    diff = max((mine[n].double() - other[n].double()).abs().max().item() for n in other)
    if diff > 1e-5:
        raise AssertionError(f"after {STEPS} steps the models' tensors differ by {diff:.2g}")
    moved = [n for n, t in theirs.named_parameters() if not torch.equal(t.detach(), start[n])]
    if len(moved) < len(start) // 2:
        raise AssertionError(f"only {len(moved)} tensors moved in {STEPS} steps")
    return {"loss": loss_a, "steps_max_abs_diff": diff}


@benchmark(
    "P12-step", target="<=1.03", title="segmentation: train step vs plain smp + accelerate loop"
)
def segmentation_step() -> dict:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise NotAvailable("pip install 'medalist[segmentation]'") from None

    from medalist.modalities.segmentation.losses import build_loss
    from medalist.modalities.segmentation.model import build_model

    cfg = segmentation_config()
    torch.manual_seed(SEED)
    model = build_model(cfg)  # PaddedSegmenter(smp.Unet)
    plain = smp.Unet("tu-test_resnet", encoder_weights=None, in_channels=3, classes=1)
    plain.load_state_dict(model.model.state_dict())
    control = copy.deepcopy(plain)
    loss = build_loss(cfg.segmentation.loss_spec, cfg.segmentation.task)
    run_a = medalist_side(cfg, model, loss, images_and_masks())
    run_b = plain_steps(cfg, plain, run_a.batches)
    run_c = plain_steps(cfg, control, run_a.batches)
    checked = check_same_work(model, plain, loss, run_a.batches[0], run_a, run_b)
    run_c()  # the control takes the same first steps as B
    result = measure(run_a, run_b, warmup=2, repeats=15, budget_s=15, control=run_c)
    result["step_ms"] = 1000 * result["median_a_s"] / STEPS
    return {**result, **checked}
