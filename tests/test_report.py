"""The HTML report: sections, embedded PNGs that decode, nothing loaded from outside."""

from __future__ import annotations

import base64
import io
import re
import sys

import pytest
from PIL import Image

from medalist.config.ensemble import EnsembleConfig
from medalist.ensemble.stage import run
from medalist.errors import MedalistError
from medalist.reporting.report import write_report
from support.ensemble_project import add_experiments, make_project

PNG = re.compile(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')
NAMES = {"effnet": 1.5, "convnext": 1.0, "resnet": 0.5}


def project(tmp_path, task):
    cfg = make_project(tmp_path, task, n_rows=160)
    add_experiments(cfg, NAMES)
    run(cfg, EnsembleConfig(name="hc", experiments=list(NAMES), method="hill_climb", submit=False))
    return cfg


def images(text: str) -> dict[str, Image.Image]:
    found = {}
    for alt, data in PNG.findall(text):
        raw = base64.b64decode(data)
        assert raw.startswith(b"\x89PNG\r\n\x1a\n")
        image = Image.open(io.BytesIO(raw))
        image.verify()  # a complete, valid PNG
        found[alt] = Image.open(io.BytesIO(raw))
    return found


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_classification_report(tmp_path, task):
    cfg = project(tmp_path, task)
    path = write_report(tmp_path / "outputs", list(NAMES), "hc", cfg=cfg)
    assert path == tmp_path / "outputs" / "report.html"
    text = path.read_text()
    for anchor in ("scores", "cv-per-fold", "correlation", "weights", "confusion", "calibration"):
        assert f'<section id="{anchor}">' in text
    assert 'id="residuals"' not in text
    assert 'id="importance-' not in text  # models without importance files: no such section
    found = images(text)
    assert set(found) == {
        "CV per fold",
        "OOF correlation",
        "ensemble weights",
        "confusion matrix",
        "calibration curve",
    }
    assert all(image.size[0] > 200 and image.size[1] > 100 for image in found.values())
    for name in (*NAMES, "ensemble hc (nested)", "in-sample", "nested"):
        assert name in text
    assert "http://" not in text and "https://" not in text  # self-contained


def test_regression_report_shows_residuals(tmp_path):
    cfg = project(tmp_path, "regression")
    text = write_report(tmp_path / "outputs", list(NAMES), "hc", cfg=cfg).read_text()
    assert '<section id="residuals">' in text and 'id="confusion"' not in text
    assert "residuals" in images(text)


def test_report_without_ensemble_or_config(tmp_path):
    """The config comes from the experiments' config.yaml; the best experiment is diagnosed."""
    project(tmp_path, "binary")
    target = tmp_path / "elsewhere" / "r.html"
    text = write_report(tmp_path / "outputs", ["resnet", "effnet"], path=target).read_text()
    assert 'id="weights"' not in text
    assert "Confusion matrix of effnet" in text  # the stronger experiment
    assert len(images(text)) == 4


def test_report_of_an_ensemble_uses_its_members(tmp_path):
    project(tmp_path, "binary")
    text = write_report(tmp_path / "outputs", [], "hc").read_text()
    for name in NAMES:
        assert f"<th>{name}</th>" in text


def test_missing_matplotlib_is_a_clear_error(tmp_path, monkeypatch):
    cfg = project(tmp_path, "binary")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MedalistError, match="needs matplotlib"):
        write_report(tmp_path / "outputs", list(NAMES), cfg=cfg)
