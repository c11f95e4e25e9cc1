#!/usr/bin/env python3
"""Cut object crops out of a COCO-format detection set into a small ImageFolder classification set.

Builds the project's embedded default dataset (src/linglo/assets/default_dataset) and larger crop
sets for benchmarks. Output layout (torchvision ImageFolder):

    OUT/train/<class>/<image-stem>_<annotation-id>.jpg
    OUT/val/<class>/<image-stem>_<annotation-id>.jpg
    OUT/ATTRIBUTION.md   every source image used, with its licence
    OUT/README.md        what the set is, the exact command, class counts

COCO categories are merged into a few coarse classes (``--group``). Crowd annotations and boxes
whose shorter side is below ``--min-size`` are skipped; each box is widened by ``--context`` on every
side, squared, kept inside the image and resized to ``--size`` pixels. The train/val split is by
source image (no image feeds both splits), seeded, and balanced per class. Standalone on purpose
(numpy + Pillow + json only) so the set can be rebuilt without installing the package.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

ANNOTATION_LICENSE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), COCO Consortium"
DEFAULT_GROUPS = ("person=person", "object=*")
FLICKR_STATIC = re.compile(r"staticflickr\.com/\d+/(\d+)_")  # .../<server>/<photo id>_<secret>_z.jpg


class CropError(ValueError):
    """Bad input; main() prints the message on one line and exits with code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", required=True, type=Path, help="folder with the COCO image files")
    p.add_argument("--annotations", required=True, type=Path, help="COCO instances json")
    p.add_argument("--out", required=True, type=Path, help="output folder (ImageFolder layout)")
    p.add_argument(
        "--group", action="append", metavar="CLASS=SPEC",
        help="one output class: SPEC is comma-separated COCO category names, 'super:<supercategory>' "
             "entries, or '*' for every category no other group takes (repeatable; default: "
             + " ".join(DEFAULT_GROUPS) + ")",
    )
    p.add_argument("--licenses", default="", help="keep only images whose 'license' id is in this "
                   "comma-separated list, e.g. 4,5,7 (default: all images)")
    p.add_argument("--min-size", type=float, default=24, help="skip boxes whose shorter side is "
                   "below this many pixels (default 24)")
    p.add_argument("--context", type=float, default=0.1, help="widen each box by this fraction of "
                   "its longer side on every side before squaring (default 0.1)")
    p.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    p.add_argument("--val-fraction", type=float, default=0.25, help="share of crops per class in "
                   "val, split by source image (default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image order for the split")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    return p.parse_args(argv)


