"""The demos' closing steps on tiny versions: their experiments, their ensemble and the report,
the pseudo-label round and TTA configs the image and text demos write
(configs/demo/<demo>_{pseudo,tta}.yaml), and the table demo's held-out scores."""

import json
import shutil

import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from medalist.cli import main
from medalist.config import resolve_config
from medalist.demo.digits import (
    REPO_CONFIGS,
    bake,
    run_digits_demo,
    working_directory,
    write_variants,
)
from medalist.demo.segmentation import run_segmentation_demo
from medalist.demo.tabular import build_cancer, run_tabular_demo
from medalist.demo.text import run_text_demo
from medalist.pipeline import STAGES, _config_hash
from support.tiny_text import make_backbone

# Both experiments on timm's test model, 16 px, two folds, one epoch: the steps, not the scores.
TINY_DIGITS = [
    "model.backbone=test_resnet",
    "image.size=16",
    "folds.n_splits=2",
    "train.epochs=1",
    "train.progress=false",
]
# Every library on 150 rows, three folds, at most 100 rounds (the MLP 3 epochs): the steps,
# not the scores.
TINY_TABLE = [
    "folds.n_splits=3",
    "tabular.rounds=100",
    "tabular.early_stopping=20",
    "train.epochs=3",
    "train.progress=false",
]
CONTEXT = {
    "digits": {"competition_name": "Digits"},
    "text": {"competition_name": "Docstrings", "modality": "text", "target_columns": "library"},
}


@pytest.mark.parametrize("name", ["digits", "text"])
def test_variant_configs_add_only_their_overlay(tmp_path, name):
    project = bake(tmp_path, CONTEXT[name])
    shutil.copy(REPO_CONFIGS / "demo" / f"{name}.yaml", project / "configs")
    pseudo_file, tta_file = write_variants(project, name)
    base = resolve_config(project / "configs" / f"{name}.yaml")
    pseudo, tta = resolve_config(pseudo_file), resolve_config(tta_file)
    assert pseudo_file.read_text().startswith("# Overlay on")
    # What the demo ran is up to date under both files: only the overlay's stages run.
    for stage in ("folds", "train"):
        for variant in (pseudo, tta):
            assert _config_hash(variant, STAGES[stage]) == _config_hash(base, STAGES[stage])
    assert _config_hash(pseudo, STAGES["infer"]) == _config_hash(base, STAGES["infer"])
    assert pseudo.stages == ["folds", "train", "infer", "pseudo", "submission"]
    assert pseudo.pseudo.teachers == list(base.ensemble.experiments)
    assert pseudo.pseudo.source == "per_fold" and pseudo.pseudo.rounds == 1
    assert tta.infer.tta_oof and len(tta.infer.tta) == 3
    assert len(base.ensemble.experiments) == {"digits": 2, "text": 3}[name]


def test_tiny_digits_demo_blends_reports_then_runs_pseudo_and_tta(tmp_path, capsys):
    result = run_digits_demo(tmp_path, n_rows=150, overrides=TINY_DIGITS)
    printed = capsys.readouterr().out
    project = tmp_path / "digits"
    assert set(result["experiments"]) == {"digits_resnet18", "digits_resnet10t"}
    assert set(result["test_score"]) == {"digits_resnet18", "digits_resnet10t", "digits_blend"}
    cv = json.loads((project / "outputs/ensemble/digits_blend/cv.json").read_text())
    assert cv["method"] == "hill_climb" and cv["optimised_metric"] == "log_loss"
    assert result["cv"] == cv["nested"]["cv"]
    assert result["submission"] == project / "submissions/digits_blend.csv"
    assert "<img" in result["report"].read_text()
    for text in ("digits_blend", "best single model", "configs/digits_pseudo.yaml", "tta.yaml"):
        assert text in printed

    trained = (project / "outputs/digits_resnet18/metrics.json").stat().st_mtime_ns
    with working_directory(project):
        assert (
            main(["run", "-c", "configs/digits_pseudo.yaml", *TINY_DIGITS, "pseudo.threshold=null"])
            == 0
        )
        assert main(["run", "-c", "configs/digits_tta.yaml", *TINY_DIGITS]) == 0
    assert (project / "outputs/digits_resnet18/metrics.json").stat().st_mtime_ns == trained
    rounds = json.loads((project / "outputs/pseudo/rounds.json").read_text())
    assert rounds["base"] == "digits_resnet18"
    assert rounds["rounds"][0]["teachers"] == ["digits_resnet18", "digits_resnet10t"]
    labels = json.loads((project / "outputs/pseudo/1/teachers.json").read_text())
    assert all(entry["rows"] == entry["of"] for entry in labels["files"].values())
    tta = json.loads((project / "outputs/digits_resnet18/tta.json").read_text())
    assert tta["views"] == ["identity", "zoom_95", "zoom_105"]
    assert set(tta["cv"]) == set(tta["cv_tta"])


@pytest.mark.slow
def test_tiny_text_demo_blends_and_reports(tmp_path, capsys):
    from medalist.demo.text import docstring_corpus

    corpus = docstring_corpus(per_library=10)["text"].tolist()
    backbone = make_backbone(tmp_path / "tiny-bert", corpus, masked_lm=True)
    result = run_text_demo(
        tmp_path / "demo",
        per_library=10,
        backbone=backbone,
        overrides=[
            "train.epochs=1",
            "train.progress=false",
            "text.freeze_layers=1",
            "mlm.epochs=1",
            "mlm.freeze_layers=1",
        ],
    )
    printed = capsys.readouterr().out
    project = tmp_path / "demo" / "docstrings"
    assert set(result["experiments"]) == {
        "as shipped",
        "after pretrain-mlm",
        "TF-IDF + logistic regression",
    }
    members = json.loads((project / "outputs/ensemble/docstrings_blend/cv.json").read_text())
    assert set(members["members"]) == {
        "docstrings_minilm",
        "docstrings_minilm_mlm",
        "docstrings_tfidf",
    }
    assert "<img" in result["report"].read_text()
    assert result["submission"].is_file()
    for text in ("docstrings_blend", "perplexity", "configs/text_tta.yaml"):
        assert text in printed


