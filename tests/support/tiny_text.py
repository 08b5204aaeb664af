"""A tiny BERT and a WordPiece tokenizer trained on the spot: a real model folder, no downloads."""

from pathlib import Path

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(corpus: list[str], vocab_size: int = 400):
    """A BERT-style WordPiece tokenizer learnt from ``corpus`` (as transformers' BertTokenizer)."""
    from transformers import BertTokenizer

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False
    )
    backend.train_from_iterator(corpus, trainer)
    cls, sep = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    backend.decoder = decoders.WordPiece()
    return BertTokenizer(tokenizer_object=backend, model_max_length=64)


def make_backbone(
    folder: Path,
    corpus: list[str],
    *,
    layers: int = 2,
    hidden: int = 32,
    max_positions: int = 64,
    masked_lm: bool = False,
    seed: int = 0,
    dropout: float | None = None,
) -> Path:
    """Write a randomly initialised tiny BERT (safetensors) and its tokenizer into ``folder``
    (``dropout``: both dropout rates, instead of BERT's 0.1)."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertModel

    tokenizer = train_tokenizer(corpus)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        **(
            {}
            if dropout is None
            else {"hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        ),
    )
    torch.manual_seed(seed)
    model = BertForMaskedLM(config) if masked_lm else BertModel(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
