"""Typed, layered configuration.

Layers, later wins: the library defaults below < ``configs/base.yaml`` (the sibling ``base.yaml``
of the experiment file, when there is one) < the experiment file (override-only) < ``key=value``
arguments on the command line. Every key has a type and help text; an unknown key, a wrong type
or an impossible combination raises :class:`~medalist.errors.ConfigError` naming the key path
(and the closest valid key for a typo) before any stage does work.

Example:
    >>> cfg = resolve_config(overrides=["train.epochs=3", "task.type=binary"])
    >>> cfg.train.epochs, cfg.task.type
    (3, 'binary')
"""

from __future__ import annotations

import contextlib
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from medalist.config.schema import Config
from medalist.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 reads ``no``, ``off`` or ``y`` as booleans,
    which turns ``mixed_precision: no`` or an experiment named ``no`` into False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def deep_merge(base: dict, override: dict) -> dict:
    """Merge ``override`` into a copy of ``base``; nested dicts merge, everything else replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def parse_override(item: str) -> dict:
    """Turn ``'train.lr=3e-4'`` into ``{'train': {'lr': 0.0003}}`` (values parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    dotted, raw = item.split("=", 1)
    keys = [k for k in dotted.strip().split(".") if k]
    if not keys:
        raise ConfigError(f"override '{item}' has no key")
    try:
        value: Any = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    # YAML reads 1e-3 as a string; a float is what a person means.
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value) if any(c in value.lower() for c in ".e") else value
    nested: dict = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        nested = {key: nested}
    return nested


def _layers(config_path: str | Path | None) -> list[tuple[str, dict]]:
    if config_path is None:
        return []
    path = Path(config_path)
    base = path.parent / "base.yaml"
    layers = []
    if base.is_file() and base.resolve() != path.resolve():
        layers.append((str(base), _read_yaml(base)))
    layers.append((str(path), _read_yaml(path)))
    return layers


def resolve_config(
    config_path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Build the resolved :class:`Config` from the layers described in the module docstring.

    Raises:
        ConfigError: naming the key path of the first unknown key, wrong type or conflict.
    """
    merged: dict = {}
    for _, layer in _layers(config_path):
        merged = deep_merge(merged, layer)
    for item in overrides:
        merged = deep_merge(merged, parse_override(item))
    source = str(config_path) if config_path else "config"
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(explain(exc, source)) from None


def _fields_at(path: tuple) -> list[str]:
    """The valid keys of the section that ``path`` (a key path) points into."""
    model: Any = Config
    for key in path:
        field = model.model_fields.get(key) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        if model is None:
            return []
    return list(model.model_fields)


def explain(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        loc = tuple(str(part) for part in error["loc"])
        key = ".".join(loc)
        if error["type"] == "extra_forbidden":
            valid = _fields_at(loc[:-1])
            close = difflib.get_close_matches(loc[-1], valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{'.'.join((*loc[:-1], close[0]))}'?" if close else ""
            lines.append(f"{source}: unknown key '{key}'{hint}")
        elif error["type"] == "value_error":
            lines.append(f"{source}: {error['msg'].removeprefix('Value error, ')}")
        else:
            got = error.get("input")
            lines.append(f"{source}: {key}: {error['msg']} (got {got!r})")
    return "\n".join(lines)


def describe() -> str:
    """Every config key with its default and help text, as commented YAML.

    ``configs/reference.yaml`` is this text; a test keeps the two equal.
    """
    lines = ["# Every medalist config key: its default, then what it means.", ""]

    def dump(value) -> str:
        return (
            yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix("\n...")
        )

    def walk(model: type[BaseModel], indent: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                doc = (annotation.__doc__ or "").strip().splitlines()
                lines.append(f"{indent}{name}:" + (f"  # {doc[0]}" if doc and indent == "" else ""))
                walk(annotation, indent + "  ")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            lines.append(f"{indent}{name}: {dump(default)}  # {field.description or ''}")

    walk(Config, "")
    return "\n".join(lines) + "\n"
