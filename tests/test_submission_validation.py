"""R6: every malformed submission is refused with a message that says what is wrong."""

import numpy as np
import pandas as pd
import pytest

from medalist.errors import SubmissionError
from medalist.submission.format import (
    build_submission,
    validate_submission,
    validate_submission_file,
    write_submission,
)

SAMPLE = pd.DataFrame({"id": [10, 11, 12, 13], "label": [0, 0, 0, 0]})
GOOD = pd.DataFrame({"id": [10, 11, 12, 13], "label": [3, 1, 2, 0]})
PROBS = pd.DataFrame({"id": [10, 11, 12, 13], "a": [0.1, 0.5, 0.9, 1.0], "b": [0.9, 0.5, 0.1, 0.0]})
LABELS = {"label": [0, 1, 2, 3]}


def check(sub, match, sample=SAMPLE, **kw):
    with pytest.raises(SubmissionError, match=match):
        validate_submission(sub, sample, id_column="id", label_values=LABELS, **kw)


def test_correct_file_accepted():
    validate_submission(GOOD, SAMPLE, id_column="id", label_values=LABELS)
    validate_submission(
        PROBS, PROBS.assign(a=0.0, b=0.0), id_column="id", probability_columns=["a", "b"]
    )


def test_missing_id():
    check(GOOD.iloc[[0, 1, 2]], "3 rows; the sample submission has 4")
    check(GOOD.assign(id=[10, 11, 12, 99]), r"1 id\(s\) of the sample are missing, e.g. \[13\]")


def test_duplicated_id():
    check(GOOD.assign(id=[10, 11, 11, 13]), "row 2: id 11 appears twice")


def test_retyped_ids():
    check(GOOD.assign(id=GOOD["id"].astype(float)), "type float64")
    check(GOOD.assign(id=GOOD["id"].astype(str)), "type (object|str)")


def test_wrong_and_extra_columns():
    check(GOOD.rename(columns={"label": "target"}), r"missing column\(s\) \['label'\]")
    check(GOOD.assign(extra=1), r"extra column\(s\) \['extra'\]")
    sample = SAMPLE.assign(other=0)
    check(GOOD.assign(other=0)[["id", "other", "label"]], "columns in another order", sample=sample)


def test_nan_and_inf():
    check(GOOD.assign(label=[3, np.nan, 2, 0]), "column 'label' row 1 .id 11. is NaN")
    sample = PROBS.assign(a=0.0, b=0.0)
    check(PROBS.assign(a=[0.1, np.inf, 0.2, 0.3]), "column 'a' row 1 is infinite", sample=sample)


def test_probability_out_of_range():
    sample = PROBS.assign(a=0.0, b=0.0)
    check(
        PROBS.assign(b=[0.9, 1.5, 0.1, 0.0]),
        r"'b' row 1: probability 1.5 is outside \[0, 1\]",
        sample=sample,
        probability_columns=["a", "b"],
    )


def test_one_row_more_or_less():
    check(pd.concat([GOOD, GOOD.iloc[[0]].assign(id=14)]), "5 rows; the sample submission has 4")
    check(GOOD.iloc[:3], "3 rows")


def test_wrong_order():
    check(GOOD.iloc[[1, 0, 2, 3]], "another order than the sample: row 0 has id 11, the sample 10")


def test_label_outside_classes():
    check(GOOD.assign(label=[3, 1, 7, 0]), r"row 2: label 7 is not one of \[0, 1, 2, 3\]")


