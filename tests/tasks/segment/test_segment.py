"""Segmentation: label mapping and bad masks, layouts, heads on any size, sliding window, metrics,
training that overfits real images, and the train / eval / predict commands."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_fixtures import semseg_subset, warnings_as_errors
from PIL import Image
from torch import nn

from linglo import engine
from linglo.cli.main import main
from linglo.engine.config import resolve
from linglo.errors import LingloError
from linglo.tasks.dense.layouts import seg_paths
from linglo.tasks.segment.data import IGNORE, LabelMap, SegmentationFolder
from linglo.tasks.segment.heads import SegmentationModel
from linglo.tasks.segment.metrics import ConfusionMatrix
from linglo.tasks.segment.task import SegmentTask, slide_logits


def _pair(root, name: str, mask: np.ndarray, image_size=None):
    """root/images/<name>.jpg (grey, image_size or the mask's size) + root/masks/<name>.png."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = image_size or (mask.shape[1], mask.shape[0])
    Image.new("RGB", (w, h), (90, 120, 150)).save(root / "images" / f"{name}.jpg")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{name}.png")


# ---- labels and data -----------------------------------------------------------------------------
def test_label_maps_ade_numbering_and_class_file(tmp_path):
    ade = LabelMap.ade(150)
    raw = np.array([[0, 1, 150]], np.uint8)
    np.testing.assert_array_equal(ade(raw, "x"), [[IGNORE, 0, 149]])
    (tmp_path / "classes.yaml").write_text("classes:\n  0: unlabeled\n  1: person\n  7: train\n  200: rug\n")
    coco = LabelMap.from_yaml(tmp_path / "classes.yaml")
    assert coco.num_classes == 3 and coco.names == ["person", "train", "rug"]
    np.testing.assert_array_equal(coco(np.array([[0, 1, 7, 200]], np.uint8), "x"), [[IGNORE, 0, 1, 2]])


def test_label_value_above_class_count_names_the_file(tmp_path):
    _pair(tmp_path, "a", np.array([[0, 3], [151, 200]]))
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "masks", LabelMap.ade(150), 32, train=False)
    with pytest.raises(LingloError, match=r"masks/a\.png: label values \[151, 200\] are not classes of "
                                          r"--num-classes 150 \(150 classes"):
        ds[0]


def test_mask_of_wrong_size_names_both_files(tmp_path):
    _pair(tmp_path, "a", np.zeros((20, 30)), image_size=(31, 20))
    with pytest.raises(LingloError, match=r"mask .*masks/a\.png is 30x20 but image .*images/a\.jpg is 31x20"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks", LabelMap.ade(), 32, train=False)


def test_images_without_masks_are_skipped_and_orphan_masks_refused(tmp_path, capsys):
    _pair(tmp_path, "a", np.ones((20, 30)))
    Image.new("RGB", (30, 20)).save(tmp_path / "images" / "b.jpg")  # no mask: skipped
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "masks", LabelMap.ade(), 16, train=True)
    assert len(ds) == 1 and ds.skipped == 1 and "skipped 1 of 2 images" in capsys.readouterr().err
    image, mask = ds[0]
    assert image.shape == (3, 16, 16) and mask.shape == (16, 16) and mask.dtype == torch.int64
    Image.fromarray(np.ones((5, 5), np.uint8)).save(tmp_path / "masks" / "c.png")
    with pytest.raises(LingloError, match=r"mask .*c\.png has no image"):
        SegmentationFolder(tmp_path / "images", tmp_path / "masks", LabelMap.ade(), 16, train=False)


def test_rgb_mask_is_refused(tmp_path):
    _pair(tmp_path, "a", np.ones((8, 8)))
    Image.new("RGB", (8, 8)).save(tmp_path / "masks" / "a.png")
    ds = SegmentationFolder(tmp_path / "images", tmp_path / "masks", LabelMap.ade(), 8, train=False)
    with pytest.raises(LingloError, match="has mode RGB; expected a single-channel"):
        ds[0]


