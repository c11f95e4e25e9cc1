"""COCO-format instance dataset: an images folder + an instances json, for torchvision's detectors.

Reads boxes, polygon / RLE masks and crowd flags; keeps images without annotations (they are
negatives in training and count in evaluation). Category ids map to contiguous labels 1..K
(0 is torchvision's background). Bad annotations are fixed where that is unambiguous (boxes
clipped to the image, empty boxes dropped, both counted and logged) and refused otherwise (e.g.
NaN or Infinity, which json allows; an RLE of another size than its image), with the json file and
annotation named. Images are read with tasks.images.read_image (EXIF orientation applied, as annotation tools
show them).
"""
from __future__ import annotations

import json
import math
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from linglo.errors import LingloError
from linglo.tasks.images import EpochSeeded, read_image


def load_coco_json(ann_file: str | os.PathLike) -> dict:
    """The parsed instances json, checked for the keys the reader needs."""
    path = Path(ann_file)
    if not path.is_file():
        raise LingloError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LingloError(f"{path}: not valid JSON ({e})") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise LingloError(f"{path}: missing '{key}' list (expected COCO instances format)")
    if not data["categories"]:
        raise LingloError(f"{path}: 'categories' is empty")
    return data


def _check_finite(where: str, field: str, values: list) -> None:
    """A LingloError naming `field` unless every value is a finite number (json allows NaN and Infinity)."""
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise LingloError(f"{where} has {field} value {v!r} (item {i}); expected a finite number")


def _check_segmentation(where: str, seg, img: dict) -> None:
    """Polygons [[x, y, ...], ...] of finite numbers, or an RLE {"size": [height, width], "counts": ...} of the
    image's size; anything else is refused with the annotation named."""
    if isinstance(seg, list):
        for i, poly in enumerate(seg):
            if not isinstance(poly, list):
                raise LingloError(f"{where} has segmentation polygon {i} = {str(poly)[:60]!r}; expected a list of "
                                  "x, y coordinates")
            _check_finite(where, f"segmentation polygon {i}", poly)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), (list, str)):
        if seg.get("size") != [img["height"], img["width"]]:
            raise LingloError(f"{where} has an RLE segmentation of size {seg.get('size')} but its image "
                              f"{img['file_name']} is [{img['height']}, {img['width']}] ([height, width])")
    else:
        raise LingloError(f"{where} has segmentation {str(seg)[:60]!r}; expected polygons [[x, y, ...]] or RLE "
                          "{\"size\": [height, width], \"counts\": ...}")


