"""P1: medalist's train step (no tricks) against the plainest accelerate step doing the same work.

timm resnet10t, 1 channel, 10 classes, 32 px, batch 16; a call is 2 optimizer steps (see
:mod:`benchmarks.steps` for what each side does). Each side trains its own copy of the model.
"""

from __future__ import annotations

from benchmarks.harness import benchmark, measure
from benchmarks.steps import medalist_steps, raw_steps, workload


@benchmark("P1", target="<=1.03", title="train step, no tricks vs raw accelerate")
def train_step() -> dict:
    work = workload("resnet10t", batch=16, size=32, steps=2)
    run_a = medalist_steps(work, work.model_copy())
    run_b = raw_steps(work, work.model_copy(), run_a.batches)
    assert not run_a.hooks.hooks, "P1 measures the loop without tricks"
    run_b2 = raw_steps(work, work.model_copy(), run_a.batches)  # the control: another instance
    result = measure(run_a, run_b, warmup=2, repeats=15, budget_s=4, control=run_b2)
    result["step_ms"] = 1000 * result["median_b_s"] / work.steps
    return result
