"""The LLM settings that need a CUDA GPU, checked end to end: bf16 LoRA with gradient checkpointing,
and QLoRA (``text.lora.quantize: 4bit`` and ``8bit``), each through folds, train, infer,
submission and package on a tiny Llama-shaped decoder made on the spot (nothing downloaded).

Run on a machine with a CUDA GPU: ``python benchmarks/gpu_llm_check.py``. ``--cpu`` runs the
cases that need no GPU (fp32 LoRA), to check the script itself anywhere. Not part of
``make bench`` or ``make test`` (which run on CPU-only machines). Prints one line per check,
``PASS`` or ``FAIL`` with what was seen, and exits 1 when any check fails.

What each case checks:

- the fold files hold the adapters and the head only (never the base);
- ``log.csv`` has ``trainable_params`` (the adapters and the head: far below the model's size)
  and ``peak_memory_mb`` (on CUDA, the allocator's peak in the fold);
- the OOF predictions are probabilities (rows sum to 1, finite) and the CV is recorded;
- ``infer`` and ``submission`` write a valid submission;
- ``package`` builds the bundle (merged adapters for the unquantized cases; a quantized base is
  shipped with its adapters) and predicts its sample rows as ``infer`` did (``package`` itself
  compares them, within its tolerance for half-precision merged weights).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from benchmarks.p11_lora_step import make_decoder
from medalist.cli import main
from medalist.demo.digits import bake, working_directory
from medalist.demo.text import docstring_corpus

LIBRARIES = {"numpy": ["numpy", "numpy.linalg"], "pandas": ["pandas"]}
BASE = [
    "text.backbone=models/decoder",
    "text.pooling=last",
    "text.max_length=64",
    "text.lora.enabled=true",
    "text.lora.r=8",
    "text.lora.alpha=16",
    "text.lora.target_modules=[q_proj,k_proj,v_proj,o_proj]",
    "train.experiment=llm",
    "train.epochs=2",
    "train.batch_size=8",
    "train.lr=2e-3",
    "train.num_workers=0",
    "train.progress=false",
]
CASES = {
    "lora-fp32": (["train.mixed_precision=no"], True, False),
    "lora-bf16-checkpointing": (
        ["train.mixed_precision=bf16", "text.gradient_checkpointing=true"],
        True,
        True,
    ),
    "qlora-4bit": (
        [
            "train.mixed_precision=bf16",
            "text.gradient_checkpointing=true",
            "text.lora.quantize=4bit",
        ],
        False,
        True,
    ),
    "qlora-8bit": (["train.mixed_precision=bf16", "text.lora.quantize=8bit"], False, True),
}


def project(root: Path, corpus: pd.DataFrame) -> Path:
    """A baked text competition on the docstrings, with the tiny decoder in models/decoder."""
    folder = bake(
        root, {"competition_name": "Docs", "modality": "text", "target_columns": "library"}
    )
    train, test = corpus.iloc[:96], corpus.iloc[96:]
    train[["id", "text", "library"]].to_csv(folder / "data" / "train.csv", index=False)
    test[["id", "text"]].to_csv(folder / "data" / "test.csv", index=False)
    sample = pd.DataFrame({"id": test["id"], "library": "numpy"})
    sample.to_csv(folder / "data" / "sample_submission.csv", index=False)
    make_decoder(folder / "models" / "decoder", corpus["text"].tolist())
    return folder


def run_case(name: str, root: Path, corpus: pd.DataFrame, report) -> None:
    overrides, merge, _ = CASES[name]
    folder = project(root / name, corpus)
    settings = ["-c", "configs/base.yaml", *BASE, *overrides]
    wheel = root / "medalist-0.1.0-py3-none-any.whl"  # the bundle is built, never installed
    if not wheel.exists():
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr("medalist/__init__.py", "")
    kaggle = [
        f"kaggle.medalist_wheel={wheel}",
        "kaggle.project_wheel=false",
        "kaggle.timing_rows=8",
        f"kaggle.merge_adapters={str(merge).lower()}",
        "kaggle.dataset_id=tester/docs-llm-check",
    ]
    with working_directory(folder):
        for stage in ("folds", "train", "infer", "submission"):
            code = main([stage, *settings])
            report(name, f"{stage} exits 0", code == 0, f"exit {code}")
            if code != 0:
                return
        out = Path("outputs/llm")
        keys = set(load_file(out / "fold0" / "model.safetensors"))
        adapters = all(".lora_" in k or k.startswith("head.") for k in keys)
        report(name, "fold file holds adapters and head only", adapters, f"{len(keys)} tensors")
        log = pd.read_csv(out / "log.csv")
        trainable = int(log["trainable_params"].iloc[0])
        report(name, "log.csv: trainable_params", 0 < trainable < 200_000, f"{trainable:,}")
        peak = float(log["peak_memory_mb"].max())
        report(name, "log.csv: peak_memory_mb", peak > 0, f"{peak:.1f} MiB")
        oof = pd.read_parquet(out / "oof.parquet")
        probs = oof[[c for c in oof.columns if c.startswith("p_")]].to_numpy()
        sane = np.isfinite(probs).all() and np.allclose(probs.sum(1), 1, atol=1e-4)
        cv = json.loads((out / "metrics.json").read_text())["cv"]
        report(name, "OOF probabilities and CV", bool(sane), json.dumps(cv))
        code = main(["package", *settings, *kaggle])
        report(
            name, "package builds and predicts its sample rows as infer", code == 0, f"exit {code}"
        )


def main_check(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="only the cases that need no GPU")
    parser.add_argument("cases", nargs="*", help=f"some of {list(CASES)} (default: all)")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu to check the script on this machine")
        return 2
    names = args.cases or [n for n, (_, _, gpu) in CASES.items() if not (args.cpu and gpu)]
    failures = []

    def report(case: str, what: str, ok: bool, seen: str) -> None:
        print(f"{'PASS' if ok else 'FAIL'}  {case}: {what} ({seen})", flush=True)
        if not ok:
            failures.append((case, what))

    corpus = docstring_corpus(per_library=64, seed=0, libraries=LIBRARIES)
    corpus = corpus.assign(id=[f"r{i}" for i in range(len(corpus))])
    if torch.cuda.is_available():
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                run_case(name, Path(tmp), corpus, report)
            except Exception:  # a crash is a failed case; the next one still runs
                traceback.print_exc()
                report(name, "runs without an exception", False, "see the traceback")
    print(f"{len(failures)} failed check(s)" if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main_check())
