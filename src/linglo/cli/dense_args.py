"""Flags of the detect and segment tasks; registered in main.TASK_ARGS."""
from __future__ import annotations

import argparse
from typing import Any, Mapping

S = argparse.SUPPRESS

DETECT_DATA = ("data: --data ROOT in the COCO layout (ROOT/{train2017,val2017}/ + "
               "ROOT/annotations/instances_{train2017,val2017}.json), or explicit --train-images DIR "
               "--train-ann FILE --val-images DIR --val-ann FILE (each overrides the layout). --img-size is "
               "the shorter image side. Boxes reaching outside their image are clipped and zero-area boxes "
               "dropped (both counted in the log and summary.json); unknown category ids, missing images and "
               "masks that do not fit stop the run, naming the file.")
SEGMENT_DATA = ("data: --data ROOT in the ADE20K layout (ROOT/images/{training,validation}/ + "
                "ROOT/annotations/{training,validation}/*.png, label 0 = ignore, 1..--num-classes) or the "
                "COCO-semseg layout (ROOT/images/{train2017,val2017}/ + ROOT/masks/{train2017,val2017}/ with "
                "ROOT/classes.yaml mapping ids to names), or explicit --train-images DIR --train-masks DIR "
                "--val-images DIR --val-masks DIR. Masks pair with images by file name; images without a mask "
                "are skipped (counted). --img-size is the training crop and the evaluation shorter side. "
                "A mask of another size than its image, or a label value that is not a class, stops the run "
                "naming the file.")


def _paths(g, command: str, labels: str) -> None:
    splits = ("train", "val") if command == "train" else ("val",) if command == "eval" else ()
    for split in splits:
        g.add_argument(f"--{split}-images", default=S, metavar="DIR", help=f"{split} images folder")
        g.add_argument(f"--{split}-{labels}", default=S, metavar="FILE" if labels == "ann" else "DIR",
                       help=f"{split} {'COCO instances json' if labels == 'ann' else 'PNG label folder'}")


def _common(g, command: str, d: Mapping[str, Any]) -> None:
    if command == "train":
        g.add_argument("--drop-path", type=float, default=S,
                       help=f"backbone stochastic depth (default: {d['drop_path']})")
        g.add_argument("--backbone-weights", default=S, metavar="FILE",
                       help="initialise the backbone from a local checkpoint of the same model, e.g. a "
                            "`linglo train classify` best.pt (its classifier is dropped)")
        auto = d["frozen_bn"] is None   # detect: torchvision's conventions follow --backbone-weights
        g.add_argument("--frozen-bn", action=argparse.BooleanOptionalAction, default=S,
                       help="backbone BatchNorms frozen (FrozenBatchNorm2d: statistics and affine fixed) (default: "
                            + ("on with --backbone-weights, else off, as torchvision)" if auto
                               else f"{'on' if d['frozen_bn'] else 'off'})"))
        g.add_argument("--trainable-stages", type=int, default=S, metavar="N",
                       help="train only the last N feature stages of the backbone (timm's feature_info: 4 for "
                            "LinGlo); the stem and earlier stages are frozen, their BatchNorms too (default: all"
                            + (", 3 with --backbone-weights as torchvision's trainable_layers)" if auto else ")"))


def add_detect_args(p: argparse.ArgumentParser, command: str, d: Mapping[str, Any]) -> None:
    g = p.add_argument_group("detect", DETECT_DATA if command in ("train", "eval") else None)
    if command == "train":
        g.add_argument("--arch", choices=("retinanet", "maskrcnn"), default=S,
                       help=f"torchvision detector on the backbone + FPN (default: {d['arch']})")
        g.add_argument("--fpn-channels", type=int, default=S,
                       help=f"FPN and head width; 256 = torchvision's heads (default: {d['fpn_channels']})")
    g.add_argument("--max-size", type=int, default=S, help=f"longer image side at most (default: {d['max_size']})")
    _common(g, command, d)
    _paths(g, command, "ann")
    if command == "predict":
        g.add_argument("--score-thresh", type=float, default=S,
                       help=f"detections drawn and written (default: {d['score_thresh']})")


def add_segment_args(p: argparse.ArgumentParser, command: str, d: Mapping[str, Any]) -> None:
    g = p.add_argument_group("segment", SEGMENT_DATA if command in ("train", "eval") else None)
    if command == "train":
        g.add_argument("--head", choices=("fpn", "upernet"), default=S,
                       help=f"Semantic FPN or UPerNet (with its auxiliary head); default {d['head']}. "
                            "UPerNet 160k recipe: --head upernet --epochs 127 --lr-base 6e-5 --weight-decay 0.01")
        g.add_argument("--head-channels", type=int, default=S,
                       help="head width (default: the recipe's, fpn 256 / upernet 512)")
    if command in ("train", "eval"):
        g.add_argument("--num-classes", type=int, default=S,
                       help=f"classes when there is no class file: raw labels 1..N (default: {d['num_classes']})")
        g.add_argument("--classes", default=S, metavar="FILE",
                       help="YAML `classes: {id: name}` mapping raw label ids (default: ROOT/classes.yaml if present)")
    g.add_argument("--eval-mode", choices=("whole", "slide"), default=S,
                   help=f"inference on the whole resized image or in --img-size windows (default: {d['eval_mode']})")
    g.add_argument("--slide-stride", type=int, default=S, help="window stride for --eval-mode slide "
                                                             "(default: 2/3 of --img-size)")
    _common(g, command, d)
    _paths(g, command, "masks")


TASK_ARGS = {"detect": add_detect_args, "segment": add_segment_args}
