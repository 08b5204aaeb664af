"""Hooks that observe training without changing it (used through tricks.custom)."""

import json
import os
from pathlib import Path

import torch

from medalist.training.hooks import Hook


class Precision(Hook):
    """Appends to ``path``, per fold and process, the dtypes the model's convolutions and linear
    layers returned in training (autocast's doing) and the number of training forward passes
    (adversarial passes included)."""

    def __init__(self, path: str):
        self.path = Path(path)

    def on_fit_start(self, state):
        self.dtypes, self.forwards = set(), 0
        model = state.accelerator.unwrap_model(state.model)
        model.register_forward_hook(self._count)
        for module in model.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                module.register_forward_hook(self._record)

    def _count(self, module, inputs, output):
        self.forwards += module.training

    def _record(self, module, inputs, output):
        if module.training:
            self.dtypes.add(str(output.dtype).removeprefix("torch."))

    def on_fit_end(self, state):
        record = {
            "rank": int(os.environ.get("RANK", "0")),
            "dtypes": sorted(self.dtypes),
            "forwards": self.forwards,
        }
        with open(self.path, "a") as handle:  # O_APPEND: lines of the two processes do not mix
            handle.write(json.dumps(record) + "\n")


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]
