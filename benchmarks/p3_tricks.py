"""P3: the train step with FGM, AWP or R-Drop on against the raw step; a disabled trick's cost.

Each trick needs a second forward and backward pass by design (R-Drop as one pass over the
doubled batch), so the target is twice the raw step plus 5% (:mod:`benchmarks.steps`: the raw
step is the plainest accelerate loop). timm resnet10t with dropout 0.1 (R-Drop needs it), 1
channel, 10 classes, 32 px, batch 16; a call is 2 optimizer steps.

``P3-off``: AWP configured with its start epoch not reached yet (the hook is attached and asked
at every event, and does nothing) against the same loop with no tricks section at all.
"""

from __future__ import annotations

from benchmarks.harness import benchmark, measure
from benchmarks.steps import make_config, medalist_steps, raw_steps, workload

BACKBONE, BATCH, SIZE, STEPS = "resnet10t", 16, 32, 2
TRICKS = {
    "fgm": ("FGM", ["tricks.fgm.enabled=true", "tricks.fgm.epsilon=0.5"]),
    "awp": (
        "AWP",
        ["tricks.awp.enabled=true", "tricks.awp.start_epoch=0", "tricks.awp.adv_lr=0.1"],
    ),
    "rdrop": ("RDrop", ["tricks.rdrop.enabled=true", "tricks.rdrop.alpha=1.0"]),
}


def _work():
    return workload(BACKBONE, batch=BATCH, size=SIZE, steps=STEPS, drop_rate=0.1)


def trick_vs_raw(name: str) -> dict:
    hook, overrides = TRICKS[name]
    work = _work()
    run_a = medalist_steps(work, work.model_copy(), make_config(BATCH, SIZE, *overrides))
    assert [type(h).__name__ for h in run_a.hooks.hooks] == [hook]
    run_b = raw_steps(work, work.model_copy(), run_a.batches)
    result = measure(run_a, run_b, warmup=1, repeats=10, budget_s=5)
    result["step_ms"] = 1000 * result["median_b_s"] / STEPS
    return result


@benchmark("P3-fgm", target="<=2.05", title="train step with FGM vs raw step")
def fgm() -> dict:
    return trick_vs_raw("fgm")


@benchmark("P3-awp", target="<=2.05", title="train step with AWP vs raw step")
def awp() -> dict:
    return trick_vs_raw("awp")


@benchmark("P3-rdrop", target="<=2.05", title="train step with R-Drop vs raw step")
def rdrop() -> dict:
    return trick_vs_raw("rdrop")


@benchmark("P3-off", target="<=1.01", title="AWP configured, before its start epoch, vs no tricks")
def disabled() -> dict:
    work = _work()
    waiting = make_config(BATCH, SIZE, "tricks.awp.enabled=true", "tricks.awp.start_epoch=1000")
    run_a = medalist_steps(work, work.model_copy(), waiting)
    assert [type(h).__name__ for h in run_a.hooks.hooks] == ["AWP"]
    assert not run_a.hooks.hooks[0].active(_state_epoch(1))
    run_b = medalist_steps(work, work.model_copy())
    assert not run_b.hooks.hooks
    run_b2 = medalist_steps(work, work.model_copy())  # the control: another instance
    return measure(run_a, run_b, warmup=2, repeats=15, budget_s=4, control=run_b2)


def _state_epoch(epoch: int):
    from types import SimpleNamespace

    return SimpleNamespace(epoch=epoch)