def test_the_table_competition_keeps_its_test_labels_aside(tmp_path):
    build_cancer(tmp_path / "data")
    train = pd.read_csv(tmp_path / "data" / "train.csv")
    test = pd.read_csv(tmp_path / "data" / "test.csv")
    sample = pd.read_csv(tmp_path / "data" / "sample_submission.csv")
    solution = pd.read_csv(tmp_path / "solution.csv")
    # sklearn's 569 tumours (212 malignant), each once, split 80/20 with the classes kept.
    assert len(train) + len(test) == 569 and not set(train["id"]) & set(test["id"])
    assert train["malignant"].sum() + solution["malignant"].sum() == 212
    assert abs(train["malignant"].mean() - solution["malignant"].mean()) < 0.01
    assert "malignant" not in test.columns and train.shape[1] == 32  # id, 30 features, target
    assert sample["id"].tolist() == test["id"].tolist() == solution["id"].tolist()
    assert sample.columns.tolist() == ["id", "malignant"]


def test_tiny_tabular_demo_blends_the_gbdts_and_the_mlp_and_scores_the_test_set(tmp_path, capsys):
    result = run_tabular_demo(tmp_path, n_rows=150, overrides=TINY_TABLE)
    printed = capsys.readouterr().out
    project = tmp_path / "breast-cancer"
    members = {"cancer_lightgbm": "lightgbm", "cancer_xgboost": "xgboost"}
    members.update(cancer_catboost="catboost", cancer_mlp="mlp")
    assert set(result["experiments"]) == set(members)
    assert set(result["test_score"]) == {*members, "cancer_blend"}
    for experiment, library in members.items():
        record = json.loads((project / "outputs" / experiment / "fold0/scores.json").read_text())
        assert record["learner"] == library
        assert set(result["experiments"][experiment]) >= {"roc_auc", "log_loss"}
    cv = json.loads((project / "outputs/ensemble/cancer_blend/cv.json").read_text())
    assert cv["method"] == "hill_climb" and cv["optimised_metric"] == "log_loss"
    assert set(cv["members"]) == set(members)
    assert result["cv"] == cv["nested"]["cv"]
    assert result["submission"] == project / "submissions/cancer_blend.csv"
    assert "<img" in result["report"].read_text()
    # Every submission is valid, and its test score is the held-out labels' ROC AUC.
    solution = pd.read_csv(project / "solution.csv").set_index("id")
    assert not (project / "data" / "solution.csv").exists()
    with working_directory(project):
        for name in (*members, "cancer_blend"):
            submission = f"submissions/{name}.csv"
            assert main(["validate", submission, "-c", "configs/tabular.yaml"]) == 0
            probs = pd.read_csv(submission).set_index("id").loc[solution.index, "malignant"]
            expected = roc_auc_score(solution["malignant"], probs)
            assert result["test_score"][name] == pytest.approx(expected)
    assert result["test_score"]["cancer_blend"] > 0.9  # 30 test rows: the data holds signal
    for text in ("cancer_blend", "best single model", "test roc_auc", "test log_loss"):
        assert text in printed


TINY_SEGMENTATION = ["model.backbone=test_resnet", "train.epochs=1", "folds.n_splits=2"]


def test_tiny_segmentation_demo_blends_two_decoders_and_scores_the_rle_submissions(
    tmp_path, capsys
):
    result = run_segmentation_demo(tmp_path, n_train=24, n_test=6, overrides=TINY_SEGMENTATION)
    printed = capsys.readouterr().out
    project = tmp_path / "mosaics"
    assert set(result["experiments"]) == {"mosaics_unet", "mosaics_fpn"}
    assert set(result["test_score"]) == {"mosaics_unet", "mosaics_fpn", "mosaics_blend"}
    assert result["submission"] == project / "submissions/mosaics_blend.csv"
    assert not (project / "data" / "solution.csv").exists()
    for name in ("mosaics_unet", "mosaics_fpn"):
        metrics = json.loads((project / "outputs" / name / "metrics.json").read_text())
        assert result["experiments"][name] == metrics["cv"] and set(metrics["folds"]) == {"0", "1"}
        config = yaml.safe_load((project / "outputs" / name / "config.yaml").read_text())
        assert config["segmentation"]["architecture"] == name.split("_")[1]
    cv = json.loads((project / "outputs/ensemble/mosaics_blend/cv.json").read_text())
    assert result["cv"] == cv["nested"]["cv"] and cv["method"] == "hill_climb"
    assert all(0.0 <= score <= 1.0 for score in result["test_score"].values())
    assert "test dice" in printed and "chosen on OOF" in printed
    with working_directory(project):
        for name in ("mosaics_unet", "mosaics_fpn", "mosaics_blend"):
            submission = f"submissions/{name}.csv"
            assert main(["validate", submission, "-c", "configs/segmentation.yaml"]) == 0
        # A mask that runs past its image is refused.
        sub = pd.read_csv("submissions/mosaics_blend.csv", dtype=str, keep_default_na=False)
        sub.loc[0, "rle_mask"] = "4000 200"
        sub.to_csv("submissions/broken.csv", index=False)
        assert main(["validate", "submissions/broken.csv", "-c", "configs/segmentation.yaml"]) != 0
