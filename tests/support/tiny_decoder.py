"""Tiny decoder language models (Llama- and Qwen2-shaped) and a byte-level BPE tokenizer trained
on the spot: a real model folder as a hub snapshot has it, no downloads.

The tokenizer is Llama's kind: a begin-of-text token before every text, an end-of-text token and
no padding token (the text modality pads with the end-of-text one).
"""

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FAMILIES = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}


def train_tokenizer(corpus: list[str], vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer learnt from ``corpus``: ``<s> text`` (pairs ``<s> a <s> b``)."""
    backend = Tokenizer(models.BPE(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    bos = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=BOS, eos_token=EOS, unk_token=UNK, model_max_length=64
    )


def make_decoder(
    folder: Path,
    corpus: list[str],
    *,
    family: str = "llama",
    layers: int = 2,
    hidden: int = 32,
    max_positions: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a randomly initialised tiny causal LM (safetensors, with its LM head, as a hub
    snapshot holds it) and its tokenizer into ``folder``; the config has no pad token id.
    ``dtype``: the weights' type in the file (bfloat16, as most decoder checkpoints are stored).

    The embedding has spare rows, as real ones do (Qwen2's 151936 for 151665 tokens): reloaded
    as a Qwen2 tokenizer (``AutoTokenizer`` follows the config's model type), it adds its own
    ``<|endoftext|>`` padding token.
    """
    config_class, model_class = FAMILIES[family]
    tokenizer = train_tokenizer(corpus)
    config = config_class(
        vocab_size=len(tokenizer) + 16,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = model_class(config).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
