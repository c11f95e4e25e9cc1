"""Classification data: ImageFolder (`ROOT/{train,val}/<class>/<image>`) with clear errors and unreadable files
skipped.

Unreadable images (not an image, empty, corrupt header, a JPEG or PNG cut short) are found when the folder is
scanned and skipped with a count (reported in the log and summary.json). An image whose data turns out to be
corrupt only when decoded is, in training, replaced by the next image with a warning naming the file; in
evaluation it is left out (an Unreadable item, dropped by collate_readable, that the task adds to its skipped
files), so every readable image counts exactly once.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

from PIL import Image
from torch.utils.data import default_collate
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from linglo.errors import LingloError
from linglo.tasks.images import UNREADABLE, EpochSeeded, is_image_name, load_rgb

SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation")}
LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}   # how a complete file of the format ends


def split_dir(root: Path, split: str) -> Path:
    """The folder of `split` ("train"/"val") inside dataset `root`."""
    if not root.is_dir():
        raise LingloError(f"dataset folder '{root}' does not exist")
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    raise LingloError(f"dataset folder '{root}' has no {SPLIT_DIRS[split][0]}/ folder ({LAYOUT})")


def _opens(path: str) -> bool:
    """True when PIL recognises the file as an image with a size (reads the header) and a JPEG or PNG ends as a
    complete one does (reads its last bytes); one that seems cut short is decoded to decide."""
    try:
        with Image.open(path) as im:
            if not (im.width > 0 and im.height > 0):
                return False
            marker = END_MARKERS.get(im.format)
        if marker is None:
            return True
        with open(path, "rb") as f:
            f.seek(max(os.path.getsize(path) - 64, 0))
            if marker in f.read():
                return True
        load_rgb(path)   # no end marker in the last bytes: trailing data after a complete image, or cut short
        return True
    except UNREADABLE:
        return False


class Unreadable(NamedTuple):
    """What CheckedImageFolder returns for an image that fails to decode, when it does not substitute another."""
    path: str
    error: str


def collate_readable(batch: list) -> tuple:
    """(images, targets, paths of unreadable items): torch's default collate over the readable items; images and
    targets are None when the batch has no readable item."""
    items = [b for b in batch if not isinstance(b, Unreadable)]
    unreadable = [b.path for b in batch if isinstance(b, Unreadable)]
    return (*default_collate(items), unreadable) if items else (None, None, unreadable)


class CheckedImageFolder(EpochSeeded, ImageFolder):
    """torchvision ImageFolder that skips unreadable images and names empty class folders.

    Images are read with load_rgb. `skipped` lists the image-named files found unreadable by the scan.
    An image that fails to decode later is replaced by the next one (with a warning) when `substitute`
    (training), else returned as an Unreadable (evaluation: it must count neither as itself nor twice).
    Augmentation draws from item_rng(seed, epoch, index).
    """

    def __init__(self, root: Path, transform: Callable | None = None, io_threads: int = 16,
                 substitute: bool = False, seed: int = 0):
        root = Path(root)
        classes, _ = self.find_classes(str(root))
        # Same walk and path spelling as torchvision's make_dataset (follows symlinked folders).
        candidates = sorted(os.path.join(d, f) for c in classes
                            for d, _, files in os.walk(os.path.join(str(root), c), followlinks=True)
                            for f in files if is_image_name(f))
        with ThreadPoolExecutor(io_threads) as pool:  # header reads are I/O-bound
            ok = dict(zip(candidates, pool.map(_opens, candidates)))
        self.skipped = [p for p, good in ok.items() if not good]
        super().__init__(str(root), transform=transform, loader=load_rgb, is_valid_file=lambda p: ok.get(p, False),
                         allow_empty=True)
        counts = [0] * len(self.classes)
        for t in self.targets:
            counts[t] += 1
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise LingloError(f"class folder '{root / empty[0]}' has no readable images "
                              f"(looked for {', '.join(IMG_EXTENSIONS)})")
        self.class_counts = dict(zip(self.classes, counts))
        self.substitute, self.seed = substitute, seed
        self._warned: set[str] = set()

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """Class folders, sorted; hidden ones (e.g. .ipynb_checkpoints) are not classes."""
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise LingloError(f"'{directory}' has no class folders ({LAYOUT})")
        return classes, {c: i for i, c in enumerate(classes)}

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples) if self.substitute else 1):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = self.loader(path)
            except UNREADABLE as e:
                if path not in self._warned:
                    self._warned.add(path)
                    what = "replaced by the next image" if self.substitute else "left out"
                    print(f"warning: unreadable image {path} {what}: {e}", file=sys.stderr)
                if not self.substitute:
                    return Unreadable(path, str(e))
                continue
            with self.item_rng(index):
                return (self.transform(img) if self.transform else img), target
        raise LingloError(f"no image in '{self.root}' can be decoded")
