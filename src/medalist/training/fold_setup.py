"""What a fold trains with: its loaders, optimizer and scheduler, prepared by accelerate, and the
model in the form the GPU settings ask for (compiled, channels_last, gradient checkpointing); and
what it costs: its parameter counts (trainable and total) and its peak memory."""

from __future__ import annotations

import sys

import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from medalist.config import Config
from medalist.errors import ConfigError
from medalist.training.hooks import Tricks
from medalist.training.optim import build_optimizer, build_scheduler
from medalist.training.runtime import make_loader
from medalist.training.syncbn import sync_batch_norm

try:  # the process's peak resident set size; POSIX only
    import resource
except ImportError:  # Windows
    resource = None

# torch.compile's backend for ``train.compile``. "inductor" generates kernels (Triton on a GPU, C++
# on the CPU); other backends ("aot_eager", "eager") only trace, which is what tests use.
COMPILE_BACKEND = "inductor"


def check_compile(device: torch.device, backend: str | None = None) -> None:
    """Refuse ``train.compile`` where the backend cannot generate code, before any training.

    torch.compile compiles lazily, at the first batch: without this check a missing compiler
    would surface mid-fold as a backend error. Inductor needs Triton and a GPU of compute
    capability 7.0 or more (not a P100) on CUDA, and a C++ compiler on the CPU.
    """
    backend = backend or COMPILE_BACKEND
    if backend != "inductor":
        return
    fix = "or set train.compile=false"
    if device.type == "cuda":
        from torch.utils._triton import has_triton  # deferred: private, loads triton

        if not has_triton():
            raise ConfigError(
                "train.compile: torch.compile (inductor) needs Triton and a GPU of compute "
                f"capability 7.0 or more on CUDA; install triton {fix}"
            )
    elif device.type == "cpu":
        from torch._inductor.cpp_builder import get_cpp_compiler  # deferred: heavy, private

        try:
            get_cpp_compiler()
        except Exception as exc:  # torch raises its own InvalidCxxCompiler, or an OSError
            raise ConfigError(
                "train.compile: torch.compile (inductor) on the CPU needs a C++ compiler (g++ or "
                f"clang++ on PATH, or CXX) and found none ({exc}); install one {fix}"
            ) from exc


def enable_grad_checkpointing(model: torch.nn.Module) -> list[str]:
    """Turn on activation (gradient) checkpointing wherever the model offers it.

    A timm model (or submodule) through ``set_grad_checkpointing(True)``; a transformers model
    (the text model's ``.backbone``) through ``activation_checkpointing_enable`` (or the older
    ``gradient_checkpointing_enable``), non-reentrant, which needs no input gradients and works
    under DDP. The outermost modules that offer it are enabled, not their insides again.

    Returns:
        the names of the enabled modules ("" for the model itself).

    Raises:
        ConfigError: the model has no module that supports it.
    """
    enabled: list[str] = []
    for name, module in model.named_modules():
        if any(name == done or name.startswith(f"{done}.") or not done for done in enabled):
            continue  # inside a module already enabled
        if _checkpoint(module):
            enabled.append(name)
    if not enabled:
        raise ConfigError(
            f"model.grad_checkpointing: {type(model).__name__} supports neither timm's "
            "set_grad_checkpointing nor transformers' gradient checkpointing; set "
            "model.grad_checkpointing=false"
        )
    return enabled


def _checkpoint(module: torch.nn.Module) -> bool:
    """Enable checkpointing on ``module`` itself; False when it does not offer it."""
    kwargs = {"use_reentrant": False}
    transformers_like = getattr(module, "supports_gradient_checkpointing", None)
    if transformers_like is not None:
        if not transformers_like:
            return False
        enable = getattr(module, "activation_checkpointing_enable", None)
        if callable(enable):
            enable(activation_checkpointing_kwargs=kwargs)
        else:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        return True
    if callable(getattr(module, "set_grad_checkpointing", None)):
        try:
            module.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError):  # timm's "not supported" for some models
            return False
        return True
    return False


def parameter_counts(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters of ``model``, a tensor shared by several modules once.

    A 4-bit weight of bitsandbytes (``text.lora.quantize: 4bit``) is stored packed, two values a
    byte: it counts the values it holds, not its bytes, as peft's own count does.
    """
    trainable = total = 0
    for param in model.parameters():
        count = param.numel()
        if type(param).__name__ == "Params4bit":
            count *= 2 * param.element_size()
        total += count
        if param.requires_grad:
            trainable += count
    return trainable, total


def reset_peak_memory(device: torch.device) -> None:
    """Start measuring a fold's peak memory: on CUDA, the allocator's peak is reset to what is
    allocated now. The CPU's measure (the process's peak resident size) cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float | None:
    """The peak memory in MiB: on CUDA, the most tensor memory allocated on ``device`` since
    :func:`reset_peak_memory` (this fold's peak); elsewhere the process's peak resident set size
    so far (``getrusage``), which covers earlier folds and everything else the process holds,
    so it only grows from fold to fold. None where neither can be read."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def memory_scope(device: torch.device) -> str:
    """What :func:`peak_memory_mb` measures on ``device``, for the log."""
    if device.type == "cuda":
        return "CUDA memory allocated in this fold"
    return "this process's peak resident memory so far"


def prepare_fold(
    cfg: Config,
    model: torch.nn.Module,
    train_set: Dataset,
    valid_set: Dataset | None,
    tricks: Tricks,
    accelerator: Accelerator,
) -> tuple:
    """The fold's model, optimizer, training loader, scheduler and validation loader (None
    without validation rows), each prepared by ``accelerator``.

    The training loader takes a trick's sampler when one is enabled; batch norm is synchronised
    across processes when ``train.sync_bn`` asks for it and there are several.

    The GPU settings, each changing how the model runs and not what it computes (up to float
    rounding): ``model.grad_checkpointing`` turns on activation checkpointing,
    ``train.channels_last`` puts the model's 4-D weights (and, through :func:`make_loader`, its
    batches) in channels_last memory format (a no-op for text models), and ``train.compile``
    returns the prepared model ``torch.compile``-d (:data:`COMPILE_BACKEND`). The model passed in
    stays uncompiled; its parameters are the compiled one's, and everything that saves weights
    unwraps the compiled model first (:func:`~medalist.training.weights.bare_model`), so no saved
    key carries ``_orig_mod.``.
    """
    if cfg.train.compile:
        check_compile(accelerator.device)
    if cfg.model.grad_checkpointing:
        enable_grad_checkpointing(model)
    sampler = tricks.make_sampler(cfg.train.seed)
    loader = make_loader(train_set, cfg.train.batch_size, shuffle=True, cfg=cfg, sampler=sampler)
    if cfg.train.sync_bn and accelerator.num_processes > 1:
        model = sync_batch_norm(model, accelerator.device)  # same parameters, same keys
    model = model.to(accelerator.device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)  # in place: 4-D tensors only
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, len(loader), accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if cfg.train.compile:
        # After prepare, as accelerate's own dynamo plugin does: the DDP wrapper inside.
        model = torch.compile(model, backend=COMPILE_BACKEND)
    valid_loader = None
    if valid_set is not None:
        eval_batch = cfg.train.eval_batch_size or 2 * cfg.train.batch_size
        valid_loader = accelerator.prepare(
            make_loader(valid_set, eval_batch, shuffle=False, cfg=cfg)
        )
    return model, optimizer, loader, scheduler, valid_loader
