"""The submission format (medalist.submission.format): predictions mapped onto the sample
submission for every task's layout; every malformed submission refused with a message that says
what is wrong and where; a refused write leaves the previous file; files read back from disk.
The submission stage runs in test_pipeline.py and refuses a mismatched sample in
test_bad_input.py."""

from __future__ import annotations

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

IDS = [101, 102, 103, 104, 105]
SHUFFLED = [3, 0, 4, 1, 2]  # predictions come in another order than the sample


def _preds(columns: dict) -> pd.DataFrame:
    """A prediction table in SHUFFLED row order; ``columns`` are given in sample order."""
    frame = pd.DataFrame({"id": IDS, **columns})
    return frame.iloc[SHUFFLED].reset_index(drop=True)


P_CAT = [0.7, 0.1, 0.2, 0.3, 0.6]
P_DOG = [0.2, 0.8, 0.1, 0.3, 0.3]
P_EMU = [0.1, 0.1, 0.7, 0.4, 0.1]
MULTICLASS_PREDS = _preds({"p_cat": P_CAT, "p_dog": P_DOG, "p_emu": P_EMU})

# name -> (preds, sample, build kwargs, expected values, validate kwargs)
CASES = {
    "multiclass_labels": (
        MULTICLASS_PREDS,
        pd.DataFrame({"id": IDS, "label": "cat"}),
        {"task": "multiclass", "classes": ["cat", "dog", "emu"], "target_columns": ["label"]},
        {"label": ["cat", "dog", "emu", "emu", "cat"]},
        {"label_values": {"label": ["cat", "dog", "emu"]}},
    ),
    "multiclass_int_labels": (
        _preds({"p_0": P_CAT, "p_1": P_DOG, "p_2": P_EMU}),
        pd.DataFrame({"id": IDS, "label": 0}),
        {"task": "multiclass", "classes": [0, 1, 2], "target_columns": ["label"]},
        {"label": [0, 1, 2, 2, 0]},
        {"label_values": {"label": [0, 1, 2]}},
    ),
    "multiclass_probabilities": (
        MULTICLASS_PREDS,
        pd.DataFrame({"id": IDS, "emu": 0.0, "cat": 0.0, "dog": 0.0}),
        {"task": "multiclass", "classes": ["cat", "dog", "emu"], "target_columns": ["label"]},
        {"emu": P_EMU, "cat": P_CAT, "dog": P_DOG},
        {"probability_columns": ["emu", "cat", "dog"]},
    ),
    "binary_probabilities": (
        _preds({"p_1": [0.9, 0.2, 0.5, 0.4, 0.0]}),
        pd.DataFrame({"id": IDS, "target": 0.5}),
        {"task": "binary", "classes": [0, 1], "target_columns": ["target"]},
        {"target": [0.9, 0.2, 0.5, 0.4, 0.0]},
        {"probability_columns": ["target"]},
    ),
    "binary_labels": (
        _preds({"p_yes": [0.9, 0.2, 0.5, 0.4, 0.0]}),
        pd.DataFrame({"id": IDS, "answer": "no"}),
        {"task": "binary", "classes": ["no", "yes"], "target_columns": ["answer"], "kind": "label"},
        {"answer": ["yes", "no", "yes", "no", "no"]},
        {"label_values": {"answer": ["no", "yes"]}},
    ),
    "multilabel": (
        _preds({"p_a": [0.1, 0.6, 0.5, 0.0, 1.0], "p_b": [0.9, 0.4, 0.3, 0.2, 0.7]}),
        pd.DataFrame({"id": IDS, "b": 0.0, "a": 0.0}),
        {"task": "multilabel", "classes": [], "target_columns": ["a", "b"]},
        {"b": [0.9, 0.4, 0.3, 0.2, 0.7], "a": [0.1, 0.6, 0.5, 0.0, 1.0]},
        {"probability_columns": ["a", "b"]},
    ),
    "multilabel_labels": (
        _preds({"p_a": [0.1, 0.6, 0.5, 0.0, 1.0], "p_b": [0.9, 0.4, 0.3, 0.2, 0.7]}),
        pd.DataFrame({"id": IDS, "a": 0, "b": 0}),
        {"task": "multilabel", "classes": [], "target_columns": ["a", "b"], "kind": "label"},
        {"a": [0, 1, 1, 0, 1], "b": [1, 0, 0, 0, 1]},
        {"label_values": {"a": [0, 1], "b": [0, 1]}},
    ),
    "regression": (
        _preds({"pred_y": [3.5, -1.0, 0.0, 12.25, 7.0], "pred_z": [1.0, 2.0, 3.0, 4.0, 5.0]}),
        pd.DataFrame({"id": IDS, "z": 0.0, "y": 0.0}),
        {"task": "regression", "classes": [], "target_columns": ["y", "z"]},
        {"z": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [3.5, -1.0, 0.0, 12.25, 7.0]},
        {},
    ),
}


