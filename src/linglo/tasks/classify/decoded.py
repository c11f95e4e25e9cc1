"""Decoded-image cache for classification: every image is decoded once per run into uint8 memory, and training
batches are augmented as whole tensors (random-resized crop, flip, colour jitter, random erasing) on the device
that trains.

Decoding a JPEG and augmenting it with PIL, per image and per epoch, is what starves a small model (on 2 CPU
cores the loader competes with the model for the same cores; on a GPU it cannot keep up at all). Here each
split is decoded once, by threads, when the dataset is built:

    train: the central square of each image at `size` (shorter side resized, then centre-cropped, bicubic);
           random-resized crops are sampled from it on every step
    val:   timm's eval transform itself (resize to img_size / crop_pct, centre crop img_size): the pixels the
           PIL pipeline feeds the model (JPEGs over twice that size are first decoded at a reduced DCT scale)

A batch is then a slice of memory (no loader workers), moved to the device as uint8 (4× less to copy than
float) and augmented there by BatchAugment: one roi_align call crops and resizes the whole batch, with
area sampling when it shrinks (antialiased, like PIL) and bilinear when it enlarges.

Each batch's random draws (crops, flips, jitter, erasing, mixup) come from its own key, the run's seed and the
batch's sample indices (tasks.images.keyed_rng): the same images get the same augmentation whatever the model
draws from the global streams (arms of a study share their augmentation, not only their data order), the number of
loader workers, or an interruption and resume.
"""
from __future__ import annotations

import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import torch
from PIL import Image
from timm.data.random_erasing import RandomErasing
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.ops import roi_align

__all__ = ["DecodedImages", "BatchAugment", "rrc_boxes", "batch_key", "train_side", "physical_memory"]

RATIO = (3 / 4, 4 / 3)    # random-resized-crop aspect range (timm / torchvision default)
TRAIN_SIDE_FACTOR = 1.25  # the train cache keeps squares of 1.25 × the crop size to sample crops from
LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)   # ITU-R 601 grey, as torchvision's rgb_to_grayscale


def train_side(img_size: int) -> int:
    """Side of the cached train squares for crops of img_size."""
    return math.ceil(TRAIN_SIDE_FACTOR * img_size)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


class DecodedImages(Dataset):
    """A list of (path, label) samples decoded once into one uint8 tensor (N, 3, S, S).

    `to_uint8` maps a PIL image to a (3, S, S) uint8 tensor (a timm transform built with use_prefetcher=True);
    `load` reads a file as an RGB PIL image (JPEGs may be decoded at a reduced scale no smaller than S). Files that fail to decode are left out and listed in `skipped`
    (never replaced by another image). Items are (image uint8 (3, S, S), label, index).
    """

    def __init__(self, samples: Sequence[tuple[str, int]], to_uint8: Callable[[Image.Image], Tensor], side: int,
                 load: Callable[[str], Image.Image], threads: int | None = None, log: Callable[[str], None] = print):
        start = time.perf_counter()
        n = len(samples)
        log(f"decoding {n} images once into memory ({n * 3 * side * side / 2**20:.0f} MiB uint8, {side}x{side})")
        images = torch.empty((n, 3, side, side), dtype=torch.uint8)
        ok = torch.zeros(n, dtype=torch.bool)
        self.skipped: list[str] = []

        def decode(i: int) -> None:
            path = samples[i][0]
            try:
                images[i] = to_uint8(load(path))       # (3, S, S)
                ok[i] = True
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                print(f"warning: skipping unreadable image {path}: {e}", file=sys.stderr)
                self.skipped.append(path)

        with ThreadPoolExecutor(threads or min(16, os.cpu_count() or 1)) as pool:   # PIL decodes without the GIL
            list(pool.map(decode, range(n)))
        keep = ok.nonzero().squeeze(1)
        self.images = images if len(keep) == n else images[keep]                     # (N', 3, S, S)
        self.targets = torch.tensor([samples[i][1] for i in keep.tolist()], dtype=torch.long)
        self.seconds = time.perf_counter() - start
        self.skipped.sort()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        return self.images[index], int(self.targets[index]), index

    @property
    def nbytes(self) -> int:
        return self.images.numel()


def batch_key(seed: int, indices: Tensor) -> int:
    """A 63-bit generator seed for one batch, from the run's seed and the batch's sample indices (ints hash the
    same in every process, whatever PYTHONHASHSEED says)."""
    return hash((seed, *indices.tolist())) & (2**63 - 1)


