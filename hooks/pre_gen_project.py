"""Validate the answers before anything is generated; a clear message and exit 1 otherwise."""

import re
import sys

ANSWERS = {
    "slug": "{{ cookiecutter.competition_slug }}",
    "package": "{{ cookiecutter.package_name }}",
    "modality": "{{ cookiecutter.modality }}",
    "task": "{{ cookiecutter.task }}",
    "targets": "{{ cookiecutter.target_columns }}",
    "id_column": "{{ cookiecutter.id_column }}",
    "metric": "{{ cookiecutter.metric }}",
    "n_splits": "{{ cookiecutter.n_splits }}",
    "scheme": "{{ cookiecutter.split_scheme }}",
    "group": "{{ cookiecutter.group_column }}",
}

METRICS_FOR = {
    "binary": {"accuracy", "roc_auc", "log_loss", "macro_f1"},
    "multiclass": {"accuracy", "roc_auc", "log_loss", "macro_f1", "qwk"},
    "multilabel": {"accuracy", "roc_auc", "log_loss", "macro_f1"},
    "regression": {"rmse", "mae", "qwk"},
    "segmentation": {"dice", "iou"},
}
SCHEMES_FOR = {
    "binary": {"kfold", "stratified", "group", "stratified_group"},
    "multiclass": {"kfold", "stratified", "group", "stratified_group"},
    "multilabel": {"kfold", "group", "multilabel_stratified"},
    "regression": {"kfold", "group", "quantile"},
    # The folds of a segmentation task split on one discrete column (an empty-mask flag).
    "segmentation": {"kfold", "stratified", "group", "stratified_group"},
}


def problems(a: dict) -> list[str]:
    found = []
    task = a["task"]
    if not re.fullmatch(r"[a-z][a-z0-9-]*", a["slug"]):
        found.append(f"competition_slug '{a['slug']}': use lowercase letters, digits and '-'")
    if not a["package"].isidentifier():
        found.append(f"package_name '{a['package']}' is not a Python identifier")
    if task == "segmentation" and a["modality"] != "image":
        found.append(
            f"modality '{a['modality']}': a segmentation task predicts masks of images; answer "
            "modality 'image' (the generated config then says modality: segmentation)"
        )
    targets = [t.strip() for t in a["targets"].split(",") if t.strip()]
    if not targets:
        found.append("target_columns: name at least one target column")
    if task in ("binary", "multiclass") and len(targets) != 1:
        found.append(f"target_columns: a {task} task has exactly one target column")
    if task == "multilabel" and len(targets) < 2:
        found.append("target_columns: a multilabel task needs two or more target columns")
    if task == "segmentation" and len(targets) != 1:
        found.append(
            "target_columns: a segmentation task has exactly one, the train.csv column the folds "
            f"stratify on (e.g. has_mask, 1 where the mask is not empty); got {targets}"
        )
    if not a["id_column"].strip():
        found.append("id_column: must not be empty")
    if task == "segmentation" and a["metric"] == "custom":
        found.append(
            "metric 'custom': a custom metric scores table columns, and a segmentation task "
            "scores masks; choose dice, iou or default (both, dice first)"
        )
    elif a["metric"] not in ("default", "custom") and a["metric"] not in METRICS_FOR[task]:
        found.append(
            f"metric '{a['metric']}' does not fit a {task} task; "
            f"choose one of {sorted(METRICS_FOR[task])}"
        )
    if not a["n_splits"].isdigit() or int(a["n_splits"]) < 2:
        found.append(f"n_splits '{a['n_splits']}': a whole number >= 2")
    scheme = a["scheme"]
    if scheme != "auto" and scheme not in SCHEMES_FOR[task]:
        found.append(
            f"split_scheme '{scheme}' does not fit a {task} task; "
            f"choose one of {sorted(SCHEMES_FOR[task])} or auto"
        )
    if scheme in ("group", "stratified_group") and not a["group"].strip():
        found.append(f"split_scheme '{scheme}' needs a group_column")
    return found


if __name__ == "__main__":
    errors = problems(ANSWERS)
    if errors:
        sys.stderr.write("medalist template: cannot generate the project:\n")
        sys.stderr.write("".join(f"  - {e}\n" for e in errors))
        sys.exit(1)
