"""Text backbones: a transformers model from a local folder or the hub cache, pooled into the
task's head.

- Pooling: the first token (``cls``), the masked ``mean``, ``attention`` pooling (a learnt
  score per token, softmax over the real tokens) or the ``last`` real token, applied to each of
  the last ``concat_layers`` hidden layers and concatenated (the last four is usual).
- Decoder backbones (Llama, Qwen2, Gemma, Mistral, ...): ``AutoModel`` plus the same head, so
  last-token pooling and the linear classifier are ``AutoModelForSequenceClassification``'s
  maths, with the last real token found from the attention mask (any padding side) rather than
  from the pad id (which may be the end-of-text id). A tokenizer without a padding token pads
  with its end-of-text token. ``cls`` pooling is refused: under causal attention the first
  token has seen nothing of the text.
- LoRA (``text.lora``, through peft): adapters injected into the backbone in place; only they
  and the head train, and the fold weight files hold only them (:meth:`TextModel.saved_keys`),
  with a fingerprint of the fixed base weights (:meth:`TextModel.weights_base`) that loading
  checks. :meth:`TextModel.merge_adapters` folds them into the base (the offline bundle's
  ``kaggle.merge_adapters``), leaving a plain model that needs no peft.
- QLoRA (``text.lora.quantize``): the fixed base loaded 4-bit or 8-bit by bitsandbytes on this
  process's own GPU (``device_map={"": LOCAL_RANK}``: one whole copy per process under DDP,
  never one model spread over the ranks), prepared for k-bit training by peft; refused before
  any work where there is no CUDA device or no bitsandbytes.
- Multi-sample dropout (Inoue, "Multi-sample dropout for accelerated training and better
  generalization", 2019): in training the head's logits are averaged over several dropout masks
  of the pooled vector (5 is usual); in evaluation dropout is off and it is one plain pass.
- Re-initialising the top layers (Zhang et al., "Revisiting few-sample BERT fine-tuning",
  ICLR 2021): the top 1-3 layers get the backbone's own initialisation again, which helps small
  data sets.
- Layer-wise learning-rate decay: :meth:`TextModel.layer_groups` gives one parameter group per
  transformer layer (embeddings lowest, head highest) for :mod:`medalist.training.optim`.

Weights are read from safetensors only; a folder holding only pickled weights is refused.
``text.backbone`` naming a folder's ``config.json`` rather than the folder builds the backbone from
that config alone, its weights left unread: every weight then comes from the whole-model file
loaded next (the offline bundle of merged adapters ships the folder without its weights).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BitsAndBytesConfig
from transformers.initialization import no_init_weights
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)
from transformers.utils import logging as hf_logging

from medalist.config import Config, TextConfig
from medalist.errors import CheckpointError, ConfigError
from medalist.pretrained.resolve import VOCAB_FILES, resolve_text
from medalist.tasks import Task

log = logging.getLogger(__name__)

# Absolute positions start after the padding index in these families (RoBERTa's offset).
PADDING_OFFSET_POSITIONS = {
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "roberta-prelayernorm",
    "data2vec-text",
    "longformer",
    "ibert",
    "mpnet",
}
PEFT_MISSING = "text.lora.enabled: needs peft (pip install 'medalist[llm]', or peft==0.21.2)"
BNB_MISSING = (
    "text.lora.quantize: {quantize} needs bitsandbytes, which is not installed (pip install "
    "'medalist[llm]', or bitsandbytes==0.50.2); or set text.lora.quantize=null"
)
NO_CUDA = (
    "text.lora.quantize: {quantize} loads the backbone through bitsandbytes' CUDA kernels and this "
    "machine has no CUDA device; run on a GPU, or set text.lora.quantize=null (plain LoRA)"
)
LAYER_LISTS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer", "h")
CONFIG_FILE = "config.json"


# ---------------------------------------------------------------------------------------------
# The backbone folder


def config_only(path: str | None) -> bool:
    """``path`` (``text.backbone``) names a model folder's ``config.json``: the backbone is built
    from that config, and its weights come from the whole-model file loaded after it."""
    return path is not None and Path(path).name == CONFIG_FILE


def backbone_dir(path: str | None, key: str, *, download: bool = False) -> Path:
    """A model folder with a config, safetensors weights and a tokenizer; else ConfigError.

    ``path`` is a local folder or a Hugging Face hub id, read from the hub cache (fetched first
    when ``download`` allows it; see :func:`medalist.pretrained.resolve.resolve_text`). A path
    to a folder's ``config.json`` (:func:`config_only`) gives that folder, weights or not.
    """
    if not path:
        raise ConfigError(f"{key}: set it to a local transformers model folder or a hub id")
    if config_only(path):
        folder = Path(path).parent
    else:
        folder = resolve_text(path, key, download=download).folder
    if not folder.is_dir():
        raise ConfigError(f"{key}: model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: {folder} has no config.json (not a transformers model folder)")
    if not any((folder / name).is_file() for name in VOCAB_FILES):
        raise ConfigError(
            f"{key}: {folder} has no tokenizer (none of {list(VOCAB_FILES)}); save the "
            "tokenizer beside the weights (tokenizer.save_pretrained)"
        )
    if config_only(path):
        return folder
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.safetensors.index.json")):
        raise ConfigError(
            f"{key}: {folder} has no safetensors weights (pickled weights are never loaded; "
            "convert them on a trusted machine with save_pretrained(folder, "
            "safe_serialization=True))"
        )
    return folder


@contextmanager
def quiet_transformers():
    """transformers' load reports and progress bars off while a local folder loads."""

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(folder: Path):
    """The folder's tokenizer (cached: every dataset of a run shares it).

    The cache is keyed by the absolute folder and its files' sizes and times: a relative path
    that now names another project's folder, or a folder rewritten in place (pretrain-mlm), is
    read again.
    """
    folder = Path(folder).resolve()
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _load_tokenizer(folder, stamp)


