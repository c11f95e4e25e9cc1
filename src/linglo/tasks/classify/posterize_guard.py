"""Guard timm's RandAugment/AutoAugment posterize against Pillow >= 13.

timm 1.0.31's "PosterizeIncreasing" maps magnitude 10 to 0 bits kept; with the DeiT recipe
`rand-m9-mstd0.5-inc1` (magnitude ~ N(9, 0.5) clipped to [0, 10], so P(m = 10) = 2.3%; posterize
is picked and applied for 1 image in 15) that is about 1 image in 700, and Pillow 13's
ImageOps.posterize raises "bits must be between or equal to 1 and 8" (older Pillow returned an
all-black image). We swap the op's function for one that keeps the old
behaviour, so the recipe's augmentation distribution is unchanged and training never crashes.
"""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps
from timm.data import auto_augment


def safe_posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """Keep the `bits_to_keep` most significant bits per channel; 0 bits gives black, as before Pillow 13."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def guard_posterize(transform: Any) -> int:
    """Replace timm's posterize in every AugmentOp inside `transform` (in place); returns how many."""
    if isinstance(transform, auto_augment.AugmentOp):
        if transform.aug_fn is auto_augment.posterize:
            transform.aug_fn = safe_posterize
            return 1
        return 0
    if isinstance(transform, (list, tuple)):
        return sum(guard_posterize(t) for t in transform)
    # Compose.transforms, RandAugment.ops, AutoAugment.policy (list of lists), AugMixAugment.ops
    return sum(guard_posterize(getattr(transform, attr)) for attr in ("transforms", "ops", "policy")
               if hasattr(transform, attr))
