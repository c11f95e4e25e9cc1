"""ImageFolder data (`ROOT/{train,val}/<class>/<image>`) with clear errors and unreadable files skipped.

Unreadable images (not an image, empty, corrupt header) are found when the folder is scanned and
skipped with a count (reported in the log and summary.json); an image whose data turns out to be
corrupt only when decoded is replaced by the next image, with a warning naming the file.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from linglo.errors import LingloError

SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation")}
LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"


def split_dir(root: Path, split: str) -> Path:
    """The folder of `split` ("train"/"val") inside dataset `root`."""
    if not root.is_dir():
        raise LingloError(f"dataset folder '{root}' does not exist")
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    raise LingloError(f"dataset folder '{root}' has no {SPLIT_DIRS[split][0]}/ folder ({LAYOUT})")


def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


def _opens(path: str) -> bool:
    """True when PIL recognises the file as an image with a size (reads the header only)."""
    try:
        with Image.open(path) as im:
            return im.width > 0 and im.height > 0
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False


class CheckedImageFolder(ImageFolder):
    """torchvision ImageFolder that skips unreadable images and names empty class folders.

    `skipped` lists the image-named files that could not be opened.
    """

    def __init__(self, root: Path, transform: Callable | None = None, io_threads: int = 16):
        root = Path(root)
        classes, _ = self.find_classes(str(root))
        # Same walk and path spelling as torchvision's make_dataset (follows symlinked folders).
        candidates = sorted(os.path.join(d, f) for c in classes
                            for d, _, files in os.walk(os.path.join(str(root), c), followlinks=True)
                            for f in files if is_image_name(f))
        with ThreadPoolExecutor(io_threads) as pool:  # header reads are I/O-bound
            ok = dict(zip(candidates, pool.map(_opens, candidates)))
        self.skipped = [p for p, good in ok.items() if not good]
        super().__init__(str(root), transform=transform, is_valid_file=lambda p: ok.get(p, False),
                         allow_empty=True)
        counts = [0] * len(self.classes)
        for t in self.targets:
            counts[t] += 1
        empty = [c for c, n in zip(self.classes, counts) if n == 0]
        if empty:
            raise LingloError(f"class folder '{root / empty[0]}' has no readable images "
                              f"(looked for {', '.join(IMG_EXTENSIONS)})")
        self.class_counts = dict(zip(self.classes, counts))
        self._warned: set[str] = set()

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        """Class folders, sorted; hidden ones (e.g. .ipynb_checkpoints) are not classes."""
        classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise LingloError(f"'{directory}' has no class folders ({LAYOUT})")
        return classes, {c: i for i, c in enumerate(classes)}

    def __getitem__(self, index: int):
        for attempt in range(len(self.samples)):
            path, target = self.samples[(index + attempt) % len(self.samples)]
            try:
                img = self.loader(path)
            except (OSError, SyntaxError, Image.DecompressionBombError) as e:
                if path not in self._warned:
                    self._warned.add(path)
                    print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
                continue
            return (self.transform(img) if self.transform else img), target
        raise LingloError(f"no image in '{self.root}' can be decoded")


def expand_inputs(inputs: list[str] | tuple[str, ...]) -> list[Path]:
    """Image files from files and folders (folders searched recursively, sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_name(p))
            if not found:
                raise LingloError(f"folder '{path}' has no images (looked for {', '.join(IMG_EXTENSIONS)})")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise LingloError(f"input '{item}' does not exist")
    if not files:
        raise LingloError("no input images given")
    return files