def load_coco(path: Path) -> dict:
    """Read the instances json and check the fields this script uses."""
    if not path.is_file():
        raise CropError(f"annotations file not found: {path}")
    try:
        coco = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CropError(f"{path}: not valid JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise CropError(f"{path}: expected a COCO instances json with a '{key}' list")
    return coco


def parse_groups(specs: list[str], categories: list[dict]) -> dict[int, str]:
    """Map COCO category id -> output class name from CLASS=SPEC strings."""
    by_name = {c["name"]: c["id"] for c in categories}
    by_super = defaultdict(list)
    for c in categories:
        by_super[c.get("supercategory", "")].append(c["id"])
    cat_to_class: dict[int, str] = {}
    rest_class = None
    for spec in specs:
        name, sep, members = spec.partition("=")
        name = name.strip()
        if not sep or not name or not members.strip() or "/" in name:
            raise CropError(f"--group {spec!r}: expected CLASS=SPEC, e.g. person=person or animal=super:animal")
        for member in (m.strip() for m in members.split(",")):
            if member == "*":
                if rest_class is not None:
                    raise CropError(f"--group {spec!r}: only one group may take '*' (already {rest_class!r})")
                rest_class = name
                continue
            if member.startswith("super:"):
                ids = by_super.get(member[len("super:"):])
                if not ids:
                    raise CropError(f"--group {spec!r}: no supercategory {member[6:]!r}; "
                                    f"known: {', '.join(sorted(by_super))}")
            elif member in by_name:
                ids = [by_name[member]]
            else:
                raise CropError(f"--group {spec!r}: no category {member!r} in the annotations")
            for cid in ids:
                if cid in cat_to_class and cat_to_class[cid] != name:
                    raise CropError(f"--group {spec!r}: category id {cid} is already in class {cat_to_class[cid]!r}")
                cat_to_class[cid] = name
    if rest_class is not None:
        for c in categories:
            cat_to_class.setdefault(c["id"], rest_class)
    return cat_to_class


def parse_licenses(text: str) -> set[int] | None:
    if not text.strip():
        return None
    try:
        return {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        raise CropError(f"--licenses {text!r}: expected comma-separated integer licence ids, e.g. 4,5,7") from None


def square_box(bbox: list[float], width: int, height: int, context: float) -> tuple[int, int, int, int]:
    """Square crop window around a COCO [x, y, w, h] box, widened by context, inside the image."""
    x, y, w, h = bbox
    side = min(max(w, h) * (1 + 2 * context), width, height)
    cx, cy = x + w / 2, y + h / 2
    left = min(max(cx - side / 2, 0), width - side)
    top = min(max(cy - side / 2, 0), height - side)
    return round(left), round(top), round(left + side), round(top + side)


def select_crops(coco: dict, cat_to_class: dict[int, str], licenses: set[int] | None,
                 min_size: float) -> dict[int, list[dict]]:
    """image id -> usable annotations (non-crowd, grouped class, large enough, licence kept)."""
    images = {im["id"]: im for im in coco["images"]}
    per_image: dict[int, list[dict]] = defaultdict(list)
    for ann in coco["annotations"]:
        im = images.get(ann.get("image_id"))
        if im is None or ann.get("iscrowd", 0) or ann.get("category_id") not in cat_to_class:
            continue
        if licenses is not None and im.get("license") not in licenses:
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4):
            raise CropError(f"annotation {ann.get('id')}: expected bbox [x, y, w, h], got {bbox!r}")
        if min(bbox[2], bbox[3]) < min_size:
            continue
        per_image[im["id"]].append(ann)
    return per_image


def split_images(per_image: dict[int, list[dict]], cat_to_class: dict[int, str],
                 val_fraction: float, seed: int) -> dict[int, str]:
    """image id -> 'train' | 'val'. Images are visited in a seeded random order; each goes to val
    when that brings val's per-class crop counts closer to val_fraction of each class total."""
    counts = {i: Counter(cat_to_class[a["category_id"]] for a in anns) for i, anns in per_image.items()}
    total = sum(counts.values(), Counter())
    target = {c: val_fraction * n for c, n in total.items()}
    val: Counter = Counter()
    order = np.random.default_rng(seed).permutation(sorted(per_image))
    split = {}
    for image_id in order.tolist():
        k = counts[image_id]
        gain = sum((val[c] - target[c]) ** 2 - (val[c] + k[c] - target[c]) ** 2 for c in k)
        split[image_id] = "val" if gain > 0 else "train"
        if split[image_id] == "val":
            val.update(k)
    return split


def write_crops(per_image, split, coco, cat_to_class, images_dir: Path, out: Path, args) -> Counter:
    """Save each crop as OUT/<split>/<class>/<stem>_<ann id>.jpg; returns (split, class) counts."""
    images = {im["id"]: im for im in coco["images"]}
    counts: Counter = Counter()
    for image_id in sorted(per_image):
        im = images[image_id]
        path = images_dir / im["file_name"]
        if not path.is_file():
            raise CropError(f"image file not found: {path} (listed in {args.annotations})")
        try:
            with Image.open(path) as f:
                rgb = f.convert("RGB")
        except OSError as e:
            raise CropError(f"{path}: cannot read image ({e})") from None
        for ann in per_image[image_id]:
            cls = cat_to_class[ann["category_id"]]
            box = square_box(ann["bbox"], rgb.width, rgb.height, args.context)
            crop = rgb.crop(box).resize((args.size, args.size), Image.Resampling.LANCZOS)
            dest = out / split[image_id] / cls / f"{Path(im['file_name']).stem}_{ann['id']}.jpg"
            dest.parent.mkdir(parents=True, exist_ok=True)
            crop.save(dest, quality=args.quality)
            counts[split[image_id], cls] += 1
    return counts


def attribution_text(used: list[dict], coco: dict) -> str:
    licenses = {lic.get("id"): lic for lic in coco.get("licenses", [])}
    lines = [
        "# Attribution",
        "",
        "Every image in this folder is a cropped and resized derivative (square object crop, "
        "downscaled or upscaled, re-encoded as JPEG) of a photograph from the COCO 2017 dataset "
        "(https://cocodataset.org). The crops and class labels come from the COCO instance "
        f"annotations, licensed {ANNOTATION_LICENSE}.",
        "",
        "Each crop keeps the licence of its source photograph, listed below (from the `licenses` "
        "section of the COCO json). Crop file names start with the source file's stem: "
        "`<stem>_<annotation id>.jpg`. Crops of ShareAlike photographs are shared under that same "
        "licence. The COCO metadata gives no author names; the Flickr photo page (derived from the "
        "photo id in the Flickr URL) names each photograph's author.",
        "",
        "| source image | Flickr URL | Flickr photo page | COCO URL | licence |",
        "|---|---|---|---|---|",
    ]
    for im in used:
        lic = licenses.get(im.get("license"), {})
        lic_text = f"[{lic['name']}]({lic['url']})" if lic else f"licence id {im.get('license')} (not in json)"
        photo = FLICKR_STATIC.search(im.get("flickr_url", ""))
        page = f"https://www.flickr.com/photo.gne?id={photo.group(1)}" if photo else ""
        lines.append(f"| {im['file_name']} | {im.get('flickr_url', '')} | {page} | {im.get('coco_url', '')} | {lic_text} |")
    return "\n".join(lines) + "\n"


def readme_text(args, argv: list[str], counts: Counter, n_images: Counter) -> str:
    classes = sorted({c for _, c in counts})
    command = shlex.join(["python", "scripts/make_crops.py", *argv])
    bench_command = shlex.join([
        "python", "scripts/make_crops.py", "--images", str(args.images), "--annotations",
        str(args.annotations), "--out", "runs/crops_all", *(f"--group={g}" for g in args.group),
        "--min-size", f"{args.min_size:g}", "--context", f"{args.context:g}", "--size", str(args.size),
        "--quality", str(args.quality), "--val-fraction", f"{args.val_fraction:g}", "--seed", str(args.seed),
    ])
    table = ["| class | train | val |", "|---|---|---|"]
    table += [f"| {c} | {counts['train', c]} | {counts['val', c]} |" for c in classes]
    n_train = sum(counts["train", c] for c in classes)
    n_val = sum(counts["val", c] for c in classes)
    table.append(f"| **total** | {n_train} | {n_val} |")
    filt = f"images whose COCO `license` id is in {{{args.licenses}}}" if args.licenses else "all images"
    return "\n".join([
        "# Object-crop classification set",
        "",
        f"{len(classes)}-class image classification set in torchvision ImageFolder layout "
        "(`train/<class>/*.jpg`, `val/<class>/*.jpg`), cut from the object boxes of a COCO-format "
        f"detection set ({filt}). Classes: {', '.join(classes)}.",
        "",
        "## How it was made",
        "",
        "```",
        command,
        "```",
        "",
        f"- classes (COCO categories merged): {'; '.join(args.group)}",
        f"- skipped: crowd annotations and boxes whose shorter side is below {args.min_size:g} px",
        f"- each box widened by {args.context:g} of its longer side on every side, squared, kept "
        f"inside the image, resized to {args.size}x{args.size} px, JPEG quality {args.quality}",
        f"- split by source image (no image feeds both splits), seed {args.seed}, about "
        f"{args.val_fraction:g} of each class in val; {n_images['train']} train / {n_images['val']} "
        "val source images",
        "- file names: `<source image stem>_<COCO annotation id>.jpg`; sources and licences in "
        "ATTRIBUTION.md",
        "",
        "## Counts",
        "",
        *table,
        "",
        "## Benchmark variant",
        "",
        "The same crops from every image, without the licence filter. The source images' licences do "
        "not all allow redistribution: write it to a run folder and never commit it.",
        "",
        "```",
        bench_command,
        "```",
        "",
    ])


def build(args, argv: list[str]) -> tuple[Path, Counter]:
    """Write the whole set into a temporary sibling of OUT, then move it into place."""
    coco = load_coco(args.annotations)
    if not args.images.is_dir():
        raise CropError(f"images folder not found: {args.images}")
    if args.out.exists() and not args.force:
        raise CropError(f"output folder already exists: {args.out} (pass --force to replace it)")
    if args.size < 8 or not 1 <= args.quality <= 95 or not 0 < args.val_fraction < 1 or args.context < 0:
        raise CropError(f"expected --size >= 8, --quality in 1..95, --val-fraction in (0, 1), --context >= 0; "
                        f"got {args.size}, {args.quality}, {args.val_fraction}, {args.context}")
    args.group = args.group or list(DEFAULT_GROUPS)
    cat_to_class = parse_groups(args.group, coco["categories"])
    per_image = select_crops(coco, cat_to_class, parse_licenses(args.licenses), args.min_size)
    if not per_image:
        raise CropError(f"{args.annotations}: no annotation passes the filters (--licenses "
                        f"{args.licenses or 'all'}, --min-size {args.min_size:g})")
    split = split_images(per_image, cat_to_class, args.val_fraction, args.seed)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{args.out.name}.", dir=args.out.parent))
    try:
        counts = write_crops(per_image, split, coco, cat_to_class, args.images, tmp, args)
        classes = {g.partition("=")[0].strip() for g in args.group}
        for s in ("train", "val"):
            missing = sorted(c for c in classes if not counts[s, c])
            if missing:
                raise CropError(f"class {', '.join(missing)} has no {s} crops ({len(per_image)} source "
                                "images); use more images, a lower --min-size, another --val-fraction or --seed")
        images = {im["id"]: im for im in coco["images"]}
        used = [images[i] for i in sorted(per_image, key=lambda i: images[i]["file_name"])]
        (tmp / "ATTRIBUTION.md").write_text(attribution_text(used, coco))
        (tmp / "README.md").write_text(readme_text(args, argv, counts, Counter(split.values())))
        if args.out.exists():
            shutil.rmtree(args.out)
        tmp.rename(args.out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return args.out, counts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        out, counts = build(args, argv)
    except CropError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in ("train", "val"):
        print(f"{s}: " + ", ".join(f"{c} {n}" for (sp, c), n in sorted(counts.items()) if sp == s))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
