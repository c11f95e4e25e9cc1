"""Which local files a dense run reads: each split of its dataset (a standard layout under --data ROOT,
or explicit paths), the class file, and the backbone weights.

COCO (detection):     ROOT/{train2017,val2017}/ + ROOT/annotations/instances_{train2017,val2017}.json
ADE20K (segmentation): ROOT/images/{training,validation}/ + ROOT/annotations/{training,validation}/
COCO-semseg:           ROOT/images/{train2017,val2017}/ + ROOT/masks/{train2017,val2017}/ (+ classes.yaml)
Explicit flags (--train-images, --train-ann / --train-masks, --val-…) override the layout per split.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from linglo.errors import LingloError

COCO_SPLITS = {"train": "train2017", "val": "val2017"}
SEG_LAYOUTS = (  # (images/<split>, labels/<split>) pairs, tried in order
    ("images", "annotations", {"train": "training", "val": "validation"}),
    ("images", "masks", {"train": "train2017", "val": "val2017"}),
)


def _explicit(cfg: Mapping[str, Any], split: str, kind: str) -> Path | None:
    value = cfg.get(f"{split}_{kind}")
    return Path(value).expanduser() if value else None


def _root(cfg: Mapping[str, Any], split: str, flags: str) -> Path:
    if not cfg.get("data"):
        raise LingloError(f"no {split} data: pass --data ROOT (standard layout) or {flags}")
    root = Path(cfg["data"]).expanduser()
    if not root.is_dir():
        raise LingloError(f"dataset folder '{root}' does not exist")
    return root


def coco_paths(cfg: Mapping[str, Any], split: str) -> tuple[Path, Path]:
    """(images folder, instances json) of `split` ('train' or 'val')."""
    images, ann = _explicit(cfg, split, "images"), _explicit(cfg, split, "ann")
    if images and ann:
        return images, ann
    root = _root(cfg, split, f"--{split}-images DIR --{split}-ann FILE")
    name = COCO_SPLITS[split]
    images = images or root / name
    ann = ann or root / "annotations" / f"instances_{name}.json"
    if not images.is_dir() or not ann.is_file():
        raise LingloError(f"'{root}' has no COCO {split} split (expected {root / name}/ and {root}/annotations/"
                          f"instances_{name}.json); give it with --{split}-images DIR --{split}-ann FILE")
    return images, ann


def seg_paths(cfg: Mapping[str, Any], split: str) -> tuple[Path, Path]:
    """(images folder, masks folder) of `split` ('train' or 'val')."""
    images, masks = _explicit(cfg, split, "images"), _explicit(cfg, split, "masks")
    if images and masks:
        return images, masks
    root = _root(cfg, split, f"--{split}-images DIR --{split}-masks DIR")
    for image_dir, label_dir, names in SEG_LAYOUTS:
        found_images, found_masks = root / image_dir / names[split], root / label_dir / names[split]
        if found_images.is_dir() and found_masks.is_dir():
            return images or found_images, masks or found_masks
    raise LingloError(f"'{root}' has no segmentation {split} split (expected ADE20K's images/"
                      f"{SEG_LAYOUTS[0][2][split]}/ + annotations/{SEG_LAYOUTS[0][2][split]}/ or images/"
                      f"{SEG_LAYOUTS[1][2][split]}/ + masks/{SEG_LAYOUTS[1][2][split]}/); "
                      f"give it with --{split}-images DIR --{split}-masks DIR")


def seg_classes_file(cfg: Mapping[str, Any]) -> Path | None:
    """--classes FILE, else ROOT/classes.yaml when --data has one, else None (ADE20K numbering)."""
    if cfg.get("classes"):
        path = Path(cfg["classes"]).expanduser()
        if not path.is_file():
            raise LingloError(f"class file '{path}' does not exist")
        return path
    if cfg.get("data") and (Path(cfg["data"]).expanduser() / "classes.yaml").is_file():
        return Path(cfg["data"]).expanduser() / "classes.yaml"
    return None


def backbone_weights(cfg: Mapping[str, Any], datasets: Mapping[str, Any]) -> str | None:
    """--backbone-weights, only when training (a train split was built): eval / predict load the whole
    model from their checkpoint, whose stored config still names the file (which may be gone by then)."""
    return cfg.get("backbone_weights") if "train" in datasets else None