def _build(name: str, **overrides) -> pd.DataFrame:
    preds, sample, kwargs, _, _ = CASES[name]
    return build_submission(preds, sample, id_column="id", **{**kwargs, **overrides})


# ------------------------------------------------------------------------------------- build


@pytest.mark.parametrize("name", list(CASES))
def test_build_matches_sample_layout_and_values(name):
    _, sample, _, expected, _ = CASES[name]
    sub = _build(name)
    assert list(sub.columns) == list(sample.columns)
    assert sub["id"].tolist() == IDS
    assert sub["id"].dtype == sample["id"].dtype
    for column, values in expected.items():
        assert sub[column].tolist() == values, column


@pytest.mark.parametrize("name", list(CASES))
def test_built_submission_is_valid_and_survives_disk(name, tmp_path):
    _, sample, _, _, validate_kwargs = CASES[name]
    sub = _build(name)
    validate_submission(sub, sample, id_column="id", **validate_kwargs)
    sample.to_csv(tmp_path / "sample.csv", index=False)
    path = write_submission(sub, sample, tmp_path / "sub.csv", id_column="id", **validate_kwargs)
    assert path == tmp_path / "sub.csv"
    validate_submission_file(path, tmp_path / "sample.csv", id_column="id", **validate_kwargs)


def test_build_label_cast_to_sample_dtype():
    preds = _preds({"p_1": P_CAT, "p_2": P_DOG, "p_3": P_EMU})
    # classes as strings, the sample's label column holds ints: labels are written as ints
    sample = pd.DataFrame({"id": IDS, "label": 0})
    sub = build_submission(
        preds,
        sample,
        id_column="id",
        task="multiclass",
        classes=["1", "2", "3"],
        target_columns=["label"],
    )
    assert sub["label"].dtype.kind == "i" and sub["label"].tolist() == [1, 2, 3, 3, 1]
    # classes as ints, the sample's label column holds text: labels are written as text
    sample = pd.DataFrame({"id": IDS, "label": "x"})
    sub = build_submission(
        preds,
        sample,
        id_column="id",
        task="multiclass",
        classes=[1, 2, 3],
        target_columns=["label"],
    )
    assert sub["label"].tolist() == ["1", "2", "3", "3", "1"]


def test_build_refuses_classes_that_do_not_fit_the_label_column():
    sample = pd.DataFrame({"id": IDS, "label": 0})
    with pytest.raises(SubmissionError, match="cannot be written as int64 like the sample's"):
        build_submission(
            MULTICLASS_PREDS,
            sample,
            id_column="id",
            task="multiclass",
            classes=["cat", "dog", "emu"],
            target_columns=["label"],
        )


def test_build_id_order_follows_sample_not_preds():
    preds, sample, kwargs, _, _ = CASES["regression"]
    reordered = sample.iloc[::-1].reset_index(drop=True)
    sub = build_submission(preds, reordered, id_column="id", **kwargs)
    assert sub["id"].tolist() == IDS[::-1]
    assert sub["y"].tolist() == [7.0, 12.25, 0.0, -1.0, 3.5]


def test_build_matches_float_ids_to_int_sample_ids():
    preds, sample, kwargs, expected, _ = CASES["regression"]
    sub = build_submission(
        preds.assign(id=preds["id"].astype(float)), sample, id_column="id", **kwargs
    )
    assert sub["id"].dtype.kind == "i" and sub["y"].tolist() == expected["y"]


def test_build_missing_ids_lists_five_and_the_count():
    preds, sample, kwargs, _, _ = CASES["regression"]
    big = pd.DataFrame({"id": range(1, 21), "y": 0.0, "z": 0.0})
    with pytest.raises(SubmissionError) as info:
        build_submission(preds.assign(id=[1, 2, 3, 4, 5]), big, id_column="id", **kwargs)
    message = str(info.value)
    assert "15 sample submission id(s) have no prediction" in message
    assert "[6, 7, 8, 9, 10]" in message and "11" not in message


def test_build_refuses_extra_and_repeated_prediction_ids():
    preds, sample, kwargs, _, _ = CASES["regression"]
    extra = pd.concat([preds, preds.iloc[[0]].assign(id=999)])
    with pytest.raises(SubmissionError, match=r"1 predicted id\(s\) are not in the sample.*999"):
        build_submission(extra, sample, id_column="id", **kwargs)
    repeated = pd.concat([preds, preds.iloc[[0]]])
    with pytest.raises(SubmissionError, match="predictions repeat id 104"):
        build_submission(repeated, sample, id_column="id", **kwargs)


