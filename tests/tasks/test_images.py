"""Reading images (EXIF orientation, 16-bit), unreadable images in evaluation, and augmentation that does not
depend on --workers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image
from torch import nn

from linglo.cli.main import main
from linglo.engine.checkpoint import load_checkpoint
from linglo.tasks.classify.data import CheckedImageFolder
from linglo.tasks.detect.data import CocoDetection
from linglo.tasks.images import read_image
from linglo.tasks.segment.data import LabelMap, SegmentationFolder

TINY = ["--model", "test_convnext", "--img-size", "32", "--batch-size", "4", "--epochs", "1"]


def sideways_photo(path: Path) -> np.ndarray:
    """Save a 30 wide × 20 high JPEG tagged EXIF orientation 6 (shown turned 90° clockwise); return the H×W×3
    uint8 array a viewer shows (20 wide × 30 high)."""
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[:, :10] = (230, 30, 30)       # left third red, the rest blue, top rows green: no symmetry
    stored[:, 10:] = (30, 30, 230)
    stored[:4] = (30, 230, 30)
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    return np.rot90(stored, k=-1).copy()


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(float) - b).mean()) < 8   # JPEG's error is far below


# ---- reading images ----------------------------------------------------------------------------------
def test_exif_orientation_is_applied_in_classify_detect_and_segment(tmp_path):
    (tmp_path / "cls" / "a").mkdir(parents=True)
    shown = sideways_photo(tmp_path / "cls" / "a" / "p.jpg")
    # classification: the ImageFolder's loader
    image, _ = CheckedImageFolder(tmp_path / "cls")[0]
    assert close(np.asarray(image), shown)
    # detection and predict-drawing: the uint8 tensor reader; the json gives the shown size, 20 × 30
    assert close(read_image(tmp_path / "cls" / "a" / "p.jpg").permute(1, 2, 0).numpy(), shown)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "p.jpg", "width": 20, "height": 30}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 20],
                                                "area": 200, "iscrowd": 0}],
                               "categories": [{"id": 1, "name": "thing"}]}))
    x, target = CocoDetection(tmp_path / "cls" / "a", ann)[0]
    assert x.shape == (3, 30, 20) and target["boxes"].tolist() == [[2, 3, 12, 23]]
    # segmentation: a mask drawn on the image as shown pairs with it
    (tmp_path / "seg" / "images").mkdir(parents=True)
    (tmp_path / "seg" / "masks").mkdir()
    sideways_photo(tmp_path / "seg" / "images" / "p.jpg")
    Image.fromarray(np.ones((30, 20), np.uint8)).save(tmp_path / "seg" / "masks" / "p.png")
    ds = SegmentationFolder(tmp_path / "seg" / "images", tmp_path / "seg" / "masks", LabelMap.ade(2), 30, train=False)
    x, mask = ds[0]
    assert x.shape == (3, 45, 30) and mask.shape == (30, 20)   # shorter side resized to 30; the mask as stored


def test_classify_predict_sees_the_photo_upright(tmp_path):
    from tasks.classify.test_classify import make_task
    shown = sideways_photo(tmp_path / "sideways.jpg")
    Image.fromarray(shown).save(tmp_path / "upright.jpg", quality=95)
    task = make_task(topk=2)
    task.meta = {"num_classes": 2, "class_names": ["a", "b"]}
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2)).eval()   # depends on where each colour is
    with torch.no_grad():
        sideways, upright = task.predict(model, [tmp_path / "sideways.jpg", tmp_path / "upright.jpg"],
                                         torch.device("cpu"), None)
    assert sideways["top"][0]["prob"] == pytest.approx(upright["top"][0]["prob"], abs=0.02)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    values = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)   # 0 .. 65520
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as im:
        assert im.mode == "I;16"
    rgb = read_image(tmp_path / "deep.png")   # 3×H×W uint8
    for channel in rgb:
        np.testing.assert_array_equal(channel.numpy(), values >> 8)


# ---- unreadable images in evaluation ------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tiny_folder_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--workers", "0", "--output", str(out)]) == 0
    return out / "last.pt"


def corrupt_inside(path: Path) -> Path:
    """Re-save as a PNG whose compressed pixel data is damaged but whose header and end are intact: the folder
    scan accepts it, decoding fails."""
    png = path.with_suffix(".png")
    with Image.open(path) as im:
        im.save(png)
    path.unlink()
    data = bytearray(png.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start:start + 40] = bytes(40)
    png.write_bytes(bytes(data))
    return png


def test_unreadable_val_images_are_left_out_and_named(checkpoint, tiny_folder, tmp_path, capsys):
    """One JPEG cut short (found by the scan) and one PNG corrupt inside (found when decoded): evaluation counts
    the 6 readable images once each, and names both files."""
    ants = sorted((tiny_folder / "val" / "ants").iterdir())
    ants[0].write_bytes(ants[0].read_bytes()[:-300])
    broken = corrupt_inside(ants[1])
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(tiny_folder), "--workers", "0",
                 "--batch-size", "2", "--output", str(out)]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert sum(map(sum, result["metrics"]["confusion_matrix"])) == 6
    assert sorted(result["data"]["skipped_files"]) == sorted([str(ants[0]), str(broken)])
    assert result["data"]["skipped_images"] == 2
    assert f"unreadable image {broken} left out" in capsys.readouterr().err


def test_training_replaces_an_image_that_fails_to_decode_and_says_so(tiny_folder, capsys):
    ds = CheckedImageFolder(tiny_folder / "train", substitute=True)
    broken = corrupt_inside(Path(ds.samples[0][0]))
    ds = CheckedImageFolder(tiny_folder / "train", substitute=True)
    index = [p for p, _ in ds.samples].index(str(broken))
    image, target = ds[index]
    assert isinstance(image, Image.Image) and ds.samples[index + 1][1] == target
    assert f"unreadable image {broken} replaced by the next image" in capsys.readouterr().err


# ---- augmentation does not depend on --workers --------------------------------------------------------
def test_dense_augmentation_depends_on_seed_epoch_and_index_only(tmp_path):
    """An item's random crop / flip is the same whatever the caller's random state (as in another loader
    worker), leaves that state alone, and changes with the epoch."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
        Image.fromarray(rng.integers(0, 3, (40, 50), dtype=np.uint8)).save(tmp_path / "masks" / f"{i}.png")
    seg = SegmentationFolder(tmp_path / "images", tmp_path / "masks", LabelMap.ade(2), 24, train=True, seed=3)
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png", "width": 50, "height": 40}
                                          for i in range(3)],
                               "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [2, 3, 10, 20],
                                                "area": 200, "iscrowd": 0}],
                               "categories": [{"id": 1, "name": "thing"}]}))
    det = CocoDetection(tmp_path / "images", ann, train=True, seed=3)

    def items(ds):
        return [torch.cat([x.flatten(), (y["boxes"] if isinstance(y, dict) else y).flatten().float()])
                for x, y in (ds[i] for i in range(len(ds)))]

    for ds in (det, seg):
        state = torch.get_rng_state()
        first = items(ds)
        assert torch.equal(torch.get_rng_state(), state)
        torch.manual_seed(1234)
        assert all(torch.equal(a, b) for a, b in zip(first, items(ds)))
    seg.set_epoch(1)   # seg's first items: random 0.5-2x rescale and crop, so another epoch differs
    assert not all(torch.equal(a, b) for a, b in zip(first, items(seg)))


def test_workers_0_and_2_train_the_same_weights(tiny_folder_session, tmp_path):
    """The DeiT recipe (RandAugment, random erasing, mixup/cutmix) with the same seed: one epoch in the main
    process and one with two loader workers end with identical weights and metrics."""
    runs = {}
    for workers in ("0", "2"):
        out = tmp_path / f"w{workers}"
        assert main(["train", "--data", str(tiny_folder_session), *TINY, "--workers", workers, "--no-ema",
                     "--output", str(out)]) == 0
        runs[workers] = (load_checkpoint(out / "last.pt")["model"], json.loads((out / "summary.json").read_text()))
    (w0, s0), (w2, s2) = runs["0"], runs["2"]
    assert all(torch.equal(w0[k], w2[k]) for k in w0)
    assert s0["last"]["train_loss"] == s2["last"]["train_loss"] and s0["last"]["val_loss"] == s2["last"]["val_loss"]
