"""Label smoothing reaches hard labels exactly once, soft labels never, on every path.

eps = 0.1 throughout, so a hard label's target is, by hand: multiclass (3 classes) 0.1 / 3 off
the class and 0.9 + 0.1 / 3 on it; each sigmoid output 0.05 for a 0 and 0.95 for a 1.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from medalist.cli import main
from medalist.config import resolve_config
from medalist.config.tricks import LossConfig
from medalist.data import read_test, read_train
from medalist.demo.digits import working_directory
from medalist.prediction.pseudo import folds_hash
from medalist.tasks import Task, build_task
from medalist.training.hooks import Hook
from medalist.tricks.losses import Criterion
from medalist.tricks.mix import mix_targets

EPS = 0.1
OFF, ON = EPS / 3, 1 - EPS + EPS / 3


def task_of(task_type: str) -> Task:
    columns = ["a", "b", "c"] if task_type == "multilabel" else ["y"]
    classes = [0, 1, 2] if task_type == "multiclass" else [0, 1]
    return Task(task_type, columns, classes=classes if task_type != "multilabel" else [])


def hard_case(task_type: str):
    """Hard labels as training holds them (integers) and their smoothed targets, by hand."""
    if task_type == "multiclass":
        labels = torch.tensor([0, 2, 1, 2])
        smoothed = torch.tensor([[ON, OFF, OFF], [OFF, OFF, ON], [OFF, ON, OFF], [OFF, OFF, ON]])
    elif task_type == "binary":
        labels = torch.tensor([1, 0, 0, 1])
        smoothed = torch.tensor([0.95, 0.05, 0.05, 0.95])
    else:
        labels = torch.tensor([[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
        smoothed = torch.tensor([[0.95, 0.05, 0.95], [0.05, 0.05, 0.95]])
        smoothed = torch.cat([smoothed, torch.tensor([[0.95, 0.95, 0.05], [0.05, 0.95, 0.05]])])
    return labels, smoothed


def soft_case(task_type: str) -> torch.Tensor:
    """Soft labels (a teacher's probabilities): floats, never smoothed."""
    generator = torch.Generator().manual_seed(1)
    if task_type == "multiclass":
        return torch.rand(4, 3, generator=generator).softmax(-1)
    shape = (4,) if task_type == "binary" else (4, 3)
    return torch.rand(shape, generator=generator)


def reference_loss(task_type: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The task's loss with ``target`` taken as the probabilities it is."""
    if task_type == "multiclass":
        return -(target * logits.log_softmax(-1)).sum(-1)
    if task_type == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)


def logits_of(task_type: str) -> torch.Tensor:
    outputs = {"multiclass": 3, "binary": 1, "multilabel": 3}[task_type]
    return torch.randn(4, outputs, generator=torch.Generator().manual_seed(2))


TASKS = ["multiclass", "binary", "multilabel"]


@pytest.mark.parametrize("task_type", TASKS)
def test_criterion_smooths_hard_labels_and_leaves_soft_ones(task_type):
    criterion = Criterion(task_of(task_type), LossConfig(label_smoothing=EPS))
    logits = logits_of(task_type)
    labels, smoothed = hard_case(task_type)
    hard = criterion(logits, labels)
    assert torch.allclose(hard, reference_loss(task_type, logits, smoothed), atol=1e-6)
    soft = soft_case(task_type)
    assert torch.allclose(criterion(logits, soft), reference_loss(task_type, logits, soft))
    if task_type == "multiclass":  # torch's own smoothing agrees with the hand-made target
        expected = F.cross_entropy(logits, labels, label_smoothing=EPS, reduction="none")
        assert torch.allclose(hard, expected, atol=1e-6)


@pytest.mark.parametrize("task_type", TASKS)
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_mixed_targets_are_smoothed_once(task_type, kind):
    """mixup smooths hard labels before mixing; the loss takes the mix as it is."""
    lam = 0.3
    labels, smoothed = hard_case(task_type)
    target, wanted = (labels, smoothed) if kind == "hard" else (soft_case(task_type),) * 2
    mixed = mix_targets(task_of(task_type), target, lam, EPS)
    assert torch.allclose(mixed, lam * wanted + (1 - lam) * wanted.flip(0), atol=1e-6)
    criterion = Criterion(task_of(task_type), LossConfig(label_smoothing=EPS))
    logits = logits_of(task_type)
    assert torch.allclose(criterion(logits, mixed), reference_loss(task_type, logits, mixed))


@pytest.mark.parametrize("task_type", TASKS)
def test_training_targets_hard_until_a_pseudo_round_smooths_them(task_type):
    """Labelled rows stay hard (integers, multilabel 0/1 included) in a plain run; in a pseudo
    round they become their smoothed probabilities, as hard pseudo labels do."""
    from medalist.prediction.pseudo import as_hard, hard_labels
    from medalist.training.stage import _smoothed, _train_targets

    task = task_of(task_type)
    labels, smoothed = hard_case(task_type)
    stored = labels.numpy() if task_type != "multilabel" else labels.numpy().astype(np.float32)
    plain = resolve_config(overrides=[f"tricks.loss.label_smoothing={EPS}"])
    held = _train_targets(plain, task, stored)
    assert held.dtype == np.int64 and (held == labels.numpy()).all()
    student = plain.model_copy(update={"train": plain.train.model_copy(update={"pseudo_round": 1})})
    got = _train_targets(student, task, stored)
    assert got.dtype == np.float32 and np.allclose(got, smoothed.numpy(), atol=1e-6)
    # Hard pseudo labels as the pseudo stage writes them (one-hot / 0-1 floats), read back.
    written = hard_labels(task_type, smoothed.numpy().reshape(len(labels), -1))
    written = written[:, 0] if task_type == "binary" else written
    assert np.allclose(_smoothed(student, task, as_hard(task_type, written)), smoothed.numpy())


# ---------------------------------------------------------------------------------------------
# End to end: the targets and losses a student's loss sees, labelled and pseudo-labelled rows


class Recorder(Hook):
    """Keeps every training batch's rows as the loss saw them (the hook runs after the loss)."""

    batches: list[dict] = []

    def per_sample_loss(self, state, batch, outputs, losses):
        row = {k: batch[k].detach().clone() for k in ("index", "target", "weight") if k in batch}
        row.update(outputs=outputs.detach().float(), losses=losses.detach().clone())
        row["lam"] = batch.get("mix_lam", 1.0)
        Recorder.batches.append(row)
        return losses


PSEUDO_WEIGHT = 0.5  # tells pseudo-labelled rows (0.5) from labelled ones (1.0)


@pytest.fixture(scope="module")
def project(tiny_template, tmp_path_factory):
    """Folds, a teacher's fold-0 test predictions (written as a notebook would) and pseudo
    rounds 1 (soft) and 2 (hard) made from them."""
    root = tmp_path_factory.mktemp("smoothing") / "digits"
    shutil.copytree(tiny_template, root)
    with working_directory(root):
        assert main(["folds", "-c", "configs/tiny.yaml"]) == 0
        cfg = resolve_config("configs/tiny.yaml")
        task = build_task(cfg, read_train(cfg))
        teacher = root / "outputs" / "teacher"
        (teacher / "fold0").mkdir(parents=True)
        info = {"type": task.type, "classes": task.classes, "pred_columns": task.pred_columns}
        info["folds_sha256"] = folds_hash(cfg)
        (teacher / "task.json").write_text(json.dumps(info))
        test = read_test(cfg)
        probs = np.random.default_rng(0).dirichlet(np.ones(task.num_outputs), len(test))
        table = pd.DataFrame(probs.astype(np.float32), columns=task.pred_columns)
        table.insert(0, "id", test["id"].to_numpy())
        table.to_parquet(teacher / "fold0" / "test.parquet", index=False)
        for round_, mode in ((1, "soft"), (2, "hard")):
            args = ["pseudo", "-c", "configs/tiny.yaml", "pseudo.teachers=[teacher]"]
            args += [
                f"pseudo.round={round_}",
                f"pseudo.mode={mode}",
                f"pseudo.weight={PSEUDO_WEIGHT}",
            ]
            assert main(args) == 0
    return root


def smoothed_one_hot(labels: np.ndarray, classes: int) -> np.ndarray:
    return np.eye(classes)[labels] * (1 - EPS) + EPS / classes


@pytest.mark.parametrize(
    ("labels", "mix"),
    [("none", False), ("none", True), ("soft", False), ("soft", True), ("hard", True)],
)
def test_student_loss_sees_each_row_smoothed_once(project, labels, mix):
    from medalist.training.stage import run as train

    overrides = [
        "train.folds=[0]",
        "train.epochs=1",
        f"train.experiment=student_{labels}_{mix}",
        f"tricks.loss.label_smoothing={EPS}",
        "tricks.custom=[{name: 'test_smoothing:Recorder'}]",
    ]
    if labels != "none":
        overrides.append(f"train.pseudo_round={1 if labels == 'soft' else 2}")
    if mix:
        overrides += ["tricks.mix.enabled=true", "tricks.mix.mixup_alpha=0.4"]
    Recorder.batches.clear()
    with working_directory(project):
        cfg = resolve_config("configs/tiny.yaml", overrides)
        train(cfg)
        train_csv = read_train(cfg)
        task = build_task(cfg, train_csv)
        folds = pd.read_csv("folds/folds.csv")
        pseudo = None
        if labels != "none":
            pseudo = pd.read_parquet(f"outputs/pseudo/{cfg.train.pseudo_round}/fold0.parquet")
    classes = task.num_outputs
    hard = task.encode_targets(train_csv)[folds["fold"].to_numpy() != 0]
    # Per source, every row's target by hand: labelled rows smoothed; pseudo rows as the round
    # wrote them when soft, smoothed when hard.
    by_source = {1.0: smoothed_one_hot(hard, classes)}
    if pseudo is not None:
        probs = pseudo[task.pred_columns].to_numpy(dtype=np.float64)
        by_source[PSEUDO_WEIGHT] = (
            probs if labels == "soft" else smoothed_one_hot(probs.argmax(1), classes)
        )
    seen = {1.0: 0, PSEUDO_WEIGHT: 0}
    assert Recorder.batches
    for batch in Recorder.batches:
        weight = batch.get("weight", torch.ones(len(batch["index"])))
        rows = [by_source[float(w)][int(i)] for i, w in zip(batch["index"], weight, strict=True)]
        for w in weight.tolist():
            seen[w] += 1
        own = torch.tensor(np.stack(rows), dtype=torch.float32)
        wanted = batch["lam"] * own + (1 - batch["lam"]) * own.flip(0)
        target = batch["target"]
        if not target.is_floating_point():  # hard labels, smoothed by the loss itself
            assert not mix and labels == "none"
            assert torch.equal(target, torch.as_tensor(hard)[batch["index"]])
        else:
            assert torch.allclose(target, wanted, atol=1e-6)
        loss = weight * -(wanted * batch["outputs"].log_softmax(-1)).sum(-1)
        assert torch.allclose(batch["losses"], loss, atol=1e-5)
    assert seen[1.0] == len(hard)
    assert seen[PSEUDO_WEIGHT] == (0 if pseudo is None else len(pseudo))
