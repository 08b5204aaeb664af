"""Every config of this project resolves against medalist's schema."""

from pathlib import Path

import pytest

from medalist.config import resolve_config

CONFIGS = sorted(p for p in Path("configs").glob("*.yaml") if p.name != "base.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_resolves(path):
    cfg = resolve_config(path)
    assert cfg.competition.id_column == "{{ cookiecutter.id_column }}"
