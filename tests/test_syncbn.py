"""``train.sync_bn`` on CPU processes: the layers it builds, and two gloo processes computing what
one process computes on the whole batch (outputs, gradients, running statistics)."""

import copy
import logging
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from timm.layers import BatchNormAct2d, SyncBatchNormAct

from medalist.errors import ConfigError
from medalist.training.syncbn import GlooSyncBatchNorm, sync_batch_norm

CPU = torch.device("cpu")


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
        torch.nn.BatchNorm1d(3, momentum=None),  # a cumulative average, as SWA recomputes it
    )


def test_conversion_keeps_parameters_buffers_and_keys():
    plain = tiny_net()
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    weight = plain[1].weight
    synced = sync_batch_norm(plain, CPU)
    assert [type(m) for m in synced if isinstance(m, GlooSyncBatchNorm)] == [GlooSyncBatchNorm] * 2
    assert synced[1].weight is weight  # the optimizer built after it trains the same tensors
    state = synced.state_dict()
    assert state.keys() == before.keys()
    tiny_net().load_state_dict(state)  # the saved weights load into the plain model
    assert (synced[5].momentum, synced[1].eps) == (None, plain[1].eps)


@pytest.mark.parametrize("training", [True, False])
def test_one_process_is_plain_batch_norm(training):
    """Without other processes (no process group) the layer is batch norm, bit for bit."""
    plain, x = tiny_net().train(training), torch.randn(8, 3, 8, 8)
    synced = sync_batch_norm(copy.deepcopy(plain), CPU)
    assert torch.equal(synced(x), plain(x))
    for a, b in zip(synced.buffers(), plain.buffers(), strict=True):
        assert torch.equal(a, b)


def test_gpu_layers_are_torch_and_timm_sync_batch_norm():
    """On GPUs (converting needs none): torch's SyncBatchNorm, timm's for its norm+act layers."""
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4), BatchNormAct2d(4))
    keys = model.state_dict().keys()
    synced = sync_batch_norm(model, torch.device("cuda"))
    assert [type(m) for m in synced] == [torch.nn.SyncBatchNorm, SyncBatchNormAct]
    assert synced.state_dict().keys() == keys


def test_timm_norm_act_layers_are_refused_on_cpu():
    with pytest.raises(ConfigError, match=r"train\.sync_bn.*BatchNormAct2d"):
        sync_batch_norm(torch.nn.Sequential(BatchNormAct2d(4)), CPU)


def test_a_model_without_batch_norm_is_left_alone(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    with caplog.at_level(logging.WARNING):
        assert sync_batch_norm(model, CPU) is model
    assert "train.sync_bn" in caplog.text


def _steps(model, x, rank, world, steps=3):
    """SGD steps on this process's rows; returns the outputs and gradients of each step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    for _ in range(steps):
        out = model(x.chunk(world)[rank])
        (out.square().mean() + out[:, 0].mean()).backward()
        seen.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
        optimizer.step()
        optimizer.zero_grad()
    return seen


def _two_processes(rank: int, port: int, x: torch.Tensor) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        reference, net = tiny_net(), tiny_net()
        expected = _steps(reference, x, 0, 1)  # one process, the whole batch of 16
        model = sync_batch_norm(net, CPU)
        got = _steps(torch.nn.parallel.DistributedDataParallel(model), x, rank, 2)
        for (out, grads), (ref_out, ref_grads) in zip(got, expected, strict=True):
            torch.testing.assert_close(out, ref_out.chunk(2)[rank], rtol=0, atol=1e-5)
            for grad, ref_grad in zip(grads, ref_grads, strict=True):
                torch.testing.assert_close(grad, ref_grad, rtol=0, atol=1e-6)
        for buffer, ref_buffer in zip(model.buffers(), reference.buffers(), strict=True):
            torch.testing.assert_close(buffer, ref_buffer, rtol=0, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_compute_the_batch_statistics_of_one():
    """Each of two processes sees half of every batch; with DDP averaging the gradients, every
    output, gradient and running statistic equals one process's on the whole batch."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    x = torch.randn(16, 3, 8, 8) * 3 + 5  # far from normalised: wrong statistics would show
    mp.spawn(_two_processes, args=(port, x), nprocs=2)