def test_build_refuses_missing_prediction_column():
    preds = MULTICLASS_PREDS.drop(columns="p_emu")
    _, sample, kwargs, _, _ = CASES["multiclass_labels"]
    with pytest.raises(SubmissionError, match=r"predictions have no column\(s\) \['p_emu'\]"):
        build_submission(preds, sample, id_column="id", **kwargs)


@pytest.mark.parametrize(
    ("name", "kind", "match"),
    [
        ("regression", "label", "'label' makes no sense for regression"),
        ("regression", "probability", "'probability' makes no sense for regression"),
        ("multiclass_labels", "probability", r"sample columns \['label'\] are not the classes"),
        ("multiclass_probabilities", "label", "one label column was expected for kind 'label'"),
        ("binary_probabilities", "logits", "'logits' is not one of"),
    ],
)
def test_build_refuses_impossible_kind(name, kind, match):
    with pytest.raises(SubmissionError, match=match):
        _build(name, kind=kind)


def test_build_refuses_sample_that_fits_no_kind():
    sample = pd.DataFrame({"id": IDS, "cat": 0.0, "dog": 0.0})  # 'emu' is missing
    with pytest.raises(SubmissionError, match="neither one label column nor the classes"):
        build_submission(
            MULTICLASS_PREDS,
            sample,
            id_column="id",
            task="multiclass",
            classes=["cat", "dog", "emu"],
            target_columns=["label"],
        )
    with pytest.raises(SubmissionError, match=r"\['w'\] are not targets"):
        build_submission(
            CASES["regression"][0],
            pd.DataFrame({"id": IDS, "w": 0.0}),
            id_column="id",
            task="regression",
            classes=[],
            target_columns=["y", "z"],
        )
    with pytest.raises(SubmissionError, match="writes one column"):
        build_submission(
            CASES["binary_probabilities"][0],
            pd.DataFrame({"id": IDS, "a": 0.0, "b": 0.0}),
            id_column="id",
            task="binary",
            classes=[0, 1],
            target_columns=["target"],
        )


def test_build_refuses_unknown_task():
    with pytest.raises(SubmissionError, match="unknown task 'ranking'"):
        _build("regression", task="ranking")


# ---------------------------------------------------------------------------------- validate

SAMPLE = pd.DataFrame({"id": IDS, "label": 0, "p_a": 0.0, "p_b": 0.0})
GOOD = pd.DataFrame(
    {
        "id": IDS,
        "label": [2, 0, 1, 1, 0],
        "p_a": [0.1, 0.0, 1.0, 0.25, 0.5],
        "p_b": [0.9, 1.0, 0.0, 0.75, 0.5],
    }
)
CHECKS = {"probability_columns": ["p_a", "p_b"], "label_values": {"label": [0, 1, 2]}}


