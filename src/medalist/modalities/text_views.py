"""Text TTA views: truncations of each row's full token ids, named without loading a model.

``identity`` (``text.truncation`` at ``text.max_length``), ``head``, ``tail`` and
``head_tail``, each optionally with another max length (``head_tail_512``). The text dataset
makes every view of a row from the same token ids (the batch arrives as ``{view: token ids}``),
and views of the same padded length go through the model together. Config validation reads the
names here, so checking a config never imports torch or transformers.
"""

from __future__ import annotations

from medalist.errors import ConfigError

TEXT_TRUNCATIONS = ("identity", "head", "tail", "head_tail")


def text_view(name: str) -> tuple[str, int | None] | None:
    """``'head_tail_512'`` -> ``('head_tail', 512)``, ``'tail'`` -> ``('tail', None)``, else None."""
    base, _, size = name.rpartition("_")
    if base in TEXT_TRUNCATIONS and size.isdigit() and int(size) > 0:
        return base, int(size)
    return (name, None) if name in TEXT_TRUNCATIONS else None


def expand_text_views(names: list[str], key: str = "infer.tta") -> list[str]:
    """The view names checked (an unknown one is an error naming ``key``); ``identity`` alone
    when none are given."""
    for name in names or ["identity"]:
        if text_view(name) is None:
            raise ConfigError(
                f"{key}: '{name}' is not a text view; known: {list(TEXT_TRUNCATIONS)}, each "
                "optionally with _<max_length> (e.g. head_tail_512)"
            )
    return list(names or ["identity"])
