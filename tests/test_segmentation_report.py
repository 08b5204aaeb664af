"""``medalist report`` of mask experiments and a mask ensemble: the recorded scores, the
ensemble's picks, the OOF correlation of pixel probabilities, the Dice per image and the
empty-mask confusion of the final masks, on a tiny mosaic competition."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import working_directory
from medalist.modalities.segmentation import store
from medalist.modalities.segmentation.postprocess import postprocess
from medalist.tasks import build_task
from support.segmentation_project import CONFIG, read_json, segmentation_project
from support.threads import one_thread

OUT = Path("outputs")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two one-epoch experiments (a, b) with test masks and their hill-climbing ensemble."""
    with one_thread():
        folder = segmentation_project(tmp_path_factory.mktemp("mask_report"))
        with working_directory(folder):
            for args in (
                ["folds"],
                ["train", "train.experiment=a", "train.epochs=1"],
                ["infer", "train.experiment=a", "train.epochs=1"],
                ["train", "train.experiment=b", "train.epochs=1", "train.lr=1e-3"],
                ["infer", "train.experiment=b", "train.epochs=1"],
                ["ensemble", "ensemble.experiments=[a,b]", "ensemble.name=blend"],
            ):
                assert main([args[0], "-c", CONFIG, *args[1:]]) == 0, args
    return folder


@pytest.fixture
def project(trained):
    with working_directory(trained):
        yield trained


@pytest.fixture(scope="module")
def page(trained) -> str:
    """The report of both experiments and the ensemble, written once for the module."""
    with working_directory(trained):
        args = ["-e", "a", "-e", "b", "--ensemble", "blend", "--out", "report.html"]
        assert main(["report", "-c", CONFIG, *args]) == 0
        return Path("report.html").read_text()


def _section(page: str, anchor: str) -> str:
    match = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert match, f"no section {anchor}"
    return match.group(1)


def _cells(html: str, label: str) -> list[str]:
    """The cells of the table row headed ``label``."""
    match = re.search(rf"<th>{re.escape(label)}</th>(.*?)</tr>", html, re.S)
    assert match, f"no row {label}"
    return re.findall(r"<td>(.*?)</td>", match.group(1))


def _final_masks(folder: Path) -> tuple[list, list[np.ndarray]]:
    """The OOF masks of ``folder`` made final with its postprocess.json."""
    choice = read_json(folder / "postprocess.json")
    ids, probs = store.read_masks(folder / "oof.masks.safetensors")
    final = [postprocess(p, choice["threshold"], choice["min_size"]) for p in probs]
    return ids, final


def _truth(ids) -> list[np.ndarray]:
    train = pd.read_csv("data/train.csv")
    masks = build_task(resolve_config(CONFIG), train).encode_targets(train)
    position = {str(i): row for row, i in enumerate(train["id"].astype(str))}
    return [np.asarray(masks[position[str(i)]]) for i in ids]


def test_the_page_shows_the_recorded_scores_of_each_experiment_and_the_ensemble(project, page):
    sections = re.findall(r'<section id="([^"]+)"', page)
    for anchor in ("scores", "cv-per-fold", "correlation", "weights", "mask-dice", "empty-masks"):
        assert anchor in sections, anchor
    scores, per_fold = _section(page, "scores"), _section(page, "cv-per-fold")
    for name in ("a", "b"):
        metrics = read_json(OUT / name / "metrics.json")
        cells = _cells(scores, name)
        assert cells[:2] == [f"{metrics['cv']['dice']:.5f}", f"{metrics['cv']['iou']:.5f}"]
        assert cells[-1] == f"{metrics['cv_postprocessed']['dice']:.5f}"
        folds = [f"{metrics['folds'][k]['dice']:.5f}" for k in ("0", "1")]
        assert _cells(per_fold, name) == folds
    cv = read_json(OUT / "ensemble" / "blend" / "cv.json")
    cells = _cells(scores, "ensemble blend (nested)")
    assert cells[0] == f"{cv['nested']['cv']['dice']:.5f}"
    assert cells[-1] == f"{cv['nested_postprocessed']['dice']:.5f}"
    weights = _section(page, "weights")
    assert _cells(weights, "dice")[:2] == [
        f"{cv['in_sample']['cv']['dice']:.5f}",
        f"{cv['nested']['cv']['dice']:.5f}",
    ]
    picks = read_json(OUT / "ensemble" / "blend" / "weights.json")["picks"]
    for name, count in picks.items():
        assert _cells(weights, name) == [str(count)]
    assert "report: not yet" not in page