class CocoDetection(EpochSeeded, Dataset):
    """(image float 3×H×W in [0,1], target dict) pairs in torchvision detection format.

    target: boxes (N×4 xyxy, pixels), labels (N, 1..K), image_id, and masks (N×H×W uint8) when
    `with_masks`. Crowd regions are left out of training targets (they are neither positives nor
    negatives for the detector) but stay in the json that evaluation scores against. The training
    flip draws from item_rng(seed, epoch, index).
    """

    def __init__(self, images_dir: str | os.PathLike, ann_file: str | os.PathLike,
                 train: bool = False, with_masks: bool = False, seed: int = 0):
        self.images_dir = Path(images_dir)
        self.seed = seed
        self.ann_file = Path(ann_file)
        self.with_masks = with_masks
        if not self.images_dir.is_dir():
            raise LingloError(f"images folder not found: {self.images_dir}")
        self.coco = load_coco_json(self.ann_file)
        cats = sorted(self.coco["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in cats]
        self.class_names = [str(c.get("name", c["id"])) for c in cats]
        self.label_of = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}  # category id -> 1..K
        self.images = {}
        for img in self.coco["images"]:
            for key in ("id", "file_name", "width", "height"):
                if key not in img:
                    raise LingloError(f"{self.ann_file}: an image entry lacks '{key}': {str(img)[:120]}")
            self.images[img["id"]] = img
        self._check_files()
        self.anns, self.stats = self._read_annotations()
        self.ids = sorted(self.images)
        self.transform = v2.RandomHorizontalFlip(0.5) if train else v2.Identity()

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def _check_files(self) -> None:
        missing = [img["file_name"] for img in self.images.values()
                   if not (self.images_dir / img["file_name"]).is_file()]
        if missing:
            raise LingloError(f"missing image file {self.images_dir / missing[0]} (listed in {self.ann_file}; "
                              f"{len(missing)} of {len(self.images)} listed images are missing)")

    def _read_annotations(self) -> tuple[dict[int, list[dict]], dict[str, int]]:
        """Annotations per image id, boxes clipped to xyxy inside the image; counts of fixes."""
        anns = defaultdict(list)
        stats = dict(clipped=0, dropped_empty=0, crowd=0)
        for a in self.coco["annotations"]:
            where = f"{self.ann_file}: annotation {a.get('id', '?')}"
            img = self.images.get(a.get("image_id"))
            if img is None:
                raise LingloError(f"{where} refers to unknown image id {a.get('image_id')}")
            if a.get("category_id") not in self.label_of:
                raise LingloError(f"{where} has unknown category id {a.get('category_id')} "
                                  f"(known ids: {self.cat_ids[0]}..{self.cat_ids[-1]}, {len(self.cat_ids)} categories)")
            bbox = a.get("bbox")
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
                raise LingloError(f"{where} has bbox {bbox!r}; expected [x, y, width, height]")
            _check_finite(where, "bbox", bbox)
            if "area" in a:
                _check_finite(where, "area", [a["area"]])
            if a.get("segmentation") is not None:
                _check_segmentation(where, a["segmentation"], img)
            if self.with_masks and not a.get("segmentation"):
                raise LingloError(f"{where} has no segmentation; mask training needs polygons or RLE "
                                  f"(use --arch retinanet for boxes only)")
            x, y, w, h = bbox
            W, H = img["width"], img["height"]
            box = [min(max(x, 0), W), min(max(y, 0), H), min(max(x + w, 0), W), min(max(y + h, 0), H)]
            if box[2] <= box[0] or box[3] <= box[1]:
                stats["dropped_empty"] += 1
                continue
            if box != [x, y, x + w, y + h]:
                stats["clipped"] += 1
            if a.get("iscrowd", 0):
                stats["crowd"] += 1
                continue
            anns[img["id"]].append(dict(box=box, label=self.label_of[a["category_id"]],
                                        segmentation=a.get("segmentation")))
        if stats["clipped"] or stats["dropped_empty"]:
            print(f"warning: {self.ann_file}: clipped {stats['clipped']} boxes reaching outside their image, "
                  f"dropped {stats['dropped_empty']} boxes with zero area", file=sys.stderr)
        return anns, stats

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, segmentation, h: int, w: int) -> np.ndarray:
        """H×W uint8 mask from polygons, uncompressed or compressed RLE."""
        if isinstance(segmentation, list):  # polygons; ones with < 3 points carry no area
            polys = [p for p in segmentation if len(p) >= 6]
            if not polys:
                return np.zeros((h, w), np.uint8)
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
        elif isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, h, w)
        else:
            rle = segmentation
        return mask_utils.decode(rle)

    def __getitem__(self, index: int):
        info = self.images[self.ids[index]]
        path = self.images_dir / info["file_name"]
        image = read_image(path)  # 3×H×W uint8
        H, W = image.shape[-2:]
        if (W, H) != (info["width"], info["height"]):
            raise LingloError(f"{path} is {W}x{H} but {self.ann_file} says {info['width']}x{info['height']}")
        anns = self.anns.get(info["id"], [])
        target = dict(
            boxes=tv_tensors.BoundingBoxes(torch.tensor([a["box"] for a in anns], dtype=torch.float32).reshape(-1, 4),
                                           format="XYXY", canvas_size=(H, W)),
            labels=torch.tensor([a["label"] for a in anns], dtype=torch.int64),
            image_id=info["id"],
        )
        if self.with_masks:
            masks = np.zeros((0, H, W), np.uint8)
            if anns:
                masks = np.stack([self._mask(a["segmentation"], H, W) for a in anns])
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))  # N×H×W
        with self.item_rng(index):
            image, target = self.transform(tv_tensors.Image(image), target)
        return image.float().div_(255), target


def collate(batch):
    """Detection batches are lists: images differ in size and the model resizes/pads them itself."""
    images, targets = zip(*batch)
    return list(images), list(targets)
