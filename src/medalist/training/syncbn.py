"""Batch norm over every process's rows (``train.sync_bn``), on GPUs and on CPU processes.

Ioffe and Szegedy, "Batch normalization" (ICML 2015); the synchronised form is torch's
``SyncBatchNorm``, as in timm's ``train.py --sync-bn``. Without it each of N processes normalises
its own ``batch_size`` rows, so N processes train another model than one process with the same
global batch; the difference grows as the per-process batch shrinks (segmentation, large images).

On GPUs the batch-norm layers become ``torch.nn.SyncBatchNorm`` (timm's ``BatchNormAct2d``:
``SyncBatchNormAct``). On CPU processes (gloo) torch has no kernels for it and DDP refuses it, so
plain ``BatchNorm{1,2,3}d`` layers become :class:`GlooSyncBatchNorm`, which all-reduces each
channel's sum, sum of squares and count. The state dict keeps its keys: the saved weights load
into the model ``infer`` and ``package`` build.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from timm.layers import convert_sync_batchnorm
from torch.distributed.nn.functional import all_reduce
from torch.nn.modules.batchnorm import _BatchNorm

from medalist.errors import ConfigError

log = logging.getLogger(__name__)
PLAIN = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def sync_batch_norm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` with its batch-norm layers synchronised across processes (replaced in place,
    the same parameters and buffers); call it only when several processes run."""
    if not any(isinstance(m, _BatchNorm) for m in model.modules()):
        log.warning("train.sync_bn: the model has no batch-norm layer; nothing to synchronise")
        return model
    if device.type == "cpu":
        return _to_gloo(model)

    return convert_sync_batchnorm(model)


class GlooSyncBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the rows of every process, for CPU tensors.

    In training, each channel's sum, sum of squares and row count are summed over the processes
    (one all-reduce, float64 so that ``E[x^2] - E[x]^2`` loses nothing); autograd's all-reduce
    sums the gradients of those statistics back, as ``SyncBatchNorm``'s backward does. Evaluation
    and a single process use the running statistics as plain batch norm does.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        shape = [1, -1] + [1] * (input.dim() - 2)  # (C,) -> broadcastable over (N, C, ...)
        dims = [0, *range(2, input.dim())]
        wide = input.double()
        count = wide.new_full((1,), input.numel() / input.shape[1])
        totals = all_reduce(torch.cat([wide.sum(dims), wide.square().sum(dims), count]))
        sums, squares, n = totals.split([input.shape[1], input.shape[1], 1])
        mean, var = sums / n, squares / n - (sums / n).square()
        self._update_running_stats(mean.detach(), var.detach() * n / (n - 1))
        out = (wide - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        if not self.track_running_stats:
            return
        self.num_batches_tracked.add_(1)
        factor = self.momentum
        if factor is None:  # a cumulative average (SWA's batch-norm recomputation)
            factor = 1.0 / self.num_batches_tracked.item()
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


def _to_gloo(module: torch.nn.Module) -> torch.nn.Module:
    """Plain batch-norm layers as :class:`GlooSyncBatchNorm` sharing their parameters and
    buffers (the pattern of ``SyncBatchNorm.convert_sync_batchnorm``)."""
    if isinstance(module, _BatchNorm):
        if type(module) not in PLAIN:
            raise ConfigError(
                f"train.sync_bn: on CPU processes only torch's BatchNorm1d/2d/3d can be "
                f"synchronised, not {type(module).__name__}; set train.sync_bn=false"
            )
        synced = GlooSyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        synced.weight, synced.bias = module.weight, module.bias
        synced.running_mean, synced.running_var = module.running_mean, module.running_var
        synced.num_batches_tracked = module.num_batches_tracked
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, _to_gloo(child))
    return module
