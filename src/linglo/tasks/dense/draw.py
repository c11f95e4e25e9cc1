"""Pictures of dense predictions (torchvision.utils draw_* functions), written atomically as JPEG/PNG."""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Sequence

import torch
from PIL import Image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from linglo.atomic import atomic_write


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct colours (golden-ratio hues), stable for a class index."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.75, 0.95)) for i in range(n)]


def output_names(files: Sequence[Path]) -> list[Path]:
    """A distinct, stable name per input for what is drawn from it: its path under the inputs' common folder
    (a/img.jpg, a/img.png and b/img.jpg stay apart); callers add a suffix such as "_det.jpg"."""
    folders = [os.path.abspath(p.parent) for p in files]
    root = os.path.commonpath(folders) if folders else ""
    return [Path(os.path.relpath(folder, root)) / p.name for folder, p in zip(folders, files)]


def _save(image: torch.Tensor, path: Path) -> Path:
    """C×H×W uint8 (C = 3, or 1 for a label image) to a JPEG or PNG file, by suffix (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = image.permute(1, 2, 0).squeeze(-1).contiguous().numpy()
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    options = {"quality": 90} if fmt == "JPEG" else {}
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format=fmt, **options))
    return path


def draw_detections(image: torch.Tensor, out: dict[str, torch.Tensor], names: list[str], path: Path,
                    mask_threshold: float = 0.5) -> Path:
    """image: 3×H×W uint8; out: torchvision detections (boxes xyxy, labels 1..K, scores, masks N×1×H×W)."""
    colors = palette(len(names))
    labels = out["labels"].tolist()
    box_colors = [colors[k - 1] for k in labels]
    if labels:  # (torchvision warns when asked to draw nothing)
        if "masks" in out:
            image = draw_segmentation_masks(image, out["masks"][:, 0] > mask_threshold, alpha=0.45, colors=box_colors)
        captions = [f"{names[k - 1]} {s:.2f}" for k, s in zip(labels, out["scores"].tolist())]
        image = draw_bounding_boxes(image, out["boxes"].float(), captions, colors=box_colors,
                                    width=max(1, round(max(image.shape[-2:]) / 320)))
    return _save(image, path)


def draw_segmentation(image: torch.Tensor, pred: torch.Tensor, num_classes: int, path: Path) -> Path:
    """image: 3×H×W uint8; pred: H×W class indices. The classes are overlaid in the palette's colours."""
    present = pred.unique().tolist()
    masks = torch.stack([pred == c for c in present])  # P×H×W bool
    colors = palette(num_classes)
    image = draw_segmentation_masks(image, masks, alpha=0.55, colors=[colors[c] for c in present])
    return _save(image, path)


def save_label_png(labels: torch.Tensor, path: Path) -> Path:
    """H×W uint8 label image (the dataset's raw ids) as a single-channel PNG."""
    return _save(labels[None].to(torch.uint8), path)
