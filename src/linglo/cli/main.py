"""`linglo` entry point: parse, call the engine, turn a LingloError into "error: ..." and exit 2.

    linglo train   [TASK] --data DIR|default --model NAME [flags]   train or resume a run
    linglo eval    [TASK] --checkpoint FILE [--data DIR]            metrics of a checkpoint
    linglo predict [TASK] --checkpoint FILE IMAGE|DIR ...           labels (boxes, masks) of images
    linglo demo    [flags]                                          small LinGlo on the embedded set
    linglo models                                                   the LinGlo family table

TASK (classify, the default) must come right after the command. Each task adds its own flags
through TASK_ARGS; a parser is built for the one task named on the command line, so tasks never
clash over flag names.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Mapping, Sequence

from linglo.cli import classify_args, dense_args, deploy_args
from linglo.cli.config_file import load_config_file
from linglo.cli.run_args import add_run_args
from linglo.errors import LingloError

# Task name -> function(parser, command, defaults) adding that task's flags for `command`
# (train / eval / predict / demo). To add tasks, register their module here with one line, e.g. the
# dense tasks: `from linglo.cli import dense_args` above and `TASK_ARGS.update(dense_args.TASK_ARGS)`
# below, where dense_args.TASK_ARGS = {"detect": add_detect_args, "segment": add_segment_args}.
TASK_ARGS: dict[str, Callable[[argparse.ArgumentParser, str, Mapping[str, Any]], None]] = {
    "classify": classify_args.add_args,
}
TASK_ARGS.update(dense_args.TASK_ARGS)
TASK_COMMANDS = ("train", "eval", "predict")
DESCRIPTION = ("LinGlo: hybrid convolution + key-only attention backbones (linear cost, local-global "
               "mixing in every stage). Train, evaluate and run any timm model, LinGlo or a peer.")


def _defaults(task: str) -> dict[str, Any]:
    from linglo.engine.config import known_defaults
    from linglo.tasks import get_task
    return known_defaults(get_task(task).defaults)


def _command_parser(sub, command: str, task: str, help_text: str) -> argparse.ArgumentParser:
    tasks = "|".join(TASK_ARGS)
    usage = {"train": f"linglo train [{tasks}] [options]", "eval": f"linglo eval [{tasks}] --checkpoint FILE [options]",
             "predict": f"linglo predict [{tasks}] --checkpoint FILE [options] IMAGE_OR_FOLDER [...]",
             "demo": "linglo demo [options]"}[command]
    epilog = (f"task: {task} (put another task right after '{command}', e.g. 'linglo {command} "
              f"{next(iter(t for t in TASK_ARGS if t != task), task)} --help'). "
              + (classify_args.DATA_HELP if task == "classify" else "")) if command in TASK_COMMANDS else None
    p = sub.add_parser(command, help=help_text, description=help_text, usage=usage, epilog=epilog)
    d = _defaults(task)
    if command in ("eval", "predict"):   # every setting but --topk comes from the checkpoint's config
        d = {k: v if k == "topk" else "the checkpoint's" for k, v in d.items()}
    if command == "demo":   # show the demo's own recipe, not the ImageNet one
        from linglo.tasks.classify.task import DEMO_CONFIG
        d = {**d, **{k.replace("-", "_"): v for k, v in DEMO_CONFIG.items()}}
    add_run_args(p, command, d)
    TASK_ARGS[task](p, command, d)
    if command == "predict":
        p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files and/or folders of images")
    return p


def build_parser(task: str = "classify") -> argparse.ArgumentParser:
    """The whole command line, with the flags of `task` on train/eval/predict."""
    parser = argparse.ArgumentParser(prog="linglo", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command_parser(sub, "train", task, "train (or --resume) a model; writes checkpoints, metrics.csv, "
                                        "summary.json and plots to --output. Several processes (DDP: gloo "
                                        "on CPU, nccl on GPU): torchrun --nproc_per_node N -m linglo.cli "
                                        "train ...")
    _command_parser(sub, "eval", task, "evaluate a checkpoint on a val split")
    _command_parser(sub, "predict", task, "predict image files or folders with a checkpoint")
    _command_parser(sub, "demo", "classify", "train a small LinGlo on the embedded dataset (a few minutes on "
                                             "2 CPU cores), evaluate it, print the table and write the plots")
    sub.add_parser("models", help="table of the LinGlo family (params, GMACs, feature channels)",
                   description="table of the LinGlo family (params, GMACs, feature channels)")
    deploy_args.register(sub)   # bench, export
    return parser


def split_task(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Take the task name out of argv when it directly follows train/eval/predict."""
    argv = list(argv)
    if len(argv) >= 2 and argv[0] in TASK_COMMANDS and argv[1] in TASK_ARGS:
        return argv[1], argv[:1] + argv[2:]
    return "classify", argv


def show_models() -> None:
    from rich.console import Console
    from rich.table import Table
    try:
        from linglo.models import describe_family
    except ImportError as e:
        raise LingloError(f"the model family table is not available in this build ({e})") from e
    rows = describe_family()
    table = Table(title="LinGlo family")
    for col in rows[0]:
        table.add_column(str(col), justify="left" if col in ("model", "name") else "right")
    for row in rows:
        table.add_row(*(f"{v:.3g}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


def run(argv: Sequence[str]) -> int:
    task, argv = split_task(argv)
    args = vars(build_parser(task).parse_args(argv))
    command = args.pop("command")
    if command == "models":
        show_models()
        return 0
    if command in deploy_args.COMMANDS:
        return deploy_args.run(command, args)
    import linglo  # noqa: F401  registers the LinGlo models with timm
    from linglo import engine
    from linglo.engine.demo import run_demo

    file_cfg = load_config_file(args.pop("config")) if "config" in args else {}
    if command == "train":
        engine.train(task, file_cfg=file_cfg, cli_cfg=args)
    elif command == "eval":
        engine.evaluate(task, file_cfg=file_cfg, cli_cfg=args)
    elif command == "predict":
        engine.predict(task, args.pop("inputs"), fuse=args.pop("fuse"), file_cfg=file_cfg, cli_cfg=args)
    elif command == "demo":
        run_demo(args)
    return 0


def one_line(e: LingloError) -> str:
    """The error's own message: an error raised in a DataLoader worker arrives wrapped in "Caught LingloError in
    DataLoader worker process N. Original Traceback ..."; keep only the original message after its type name."""
    text = str(e)
    if "\n" in text:
        marker = f"{type(e).__name__}: "
        text = text.rsplit(marker, 1)[-1] if marker in text else text
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (2 for bad input, 130 when interrupted)."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except LingloError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # a write that no up-front check foresaw (disk full, permissions changed mid-run)
        print(f"error: {e.strerror or e}" + (f": '{e.filename}'" if e.filename else ""), file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, message already printed)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except KeyboardInterrupt as e:  # a training run says what its folder holds and how to resume it
        print(str(e) or "interrupted (continue a training run with: linglo train --resume --output RUN_DIR)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
