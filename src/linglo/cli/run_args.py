"""Flags shared by every task, in timm's spelling; defaults come from the engine (shown in --help).

Every flag is declared with default=SUPPRESS so the parsed namespace holds only what the user typed;
the engine merges it over the config file, the checkpoint's config and the defaults.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping

from linglo.models.names import parse_kwargs

S = argparse.SUPPRESS


class ParseKwargs(argparse.Action):
    """`--model-kwargs window=3 token_mixer=softmax` -> {"window": 3, "token_mixer": "softmax"} (timm's spelling)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, parse_kwargs(values, option_string))


def add_run_args(p: argparse.ArgumentParser, command: str, d: Mapping[str, Any]) -> None:
    """Common flags of `command` (train, eval, predict, demo); `d` = the resolved defaults."""
    g = p.add_argument_group("run")
    if command in ("train", "demo"):
        g.add_argument("--model", default=S, help=f"any timm model name, LinGlo or a peer (default: {d['model']})")
        g.add_argument("--model-kwargs", nargs="+", action=ParseKwargs, default=S, metavar="KEY=VALUE",
                       help="extra timm.create_model arguments, e.g. --model-kwargs token_mixer=softmax window=3 "
                            "(kept in the checkpoint, so eval/predict/resume rebuild the same model)")
    if command == "train":
        g.add_argument("--eval-interval", type=int, default=S, metavar="N",
                       help=f"evaluate every N epochs and after the last; best.pt is the best evaluated epoch "
                            f"(default: {d['eval_interval']})")
        g.add_argument("--data", default=S, help="dataset folder or built-in name ('default': the embedded "
                                                 "object/person set)")
    if command in ("eval", "predict"):
        g.add_argument("--checkpoint", default=S, help="checkpoint to load (e.g. runs/x/best.pt)")
        g.add_argument("--model", default=S, help="must match the checkpoint's model (default: the checkpoint's)")
        g.add_argument("--use-ema", action="store_true", default=S, help="use the checkpoint's EMA weights")
    if command == "predict":
        g.add_argument("--no-fuse", dest="fuse", action="store_false", default=True,
                       help="run the model as trained instead of folded for inference (linglo.fuse: BatchNorm and "
                            "layer scale folded into convs; same predictions, faster)")
    if command == "eval":
        g.add_argument("--data", default=S, help="dataset folder or built-in name; its val split is evaluated "
                                                 "(default: the checkpoint's training data)")
    if command in ("train", "demo"):
        g.add_argument("--epochs", type=int, default=S, help=f"(default: {d['epochs']})")
    g.add_argument("--batch-size", "-b", type=int, default=S, help=f"images per process (default: {d['batch_size']})")
    g.add_argument("--img-size", type=int, default=S,
                   help=f"input size in pixels: classification the square crop, detection the shorter side, "
                        f"segmentation the training crop and the eval shorter side (default: {d['img_size']})")
    if command in ("train", "demo"):
        g.add_argument("--lr", type=float, default=S,
                       help=f"peak learning rate (default: {d['lr_base']:g} x global batch / {d['lr_base_size']})")
    out_help = {"train": "run folder (default: runs/<task>-<model>)",
                "demo": "run folder (default: the first free runs/demo, runs/demo-2, ...)",
                "eval": "folder for eval.json and figures (default: eval-<checkpoint name> next to the "
                        "checkpoint)",
                "predict": "folder for predictions.json (default: print only)"}[command]
    g.add_argument("--output", "-o", default=S, help=out_help)
    if command == "train":
        g.add_argument("--resume", nargs="?", const="auto", default=S, metavar="CHECKPOINT",
                       help="continue a run: from CHECKPOINT, or without a value from OUTPUT/last.pt; "
                            "the metrics after resuming match an uninterrupted run's (same seed). The recipe "
                            "stays the checkpoint's: only --epochs (the lr schedule is re-planned for the new "
                            "length), --eval-interval, --workers, --device, --amp, --channels-last and the data's "
                            "location may change, other "
                            "changed flags are refused. With another --output, the run continues there "
                            "(the checkpoint and the best one so far are copied in first)")
        g.add_argument("--overwrite", action="store_true", default=S,
                       help="replace an earlier run in --output (otherwise a run there is never overwritten)")
    g.add_argument("--device", default=S, help=f"auto, cpu, cuda or cuda:N (default: {d['device']})")
    g.add_argument("--workers", "-j", type=int, default=S,
                   help="data loading processes. Augmentation draws are keyed by seed, epoch and image, so a --seed "
                        f"repeats a run whatever --workers is (default: {d['workers']})")
    if command in ("train", "demo"):
        g.add_argument("--seed", type=int, default=S, help=f"(default: {d['seed']})")
    g.add_argument("--amp", choices=("auto", "none", "bf16", "fp16"), default=S,
                   help="mixed precision; auto = bf16 on GPU (fp16 without bf16), none on CPU (default: auto)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=S,
                   help="model and batches in channels_last (NHWC) memory format: faster convolutions on CPU and "
                        f"GPU for most models (default: {'on' if d['channels_last'] else 'off'})")
    if command != "demo":
        g.add_argument("--config", default=S, metavar="FILE",
                       help="YAML/JSON file setting any flag by name (batch-size or batch_size), or a shipped "
                            "recipe: 'imagenette' (128 px, 20 epochs); flags typed on the command line win over it")
    if command == "train":
        add_optim_args(p, d)


def add_optim_args(p: argparse.ArgumentParser, d: Mapping[str, Any]) -> None:
    g = p.add_argument_group("optimization (defaults: the DeiT/timm recipe)")
    g.add_argument("--opt", choices=("adamw", "adam", "lamb", "sgd"), default=S, help=f"(default: {d['opt']})")
    g.add_argument("--weight-decay", type=float, default=S,
                   help=f"not applied to norms, biases and model.no_weight_decay() (default: {d['weight_decay']})")
    g.add_argument("--opt-eps", type=float, default=S, help=f"(default: {d['opt_eps']})")
    g.add_argument("--momentum", type=float, default=S, help=f"sgd only (default: {d['momentum']})")
    g.add_argument("--lr-base", type=float, default=S, help=f"lr per --lr-base-size images when --lr is not given "
                                                           f"(default: {d['lr_base']})")
    g.add_argument("--lr-base-size", type=int, default=S, help=f"(default: {d['lr_base_size']})")
    g.add_argument("--sched", choices=("cosine", "tanh", "poly", "step", "multistep"), default=S,
                   help=f"lr schedule, updated every step (default: {d['sched']})")
    g.add_argument("--warmup-epochs", type=int, default=S, help=f"(default: {d['warmup_epochs']})")
    g.add_argument("--warmup-lr", type=float, default=S, help=f"(default: {d['warmup_lr']})")
    g.add_argument("--min-lr", type=float, default=S, help=f"(default: {d['min_lr']})")
    g.add_argument("--clip-grad", type=float, default=S, help="max gradient norm (default: no clipping)")
    g.add_argument("--ema", action=argparse.BooleanOptionalAction, default=S,
                   help=f"keep an EMA of the weights, evaluated every epoch (default: {'on' if d['ema'] else 'off'})")
    g.add_argument("--ema-decay", type=float, default=S, help=f"(default: {d['ema_decay']}, with warmup)")