def test_layouts_ade20k_coco_semseg_and_explicit(tmp_path):
    for d in ("images/training", "annotations/training", "images/validation", "annotations/validation"):
        (tmp_path / "ade" / d).mkdir(parents=True)
    assert seg_paths({"data": str(tmp_path / "ade")}, "val") == (tmp_path / "ade/images/validation",
                                                                 tmp_path / "ade/annotations/validation")
    for d in ("images/train2017", "masks/train2017"):
        (tmp_path / "coco" / d).mkdir(parents=True)
    assert seg_paths({"data": str(tmp_path / "coco")}, "train")[1] == tmp_path / "coco/masks/train2017"
    with pytest.raises(LingloError, match="has no segmentation val split .* --val-images DIR --val-masks DIR"):
        seg_paths({"data": str(tmp_path / "coco")}, "val")
    assert seg_paths({"data": None, "val_images": "i", "val_masks": "m"}, "val")[1].name == "m"


# ---- model, inference, metrics -------------------------------------------------------------------
@pytest.mark.parametrize("head, backbone", [("fpn", "linglo_t"), ("upernet", "test_resnet")])
def test_heads_return_logits_at_any_input_size(head, backbone):
    model = SegmentationModel(backbone, head, num_classes=5, channels=32)
    model.train()
    out = model(torch.rand(2, 3, 77, 101))
    assert out["out"].shape == (2, 5, 77, 101)
    assert ("aux" in out) == (head == "upernet") and (head != "upernet" or out["aux"].shape == (2, 5, 77, 101))
    model.eval()
    assert list(model(torch.rand(1, 3, 40, 33))) == ["out"]


