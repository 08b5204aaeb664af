"""R-Drop: Liang et al., "R-Drop: regularized dropout for neural networks" (NeurIPS 2021).

The batch goes through the model once, doubled, so the two copies see two dropout masks; the
loss adds ``alpha`` times the symmetric KL divergence between the two predictions, reduced per
sample and averaged like the main loss. alpha 0.1-5 (1 for classification, up to 5 for text).
With dropout off both halves are identical and the KL is exactly zero.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medalist.config.tricks import RDropConfig
from medalist.training.hooks import Hook


def symmetric_kl(task_type: str, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-sample symmetric divergence between two predictions of the same inputs."""
    first, second = first.float(), second.float()
    if task_type == "multiclass":
        log_p, log_q = first.log_softmax(-1), second.log_softmax(-1)
        kl_pq = (log_p.exp() * (log_p - log_q)).sum(-1)
        kl_qp = (log_q.exp() * (log_q - log_p)).sum(-1)
        return 0.5 * (kl_pq + kl_qp)
    if task_type in ("binary", "multilabel"):
        # Bernoulli KL per output, averaged over outputs.
        log_p, log_q = F.logsigmoid(first), F.logsigmoid(second)
        log_np, log_nq = F.logsigmoid(-first), F.logsigmoid(-second)
        kl_pq = log_p.exp() * (log_p - log_q) + log_np.exp() * (log_np - log_nq)
        kl_qp = log_q.exp() * (log_q - log_p) + log_nq.exp() * (log_nq - log_np)
        return (0.5 * (kl_pq + kl_qp)).mean(-1)
    return (first - second).pow(2).mean(-1)  # regression: squared distance of the two outputs


class RDrop(Hook):
    """Double the batch before the forward pass; add the KL of the two halves to the loss."""

    def __init__(self, cfg: RDropConfig):
        self.alpha = cfg.alpha

    def before_batch(self, state, batch):
        doubled = {k: torch.cat([v, v]) if torch.is_tensor(v) else v for k, v in batch.items()}
        doubled["rdrop_half"] = len(batch["input"])
        return doubled

    def compute_loss(self, state, batch, outputs, loss):
        half = batch["rdrop_half"]
        kl = symmetric_kl(state.task.type, outputs[:half], outputs[half:])
        return loss + self.alpha * kl.mean()
