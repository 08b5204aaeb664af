"""The ``medalist`` command: one sub-command per stage, each a thin wrapper over ``run(cfg)``.

Usage: ``medalist <stage> [-c configs/exp001.yaml] [section.key=value ...]``
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler

from medalist.errors import MedalistError

log = logging.getLogger("medalist")

STAGE_HELP = {
    "weights": "fetch and verify the pretrained backbones the config names (models/weights.json)",
    "folds": "split train.csv into folds (folds/folds.csv + folds.json)",
    "pretrain-mlm": "masked-LM pretraining on the competition's text; writes outputs/mlm/<name>/",
    "train": "train every configured fold; writes outputs/<experiment>/",
    "sanity": "leak alarm: train on labels without signal; the CV must be at chance "
    "(outputs/sanity/<experiment>/sanity.json, non-zero exit above chance)",
    "adversarial": "adversarial validation: the experiment's model trained to tell test rows "
    "from train rows; ROC AUC 0.5 is no shift (outputs/adversarial/<experiment>/: "
    "adversarial.json, weights.csv, test_like.csv; exit 0)",
    "sweep": "hyperparameter sweep (sweep.*): each trial an experiment of its own under "
    "outputs/sweep/<name>/, resumable; sweep.json (best values, an optimistic score), best.yaml "
    "and the final run's command",
    "infer": "predict the test set with each trained fold and average",
    "pseudo": "pseudo labels for the test set from teachers' per-fold predictions",
    "distill": "soft targets for a student (distill.teacher): each fold's training rows "
    "predicted by the teacher's model of that fold, never its OOF (outputs/distill/<teacher>/)",
    "submission": "map test predictions onto the sample submission and validate",
    "ensemble": "blend or stack experiments (ensemble.*) with nested CV; writes a submission",
    "ledger": "table of every run and ensemble with CV (and LB scores recorded with --lb)",
    "report": "HTML report: CV per fold, OOF correlations, ensemble weights, diagnostics",
    "package": "the offline Kaggle dataset (wheels, weights, configs) and its inference notebook",
    "submit": "validate a submission, then send it with the official kaggle client",
    "run": "run the configured stages in order, skipping up-to-date ones",
    "config": "print the resolved config (or every key with --describe)",
}

# The module whose ``run`` each stage command calls, imported when the command runs: ``medalist
# --help``, ``config`` and ``validate`` answer without loading torch.
STAGE_MODULES = {
    "weights": "medalist.pretrained.stage",
    "folds": "medalist.folds",
    "pretrain-mlm": "medalist.modalities.mlm",
    "train": "medalist.training.stage",
    "sanity": "medalist.honest.sanity",
    "adversarial": "medalist.honest.adversarial",
    "sweep": "medalist.honest.sweep",
    "infer": "medalist.prediction.infer",
    "pseudo": "medalist.prediction.pseudo",
    "distill": "medalist.prediction.distill",
    "submission": "medalist.submission.stage",
    "ensemble": "medalist.ensemble.stage",
    "package": "medalist.offline.package",
    "submit": "medalist.offline.submit",
    "run": "medalist.pipeline",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medalist", description="Kaggle competition pipeline.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in STAGE_HELP.items():
        stage = sub.add_parser(name, help=text, description=text)
        stage.add_argument(
            "-c", "--config", help="experiment YAML (configs/base.yaml is layered under it)"
        )
        stage.add_argument("overrides", nargs="*", help="section.key=value overrides")
        if name in ("folds", "run"):
            stage.add_argument("--force", action="store_true", help="redo even when up to date")
        if name == "ledger":
            stage.add_argument(
                "--lb",
                nargs=2,
                metavar=("EXPERIMENT", "SCORE"),
                help="record a public leaderboard score for an experiment or ensemble",
            )
            stage.add_argument("--note", default="", help="note stored with --lb")
        if name == "report":
            stage.add_argument(
                "-e", "--experiment", action="append", default=[], help="experiment (repeatable)"
            )
            stage.add_argument("--ensemble", help="an ensemble under outputs/ensemble/")
            stage.add_argument("--out", help="report path (default: outputs/report.html)")
        if name == "config":
            stage.add_argument("--describe", action="store_true", help="list every key with help")
        if name == "submit":
            stage.add_argument("--file", help="submission CSV (default: the packaged one's)")
            stage.add_argument("-m", "--message", help="default: experiment name and CV")
            stage.add_argument(
                "--kernel-version", type=int, help="code competition: the notebook version"
            )
    validate = sub.add_parser("validate", help="validate a submission file against the sample")
    validate.add_argument("submission")
    validate.add_argument("-c", "--config")
    validate.add_argument("overrides", nargs="*")
    demo = sub.add_parser("demo", help="build a built-in demo competition and run it end to end")
    demo.add_argument(
        "name",
        nargs="?",
        default="all",
        choices=["all", "digits", "text", "tabular", "segmentation"],
        help="digits (image), text, tabular, segmentation, or all: each, one after the other "
        "(default)",
    )
    demo.add_argument("--workdir", default=".demo", help="where the demo project is generated")
    return parser


def _setup_logging(verbose: bool) -> None:
    # Logs go to stderr (stdout stays for what a command prints); wide lines in files and CI.
    console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
    )
    for noisy in ("accelerate", "timm", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_demos(name: str, workdir: str) -> dict:
    """``medalist demo``: ``digits`` (image), ``text``, ``tabular``, ``segmentation``, or
    ``all``: each, one after the other."""
    from medalist.demo.digits import run_digits_demo
    from medalist.demo.segmentation import run_segmentation_demo
    from medalist.demo.tabular import run_tabular_demo
    from medalist.demo.text import run_text_demo

    demos = {
        "digits": run_digits_demo,
        "text": run_text_demo,
        "tabular": run_tabular_demo,
        "segmentation": run_segmentation_demo,
    }
    if name == "all":
        return {demo: run(workdir) for demo, run in demos.items()}
    return demos[name](workdir)


def dispatch(args: argparse.Namespace) -> object:
    from medalist.config import describe, resolve_config

    if args.command == "demo":
        return run_demos(args.name, args.workdir)
    if args.command == "config" and args.describe:
        sys.stdout.write(describe())
        return None
    cfg = resolve_config(args.config, args.overrides)
    if args.command == "config":
        sys.stdout.write(cfg.to_yaml())
        return cfg
    if args.command == "validate":
        from medalist.layout import sample_path
        from medalist.submission.format import validate_submission_file
        from medalist.tasks import own_task

        task = own_task(cfg)
        if task is not None:  # masks: their RLE checked against the test images
            task.own_predictions.validate_file(cfg, args.submission)
        else:
            validate_submission_file(
                args.submission, sample_path(cfg), id_column=cfg.competition.id_column
            )
        log.info("%s is a valid submission", args.submission)
        return None
    if args.command == "ledger":
        from medalist.reporting.ledger_view import record_lb, show

        if args.lb:
            record_lb(cfg.competition.outputs_dir, *args.lb, args.note)
        return show(cfg.competition.outputs_dir)
    if args.command == "report":
        from medalist.reporting.report import write_report

        experiments = args.experiment or list(cfg.ensemble.experiments)
        if not experiments and not args.ensemble:
            experiments = [cfg.train.experiment]
        return write_report(
            cfg.competition.outputs_dir, experiments, args.ensemble, cfg=cfg, path=args.out
        )
    run = importlib.import_module(STAGE_MODULES[args.command]).run
    if args.command in ("folds", "run"):
        return run(cfg, force=args.force)
    if args.command == "ensemble":
        return run(cfg, cfg.ensemble)
    if args.command == "submit":
        return run(cfg, args.file, args.message, args.kernel_version)
    if args.command == "sweep":
        return run(cfg, config_path=args.config, overrides=args.overrides)
    return run(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    # key=value overrides may come before and after the options (argparse stops at the first).
    stray = [item for item in rest if item.startswith("-") or "=" not in item]
    if stray or (rest and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or rest)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    _setup_logging(args.verbose)
    try:
        dispatch(args)
    except MedalistError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