def test_slide_equals_whole_for_a_pixelwise_model():
    class Pixelwise(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return {"out": self.conv(x)}

    model, x = Pixelwise(), torch.rand(1, 3, 70, 93)
    torch.testing.assert_close(slide_logits(model, x, crop=32, stride=21), model(x)["out"])
    small = x[..., :20, :25]  # smaller than one window
    torch.testing.assert_close(slide_logits(model, small, crop=32, stride=21), model(small)["out"])


def test_confusion_metrics_by_hand():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 3]])  # class 3 never labelled, predicted only on ignore
    cm = ConfusionMatrix(4)
    cm.update(pred, label)
    m = cm.compute()
    # IoU: c0 = 1/(2+3-1) = 1/4, c1 = 2/(2+3-2) = 2/3, c2 = 0/(2+0-0) = 0, c3 undefined (no pixels)
    assert m["mIoU"] == pytest.approx((1 / 4 + 2 / 3 + 0) / 3)
    assert m["mAcc"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["aAcc"] == pytest.approx(3 / 6)


# ---- training ------------------------------------------------------------------------------------
def test_semantic_fpn_overfits_eight_images(tmp_path):
    """linglo_t + narrow Semantic FPN on 8 real photos (128 px crops): mIoU far above a constant guess."""
    data = semseg_subset(tmp_path / "data", 8, short_side=160)
    summary = engine.train("segment", cli_cfg=dict(
        data=str(data), model="linglo_t", head="fpn", head_channels=64, img_size=128, epochs=30, batch_size=4,
        lr=2e-3, drop_path=0.0, workers=0, output=str(tmp_path / "run")))
    # the best constant prediction: every pixel = the most frequent class of the val masks
    ds = SegmentationFolder(data / "images/val2017", data / "masks/val2017", LabelMap.from_yaml(data / "classes.yaml"),
                            128, train=False)
    masks = [ds[i][1] for i in range(len(ds))]
    counts = torch.bincount(torch.cat([m[m != IGNORE] for m in masks]), minlength=ds.label_map.num_classes)
    constant = ConfusionMatrix(ds.label_map.num_classes)
    for m in masks:
        constant.update(torch.full_like(m, int(counts.argmax())), m)
    chance = 100 * constant.compute()["mIoU"]
    last = summary["last"]
    assert last["val_mIoU"] > max(3 * chance, 10), (last, chance)
    assert {"val_mIoU", "val_mAcc", "val_aAcc"} <= set(last)
    assert len(summary["val_detail"]["per_class_iou"]) > 10


def test_upernet_train_eval_slide_predict_commands(tmp_path):
    data = semseg_subset(tmp_path / "data", 2, short_side=72)
    run = tmp_path / "run"
    assert main(["train", "segment", "--data", str(data), "--model", "test_convnext", "--head", "upernet",
                 "--head-channels", "32", "--img-size", "64", "--epochs", "1", "-b", "2", "--workers", "0",
                 "-o", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "segment" and summary["data"]["head"] == "upernet"
    assert main(["eval", "segment", "--checkpoint", str(run / "last.pt"), "--eval-mode", "slide", "--img-size", "48",
                 "--workers", "0", "-o", str(tmp_path / "ev")]) == 0
    assert "mIoU" in json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]
    image = next((data / "images" / "val2017").iterdir())
    assert main(["predict", "segment", "--checkpoint", str(run / "last.pt"), "-o", str(tmp_path / "pred"),
                 str(image)]) == 0
    pred = json.loads((tmp_path / "pred" / "predictions.json").read_text())[0]
    with Image.open(pred["mask"]) as mask, Image.open(image) as im:
        assert mask.size == im.size and set(np.unique(np.array(mask))) <= set(summary["meta"]["raw_ids"])
    assert pred["drawn"] == str(tmp_path / "pred" / f"{image.name}_seg.png") and Path(pred["drawn"]).is_file()
    assert sum(c["fraction"] for c in pred["classes"]) == pytest.approx(1, abs=1e-3)


def test_bad_mask_exits_2_with_one_line(tmp_path, capsys):
    _pair(tmp_path / "d", "a", np.zeros((20, 30)), image_size=(31, 20))
    code = main(["train", "segment", "--model", "test_convnext", "--train-images", str(tmp_path / "d/images"),
                 "--train-masks", str(tmp_path / "d/masks"), "--val-images", str(tmp_path / "d/images"),
                 "--val-masks", str(tmp_path / "d/masks"), "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: mask ") and "is 30x20 but image" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("damage", ["not a png", "cut short"])
def test_unreadable_mask_exits_2_with_one_line(tmp_path, capsys, damage):
    _pair(tmp_path / "d", "a", np.random.default_rng(0).integers(0, 150, (20, 30)))
    mask = tmp_path / "d" / "masks" / "a.png"
    data = mask.read_bytes()
    mask.write_bytes(b"not a png" if damage == "not a png" else data[:len(data) // 2])
    code = main(["train", "segment", "--model", "test_convnext", "--train-images", str(tmp_path / "d/images"),
                 "--train-masks", str(tmp_path / "d/masks"), "--val-images", str(tmp_path / "d/images"),
                 "--val-masks", str(tmp_path / "d/masks"), "--epochs", "1", "--img-size", "16", "-b", "1",
                 "--workers", "0", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: cannot read mask {mask}: ") and len(err.splitlines()) == 1, err


def segment_task(head: str = "fpn") -> SegmentTask:
    task = SegmentTask(resolve(SegmentTask.defaults, SegmentTask.optional_types, cli_cfg=dict(
        model="test_convnext", head=head, head_channels=16, img_size=32, num_classes=3)))
    task.meta = {"num_classes": 3, "class_names": ["a", "b", "c"], "raw_ids": [1, 2, 3]}
    return task


def test_predict_names_outputs_by_path_and_one_bad_file_never_stops_a_folder(tmp_path):
    """a/img.jpg, a/img.png and b/img.jpg each get their own mask and picture; a 10000×20 image (resized to
    nothing at --img-size 32) gets an error and the others are predicted."""
    photos = tmp_path / "photos"
    for name in ("a/img.jpg", "a/img.png", "b/img.jpg", "b/long.jpg"):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10000, 20) if "long" in name else (40, 30), "gray").save(photos / name)
    files = sorted(p for p in photos.rglob("*") if p.is_file())
    task = segment_task()
    with torch.no_grad():
        preds = task.predict(task.build_model().eval(), files, torch.device("cpu"), tmp_path / "out")
    records = {p["file"]: p for p in preds}
    long = records.pop(str(photos / "b/long.jpg"))
    assert long["error"].startswith("cannot predict this 10000x20 image: RuntimeError")
    names = {Path(f).relative_to(photos).as_posix(): (Path(p["mask"]), Path(p["drawn"])) for f, p in records.items()}
    assert names == {n: (tmp_path / "out" / f"{n}_mask.png", tmp_path / "out" / f"{n}_seg.png")
                     for n in ("a/img.jpg", "a/img.png", "b/img.jpg")}
    assert all(m.is_file() and d.is_file() for m, d in names.values())


def test_upernet_training_step_gives_no_warning():
    task = segment_task("upernet")
    model = task.build_model().train()
    batch = task.to_batch((torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))), torch.device("cpu"), True)
    with warnings_as_errors():
        loss, logs = task.loss(model, batch)
    assert torch.isfinite(loss) and set(logs) == {"loss_main", "loss_aux"}
