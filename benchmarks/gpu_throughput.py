"""Training throughput on a GPU: fp32 vs bf16 autocast, channels_last, torch.compile, and MFU.

Run on a machine with a CUDA GPU: ``python benchmarks/gpu_throughput.py``. Prints one line per
setting (samples/s and model FLOP utilisation against the card's dense bf16 peak). Not part of
``make bench`` (which must run on a CPU-only machine).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak() -> float:
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), float("nan"))


def timm_case(channels_last: bool):
    import timm

    model = timm.create_model("resnet50", num_classes=1000).cuda()
    x = torch.randn(128, 3, 224, 224, device="cuda")
    y = torch.randint(0, 1000, (128,), device="cuda")
    if channels_last:
        model, x = (
            model.to(memory_format=torch.channels_last),
            x.to(memory_format=torch.channels_last),
        )
    return model, (lambda m: torch.nn.functional.cross_entropy(m(x), y)), len(x), x


def bert_case(_channels_last: bool):
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(num_labels=2)).cuda()
    ids = torch.randint(0, 30000, (64, 256), device="cuda")
    y = torch.randint(0, 2, (64,), device="cuda")
    return (
        model,
        (lambda m: torch.nn.functional.cross_entropy(m(input_ids=ids).logits, y)),
        len(ids),
        ids,
    )


def flops_per_step(model, loss_fn) -> float:
    with FlopCounterMode(display=False) as counter:
        loss_fn(model).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def measure(case, *, bf16: bool, channels_last: bool, compile_: bool, steps: int = 30) -> dict:
    model, loss_fn, batch, _ = case(channels_last)
    flops = flops_per_step(model, loss_fn)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    run = torch.compile(model) if compile_ else model

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(run)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / steps
    return {"samples_per_s": batch / seconds, "mfu": flops / seconds / peak()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    grid = [
        ("timm resnet50 224px b128", timm_case, cl, bf16, comp)
        for cl, bf16, comp in [
            (False, False, False),
            (True, False, False),
            (False, True, False),
            (True, True, False),
            (True, True, True),
        ]
    ]
    grid += [
        ("transformers bert-base seq256 b64", bert_case, False, bf16, comp)
        for bf16, comp in [(False, False), (True, False), (True, True)]
    ]
    for name, case, cl, bf16, comp in grid:
        result = measure(case, bf16=bf16, channels_last=cl, compile_=comp)
        row = {
            "model": name,
            "precision": "bf16 autocast" if bf16 else "fp32",
            "channels_last": cl,
            "compile": comp,
            **result,
        }
        rows.append(row)
        print(
            f"{name:36s} {row['precision']:14s} channels_last={cl!s:5s} compile={comp!s:5s} "
            f"{result['samples_per_s']:9.1f} samples/s  MFU {100 * result['mfu']:5.1f}%",
            flush=True,
        )
        torch.cuda.empty_cache()
    print("device:", torch.cuda.get_device_name(), "torch", torch.__version__)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