@lru_cache(maxsize=8)
def _load_tokenizer(folder: Path, stamp: tuple):
    with quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Decoder tokenizers (Llama, Mistral) often have none; padding is masked out and the last
        # real token is found from the mask, so the end-of-text token can pad.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(folder: Path):
    with quiet_transformers():
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def is_decoder(config) -> bool:
    """A decoder-only model (causal attention): a causal-LM architecture with no masked-LM one
    (BERT and RoBERTa have both; Llama, Qwen2, Gemma, Mistral, Phi, GPT-2 only the first)."""
    kind = config.model_type
    return (
        kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def check_backbone_settings(folder: Path, text: TextConfig) -> None:
    """Settings the backbone's architecture (or the environment) rules out; ConfigError naming
    the key."""
    config = load_config(folder)
    if is_decoder(config) and text.pooling == "cls":
        raise ConfigError(
            f"text.pooling: cls pools the first token, which in a decoder ({config.model_type}, "
            "causal attention) has seen nothing of the text; use last (the usual choice for "
            "decoders), mean or attention"
        )
    if text.lora.enabled and not installed("peft"):
        raise ConfigError(PEFT_MISSING)
    check_quantize(text)


def installed(package: str) -> bool:
    """``package`` can be imported here (found, not imported: peft and bitsandbytes are heavy)."""
    return importlib.util.find_spec(package) is not None


def check_quantize(text: TextConfig) -> None:
    """``text.lora.quantize`` can run here (a CUDA device, bitsandbytes); else ConfigError."""
    quantize = text.lora.quantize
    if quantize is None:
        return
    if not torch.cuda.is_available():
        raise ConfigError(NO_CUDA.format(quantize=quantize))
    if not installed("bitsandbytes"):
        raise ConfigError(BNB_MISSING.format(quantize=quantize))


def quantization_config(quantize: str) -> BitsAndBytesConfig:
    """The bitsandbytes settings of ``text.lora.quantize``: 4bit is QLoRA's NF4 with double
    quantisation and bf16 compute (Dettmers et al., 2023); 8bit is LLM.int8 (Dettmers et al.,
    2022) with its default outlier threshold."""
    if quantize == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ConfigError(f"text.lora.quantize: '{quantize}' is not 4bit, 8bit or null")


def process_device_map(environ: Mapping[str, str] | None = None) -> dict[str, int]:
    """Where a quantized backbone loads: all of it on this process's own GPU.

    ``LOCAL_RANK`` (set by torchrun and ``accelerate launch``; 0 in a single process) is the GPU
    the process trains on, so each rank holds one whole copy for DDP. ``device_map="auto"``
    would instead spread one model over every visible GPU, in every process.
    """
    environ = os.environ if environ is None else environ
    return {"": int(environ.get("LOCAL_RANK") or 0)}


def position_limit(config) -> int | None:
    """The longest input the model's position embeddings allow; None for relative positions."""
    if getattr(config, "position_biased_input", True) is False:  # DeBERTa-v2/v3
        return None
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if config.model_type in PADDING_OFFSET_POSITIONS:
        limit -= (config.pad_token_id or 0) + 1
    return int(limit)


def check_max_length(folder: Path, max_length: int, key: str) -> None:
    limit = position_limit(load_config(folder))
    if limit is not None and max_length > limit:
        raise ConfigError(
            f"{key}: {max_length} is over the model's limit of {limit} tokens ({folder})"
        )


# ---------------------------------------------------------------------------------------------
# Pooling and the head


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens: states (batch, seq, hidden), mask (batch, seq) -> (batch, hidden)."""
    weights = mask.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def last_token(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The state of each row's last real token: states (batch, seq, hidden), mask (batch, seq).

    The rightmost position of the mask, so right and left padding both work.
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (positions * (mask != 0)).argmax(-1)  # (batch,)
    return states[torch.arange(states.shape[0], device=states.device), last]


class AttentionPool(nn.Module):
    """A learnt score per token, softmax over the real tokens, the weighted sum of the states."""

    def __init__(self, hidden: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(states).squeeze(-1).float()  # (batch, seq)
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        weights = scores.softmax(-1).to(states.dtype).unsqueeze(-1)
        return (weights * states).sum(1)


class TextHead(nn.Module):
    """Pooling of the last N hidden layers, (multi-sample) dropout and the linear classifier."""

    def __init__(self, hidden: int, outputs: int, text: TextConfig):
        super().__init__()
        self.pooling = text.pooling
        self.attention = AttentionPool(hidden) if text.pooling == "attention" else None
        self.dropout = nn.Dropout(text.dropout)
        self.samples = text.multi_sample_dropout
        self.fc = nn.Linear(hidden * text.concat_layers, outputs)

    def pool(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return states[:, 0]
        if self.pooling == "mean":
            return masked_mean(states, mask)
        if self.pooling == "last":
            return last_token(states, mask)
        return self.attention(states, mask)

    def forward(self, layers: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.pool(states, mask) for states in layers], dim=-1)
        features = features.to(self.fc.weight.dtype)  # a half-precision backbone, a float head
        if self.training and self.samples > 1:
            return torch.stack([self.fc(self.dropout(features)) for _ in range(self.samples)]).mean(
                0
            )
        return self.fc(self.dropout(features))


class TextModel(nn.Module):
    """A transformers backbone and a :class:`TextHead`.

    The input is one packed tensor, (batch, 2 or 3, seq): token ids, attention mask and, for
    models that use them, token type ids. One tensor (rather than a dict) keeps every trick that
    handles a batch's input (R-Drop's doubling, SWA's batch-norm pass) modality-blind.
    """

    def __init__(self, backbone: nn.Module, outputs: int, text: TextConfig):
        super().__init__()
        self.backbone = backbone
        self.concat_layers = text.concat_layers
        self.head = TextHead(backbone.config.hidden_size, outputs, text)
        # Under LoRA the weight files hold the adapters and the head; the fixed base comes from
        # text.backbone. Fixed at build time: an EMA copy (no tensor trains) holds the same keys.
        self._saved: frozenset[str] | None = None
        self._base: str | None = None
        if text.lora.enabled:
            trained = {f"backbone.{n}" for n, p in backbone.named_parameters() if p.requires_grad}
            own = self.state_dict()
            self._saved = frozenset(k for k in own if k in trained or k.startswith("head."))
            self._base = base_fingerprint({k: v for k, v in own.items() if k not in self._saved})

    def saved_keys(self) -> frozenset[str] | None:
        """The state-dict keys its weight files hold (:mod:`medalist.training.weights`): the
        adapters and the head under LoRA; None (all of them) otherwise."""
        return self._saved

    def weights_base(self) -> str | None:
        """Under LoRA, a fingerprint of the fixed base weights (those not in
        :meth:`saved_keys`), stored with the weights and checked when they are loaded."""
        return self._base

    def merge_adapters(self) -> dict:
        """Fold every LoRA adapter into the base weight it adapts (W + (alpha / r) B A, in the
        weight's dtype) and put the plain layers back in place of peft's.

        The model is then a whole one: its files hold every weight (:meth:`saved_keys` is None)
        and it loads into the model built with the returned config overrides, which needs no
        peft. Returns those overrides (``{"text.lora.enabled": False}``).

        Raises:
            ConfigError: no adapters, or adapters on a quantized base (merging would quantize the
                sum again and change the predictions).
        """
        if self._saved is None:
            raise ConfigError("kaggle.merge_adapters: the model has no LoRA adapters to merge")
        if getattr(self.backbone, "is_quantized", False):
            raise ConfigError(
                "kaggle.merge_adapters: not with text.lora.quantize (the merged weights would be "
                "quantized again, and predict otherwise than the adapters did); ship the "
                "quantized base and the adapters (kaggle.merge_adapters=false)"
            )
        # peft is optional (the llm extra): a model with adapters was built with it.
        from peft.tuners.tuners_utils import BaseTunerLayer

        adapted = [
            (name, module)
            for name, module in self.backbone.named_modules()
            if isinstance(module, BaseTunerLayer)
        ]
        for name, module in adapted:
            module.merge(safe_merge=True)  # refuses a non-finite sum
            parent, _, child = name.rpartition(".")
            setattr(self.backbone.get_submodule(parent), child, module.get_base_layer())
        self._saved = self._base = None
        log.info("LoRA: %d adapted layers merged into the base", len(adapted))
        return {"text.lora.enabled": False}

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        ids, mask = inputs[:, 0], inputs[:, 1]
        extra = {"token_type_ids": inputs[:, 2]} if inputs.shape[1] > 2 else {}
        many = self.concat_layers > 1
        out = self.backbone(input_ids=ids, attention_mask=mask, output_hidden_states=many, **extra)
        layers = tuple(out.hidden_states[-self.concat_layers :]) if many else (out[0],)
        return self.head(layers, mask)

    def get_classifier(self) -> nn.Module:
        """The freshly initialised part (pooling and classifier), for ``train.head_lr``."""
        return self.head

    def layer_groups(self, weight_decay: float, layer_decay: float) -> list[dict]:
        """One group per depth: embeddings, each layer, then the head, lr x decay^(top - depth).

        Parameters before the first layer (embeddings) are depth 0, layer i is depth i + 1, and
        parameters after the last layer (a final norm) and the head share the top rate. Weight
        decay applies to matrices only, as in :mod:`medalist.training.optim`.
        """
        layers = transformer_layers(self.backbone)
        depth_of = {id(p): i + 1 for i, layer in enumerate(layers) for p in layer.parameters()}
        top = len(layers) + 1
        groups: dict[tuple[int, bool], dict] = {}
        seen_layer = False
        named = [*self.backbone.named_parameters(), *self.head.named_parameters()]
        head = {id(p) for p in self.head.parameters()}
        for _, param in named:
            if id(param) in depth_of:
                seen_layer = True
            depth = depth_of.get(id(param), top if seen_layer or id(param) in head else 0)
            if not param.requires_grad:
                continue
            decay = param.ndim > 1
            group = groups.setdefault(
                (depth, decay),
                {
                    "params": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr_scale": layer_decay ** (top - depth),
                },
            )
            group["params"].append(param)
        return [groups[key] for key in sorted(groups)]


def base_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 of every tensor's name, shape, dtype and up to 64 of its values (evenly strided).

    Tells the backbone a LoRA was trained on from another checkpoint of the same architecture
    (a further pretraining, another fine-tune) without hashing gigabytes: training moves nearly
    every value, so the samples differ. Read as float64, exact for every float dtype, so the
    same weights give the same fingerprint on any device.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach()
        flat = tensor.reshape(-1)
        step = max(1, flat.numel() // 64)
        sample = flat[::step][:64].to("cpu", torch.float64)
        digest.update(f"{key}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()


def transformer_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's stack of transformer layers (``encoder.layer`` for BERT-like models)."""
    for path in LAYER_LISTS:
        module = backbone
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList) and len(module):
            return module
    lists = [m for m in backbone.modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ConfigError(
            f"text.backbone: no transformer layers found in {type(backbone).__name__}"
        )
    return max(lists, key=len)


# ---------------------------------------------------------------------------------------------
# Building


def backbone_config(folder: Path, hidden_dropout: float | None = None):
    """The folder's model config, with ``hidden_dropout`` (``text.hidden_dropout``) applied."""
    config = load_config(folder)
    if hidden_dropout is not None:
        for name in (
            "hidden_dropout_prob",
            "attention_probs_dropout_prob",
            "dropout",
            "attention_dropout",  # Llama, Qwen2, Gemma, Mistral
        ):
            if hasattr(config, name):
                setattr(config, name, hidden_dropout)
    return config


def load_backbone(
    folder: Path, hidden_dropout: float | None = None, quantize: str | None = None
) -> nn.Module:
    """``AutoModel`` from the folder's safetensors; mostly missing weights are an error.

    ``quantize`` (``text.lora.quantize``): loaded through bitsandbytes
    (:func:`quantization_config`) straight onto this process's GPU (:func:`process_device_map`).
    """

    config = backbone_config(folder, hidden_dropout)
    quantized = {}
    if quantize is not None:
        quantized = {
            "quantization_config": quantization_config(quantize),
            "device_map": process_device_map(),
        }
    with quiet_transformers():
        backbone, info = AutoModel.from_pretrained(
            str(folder),
            config=config,
            local_files_only=True,
            use_safetensors=True,
            output_loading_info=True,
            **quantized,
        )
    own = len(backbone.state_dict())
    missing = sorted(k for k in info.get("missing_keys", []) if "pooler" not in k)
    if len(missing) > own // 2:
        raise CheckpointError(
            f"{folder}: {len(missing)} of {own} backbone tensors are missing from the weights "
            f"(e.g. {sorted(missing)[:3]}); is it a checkpoint of another architecture?"
        )
    if missing:
        log.warning(
            "%s: %d backbone tensors newly initialised: %s", folder, len(missing), missing[:5]
        )
    return ready_for_text(backbone, folder)


def backbone_from_config(folder: Path, hidden_dropout: float | None = None) -> nn.Module:
    """``AutoModel`` from the folder's config alone, in the config's dtype, its weights left
    uninitialised: every one must come from the whole-model file loaded next, which
    :func:`medalist.training.weights.load_weights` checks (a model without LoRA takes a file
    only if it holds every key)."""
    config = backbone_config(folder, hidden_dropout)
    with quiet_transformers(), no_init_weights():  # no time spent on values about to be replaced
        backbone = AutoModel.from_config(config)
    return ready_for_text(backbone, folder)


def ready_for_text(backbone: nn.Module, folder: Path) -> nn.Module:
    """No key/value cache, and the tokenizer's padding id in the config where it has none."""
    if getattr(backbone.config, "use_cache", False):
        backbone.config.use_cache = False  # a decoder's key/value cache serves generation only
    pad = load_tokenizer(folder).pad_token_id
    if pad is not None and backbone.config.pad_token_id is None:
        # Set after loading, not in the config it loads with: the embedding's padding_idx would
        # stop the (end-of-text) token's embedding from training.
        backbone.config.pad_token_id = pad
    return backbone


def prepare_quantized(backbone: nn.Module) -> nn.Module:
    """peft's preparation of a k-bit backbone for training: every weight frozen, the layers left
    in half precision (norms, embeddings) cast to float32 for stable updates through them.

    Gradient checkpointing is not switched on here but by ``text.gradient_checkpointing``
    (non-reentrant, which DDP and frozen inputs need; peft's own would be reentrant by default).
    """
    try:
        from peft import prepare_model_for_kbit_training
    except ImportError as exc:
        raise ConfigError(PEFT_MISSING) from exc
    return prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)


def add_lora(backbone: nn.Module, text: TextConfig) -> nn.Module:
    """Inject LoRA adapters into ``backbone`` in place (peft); only they are left trainable."""
    # peft is optional (the llm extra) and only LoRA runs need it: imported here, on use.
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
    except ImportError as exc:
        raise ConfigError(PEFT_MISSING) from exc
    lora = text.lora
    settings = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        bias="none",
    )
    try:
        with quiet_transformers():
            backbone = inject_adapter_in_model(settings, backbone)
    except ValueError as exc:  # no layer matches, or no default for the architecture
        raise ConfigError(f"text.lora.target_modules: {exc}") from exc
    for param in backbone.parameters():
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            # A half-precision base (bf16 checkpoints load as bf16) gives half-precision adapters,
            # whose optimizer steps would round away; float32, as peft's get_peft_model does.
            param.data = param.data.float()
    trained = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    total = sum(p.numel() for p in backbone.parameters())
    log.info(
        "LoRA: %d of %d backbone parameters train (%.2f%%)", trained, total, 100 * trained / total
    )
    return backbone


