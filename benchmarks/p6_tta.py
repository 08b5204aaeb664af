"""P6: TTA inference, medalist's batched views against n single-view passes.

The digits demo's model (timm resnet18, 1 channel, 10 classes, 32 px), its inference batch
(``infer.batch_size``, 64 rows) and the eight d4 views, merged by the mean of probabilities.

- A: :func:`medalist.prediction.infer.predict`, which sends every view of a batch through the model as one
  concatenated batch (:func:`medalist.prediction.tta.batched_views`) and merges them.
- B: the plainest TTA: for each view, one pass over the batches with that view alone, then the
  same merge of the per-view logits.

Both read the same pre-built batches (no decoding on either side) with the same model in eval
mode under ``no_grad``; the two results are checked to agree before timing.
"""

from __future__ import annotations

import numpy as np
import torch

from benchmarks.harness import benchmark, measure

BACKBONE, SIZE, BATCH, ROWS, VIEWS = "resnet18", 32, 64, 64, ["d4"]


@benchmark("P6", target="<=1.0", title="TTA, n views batched vs n single-view passes")
def tta() -> dict:
    import pandas as pd
    import timm
    from accelerate import Accelerator

    from medalist.config import resolve_config
    from medalist.prediction.infer import predict
    from medalist.prediction.tta import expand_views, merge, view
    from medalist.tasks import build_task

    cfg = resolve_config(overrides=["train.cpu=true", "image.channels=1", f"image.size={SIZE}"])
    task = build_task(cfg, pd.DataFrame({"target": list(range(10))}))
    views = expand_views(VIEWS)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(ROWS, 1, SIZE, SIZE, generator=generator)
    batches = [
        {"index": torch.arange(start, start + BATCH), "input": inputs[start : start + BATCH]}
        for start in range(0, ROWS, BATCH)
    ]
    torch.manual_seed(0)
    model = timm.create_model(BACKBONE, num_classes=10, in_chans=1).eval()
    accelerator = Accelerator(cpu=True)

    def batched() -> np.ndarray:
        return predict(model, batches, accelerator, task, views, "mean")

    @torch.no_grad()
    def single_view_passes() -> np.ndarray:
        per_view = []
        for name in views:
            per_view.append(torch.cat([model(view(name, b["input"])).float() for b in batches]))
        return merge(task.type, torch.stack(per_view), "mean").numpy()

    np.testing.assert_allclose(batched(), single_view_passes(), rtol=1e-4, atol=1e-5)
    result = measure(batched, single_view_passes, warmup=1, repeats=10, budget_s=4)
    result.update(views=len(views), rows=ROWS)
    return result