def test_write_refused_keeps_existing_file(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(GOOD, SAMPLE, path, id_column="id")
    before = path.read_bytes()
    with pytest.raises(SubmissionError):
        write_submission(GOOD.iloc[:3], SAMPLE, path, id_column="id")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub.csv"]


@pytest.mark.parametrize("ids", [[10, 11, 12, 13], ["img_001", "img_002", "img_003", "img_004"]])
def test_file_round_trip(tmp_path, ids):
    sample = pd.DataFrame({"id": ids, "label": 0})
    sample.to_csv(tmp_path / "sample.csv", index=False)
    GOOD.assign(id=ids).to_csv(tmp_path / "sub.csv", index=False)
    validate_submission_file(tmp_path / "sub.csv", tmp_path / "sample.csv", id_column="id")
    GOOD.assign(id=ids).iloc[::-1].to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(SubmissionError, match="bad.csv: rows in another order"):
        validate_submission_file(tmp_path / "bad.csv", tmp_path / "sample.csv", id_column="id")
    with pytest.raises(SubmissionError, match="not found"):
        validate_submission_file(tmp_path / "none.csv", tmp_path / "sample.csv", id_column="id")


def test_build_multiclass_labels_and_probabilities():
    preds = pd.DataFrame(
        {"id": [12, 10, 11, 13], "p_cat": [0.9, 0.2, 0.3, 0.1], "p_dog": [0.1, 0.8, 0.7, 0.9]}
    )
    sample = pd.DataFrame({"id": [10, 11, 12, 13], "label": ["x"] * 4})
    sub = build_submission(
        preds,
        sample,
        id_column="id",
        task="multiclass",
        classes=["cat", "dog"],
        target_columns=["label"],
    )
    assert sub["label"].tolist() == ["dog", "dog", "cat", "dog"]
    sample = pd.DataFrame({"id": [10, 11, 12, 13], "dog": 0.0, "cat": 0.0})
    sub = build_submission(
        preds,
        sample,
        id_column="id",
        task="multiclass",
        classes=["cat", "dog"],
        target_columns=["label"],
    )
    assert list(sub.columns) == ["id", "dog", "cat"] and sub["cat"].tolist() == [0.2, 0.3, 0.9, 0.1]
    validate_submission(sub, sample, id_column="id", probability_columns=["dog", "cat"])


def test_build_binary_multilabel_regression():
    sample = pd.DataFrame({"id": [1, 2], "target": 0.0})
    preds = pd.DataFrame({"id": [2, 1], "p_1": [0.7, 0.2]})
    sub = build_submission(
        preds, sample, id_column="id", task="binary", classes=[0, 1], target_columns=["target"]
    )
    assert sub["target"].tolist() == [0.2, 0.7]
    sample = pd.DataFrame({"id": [1, 2], "a": 0.0, "b": 0.0})
    preds = pd.DataFrame({"id": [1, 2], "p_a": [0.1, 0.2], "p_b": [0.3, 0.4]})
    sub = build_submission(
        preds, sample, id_column="id", task="multilabel", classes=[], target_columns=["a", "b"]
    )
    assert sub["b"].tolist() == [0.3, 0.4]
    sample = pd.DataFrame({"id": [1, 2], "y": 0.0})
    preds = pd.DataFrame({"id": [1, 2], "pred_y": [3.5, -1.0]})
    sub = build_submission(
        preds, sample, id_column="id", task="regression", classes=[], target_columns=["y"]
    )
    assert sub["y"].tolist() == [3.5, -1.0]


def test_build_refuses_missing_and_extra_predictions():
    sample = pd.DataFrame({"id": [1, 2, 3], "target": 0.0})
    preds = pd.DataFrame({"id": [1, 2], "p_1": [0.7, 0.2]})
    with pytest.raises(SubmissionError, match=r"1 sample submission id\(s\) have no prediction"):
        build_submission(
            preds, sample, id_column="id", task="binary", classes=[0, 1], target_columns=["target"]
        )
    preds = pd.DataFrame({"id": [1, 2, 3, 4], "p_1": [0.7, 0.2, 0.1, 0.1]})
    with pytest.raises(SubmissionError, match="not in the sample submission"):
        build_submission(
            preds, sample, id_column="id", task="binary", classes=[0, 1], target_columns=["target"]
        )
