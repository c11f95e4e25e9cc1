"""Semantic segmentation data: image folder + single-channel PNG label folder, ADE20K convention.

Raw label 0 means "ignore"; raw labels are mapped to train ids 0..K-1 through a lookup table and
ignored pixels become IGNORE (255). Two raw conventions:
- ADE20K: raw values 1..K are the classes (train id = raw - 1), K = 150 by default.
- a class file (`classes.yaml` with `classes: {id: name}`, e.g. coco128_semseg's COCO panoptic
  ids 1..200 with gaps): its non-zero ids, sorted, become train ids 0..K-1.
Masks pair with images by file stem; images without a mask are skipped (counted and logged). Images are read
with load_rgb, EXIF orientation applied, so a mask pairs with its image as viewers show it. An image or mask
that cannot be read is a one-line error naming the file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from linglo.errors import LingloError
from linglo.tasks.images import UNREADABLE, EpochSeeded, oriented_size, read_image

IGNORE = 255
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class LabelMap:
    """Raw mask value -> train id (0..K-1) or IGNORE, with the class names."""

    def __init__(self, raw_ids: list[int], names: list[str], source: str):
        if len(raw_ids) > 255 or not raw_ids or min(raw_ids) < 1 or max(raw_ids) > 255:
            raise LingloError(f"{source}: class ids must be 1..255 (0 = ignore); got {len(raw_ids)} ids "
                              f"in {min(raw_ids, default=0)}..{max(raw_ids, default=0)}")
        self.raw_ids, self.names, self.source = list(raw_ids), list(names), source
        self.lut = np.full(256, IGNORE, np.uint8)
        self.valid = np.zeros(256, bool)
        self.valid[0] = True
        for train_id, raw in enumerate(self.raw_ids):
            self.lut[raw] = train_id
            self.valid[raw] = True

    @property
    def num_classes(self) -> int:
        return len(self.raw_ids)

    @classmethod
    def ade(cls, num_classes: int = 150) -> "LabelMap":
        return cls(list(range(1, num_classes + 1)), [str(i) for i in range(1, num_classes + 1)],
                   f"--num-classes {num_classes}")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "LabelMap":
        """`classes: {id: name}` (id 0 is the ignore label and is left out)."""
        try:
            classes = yaml.safe_load(Path(path).read_text()).get("classes")
        except (OSError, yaml.YAMLError, AttributeError) as e:
            raise LingloError(f"cannot read class file {path}: {e}") from e
        if not isinstance(classes, dict) or not all(isinstance(k, int) for k in classes):
            raise LingloError(f"{path}: expected a 'classes' mapping of integer id -> name")
        ids = sorted(k for k in classes if k != 0)
        return cls(ids, [str(classes[k]) for k in ids], str(path))

    def __call__(self, raw: np.ndarray, where: str) -> np.ndarray:
        """H×W uint8 raw values -> train ids; a LingloError naming `where` for an unknown value."""
        bad = ~self.valid[raw]
        if bad.any():
            values = sorted(set(np.unique(raw[bad]).tolist()))
            raise LingloError(f"{where}: label values {values[:8]} are not classes of {self.source} "
                              f"({self.num_classes} classes; 0 = ignore)")
        return self.lut[raw]


def pair_files(images_dir: str | os.PathLike, masks_dir: str | os.PathLike) -> tuple[list[tuple[Path, Path]], int]:
    """((image, mask) pairs matched by stem, number of images skipped because they have no mask)."""
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise LingloError(f"{what} folder not found: {d}")
    masks = {p.stem: p for p in masks_dir.iterdir() if p.suffix.lower() == ".png"}
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    pairs = [(p, masks[p.stem]) for p in images if p.stem in masks]
    if not pairs:
        raise LingloError(f"no image in {images_dir} has a PNG mask of the same name in {masks_dir}")
    image_stems = {p.stem for p in images}
    orphans = sorted(s for s in masks if s not in image_stems)
    if orphans:
        raise LingloError(f"mask {masks[orphans[0]]} has no image in {images_dir} "
                          f"({len(orphans)} masks without an image)")
    if len(pairs) < len(images):
        print(f"warning: {images_dir}: skipped {len(images) - len(pairs)} of {len(images)} images that have no mask "
              f"in {masks_dir}", file=sys.stderr)
    for image, mask in pairs:  # header reads only: sizes are checked up front, label values on load
        size, mask_size = _header(image, "image", oriented_size), _header(mask, "mask", lambda m: m.size)
        if size != mask_size:
            raise LingloError(f"mask {mask} is {mask_size[0]}x{mask_size[1]} but image {image} is {size[0]}x{size[1]}")
    return pairs, len(images) - len(pairs)


def _header(path: Path, what: str, read: Callable[[Image.Image], tuple[int, int]]) -> tuple[int, int]:
    """read(opened image) from the file's header; a LingloError naming the file when PIL cannot open it."""
    try:
        with Image.open(path) as im:
            return read(im)
    except UNREADABLE as e:
        raise LingloError(f"cannot read {what} {path}: {e}") from e


def read_mask(path: Path) -> np.ndarray:
    """H×W uint8 label values of a single-channel (L or palette) PNG."""
    try:
        with Image.open(path) as m:
            if m.mode not in ("L", "P"):
                raise LingloError(f"mask {path} has mode {m.mode}; expected a single-channel 8-bit PNG (L or P)")
            return np.array(m)
    except UNREADABLE as e:
        raise LingloError(f"cannot read mask {path}: {e}") from e


def train_transform(crop: int) -> v2.Transform:
    """mmsegmentation's ADE20K recipe: random rescale 0.5–2× (shorter side around `crop`), random
    crop (padding with ignore), flip, photometric jitter."""
    return v2.Compose([
        v2.RandomResize(crop // 2, crop * 2),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Mask: IGNORE, "others": 0}),
        v2.RandomHorizontalFlip(0.5),
        v2.ColorJitter(0.125, 0.5, 0.5, 0.05),
    ])


class SegmentationFolder(EpochSeeded, Dataset):
    """(image float 3×h×w in [0,1], mask int64 H×W train ids / IGNORE) pairs.

    Training items are augmented crops (`crop`×`crop`, image and mask aligned). Evaluation items
    resize the image so its shorter side is `crop` (longer side at most 4×) and keep the mask at
    the original resolution, where the metrics are computed. Augmentation draws from item_rng(seed, epoch, index).
    """

    def __init__(self, images_dir, masks_dir, label_map: LabelMap, crop: int, train: bool, seed: int = 0):
        self.pairs, self.skipped = pair_files(images_dir, masks_dir)
        self.seed = seed
        self.label_map = label_map
        self.train = train
        self.transform = train_transform(crop) if train else v2.Resize(crop, max_size=4 * crop, antialias=True)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        image_path, mask_path = self.pairs[index]
        image = tv_tensors.Image(read_image(image_path))  # 3×H×W uint8
        mask = tv_tensors.Mask(torch.from_numpy(self.label_map(read_mask(mask_path), str(mask_path))))  # H×W
        if self.train:
            with self.item_rng(index):
                image, mask = self.transform(image, mask)
        else:
            image = self.transform(image)
        return image.float().div_(255), mask.long()
