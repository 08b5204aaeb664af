"""P2: the train step with EMA on against the same step with EMA off.

timm efficientnet_b0 (213 parameter tensors, 147 buffers), 1 channel, 10 classes, 32 px, batch 32;
a call is 2 optimizer steps, each followed on the EMA side by one foreach lerp over every tensor.
Both sides run medalist's loop (:mod:`benchmarks.steps`) on their own copy of the model.
"""

from __future__ import annotations

from benchmarks.harness import benchmark, measure
from benchmarks.steps import make_config, medalist_steps, workload

BACKBONE, BATCH, SIZE, STEPS = "efficientnet_b0", 32, 32, 2


@benchmark("P2", target="<=1.03", title="train step with EMA on vs off")
def ema_step() -> dict:
    work = workload(BACKBONE, batch=BATCH, size=SIZE, steps=STEPS)
    tensors = len(list(work.model.parameters()))
    assert tensors >= 200, f"{BACKBONE} has {tensors} parameter tensors; P2 wants >= 200"
    ema_cfg = make_config(BATCH, SIZE, "tricks.ema.enabled=true", "tricks.ema.decay=0.999")
    run_a = medalist_steps(work, work.model_copy(), ema_cfg)
    run_b = medalist_steps(work, work.model_copy())
    assert [type(h).__name__ for h in run_a.hooks.hooks] == ["EMA"] and not run_b.hooks.hooks
    run_b2 = medalist_steps(work, work.model_copy())  # the control: another instance
    result = measure(run_a, run_b, warmup=1, repeats=8, budget_s=5, control=run_b2)
    result.update(parameter_tensors=tensors, step_ms=1000 * result["median_b_s"] / STEPS)
    return result
