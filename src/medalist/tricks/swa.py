"""SWA: Izmailov et al., "Averaging weights leads to wider optima and better generalization"
(UAI 2018), with torch's ``swa_utils.AveragedModel``.

From ``start_epoch`` on (usually the last 25-50% of the epochs), the weights at each epoch end
join an equal-weight average; with ``lr`` set the learning rate is held constant there (SWA's
usual schedule; 0.05-0.5x the peak). Batch-norm statistics of the average are recomputed over the
training loader before it is evaluated (the averaged weights never saw their own activations).
When EMA is on too, SWA averages the EMA weights. The average scores the OOF rows, is saved as
``fold{k}/swa.safetensors`` and predicts the test set.

``AveragedModel`` averages the parameters that train (all of them, or a LoRA model's
``saved_keys()``: the adapters and the head); the average module is a copy of the model that holds
them and shares the frozen base with the model it averages
(:func:`~medalist.tricks.ema.copy_sharing_base`), so the base is never copied.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel

from medalist.config.tricks import SWAConfig
from medalist.training.hooks import Hook, TrainState
from medalist.training.weights import bare_model
from medalist.tricks.ema import average_state, copy_sharing_base, frozen_tensors, load_average


@torch.no_grad()
def recompute_batch_norm(model: torch.nn.Module, loader) -> None:
    """Cumulative batch-norm statistics of ``model`` over one pass of ``loader``'s inputs."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = {m: m.momentum for m in norms}
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the pass
    was_training = model.training
    model.train()
    for batch in loader:
        model(batch["input"])
    for module, momentum in momenta.items():
        module.momentum = momentum
    model.train(was_training)


class SWA(Hook):
    """Average the weights at epoch ends from ``start_epoch``; evaluate and save the average."""

    def __init__(self, cfg: SWAConfig):
        self.cfg = cfg
        self.average: AveragedModel | None = None  # of the trained parameters
        self.module: torch.nn.Module | None = None  # the model holding the averages

    @property
    def count(self) -> int:
        """The epochs averaged so far: ``AveragedModel``'s own counter."""
        return 0 if self.average is None else int(self.average.n_averaged)

    def _source(self, state: TrainState) -> torch.nn.Module:
        ema = state.extra.get("ema_module")
        return ema if ema is not None else bare_model(state.model)

    def on_fit_start(self, state):
        source = self._source(state)
        shared = {id(t) for t in frozen_tensors(source)}
        # The parameters in ``source.parameters()`` order, as AveragedModel(source) takes them.
        self._trained = torch.nn.ParameterList(
            [p for p in source.parameters() if id(p) not in shared]
        )
        self.average = AveragedModel(self._trained, use_buffers=False)
        averages = dict(zip(map(id, self._trained), self.average.module, strict=True))
        self.module = copy_sharing_base(source, averages)
        # AveragedModel keeps the buffers of its copy in sync with the source's at each update.
        self._buffer_pairs = [
            (own, theirs)
            for own, theirs in zip(self.module.buffers(), source.buffers(), strict=True)
            if own is not theirs
        ]

    def after_step(self, state):
        if self.cfg.lr is not None and state.epoch >= self.cfg.start_epoch:
            for group in state.optimizer.param_groups:
                group["lr"] = self.cfg.lr

    def on_epoch_end(self, state):
        if state.epoch < self.cfg.start_epoch:
            return
        self.average.update_parameters(self._trained)
        with torch.no_grad():
            for own, theirs in self._buffer_pairs:
                own.copy_(theirs.to(own.device))
        # The epoch's augmentations, whatever the number of processes: accelerate passes a
        # prepared loader's epoch on to the dataset in one process only, at its next iteration.
        if hasattr(state.train_loader, "set_epoch"):
            state.train_loader.set_epoch(state.epoch)
        recompute_batch_norm(self.module, state.train_loader)

    def eval_model(self, state):
        return self.module if self.count else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's tensors (the model's saved keys when it has them) and ``swa_count``."""
        return {**average_state(self.module), "swa_count": torch.tensor(self.count)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            state = dict(state)
            self.average.n_averaged.fill_(int(state.pop("swa_count")))
            load_average(self.module, state, "tricks.swa")
