"""The embedded default dataset (src/linglo/assets/default_dataset) and its builder scripts/make_crops.py."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_crops.py"
# find_spec locates the installed package without running linglo/__init__ (no model imports needed)
DATASET = Path(importlib.util.find_spec("linglo").origin).parent / "assets" / "default_dataset"
# COCO licence names that allow redistribution of derivatives with attribution (ids 4, 5, 7)
PERMISSIVE = {"Attribution License", "Attribution-ShareAlike License", "No known copyright restrictions"}


def source_stem(path: str | Path) -> str:
    """Crop file '<image stem>_<annotation id>.jpg' -> '<image stem>'."""
    return Path(path).stem.rsplit("_", 1)[0]


def attribution_rows(root: Path) -> dict[str, str]:
    """ATTRIBUTION.md table -> {source file name: licence name}."""
    rows = {}
    for line in (root / "ATTRIBUTION.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].endswith(".jpg"):
            rows[cells[0]] = re.sub(r"^\[(.*)\]\(.*\)$", r"\1", cells[4])
    return rows


@pytest.fixture(scope="module")
def shipped():
    return ImageFolder(str(DATASET / "train")), ImageFolder(str(DATASET / "val"))


def test_shipped_dataset_loads_with_same_nonempty_classes(shipped):
    train, val = shipped
    assert train.classes == val.classes and len(train.classes) >= 2
    for ds in (train, val):
        counts = np.bincount(ds.targets, minlength=len(ds.classes))
        assert (counts > 0).all(), f"{ds.root}: empty class in {dict(zip(ds.classes, counts))}"
    sizes = {Image.open(p).size for p, _ in train.samples + val.samples}
    assert len(sizes) == 1, f"crops should share one size, got {sizes}"


def test_shipped_dataset_is_small():
    total = sum(p.stat().st_size for p in DATASET.rglob("*") if p.is_file())
    assert total < 3 * 2**20, f"{DATASET} is {total / 2**20:.2f} MiB"


def test_shipped_split_is_by_source_image(shipped):
    train, val = shipped
    shared = {source_stem(p) for p, _ in train.samples} & {source_stem(p) for p, _ in val.samples}
    assert not shared, f"source images in both splits: {sorted(shared)}"


def test_shipped_attribution_lists_every_source_with_permissive_licence(shipped):
    train, val = shipped
    used = {source_stem(p) + ".jpg" for p, _ in train.samples + val.samples}
    rows = attribution_rows(DATASET)
    assert set(rows) == used
    assert set(rows.values()) <= PERMISSIVE, set(rows.values()) - PERMISSIVE
    assert "CC BY 4.0" in (DATASET / "ATTRIBUTION.md").read_text()


def test_shipped_readme_counts_match_files(shipped):
    readme = (DATASET / "README.md").read_text()
    assert "scripts/make_crops.py" in readme and "--licenses" in readme
    for split in shipped:
        counts = np.bincount(split.targets, minlength=len(split.classes))
        for cls, n in zip(split.classes, counts):
            row = re.search(rf"^\| {cls} \| (\d+) \| (\d+) \|$", readme, re.M)
            assert row, f"README has no count row for {cls}"
            assert int(row.group(1 if split.root.endswith("train") else 2)) == n


def make_fake_coco(root: Path) -> tuple[Path, Path]:
    """Three 100x80 noise images (licences 4, 4, 2), each with one person, one dog, a crowd and a tiny box."""
    images_dir = root / "images"
    images_dir.mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id, lic in ((1, 4), (2, 4), (3, 2)):
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": image_id, "file_name": name, "width": 100, "height": 80, "license": lic,
                       "flickr_url": f"http://farm1.staticflickr.com/1/{1000 + image_id}_abc_z.jpg",
                       "coco_url": f"http://images.cocodataset.org/train2017/{name}"})
        boxes = [(1, [10, 10, 30, 40], 0), (2, [50, 20, 30, 30], 0), (1, [0, 0, 60, 60], 1), (2, [5, 5, 6, 6], 0)]
        for k, (cat, bbox, crowd) in enumerate(boxes):
            annotations.append({"id": image_id * 10 + k, "image_id": image_id, "category_id": cat,
                                "bbox": bbox, "iscrowd": crowd, "area": bbox[2] * bbox[3]})
    coco = {
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 2, "name": "dog", "supercategory": "animal"}],
        "licenses": [{"id": 2, "name": "Attribution-NonCommercial License", "url": "http://nc"},
                     {"id": 4, "name": "Attribution License", "url": "http://by"}],
    }
    ann_file = root / "instances.json"
    ann_file.write_text(json.dumps(coco))
    return images_dir, ann_file


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_make_crops_layout_split_and_licence_filter(tmp_path):
    images_dir, ann_file = make_fake_coco(tmp_path)
    out = tmp_path / "crops"
    res = run_script("--images", images_dir, "--annotations", ann_file, "--out", out, "--licenses", "4",
                     "--min-size", 12, "--size", 32, "--val-fraction", 0.5)
    assert res.returncode == 0, res.stderr
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    # one person + one dog crop per kept image; crowd and tiny boxes skipped; licence-2 image dropped
    assert len(files) == 4 and not any(source_stem(f).endswith("3") for f in files)
    assert {f.split("/")[1] for f in files} == {"object", "person"}
    train, val = ImageFolder(str(out / "train")), ImageFolder(str(out / "val"))
    assert train.classes == val.classes == ["object", "person"]
    assert len(train) == len(val) == 2
    assert not {source_stem(p) for p, _ in train.samples} & {source_stem(p) for p, _ in val.samples}
    assert {Image.open(p).size for p, _ in train.samples + val.samples} == {(32, 32)}
    assert attribution_rows(out) == {"000000000001.jpg": "Attribution License", "000000000002.jpg": "Attribution License"}
    assert "photo.gne?id=1001" in (out / "ATTRIBUTION.md").read_text()
    assert "| person | 1 | 1 |" in (out / "README.md").read_text()

    res = run_script("--images", images_dir, "--annotations", ann_file, "--out", out, "--force",
                     "--min-size", 12, "--group", "person=person", "--group", "animal=super:animal")
    assert res.returncode == 0, res.stderr
    assert sorted(attribution_rows(out)) == ["000000000001.jpg", "000000000002.jpg", "000000000003.jpg"]
    assert ImageFolder(str(out / "train")).classes == ["animal", "person"]


@pytest.mark.parametrize("which, message", [("annotations", "annotations file not found"),
                                            ("images", "images folder not found")])
def test_make_crops_missing_input_is_one_line_error(tmp_path, which, message):
    images_dir, ann_file = make_fake_coco(tmp_path)
    paths = {"images": images_dir, "annotations": ann_file, which: tmp_path / "missing"}
    res = run_script("--images", paths["images"], "--annotations", paths["annotations"], "--out", tmp_path / "o")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and message in res.stderr and "missing" in res.stderr
    assert not (tmp_path / "o").exists()
