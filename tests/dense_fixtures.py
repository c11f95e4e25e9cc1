"""Small real datasets for the detect / segment tests, cut from ../shared/data (COCO 2017 photos), and a context
in which every warning is an error."""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"   # shared/ sits beside the checkout
COCO = DATA / "coco128"
COCO_ANN = COCO / "annotations" / "instances_train2017.json"
SEMSEG = DATA / "coco128_semseg"


def coco_json() -> dict:
    if not COCO_ANN.is_file():
        pytest.skip(f"{COCO_ANN} not available")
    return json.loads(COCO_ANN.read_text())


def coco_subset(out: Path, n: int, edit=None) -> tuple[Path, Path]:
    """(images dir, json) with the first `n` coco128 images (originals, not copied) and their annotations;
    `edit(data)` may change the json before it is written."""
    data = coco_json()
    ids = {im["id"] for im in data["images"][:n]}
    data["images"] = [im for im in data["images"] if im["id"] in ids]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    if edit is not None:
        edit(data)
    out.mkdir(parents=True, exist_ok=True)
    ann = out / "instances.json"
    ann.write_text(json.dumps(data))
    return COCO / "train2017", ann


def semseg_subset(out: Path, n: int, short_side: int) -> Path:
    """out/images/{train2017,val2017} + out/masks/… + classes.yaml: the first `n` coco128_semseg train
    images that have masks, resized to `short_side`, both splits the same images (an overfitting check).
    classes.yaml lists only the ids present, so the class count stays small."""
    masks = sorted((SEMSEG / "masks" / "train2017").glob("*.png"))[:n]
    if len(masks) < n:
        pytest.skip(f"{SEMSEG} not available")
    names = yaml.safe_load((SEMSEG / "classes.yaml").read_text())["classes"]
    present: set[int] = set()
    for split in ("train2017", "val2017"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "masks" / split).mkdir(parents=True, exist_ok=True)
    for m in masks:
        with Image.open(SEMSEG / "images" / "train2017" / f"{m.stem}.jpg") as im, Image.open(m) as mk:
            r = short_side / min(im.size)
            size = (round(im.width * r), round(im.height * r))
            im, mk = im.convert("RGB").resize(size, Image.BILINEAR), mk.resize(size, Image.NEAREST)
            present |= set(np.unique(np.array(mk)).tolist())
            for split in ("train2017", "val2017"):
                im.save(out / "images" / split / f"{m.stem}.jpg", quality=92)
                mk.save(out / "masks" / split / f"{m.stem}.png")
    (out / "classes.yaml").write_text(yaml.safe_dump({"classes": {i: names[i] for i in sorted(present)}}))
    return out


@contextmanager
def warnings_as_errors():
    """Every warning raises inside, torch's once-per-process ones too (so an earlier test cannot hide one)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.set_warn_always(True)
        try:
            yield
        finally:
            torch.set_warn_always(False)
