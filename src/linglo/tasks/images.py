"""Image input shared by every task: reading files (load_rgb, read_image), listing them (expand_inputs), running
a model over them one by one (predict_each), and per-item random streams for augmentation (EpochSeeded, keyed_rng).
"""
from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS

from linglo.errors import LingloError

UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)   # what PIL raises on a bad file
TRANSPOSED = (5, 6, 7, 8)   # EXIF orientations that swap width and height


def load_rgb(path: str | os.PathLike, draft: int | None = None) -> Image.Image:
    """The image in `path` as RGB, the way viewers show it: EXIF orientation applied, 16-bit grey (mode I;16 / I)
    scaled to 8 bits (value >> 8) rather than clipped. `draft`: a JPEG is decoded at the smallest DCT scale that is
    still at least draft×draft (fast). Raises what PIL raises for an unreadable file (UNREADABLE)."""
    with Image.open(path) as im:
        if draft is not None:
            im.draft("RGB", (draft, draft))
        im.load()
        ImageOps.exif_transpose(im, in_place=True)
        if im.mode == "I" or im.mode.startswith("I;16"):
            im = Image.fromarray((np.asarray(im).clip(0, 65535) >> 8).astype(np.uint8))   # H×W, mode L
        return im.convert("RGB")


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) of an opened image as load_rgb returns it, from the header (EXIF orientation 5-8 swaps)."""
    return im.size[::-1] if im.getexif().get(ExifTags.Base.Orientation) in TRANSPOSED else im.size


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """RGB uint8 3×H×W as load_rgb reads it (EXIF orientation applied); a LingloError naming the file when it
    cannot be decoded."""
    try:
        return torch.from_numpy(np.asarray(load_rgb(path)).copy()).permute(2, 0, 1)
    except UNREADABLE as e:
        raise LingloError(f"cannot read image {path}: {e}") from e


def is_image_name(path: str | Path) -> bool:
    return str(path).lower().endswith(IMG_EXTENSIONS)


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


def predict_each(files: Sequence[Path], predict_one: Callable[[Path, torch.Tensor], dict]) -> list[dict]:
    """One record per file: predict_one(path, 3×H×W uint8 image), or {"file", "error"} when the file cannot be read
    or predicted (e.g. a 10000×20 image whose feature maps shrink to nothing), so one bad file never stops a folder."""
    results = []
    for path in files:
        try:
            image = read_image(path)
        except LingloError as e:
            results.append({"file": str(path), "error": str(e)})
            continue
        try:
            results.append(predict_one(path, image))
        except (RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            results.append({"file": str(path), "error": f"cannot predict this {image.shape[-1]}x{image.shape[-2]} "
                                                        f"image: {type(e).__name__}: {first}"})
    return results


@contextlib.contextmanager


def keyed_rng(key: int, device: torch.device) -> Iterator[None]:
    """Inside: Python's, NumPy's and torch's random draws (CPU, and `device` when it is a GPU) all come from `key`.
    Outside, every global stream continues as if the block had drawn nothing."""
    py_state, np_state = random.getstate(), np.random.get_state()
    gpu = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=gpu, device_type=device.type if gpu else "cuda"):
        random.seed(key)
        np.random.seed(key % 2**32)
        torch.default_generator.manual_seed(key)
        if gpu:
            torch.cuda.manual_seed(key)   # this process's current GPU, restored by fork_rng
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


class EpochSeeded:
    """Dataset mixin: item i of epoch e augments with item_rng(seed, e, i). The engine calls set_epoch() before
    each training epoch, so results depend on the seed alone, not on --workers or on a resume."""
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def item_rng(self, index: int) -> ContextManager[None]:
        """Python's, NumPy's and torch's CPU random draws inside come from (seed, epoch, index), in the main process
        (--workers 0) as in any DataLoader worker; the caller's streams are left as they were."""
        return keyed_rng(hash((self.seed, self.epoch, index)) & (2**63 - 1), torch.device("cpu"))
