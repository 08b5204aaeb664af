"""A Hugging Face hub cache written on the spot, in the layout huggingface_hub writes.

``<cache>/models--org--name/refs/main`` holds a commit hash and ``snapshots/<hash>/`` the files
(plain files here; huggingface_hub links them to ``blobs/``, which readers do not see). Tests
point ``HF_HUB_CACHE`` at the folder and set ``HF_HUB_OFFLINE=1``: medalist reads both at call
time (:mod:`medalist.pretrained.resolve`), so nothing reaches the network.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file

TIMM_NAME = "test_resnet.r160_in1k"
TIMM_REPO = "timm/test_resnet.r160_in1k"
TEXT_REPO = "tiny-org/tiny-bert"


def snapshot(cache: Path, repo_id: str, label: str = "v1") -> Path:
    """An empty snapshot folder of ``repo_id`` that ``refs/main`` points to."""
    commit = hashlib.sha1(f"{repo_id}@{label}".encode()).hexdigest()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def timm_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The ``test_resnet`` weights the cache holds: a fixed-seed init, 1000-class head."""
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def seed_timm(cache: Path, seed: int = 0) -> Path:
    """``timm/test_resnet.r160_in1k``'s ``model.safetensors`` in the cache; returns the file."""
    path = snapshot(cache, TIMM_REPO) / "model.safetensors"
    save_file(timm_state(seed), str(path))
    return path


def seed_text(cache: Path, backbone: Path, repo_id: str = TEXT_REPO) -> Path:
    """A local transformers folder copied into the cache as ``repo_id``; returns the snapshot."""
    folder = snapshot(cache, repo_id)
    for path in backbone.iterdir():
        if path.is_file():
            shutil.copyfile(path, folder / path.name)
    return folder