def _set(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    if isinstance(value, float) and frame[column].dtype.kind in "iu":
        frame[column] = frame[column].astype(float)
    frame.loc[row, column] = value
    return frame


def test_correct_submission_accepted():
    assert validate_submission(GOOD, SAMPLE, id_column="id", **CHECKS) is None


BAD = {
    # missing ids
    "missing_id": (
        GOOD.assign(id=[101, 102, 103, 104, 999]),
        r"1 id\(s\) of the sample are missing, e.g. \[105\]",
    ),
    "missing_id_names_extra": (
        GOOD.assign(id=[101, 102, 103, 104, 999]),
        r"1 id\(s\) are not in the sample, e.g. \[999\]",
    ),
    "empty_id": (_set(GOOD, 3, "id", np.nan), "id column 'id' row 3 is empty"),
    # duplicated ids
    "duplicated_id": (
        GOOD.assign(id=[101, 102, 103, 102, 105]),
        r"row 3: id 102 appears twice \(first at row 1",
    ),
    # re-typed ids
    "ids_as_float": (
        GOOD.assign(id=GOOD["id"].astype(float)),
        r"id column 'id' has type float64, the sample's is int64 \(e.g. 101.0 vs 101\)",
    ),
    "ids_as_text": (
        GOOD.assign(id=GOOD["id"].astype(str)),
        r"id column 'id' has type (object|str), the sample's is int64 \(e.g. '101' vs 101\)",
    ),
    # wrong columns
    "missing_column": (GOOD.drop(columns="p_b"), r"missing column\(s\) \['p_b'\]"),
    "renamed_column": (GOOD.rename(columns={"label": "Label"}), r"missing column\(s\) \['label'\]"),
    "extra_column": (GOOD.assign(p_c=0.0), r"extra column\(s\) \['p_c'\]"),
    "extra_index_column": (GOOD.reset_index(), r"extra column\(s\) \['index'\]"),
    "columns_reordered": (
        GOOD[["id", "p_a", "label", "p_b"]],
        r"columns in another order: \['id', 'p_a', 'label', 'p_b'\]",
    ),
    "id_not_first": (GOOD[["label", "id", "p_a", "p_b"]], "columns in another order"),
    "repeated_column": (
        pd.concat([GOOD, GOOD[["p_a"]]], axis=1),
        r"\['p_a'\] appear more than once",
    ),
    # NaN and inf
    "nan_probability": (_set(GOOD, 2, "p_a", np.nan), r"column 'p_a' row 2 \(id 103\) is NaN"),
    "nan_label": (_set(GOOD, 4, "label", np.nan), r"column 'label' row 4 \(id 105\) is NaN"),
    "inf": (_set(GOOD, 1, "p_b", np.inf), r"column 'p_b' row 1 is infinite \(id 102, value inf"),
    "minus_inf": (
        _set(GOOD, 0, "p_a", -np.inf),
        r"column 'p_a' row 0 is infinite \(id 101, value -inf",
    ),
    # probabilities outside [0, 1]
    "probability_above_one": (
        _set(GOOD, 3, "p_b", 1.0001),
        r"column 'p_b' row 3: probability 1.0001 is outside \[0, 1\] \(id 104",
    ),
    "probability_below_zero": (
        _set(GOOD, 0, "p_a", -0.2),
        r"column 'p_a' row 0: probability -0.2 is outside",
    ),
    "probability_as_text": (
        GOOD.assign(p_a=GOOD["p_a"].astype(str)),
        "column 'p_a' holds (object|str) values",
    ),
    # one row more, one row less
    "one_row_more": (
        pd.concat([GOOD, GOOD.iloc[[0]].assign(id=106)]),
        r"6 rows; the sample submission has 5 \(1 id\(s\) are not in the sample, e.g. \[106\]",
    ),
    "one_row_less": (
        GOOD.iloc[:4],
        r"4 rows; the sample submission has 5 \(1 id\(s\) of the sample are missing, e.g. \[105\]",
    ),
    "no_rows": (GOOD.iloc[:0], "0 rows; the sample submission has 5"),
    # rows in another order
    "rows_swapped": (
        GOOD.iloc[[0, 1, 3, 2, 4]],
        r"another order than the sample: row 2 has id 104, the sample 103 \(2 row",
    ),
    "rows_reversed": (GOOD.iloc[::-1], "row 0 has id 105, the sample 101"),
    # labels outside the classes
    "unknown_label": (
        _set(GOOD, 2, "label", 7),
        r"column 'label' row 2: label 7 is not one of \[0, 1, 2\] \(id 103",
    ),
    "negative_label": (_set(GOOD, 0, "label", -1), "label -1 is not one of"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_submission_refused(name):
    sub, match = BAD[name]
    with pytest.raises(SubmissionError, match=match):
        validate_submission(sub, SAMPLE, id_column="id", **CHECKS)


def test_string_ids_and_string_labels():
    sample = pd.DataFrame({"id": ["img_001", "img_002", "img_003"], "label": "cat"})
    sub = sample.assign(label=["cat", "dog", "cat"])
    validate_submission(sub, sample, id_column="id", label_values={"label": ["cat", "dog"]})
    with pytest.raises(SubmissionError, match="label 'cow' is not one of"):
        validate_submission(
            sub.assign(label=["cat", "cow", "cat"]),
            sample,
            id_column="id",
            label_values={"label": ["cat", "dog"]},
        )
    with pytest.raises(SubmissionError, match=r"missing, e.g. \['img_002'\]"):
        validate_submission(sub.assign(id=["img_001", "img_2", "img_003"]), sample, id_column="id")


def test_float_labels_match_integer_classes():
    sample = SAMPLE.assign(label=0.0)
    sub = GOOD.assign(label=GOOD["label"].astype(float))
    validate_submission(sub, sample, id_column="id", **CHECKS)


def test_validate_refuses_sample_without_id_column():
    with pytest.raises(SubmissionError, match="sample submission has no id column 'key'"):
        validate_submission(GOOD, SAMPLE, id_column="key")


# ------------------------------------------------------------------------------------- write


def test_write_refused_leaves_existing_file_byte_identical(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(GOOD, SAMPLE, path, id_column="id", **CHECKS)
    before = path.read_bytes()
    assert before.startswith(b"id,label,p_a,p_b\n101,2,0.1,0.9\n")
    for name in ("one_row_less", "inf", "ids_as_float", "columns_reordered", "unknown_label"):
        with pytest.raises(SubmissionError):
            write_submission(BAD[name][0], SAMPLE, path, id_column="id", **CHECKS)
        assert path.read_bytes() == before, name
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def test_write_refused_creates_no_file(tmp_path):
    with pytest.raises(SubmissionError):
        write_submission(BAD["nan_label"][0], SAMPLE, tmp_path / "sub.csv", id_column="id")
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_file_when_valid(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("old\n")
    write_submission(GOOD, SAMPLE, path, id_column="id", **CHECKS)
    assert pd.read_csv(path).equals(GOOD)


# ------------------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "ids",
    [[7, 8, 9, 10], ["img_001", "img_002", "img_010", "img_100"], ["a-1", "b-2", "c-3", "d-4"]],
)
def test_file_round_trip(tmp_path, ids):
    sample = pd.DataFrame({"id": ids, "label": 0})
    sub = sample.assign(label=[1, 0, 2, 1])
    sample.to_csv(tmp_path / "sample.csv", index=False)
    write_submission(sub, sample, tmp_path / "sub.csv", id_column="id")
    checks = {"label_values": {"label": [0, 1, 2]}}
    validate_submission_file(
        tmp_path / "sub.csv", tmp_path / "sample.csv", id_column="id", **checks
    )
    sub.iloc[[1, 0, 2, 3]].to_csv(tmp_path / "swapped.csv", index=False)
    with pytest.raises(SubmissionError, match=f"swapped.csv: rows in another order.*{ids[1]!r}"):
        validate_submission_file(tmp_path / "swapped.csv", tmp_path / "sample.csv", id_column="id")
    sub.assign(label=[1, 0, 5, 1]).to_csv(tmp_path / "label.csv", index=False)
    with pytest.raises(SubmissionError, match="label.csv: column 'label' row 2: label 5"):
        validate_submission_file(
            tmp_path / "label.csv", tmp_path / "sample.csv", id_column="id", **checks
        )


def test_file_with_ints_written_as_floats_is_refused(tmp_path):
    sample = pd.DataFrame({"id": [1, 2, 3], "target": 0.5})
    sample.to_csv(tmp_path / "sample.csv", index=False)
    (tmp_path / "sub.csv").write_text("id,target\n1.0,0.1\n2.0,0.2\n3.0,0.3\n")
    with pytest.raises(SubmissionError, match="sub.csv: id column 'id' has type float64"):
        validate_submission_file(tmp_path / "sub.csv", tmp_path / "sample.csv", id_column="id")


def test_file_with_inf_and_empty_cell_is_refused(tmp_path):
    pd.DataFrame({"id": [1, 2, 3], "target": 0.5}).to_csv(tmp_path / "sample.csv", index=False)
    (tmp_path / "inf.csv").write_text("id,target\n1,0.1\n2,inf\n3,0.3\n")
    with pytest.raises(SubmissionError, match="column 'target' row 1 is infinite"):
        validate_submission_file(tmp_path / "inf.csv", tmp_path / "sample.csv", id_column="id")
    (tmp_path / "nan.csv").write_text("id,target\n1,0.1\n2,0.2\n3,\n")
    with pytest.raises(SubmissionError, match=r"column 'target' row 2 \(id 3\) is NaN"):
        validate_submission_file(tmp_path / "nan.csv", tmp_path / "sample.csv", id_column="id")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "submission not found: .*sub.csv"),
        ("", r"sub.csv: cannot be read as CSV"),
        ("id,label\n", r"sub.csv: has no rows"),
        (b"\xff\xfe\x00\x81garbage", r"sub.csv: cannot be read as CSV"),
        ("dir", r"submission .*sub.csv is not a file"),
    ],
)
def test_unreadable_submission_file_names_the_path(tmp_path, content, match):
    pd.DataFrame({"id": [1, 2], "label": 0}).to_csv(tmp_path / "sample.csv", index=False)
    path = tmp_path / "sub.csv"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(SubmissionError, match=match):
        validate_submission_file(path, tmp_path / "sample.csv", id_column="id")


def test_missing_sample_file_names_the_path(tmp_path):
    pd.DataFrame({"id": [1, 2], "label": 0}).to_csv(tmp_path / "sub.csv", index=False)
    with pytest.raises(SubmissionError, match="sample submission not found: .*nope.csv"):
        validate_submission_file(tmp_path / "sub.csv", tmp_path / "nope.csv", id_column="id")