def reinit_layers(backbone: nn.Module, layers: list[nn.Module]) -> None:
    """Give ``layers`` the backbone's own fresh initialisation (``_init_weights``)."""
    for layer in layers:
        for param in layer.parameters():
            param._is_hf_initialized = False  # transformers skips tensors marked as loaded
        layer.apply(backbone._init_weights)


def build_model(cfg: Config, task: Task) -> TextModel:
    """The configured backbone (a local folder or a cached hub id; never downloaded here) with the
    task's head, freezing and re-init applied.

    ``text.backbone`` naming a folder's ``config.json`` (:func:`config_only`): the backbone is
    built from the config (:func:`backbone_from_config`) for a file that holds every weight, as
    the offline bundle of full fine-tunes and merged adapters does; LoRA, which needs the base
    weights, is refused.
    """
    text = cfg.text
    folder = backbone_dir(text.backbone, "text.backbone")
    check_backbone_settings(folder, text)
    if config_only(text.backbone):
        if text.lora.enabled:
            raise ConfigError(
                f"text.backbone: {text.backbone} builds the model from its config, without base "
                "weights, and LoRA adapters (text.lora.enabled) need the base they were trained "
                "on; point text.backbone at the folder with its weights"
            )
        backbone = backbone_from_config(folder, text.hidden_dropout)
    else:
        backbone = load_backbone(folder, text.hidden_dropout, text.lora.quantize)
    layers = transformer_layers(backbone)
    count = len(layers)
    for key, value in (
        ("reinit_layers", text.reinit_layers),
        ("freeze_layers", text.freeze_layers),
    ):
        if value > count:
            raise ConfigError(f"text.{key}: {value} is more than the model's {count} layers")
    if text.reinit_layers + text.freeze_layers > count:
        raise ConfigError(
            f"text.reinit_layers + text.freeze_layers: {text.reinit_layers} + "
            f"{text.freeze_layers} > {count} layers; a re-initialised layer must be trained"
        )
    if text.reinit_layers:
        reinit_layers(backbone, list(layers)[-text.reinit_layers :])
    frozen = list(layers)[: text.freeze_layers]
    if text.freeze_embeddings:
        frozen.append(backbone.get_input_embeddings())
        frozen += [m for n, m in backbone.named_children() if n == "embeddings"]
    pooler = getattr(backbone, "pooler", None)
    if isinstance(pooler, nn.Module):
        frozen.append(pooler)  # the head pools; the backbone's own pooler is never trained
    for module in frozen:
        module.requires_grad_(False)
    if text.lora.quantize is not None:
        backbone = prepare_quantized(backbone)  # before the adapters: it freezes every weight
    if text.lora.enabled:
        backbone = add_lora(backbone, text)
    if text.gradient_checkpointing:
        if not getattr(backbone, "supports_gradient_checkpointing", False):
            raise ConfigError(
                f"text.gradient_checkpointing: {type(backbone).__name__} does not support it"
            )
        backbone.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    return TextModel(backbone, task.num_outputs, text)
