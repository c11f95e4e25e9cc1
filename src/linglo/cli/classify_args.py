"""Flags of the classify task (timm spelling); registered in main.TASK_ARGS."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

S = argparse.SUPPRESS


def add_args(p: argparse.ArgumentParser, command: str, d: Mapping[str, Any]) -> None:
    g = p.add_argument_group("classify")
    if command in ("train", "demo"):
        g.add_argument("--scale", type=float, nargs=2, default=S, metavar=("MIN", "MAX"),
                       help=f"random-resized-crop area range (default: {' '.join(map(str, d['scale']))})")
        g.add_argument("--aa", default=S, help=f"timm auto-augment spec, 'none' = off (default: {d['aa']})")
        g.add_argument("--color-jitter", type=float, default=S,
                       help=f"used only when --aa is off (default: {d['color_jitter']})")
        g.add_argument("--reprob", type=float, default=S, help=f"random erasing probability (default: {d['reprob']})")
        g.add_argument("--remode", choices=("pixel", "rand", "const"), default=S,
                       help=f"random erasing mode (default: {d['remode']})")
        g.add_argument("--mixup", type=float, default=S, help=f"mixup alpha, 0 = off (default: {d['mixup']})")
        g.add_argument("--cutmix", type=float, default=S, help=f"cutmix alpha, 0 = off (default: {d['cutmix']})")
        g.add_argument("--mixup-prob", type=float, default=S, help=f"(default: {d['mixup_prob']})")
        g.add_argument("--mixup-switch-prob", type=float, default=S, help=f"(default: {d['mixup_switch_prob']})")
        g.add_argument("--smoothing", type=float, default=S, help=f"label smoothing (default: {d['smoothing']})")
        g.add_argument("--drop-path", type=float, default=S, help=f"stochastic depth rate (default: {d['drop_path']})")
    if command in ("train", "demo", "eval"):
        g.add_argument("--data-cache", choices=("auto", "memory", "off"), default=S,
                       help="memory: decode every image once into uint8 memory and augment whole batches as tensors "
                            "on the training device (no per-epoch JPEG decoding; random-resized crop, flip, colour "
                            "jitter, erasing, mixup; not RandAugment); off: PIL transforms per image in loader "
                            f"workers; auto: memory when --aa is none and the data fits (default: {d['data_cache']})")
    g.add_argument("--interpolation", choices=("bicubic", "bilinear", "nearest"), default=S,
                   help="resize interpolation (default: the model's pretrained_cfg; LinGlo: bicubic)")
    g.add_argument("--crop-pct", type=float, default=S,
                   help="eval center-crop fraction (default: the model's pretrained_cfg; LinGlo: 0.9)")
    g.add_argument("--mean", type=float, nargs=3, default=S, metavar=("R", "G", "B"),
                   help="normalisation mean (default: the model's pretrained_cfg; LinGlo: ImageNet's)")
    g.add_argument("--std", type=float, nargs=3, default=S, metavar=("R", "G", "B"),
                   help="normalisation std (default: the model's pretrained_cfg; LinGlo: ImageNet's)")
    if command == "predict":
        g.add_argument("--topk", type=int, default=S, help=f"labels shown per image (default: {d['topk']})")


DATA_HELP = ("classify data: ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (or a built-in name). "
             "Unreadable or corrupt images are skipped: counted and named in the log and in "
             "summary.json (train/eval), marked 'unreadable' in the results (predict).")