def rrc_boxes(n: int, height: int, width: int, scale: Sequence[float], ratio: Sequence[float] = RATIO,
              generator: torch.Generator | None = None, attempts: int = 10) -> Tensor:
    """(n, 4) crop boxes (x0, y0, x1, y1) as torchvision's RandomResizedCrop.get_params draws them, for a whole
    batch at once: up to `attempts` draws of area in `scale` and log-uniform aspect in `ratio`, the first that
    fits; else the central crop with the aspect clamped into `ratio`."""
    area = height * width
    target = area * torch.empty(n, attempts).uniform_(scale[0], scale[1], generator=generator)       # (n, a)
    log_r = torch.empty(n, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)                                           # (n, a)
    first = torch.where(fits.any(1), fits.float().argmax(1), -1)                                      # (n,)
    pick = first.clamp(min=0)[:, None]
    w, h = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    u = torch.rand(n, 2, generator=generator)
    x0 = torch.floor(u[:, 0] * (width - w + 1))
    y0 = torch.floor(u[:, 1] * (height - h + 1))
    # fallback: the whole image, its aspect clamped into `ratio`, centred
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    none = first < 0
    w, h = torch.where(none, float(fw), w), torch.where(none, float(fh), h)
    x0 = torch.where(none, float((width - fw) // 2), x0)
    y0 = torch.where(none, float((height - fh) // 2), y0)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


class BatchAugment:
    """The timm/DeiT train transform (random-resized crop, horizontal flip, colour jitter, normalise, random
    erasing) applied to a uint8 batch on its device, in a few whole-batch passes.

    Crops are resized bilinearly by roi_align: the train cache holds squares of TRAIN_SIDE_FACTOR × the crop
    size, so no crop shrinks by more than that and needs no antialiasing. Colour jitter draws brightness,
    contrast and saturation factors per image in [1 − j, 1 + j] (hue is not jittered, as with timm's float
    `color_jitter`) and applies them in that order as one affine colour map per image, clamped once at the end
    (torchvision clamps after each step: the same map except where a step saturates).
    """

    def __init__(self, size: int, scale: Sequence[float], mean: Sequence[float], std: Sequence[float],
                 hflip: float = 0.5, color_jitter: float = 0.0, re_prob: float = 0.0, re_mode: str = "pixel"):
        self.size, self.scale, self.hflip, self.jitter = size, tuple(scale), hflip, color_jitter
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255   # on the 0..255 scale of the cache
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255
        self.re_prob, self.re_mode = re_prob, re_mode
        self._erase: dict[str, RandomErasing] = {}

    def __call__(self, images: Tensor) -> Tensor:
        """images: (B, 3, S, S) uint8 on any device -> (B, 3, size, size) float, normalised. Draws from torch's
        CPU generator (crops, flips, jitter) and from what timm's RandomErasing draws from: run it under keyed_rng."""
        b, _, hh, ww = images.shape
        dev = images.device
        boxes = rrc_boxes(b, hh, ww, self.scale)                                         # (B, 4) pixel edges
        flip = (torch.rand(b) < self.hflip).nonzero().squeeze(1).to(dev)
        if len(flip):   # flip the chosen sources (uint8: cheap); crop positions are mirror-symmetric anyway
            images = images.index_copy(0, flip, images.index_select(0, flip).flip(-1))
        rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], 1).to(dev)
        x = roi_align(images.float(), rois, self.size, sampling_ratio=1, aligned=True)    # (B, 3, size, size)
        if self.jitter > 0:
            x = self._color_jitter(x, torch.empty(3, b, 1, 1, 1).uniform_(max(0.0, 1 - self.jitter),
                                                                            1 + self.jitter).to(dev))
        x = (x - self.mean.to(dev)) / self.std.to(dev)
        if self.re_prob > 0:
            erase = self._erase.get(str(dev))
            if erase is None:
                erase = self._erase[str(dev)] = RandomErasing(self.re_prob, mode=self.re_mode, device=str(dev))
            x = erase(x)
        return x

    @staticmethod
    def _color_jitter(x: Tensor, f: Tensor) -> Tensor:
        """Brightness fb, contrast fc, saturation fs (f: (3, B, 1, 1, 1)) as one map per image:
        x -> A·x + B·gray(x) + C with A = fs·fc·fb, B = (1 − fs)·fc·fb, C = (1 − fc)·fb·mean(gray(x))."""
        fb, fc, fs = f
        gray = (x * LUMA.to(x.device)).sum(1, keepdim=True)                              # (B, 1, H, W)
        c = (1 - fc) * fb * gray.mean(dim=(2, 3), keepdim=True)                           # (B, 1, 1, 1)
        return torch.addcmul(c, fs * fc * fb, x).addcmul_((1 - fs) * fc * fb, gray).clamp_(0, 255)

    def normalize(self, images: Tensor) -> Tensor:
        """Eval: uint8 (B, 3, H, W) -> normalised float, no augmentation."""
        dev = images.device
        return (images.float() - self.mean.to(dev)) / self.std.to(dev)
