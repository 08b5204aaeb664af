"""Backbone names resolved to local safetensors files: timm tags and Hugging Face hub ids.

- ``model.backbone`` with ``model.pretrained``: a timm name with an optional pretrained tag
  (``convnext_small.fb_in22k``; no tag: timm's default one). timm's pretrained config gives the
  hub repository (``hf_hub_id``) and file; the file is looked up in the hub cache, downloaded
  when allowed, and the model is then built by timm from that local file
  (:func:`medalist.modalities.image.build_model`), so timm's own filters, classifier reset and
  input-channel adaptation apply.
- ``text.backbone`` and ``mlm.backbone``: a local folder, used as it is, or a hub id
  (``microsoft/deberta-v3-base``) resolved to the cached snapshot folder of its config,
  tokenizer and safetensors files.

The cache is the hub's own layout (``<cache>/models--org--name/refs/main`` holds a commit,
``snapshots/<commit>/`` the files), found from ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``. These variables and ``HF_HUB_OFFLINE`` are read at every call and
the cache folder is passed to huggingface_hub explicitly: huggingface_hub reads them once, when
it is imported, so a notebook (or a test) that points ``HF_HOME`` at an attached dataset after
the import still gets what it set.

Only safetensors are ever read; a cache holding only pickled weights (``.bin``, ``.pth``) is
refused with the way to convert them. Downloads happen only where a caller allows them (the
``weights`` command, a stage's input check before any training), each announced by a warning.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import timm
from huggingface_hub import hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from safetensors import SafetensorError, safe_open
from timm.models import get_pretrained_cfg

from medalist.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

# Files that carry a tokenizer's vocabulary (tokenizer_config.json alone does not).
VOCAB_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
# What a text backbone needs from its hub repository: config, tokenizer, safetensors weights
# (top level only: subfolders hold other formats, ONNX or adapters).
TEXT_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
PICKLED = (".bin", ".pth", ".pt", ".ckpt", ".pkl")
# timm's pickled file names and their safetensors twins on the hub.
SAFE_TWINS = {
    "pytorch_model.bin": "model.safetensors",
    "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
TRUE = {"1", "on", "yes", "true"}


class MissingWeights(ConfigError):
    """Pretrained weights are not in the cache and cannot be downloaded now."""


@dataclass(frozen=True)
class Weights:
    """Where a backbone named in the config starts from.

    Attributes:
        key: the config key that names it (``model.backbone``, ``text.backbone``...).
        name: the name as resolved (a timm name with its tag, a hub id, a local path).
        files: its safetensors files.
        folder: a transformers model folder (text backbones), else None.
        source: ``local`` (a path of the user's), ``cache`` or ``downloaded``.
        repo_id: the hub repository, for names resolved through the hub.
        commit: the snapshot's commit, likewise.
        in_chans: the input channels the weights were trained with (timm), else None.
    """

    key: str
    name: str
    files: tuple[Path, ...]
    folder: Path | None
    source: str
    repo_id: str | None = None
    commit: str | None = None
    in_chans: int | None = None


# ------------------------------------------------------------------------------------ the cache


def hub_cache() -> Path:
    """The hub cache folder, from the environment as it is now (see the module docstring)."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.environ[variable]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids the network now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE


def repo_folder(repo_id: str, cache: Path) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


def cached_snapshot(repo_id: str, revision: str | None, cache: Path) -> Path | None:
    """The snapshot folder of ``repo_id`` at ``revision`` (a branch or a commit), if cached."""
    repo = repo_folder(repo_id, cache)
    ref = repo / "refs" / (revision or "main")
    commit = ref.read_text(encoding="utf-8").strip() if ref.is_file() else revision
    folder = repo / "snapshots" / commit if commit else None
    return folder if folder is not None and folder.is_dir() else None


def _pickled(repo_id: str, cache: Path) -> list[Path]:
    snapshots = repo_folder(repo_id, cache) / "snapshots"
    found = snapshots.glob("*/*") if snapshots.is_dir() else []
    return sorted(p for p in found if p.suffix.lower() in PICKLED)


def snapshot_label(folder: Path) -> str | None:
    """``deberta-v3-base`` for a cached snapshot of ``microsoft/deberta-v3-base``, else None."""
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--"):
        return repo.split("--")[-1]
    return None


def fetch_hint(key: str, name: str) -> str:
    """How to get a missing name into the cache, on one line."""
    return (
        f"{key}: {name} is not in the Hugging Face cache {hub_cache()}: run `medalist weights "
        "-c <config>` on a machine with internet, or attach a Kaggle dataset holding the cache "
        "and point HF_HOME at it (HF_HUB_OFFLINE=1)"
    )


def check_safetensors(path: Path, key: str, name: str, fix: str | None = None) -> None:
    """Parse the file's safetensors header: a truncated or corrupt file stops here, named."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as exc:
        fix = fix or "delete it and run `medalist weights` again"
        raise CheckpointError(
            f"{key}: {name}: {path} is not a complete safetensors file ({exc}); {fix}"
        ) from exc


# ------------------------------------------------------------------------------------------ timm


@dataclass(frozen=True)
class TimmSource:
    """A timm name's pretrained weights on the hub: repository, revision and file."""

    name: str  # architecture.tag
    repo_id: str
    revision: str | None
    filename: str
    in_chans: int


def check_timm_name(backbone: str, key: str = "model.backbone") -> tuple[str, str]:
    """``backbone`` as (architecture, pretrained tag); a name whose architecture timm does not
    know is a ConfigError naming ``key`` and the closest names (the tag is checked where the
    weights are resolved, :func:`timm_source`)."""
    architecture, tag = timm.models.split_model_name_tag(backbone)
    if not timm.is_model(architecture):
        close = timm.list_models(f"*{architecture}*")[:5]
        raise ConfigError(f"{key}: timm has no model '{backbone}' (close: {close})")
    return architecture, tag


def timm_source(backbone: str, key: str = "model.backbone") -> TimmSource:
    """timm's pretrained config of ``backbone`` (its default tag when it has none).

    Raises:
        ConfigError: a name timm does not know, an unknown tag, or a model without pretrained
            weights on the hub or without a safetensors file there.
    """
    architecture, tag = check_timm_name(backbone, key)
    tags = timm.list_pretrained(f"{architecture}.*")
    try:
        cfg = get_pretrained_cfg(backbone)
    except RuntimeError:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        which = f"tag '{tag}'" if tag else "a default tag"
        raise ConfigError(
            f"{key}: timm has no pretrained weights for '{backbone}' ({which}); "
            + (f"pick one of {tags[:8]}" if tags else "it has none: set model.pretrained false")
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "model.safetensors"
    if not filename.endswith(".safetensors"):
        if filename not in SAFE_TWINS:
            raise ConfigError(
                f"{key}: '{backbone}' is published as {filename} (pickled), never loaded here; "
                "convert it on a trusted machine (safetensors.torch.save_file of its "
                "state_dict) and set model.pretrained_path to the file"
            )
        filename = SAFE_TWINS[filename]
    name = f"{architecture}.{cfg.tag}" if cfg.tag else architecture
    in_chans = (cfg.input_size or (3,))[0]
    return TimmSource(name, repo_id, revision or None, filename, in_chans)


def resolve_timm(backbone: str, *, download: bool = False, key: str = "model.backbone") -> Weights:
    """The local safetensors file of a timm name's pretrained weights.

    Args:
        backbone: the timm name, with or without a pretrained tag.
        download: fetch a missing file (announced by a warning) unless ``HF_HUB_OFFLINE``.
        key: the config key named in errors.

    Raises:
        ConfigError: see :func:`timm_source`; pickled files only in the cache.
        MissingWeights: the file is not cached and may not (or cannot) be downloaded.
        CheckpointError: the cached file is truncated or corrupt.
    """
    source = timm_source(backbone, key)
    cache = hub_cache()
    snapshot = cached_snapshot(source.repo_id, source.revision, cache)
    if snapshot is not None and (snapshot / source.filename).is_file():
        path, origin = snapshot / source.filename, "cache"
    elif download and not offline():
        path, origin = _download_file(source, cache, key), "downloaded"
    else:
        _refuse_pickled(source.repo_id, cache, key, source.name, "timm")
        raise MissingWeights(fetch_hint(key, f"{source.name} ({source.repo_id})"))
    check_safetensors(path, key, source.name)
    return Weights(
        key,
        source.name,
        (path,),
        None,
        origin,
        source.repo_id,
        path.parent.name,
        source.in_chans,
    )


def _download_file(source: TimmSource, cache: Path, key: str) -> Path:
    log.warning(
        "%s: downloading %s (%s/%s) into %s",
        key,
        source.name,
        source.repo_id,
        source.filename,
        cache,
    )
    try:
        return Path(
            hf_hub_download(
                source.repo_id, source.filename, revision=source.revision, cache_dir=cache
            )
        )
    except EntryNotFoundError:
        raise ConfigError(
            f"{key}: {source.repo_id} has no {source.filename} (its weights are pickled, never "
            "loaded here); convert them on a trusted machine (safetensors.torch.save_file of "
            "the state_dict) and set model.pretrained_path to the file"
        ) from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise MissingWeights(f"{fetch_hint(key, source.name)} (download failed: {exc})") from exc


def _refuse_pickled(repo_id: str, cache: Path, key: str, name: str, kind: str) -> None:
    pickled = _pickled(repo_id, cache)
    if not pickled:
        return
    convert = (
        "timm.create_model(name, pretrained=True), then safetensors.torch.save_file("
        "model.state_dict(), 'model.safetensors') and set model.pretrained_path to it"
        if kind == "timm"
        else "AutoModel.from_pretrained(...) and the tokenizer, then save_pretrained(folder, "
        f"safe_serialization=True) and set {key} to the folder"
    )
    raise ConfigError(
        f"{key}: {name}: the cache holds only pickled weights ({[p.name for p in pickled]}), "
        f"which are never loaded; on a trusted machine convert them: {convert}"
    )


# ------------------------------------------------------------------------------------------ text


def is_hub_id(value: str) -> bool:
    """Whether ``value`` reads as a hub id (``org/name`` or ``name``) rather than a path."""
    return bool(HUB_ID.match(value)) and ".." not in value


def resolve_text(value: str, key: str, *, download: bool = False) -> Weights:
    """A text backbone: a local folder as it is, or a hub id's cached (or fetched) snapshot.

    The folder's contents (config, tokenizer, weights) are checked by the text modality
    (:func:`medalist.modalities.text_model.backbone_dir`); here a snapshot lacking any of them
    counts as missing, and one holding only pickled weights is refused.
    """
    folder = Path(value)
    if folder.is_dir() or not is_hub_id(value):
        weights = tuple(sorted(folder.glob("*.safetensors"))) if folder.is_dir() else ()
        return Weights(key, value, weights, folder, "local")
    repo_id, _, revision = value.partition("@")
    cache = hub_cache()
    snapshot = cached_snapshot(repo_id, revision or None, cache)
    origin = "cache"
    if snapshot is None or not _complete(snapshot):
        if download and not offline():
            snapshot, origin = (
                _download_snapshot(repo_id, revision or None, cache, key),
                "downloaded",
            )
        else:
            _refuse_pickled(repo_id, cache, key, value, "text")
            if snapshot is None:
                raise MissingWeights(
                    f"{fetch_hint(key, value)}; a local folder of that name does not exist either"
                )
            raise MissingWeights(fetch_hint(key, f"{value} (config, tokenizer or weights)"))
    if not any(snapshot.glob("*.safetensors")):
        _refuse_pickled(repo_id, cache, key, value, "text")
        raise ConfigError(f"{key}: {value} on the hub has no safetensors weights")
    files = tuple(sorted(snapshot.glob("*.safetensors")))
    for path in files:
        check_safetensors(path, key, value)
    return Weights(key, value, files, snapshot, origin, repo_id, snapshot.name)


def _complete(snapshot: Path) -> bool:
    return (
        (snapshot / "config.json").is_file()
        and any((snapshot / name).is_file() for name in VOCAB_FILES)
        and any(snapshot.glob("*.safetensors"))
    )


def _download_snapshot(repo_id: str, revision: str | None, cache: Path, key: str) -> Path:
    log.warning("%s: downloading %s (config, tokenizer, safetensors) into %s", key, repo_id, cache)
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            allow_patterns=TEXT_PATTERNS,
            ignore_patterns=["*/*"],
        )
    except RepositoryNotFoundError:
        raise ConfigError(
            f"{key}: '{repo_id}' is neither a local folder nor a model on the Hugging Face hub "
            "(a typo? a gated or private model needs `hf auth login` first)"
        ) from None
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise MissingWeights(f"{fetch_hint(key, repo_id)} (download failed: {exc})") from exc
    return Path(folder)


# ------------------------------------------------------------------------------------- any name


def local_file(value: str, key: str = "model.pretrained_path") -> Weights:
    """A local weights file (``model.pretrained_path``), its header checked; never downloaded."""
    path = Path(value)
    if not path.is_file():
        raise ConfigError(f"{key}: file not found: {path}")
    fix = (
        "pickled weights are never loaded: on a trusted machine save the state_dict with "
        "safetensors.torch.save_file"
    )
    check_safetensors(path, key, value, fix)
    return Weights(key, value, (path,), None, "local")


def resolve(key: str, name: str, *, download: bool = False) -> Weights:
    """The weights a config key names: a local file, a timm name or a text backbone."""
    if key == "model.pretrained_path":
        return local_file(name, key)
    if key == "model.backbone":
        return resolve_timm(name, download=download, key=key)
    return resolve_text(name, key, download=download)
