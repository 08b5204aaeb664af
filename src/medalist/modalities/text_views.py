"""Text TTA views: truncations of each row's full token ids, and the swap of two columns, named
without loading a model.

``identity`` (``text.truncation`` at ``text.max_length``), ``head``, ``tail`` and
``head_tail``, each optionally with another max length (``head_tail_512``). The text dataset
makes every view of a row from the same token ids (the batch arrives as ``{view: token ids}``),
and views of the same padded length go through the model together. With a prompt template
(``text.template``) a truncation view cuts every column on its side, within the column's share.

``swap`` (and ``swap_<truncation view>``, e.g. ``swap_tail``) is a pairwise task's symmetric
view: the two columns of ``text.swap.columns`` exchanged (their token ids, so no second
tokenisation), and the view's outputs permuted back to the identity's order before the views are
merged (:func:`swap_outputs`): its prediction for "A wins" is the model's output for "B wins" on
the exchanged row.

Config validation reads the names here, so checking a config never imports torch or
transformers.
"""

from __future__ import annotations

from medalist.errors import ConfigError

TEXT_TRUNCATIONS = ("identity", "head", "tail", "head_tail")
SWAP = "swap"


def text_view(name: str) -> tuple[str, int | None] | None:
    """``'head_tail_512'`` -> ``('head_tail', 512)``, ``'tail'`` -> ``('tail', None)``, else None
    (a swap view too: see :func:`swapped`)."""
    base, _, size = name.rpartition("_")
    if base in TEXT_TRUNCATIONS and size.isdigit() and int(size) > 0:
        return base, int(size)
    return (name, None) if name in TEXT_TRUNCATIONS else None


def swapped(name: str) -> tuple[bool, str]:
    """``'swap'`` -> ``(True, 'identity')``, ``'swap_tail'`` -> ``(True, 'tail')``, ``'tail'`` ->
    ``(False, 'tail')``: whether the view exchanges the swap columns, and its truncation view."""
    if name == SWAP:
        return True, "identity"
    if name.startswith(f"{SWAP}_") and text_view(name[len(SWAP) + 1 :]) is not None:
        return True, name[len(SWAP) + 1 :]
    return False, name


def expand_text_views(names: list[str], key: str = "infer.tta") -> list[str]:
    """The view names checked (an unknown one is an error naming ``key``); ``identity`` alone
    when none are given."""
    for name in names or ["identity"]:
        if text_view(swapped(name)[1]) is None:
            raise ConfigError(
                f"{key}: '{name}' is not a text view; known: {list(TEXT_TRUNCATIONS)}, each "
                "optionally with _<max_length> (e.g. head_tail_512), and swap or swap_<view> "
                "(text.swap)"
            )
    return list(names or ["identity"])


def swap_outputs(
    task_type: str, names: list[str], classes: dict[str, str], key: str = "text.swap.classes"
) -> tuple[list[int], bool]:
    """How a swap view's outputs return to the identity's order: ``(index, negate)``, the view's
    logits being ``logits[..., index]``, negated when ``negate`` (binary: p becomes 1 - p).

    Args:
        task_type: binary, multiclass, multilabel (regression is refused: a value has no
            classes to exchange).
        names: the outputs' names as text: the classes (binary: both of them, the first being
            the negative one) or, multilabel, the target columns.
        classes: the class pairs the swap exchanges (``text.swap.classes``), one or both ways.

    Raises:
        ConfigError: naming ``key``, for an unknown class, a class exchanged with two others (not
            an involution), or a regression task.
    """
    if task_type == "regression":
        raise ConfigError(
            f"{key}: a regression task has no classes for the swap view to exchange; the swap "
            "is defined for binary, multiclass and multilabel tasks"
        )
    what = "target columns" if task_type == "multilabel" else "classes"
    partner: dict[str, str] = {}
    for a, b in classes.items():
        for name in (a, b):
            if name not in names:
                raise ConfigError(f"{key}: '{name}' is not one of the task's {what} {names}")
        for x, y in ((a, b), (b, a)):
            if partner.setdefault(x, y) != y:
                raise ConfigError(
                    f"{key}: '{x}' is exchanged with both '{partner[x]}' and '{y}'; the swap "
                    "exchanges classes in pairs (each class with one other, or with itself)"
                )
    index = [names.index(partner.get(name, name)) for name in names]
    if task_type == "binary":  # one output, the second class's logit
        return [0], index[0] == 1
    return index, False