def test_the_mask_diagnostics_are_those_of_the_ensembles_final_masks(project, page):
    folder = OUT / "ensemble" / "blend"
    ids, final = _final_masks(folder)
    truth = [t >= 0.5 for t in _truth(ids)]
    table = _section(page, "empty-masks")
    counts = [[int(v) for v in _cells(table, row)] for row in ("true empty", "true not empty")]
    assert sum(map(sum, counts)) == len(ids) == 16
    true_empty = np.array([not t.any() for t in truth])
    final_empty = np.array([not f.any() for f in final])
    assert counts == [
        [int((true_empty & final_empty).sum()), int((true_empty & ~final_empty).sum())],
        [int((~true_empty & final_empty).sum()), int((~true_empty & ~final_empty).sum())],
    ]
    # The mean Dice per image of the final masks is the post-processed CV (one channel).
    shown = re.search(r'<span id="mean-dice">([0-9.]+)</span>', _section(page, "mask-dice"))
    expected = read_json(folder / "cv.json")["nested_postprocessed"]["dice"]
    assert float(shown.group(1)) == pytest.approx(expected, abs=1e-5)


def test_the_page_embeds_its_figures_as_png(project, page):
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # per fold, correlation, weights, Dice per image, worst images
    assert len(images) >= 5
    for encoded in images:
        assert base64.b64decode(encoded)[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<img alt="worst images' in _section(page, "worst-images")


def test_the_correlation_is_pearson_of_the_sampled_pixels(project):
    task = build_task(resolve_config(CONFIG), pd.read_csv("data/train.csv"))
    own = task.own_predictions
    # A copy of a: r = 1; a's masks inverted (1 - p): r = -1.
    for name, change in (("same", lambda p: p), ("inverse", lambda p: 1 - p)):
        shutil.copytree(OUT / "a", OUT / name, dirs_exist_ok=True)
        ids, masks = store.read_masks(OUT / name / "oof.masks.safetensors")
        store.write_masks(OUT / name / "oof.masks.safetensors", ids, [change(m) for m in masks])
    matrix = own.report_correlations({n: OUT / n for n in ("a", "b", "same", "inverse")})
    assert matrix.loc["a", "same"] == pytest.approx(1.0, abs=1e-9)
    assert matrix.loc["a", "inverse"] == pytest.approx(-1.0, abs=1e-9)
    assert np.allclose(matrix.to_numpy(), matrix.to_numpy().T)
    # 256 of each image's 1024 pixels: near the Pearson r of every pixel.
    _, a = store.read_masks(OUT / "a" / "oof.masks.safetensors")
    _, b = store.read_masks(OUT / "b" / "oof.masks.safetensors")
    full = np.corrcoef(
        np.concatenate([m.ravel() for m in a]), np.concatenate([m.ravel() for m in b])
    )
    assert matrix.loc["a", "b"] == pytest.approx(full[0, 1], abs=0.1)


def test_one_experiment_alone_is_reported_with_its_own_final_masks(project):
    assert main(["report", "-c", CONFIG, "-e", "a", "--out", "alone.html"]) == 0
    page = Path("alone.html").read_text()
    sections = re.findall(r'<section id="([^"]+)"', page)
    assert "correlation" not in sections and "weights" not in sections
    assert "mask-dice" in sections and "empty-masks" in sections
    metrics = read_json(OUT / "a" / "metrics.json")
    shown = re.search(r'<span id="mean-dice">([0-9.]+)</span>', page)
    assert float(shown.group(1)) == pytest.approx(metrics["cv_postprocessed"]["dice"], abs=1e-5)
    assert "outputs/a/postprocess.json" in _section(page, "mask-dice")
