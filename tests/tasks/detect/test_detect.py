"""Detection: COCO reader (masks, crowd, empty images, bad annotations), any-timm pyramid, training
that overfits real images, and the train / eval / predict commands."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dense_fixtures import COCO, coco_subset, warnings_as_errors
from PIL import Image
from torchvision.transforms import v2

from linglo import engine
from linglo.cli.main import main
from linglo.engine.config import resolve
from linglo.errors import LingloError
from linglo.models import legacy_model_kwargs
from linglo.tasks.detect.data import CocoDetection, collate
from linglo.tasks.detect.task import DetectTask
from linglo.tasks.detect.models import build_detector
from linglo.tasks.dense.pyramid import Pyramid

SMALL = ["--img-size", "64", "--max-size", "96", "--workers", "0"]


# ---- reader ----------------------------------------------------------------------------------------
def test_reader_masks_crowd_empty_images_and_labels(tmp_path):
    def edit(d):  # the 4th image keeps no annotation
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != d["images"][3]["id"]]
    images, ann = coco_subset(tmp_path, 4, edit)
    ds = CocoDetection(images, ann, train=False, with_masks=True)
    assert len(ds) == 4 and ds.num_classes == 80 and ds.label_of[90] == 80 and ds.label_of[1] == 1
    image, target = ds[0]
    H, W = image.shape[-2:]
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    n = len(target["labels"])
    assert n == 8 and target["boxes"].shape == (n, 4) and target["masks"].shape == (n, H, W)
    # polygon masks lie inside their boxes and fill a good part of them
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1
    _, empty = ds[3]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape[0] == 0 and empty["labels"].shape == (0,)


def test_reader_drops_crowd_from_training_targets(tmp_path):
    data = json.loads((COCO / "annotations" / "instances_train2017.json").read_text())
    crowd = next(a for a in data["annotations"] if a["iscrowd"])
    idx = next(i for i, im in enumerate(data["images"]) if im["id"] == crowd["image_id"])
    images, ann = coco_subset(tmp_path, idx + 1)
    ds = CocoDetection(images, ann, with_masks=True)
    assert ds.stats["crowd"] >= 1
    image_anns = [a for a in data["annotations"] if a["image_id"] == crowd["image_id"]]
    _, target = ds[idx]
    assert len(target["labels"]) == sum(1 for a in image_anns if not a["iscrowd"])


def test_flip_moves_boxes_with_masks(tmp_path):
    images, ann = coco_subset(tmp_path, 2)
    ds = CocoDetection(images, ann, with_masks=True)
    _, plain = ds[1]
    ds.transform = v2.RandomHorizontalFlip(1.0)
    image, flipped = ds[1]
    W = image.shape[-1]
    torch.testing.assert_close(flipped["boxes"][:, [2, 0]], W - plain["boxes"][:, [0, 2]])
    torch.testing.assert_close(flipped["masks"], plain["masks"].flip(-1))


def test_bad_boxes_are_clipped_or_dropped_with_counts(tmp_path, capsys):
    def edit(d):
        d["annotations"][0]["bbox"] = [-20.0, -10.0, 100.0, 50.0]     # reaches outside: clipped
        d["annotations"][1]["bbox"] = [10.0, 10.0, 0.0, 30.0]         # zero width: dropped
        d["annotations"][2]["bbox"] = [5000.0, 10.0, 20.0, 20.0]      # entirely outside: dropped
    images, ann = coco_subset(tmp_path, 2, edit)
    ds = CocoDetection(images, ann)
    assert ds.stats["clipped"] == 1 and ds.stats["dropped_empty"] == 2
    assert "clipped 1 boxes" in capsys.readouterr().err
    targets = [ds[i][1] for i in range(2)]
    assert min(t["boxes"].min() for t in targets) >= 0 and sum(len(t["labels"]) for t in targets) == 10 - 2


@pytest.mark.parametrize("change, message", [
    (dict(category_id=999), "annotation 4242 has unknown category id 999"),
    (dict(bbox=[1, 2, 3]), "annotation 4242 has bbox [1, 2, 3]"),
    (dict(image_id=12345), "annotation 4242 refers to unknown image id 12345"),
    (dict(segmentation=[]), "annotation 4242 has no segmentation"),
    # json allows NaN and Infinity: refused while reading, not "clipped" or trained on
    (dict(bbox=[float("nan"), 2, 30, 40]), "annotation 4242 has bbox value nan (item 0); expected a finite number"),
    (dict(area=float("inf")), "annotation 4242 has area value inf (item 0); expected a finite number"),
    (dict(segmentation=[[1, 2, 30, 2, 30, float("-inf")]]),
     "annotation 4242 has segmentation polygon 0 value -inf (item 5); expected a finite number"),
    (dict(segmentation={"size": [10, 20], "counts": "ab"}, iscrowd=0),
     "annotation 4242 has an RLE segmentation of size [10, 20] but its image 000000000025.jpg is [426, 640]"),
    (dict(segmentation="a polygon"), "annotation 4242 has segmentation 'a polygon'; expected polygons"),
])
def test_bad_annotations_name_the_file(tmp_path, change, message):
    images, ann = coco_subset(tmp_path, 2, lambda d: d["annotations"][0].update(id=4242, **change))
    with pytest.raises(LingloError) as e:
        CocoDetection(images, ann, with_masks=True)
    assert str(e.value).startswith(f"{ann}: {message}") and "\n" not in str(e.value)


def test_missing_image_file_is_named(tmp_path):
    images, ann = coco_subset(tmp_path, 2, lambda d: d["images"][1].update(file_name="nope.jpg"))
    with pytest.raises(LingloError, match=f"missing image file {images / 'nope.jpg'} "):
        CocoDetection(images, ann)


def test_image_size_differing_from_json_is_named(tmp_path):
    images, ann = coco_subset(tmp_path, 1, lambda d: d["images"][0].update(width=100))
    with pytest.raises(LingloError, match=r"000000000009\.jpg is 640x480 but .* says 100x480"):
        CocoDetection(images, ann)[0]


# ---- backbone pyramid ----------------------------------------------------------------------------
def test_pyramid_picks_strides_4_to_32_of_any_timm_model():
    p = Pyramid("test_resnet")  # its first feature is at stride 2, which is skipped
    feats = p(torch.randn(1, 3, 64, 96))
    assert [f.shape[-2:] for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == p.channels
    with pytest.raises(LingloError, match="no feature map at stride 4"):
        Pyramid("test_vit")
    with pytest.raises(LingloError, match="unknown model 'linglo_tt'"):
        Pyramid("linglo_tt")


def test_pyramid_loads_backbone_weights_and_refuses_another_models(tmp_path):
    import timm
    classifier = timm.create_model("test_convnext", num_classes=3)
    torch.save({"model": classifier.state_dict(), "config": {}}, tmp_path / "best.pt")
    p = Pyramid("test_convnext", pretrained_path=str(tmp_path / "best.pt"))
    torch.testing.assert_close(p.body.stem_0.weight, classifier.stem[0].weight)
    with pytest.raises(LingloError, match=r"best\.pt' do not fit model 'test_resnet': \d+ backbone tensors missing"):
        Pyramid("test_resnet", pretrained_path=str(tmp_path / "best.pt"))
    with pytest.raises(LingloError, match="cannot read backbone weights"):
        Pyramid("test_convnext", pretrained_path=str(tmp_path / "missing.pt"))


TINY_LINGLO = dict(widths=(16, 32, 32, 64), depths=(2, 2, 2, 2), head_dim=16, ls_init_value=1.0)
OLD_CLASSIFIER = Path(__file__).resolve().parents[2] / "data" / "classify_f274e1b.pt"   # see tests/models
OLD_KWARGS = ["widths=(8,16,16,32)", "depths=(2,2,2,2)", "head_dim=8", "window=3", "ls_init=0.5"]


def test_padded_batch_gives_each_image_the_detections_it_gets_alone():
    """Mask R-CNN on LinGlo, eval: two images of different sizes, padded by torchvision into one batch, get the
    boxes, scores, labels and masks each gets alone; without the real-pixel mask reaching the backbone they do
    not (so the check sees the padding)."""
    torch.manual_seed(0)
    det = build_detector("linglo_t", "maskrcnn", 3, min_size=96, max_size=256, fpn_channels=16, score_thresh=0.0,
                         detections_per_img=30, model_kwargs=TINY_LINGLO).eval()
    with torch.no_grad():   # O(1) activations and spread scores (the init's are tiny and nearly equal), biases too
        for p in det.parameters():
            p.normal_(0, 1 / math.sqrt(p[0].numel()) if p.dim() > 1 else 0.3)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 80, 120, generator=g), torch.rand(3, 96, 200, generator=g)]   # resized 96x144, 96x200

    def detect():
        with torch.no_grad():
            return [det([im])[0] for im in images], det(images)

    alone, batch = detect()
    assert all(len(one["scores"]) == 30 for one in alone)
    assert all(_same_detections(one, both) for one, both in zip(alone, batch))
    det.backbone.body.takes_mask = False
    alone, batch = detect()
    assert not _same_detections(alone[0], batch[0])


def _same_detections(a: dict, b: dict, tol: float = 1e-4) -> bool:
    """The same detections (label, box, score, mask within tol), in any order among near-equal scores."""
    if len(a["scores"]) != len(b["scores"]):
        return False
    unused = list(range(len(b["scores"])))
    for i in range(len(a["scores"])):
        match = next((j for j in unused if a["labels"][i] == b["labels"][j]
                      and torch.allclose(a["boxes"][i], b["boxes"][j], rtol=tol, atol=tol)
                      and torch.allclose(a["scores"][i], b["scores"][j], rtol=tol, atol=tol)
                      and torch.allclose(a["masks"][i], b["masks"][j], rtol=tol, atol=tol)), None)
        if match is None:
            return False
        unused.remove(match)
    return True


def test_pyramid_freezes_batch_norm_and_stages_as_torchvision():
    """Frozen BN by default exactly when weights are loaded; trainable_stages=N trains the last N feature stages
    only (the stem and earlier stages frozen, their BatchNorms too); for LinGlo and a peer alike."""
    def frozen_norms(p):
        return {type(m).__name__ for n, m in p.named_modules() if type(m).__name__.endswith("BatchNorm2d")}

    assert frozen_norms(Pyramid("linglo_t", model_kwargs=TINY_LINGLO)) == {"BatchNorm2d"}
    kwargs = legacy_model_kwargs("linglo_t", dict(widths=(8, 16, 16, 32), depths=(2, 2, 2, 2), head_dim=8,
                                                  window=3, ls_init=0.5))   # the 0.1 checkpoint's model
    assert frozen_norms(Pyramid("linglo_t", pretrained_path=str(OLD_CLASSIFIER), model_kwargs=kwargs)) == \
        {"FrozenBatchNorm2d"}
    assert frozen_norms(Pyramid("linglo_t", pretrained_path=str(OLD_CLASSIFIER), model_kwargs=kwargs,
                                frozen_bn=False)) == {"BatchNorm2d"}
    p = Pyramid("linglo_t", model_kwargs=TINY_LINGLO, trainable_stages=2)
    grads = {n.split(".")[2] + ("." + n.split(".")[3] if n.split(".")[2] == "stages" else ""): q.requires_grad
             for n, q in p.named_parameters()}
    assert grads == {"stem": False, "stages.0": False, "stages.1": False, "stages.2": True, "stages.3": True,
                     "head": True}
    assert type(p.body.model.stages[1].blocks[0].norm).__name__ == "FrozenBatchNorm2d"
    assert type(p.body.model.stages[2].blocks[0].norm) is torch.nn.BatchNorm2d
    resnet = Pyramid("test_resnet", trainable_stages=3)   # feature stages: act1 (stride 2), layer1..4
    frozen = {n.split(".")[0] for n, q in resnet.body.named_parameters() if not q.requires_grad}
    assert frozen == {"conv1", "layer1"} and type(resnet.body.bn1).__name__ == "FrozenBatchNorm2d"   # (no parameters)
    assert all(q.requires_grad for q in resnet.body.layer2.parameters())
    assert not any(q.requires_grad for q in Pyramid("test_resnet", trainable_stages=0).parameters())
    with pytest.raises(LingloError, match="--trainable-stages must be 0..4 for 'linglo_t'"):
        Pyramid("linglo_t", model_kwargs=TINY_LINGLO, trainable_stages=5)


def test_backbone_weights_train_with_torchvision_conventions(tmp_path):
    """`linglo train detect --backbone-weights` (an old classify checkpoint) --trainable-stages 2: the stem and
    stages 0-1 end the run as loaded, BatchNorm frozen throughout (no batch statistics kept), stages 2-3 trained."""
    images, ann = coco_subset(tmp_path / "data", 2)
    run = tmp_path / "run"
    assert main(["train", "detect", "--model", "linglo_t", "--model-kwargs", *OLD_KWARGS, "--arch", "retinanet",
                 "--backbone-weights", str(OLD_CLASSIFIER), "--trainable-stages", "2", "--fpn-channels", "16",
                 "--train-images", str(images), "--train-ann", str(ann), "--val-images", str(images),
                 "--val-ann", str(ann), "--epochs", "1", "-b", "2", "--img-size", "96", "--max-size", "128",
                 "--lr", "1e-3", "--warmup-epochs", "0", "--workers", "0", "-o", str(run)]) == 0
    state = torch.load(run / "last.pt", weights_only=True)["model"]
    loaded = torch.load(OLD_CLASSIFIER, weights_only=True)["model"]
    prefix = "backbone.body.body.model."
    backbone = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    assert backbone and not any(k.endswith("num_batches_tracked") for k in backbone)
    for key, value in backbone.items():
        if key.startswith(("stem.", "stages.0.", "stages.1.")) or "running_" in key:
            assert torch.equal(value, loaded[key]), key
    assert not torch.equal(backbone["stages.3.blocks.0.conv_dw.weight"], loaded["stages.3.blocks.0.conv_dw.weight"])
    # the weights were a 0.1 checkpoint: the run records 0.1's architecture, so its own checkpoint evaluates
    assert main(["eval", "detect", "--checkpoint", str(run / "last.pt"), "--workers", "0", "-o", str(tmp_path / "ev"),
                 "--img-size", "96", "--max-size", "128"]) == 0


# ---- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["maskrcnn", "retinanet"])
def test_training_step_accepts_images_without_annotations(tmp_path, arch):
    def edit(d):  # the 2nd image keeps no annotation
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] != d["images"][1]["id"]]
    images, ann = coco_subset(tmp_path, 2, edit)
    ds = CocoDetection(images, ann, train=True, with_masks=arch == "maskrcnn")
    model = build_detector("test_convnext", arch, ds.num_classes, min_size=96, max_size=128, fpn_channels=16)
    imgs, targets = zip(*(ds[i] for i in range(2)))
    assert len(targets[1]["labels"]) == 0
    losses = model(list(imgs), list(targets))
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in losses.values())


def test_mask_rcnn_overfits_four_images(tmp_path):
    """linglo_t + narrow FPN, 4 real photos at 160 px: box AP50 on them rises well above zero."""
    images, ann = coco_subset(tmp_path / "data", 4)
    summary = engine.train("detect", cli_cfg=dict(
        model="linglo_t", arch="maskrcnn", train_images=str(images), train_ann=str(ann), val_images=str(images),
        val_ann=str(ann), img_size=160, max_size=266, fpn_channels=64, epochs=12, batch_size=1, lr=1e-3,
        warmup_epochs=2, clip_grad=1.0, drop_path=0.0, workers=0, output=str(tmp_path / "run")))
    assert summary["best"]["val_bbox_AP50"] > 10, summary["best"]
    first = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert first["status"] == "finished" and "val_segm_AP" in first["last"] and "val_bbox_APl" in first["last"]
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    assert "val_bbox_AP50" in header and "val_segm_AP75" in header


@pytest.fixture(scope="module")
def retinanet_run(tmp_path_factory):
    """(run folder, images folder, json) of a 1-epoch RetinaNet on 2 real photos."""
    tmp = tmp_path_factory.mktemp("detect")
    images, ann = coco_subset(tmp / "data", 2)
    run = tmp / "run"
    assert main(["train", "detect", "--model", "test_convnext", "--arch", "retinanet", "--fpn-channels", "32",
                 "--train-images", str(images), "--train-ann", str(ann), "--val-images", str(images),
                 "--val-ann", str(ann), "--epochs", "1", "-b", "2", "-o", str(run), *SMALL]) == 0
    return run, images, ann


def test_retinanet_train_eval_predict_commands(retinanet_run, tmp_path, capsys):
    run, images, ann = retinanet_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["task"] == "detect" and summary["data"]["arch"] == "retinanet"
    assert "segm_AP" not in str(summary["last"])
    assert main(["eval", "detect", "--checkpoint", str(run / "last.pt"), "-o", str(tmp_path / "ev"), *SMALL]) == 0
    assert "bbox_AP50" in json.loads((tmp_path / "ev" / "eval.json").read_text())["metrics"]
    out = tmp_path / "pred"
    files = [str(COCO / "train2017" / "000000000009.jpg"), str(COCO / "train2017" / "000000000025.jpg")]
    assert main(["predict", "detect", "--checkpoint", str(run / "last.pt"), "--score-thresh", "0.05",
                 "-o", str(out), *files]) == 0
    preds = json.loads((out / "predictions.json").read_text())
    assert [p["file"] for p in preds] == files
    assert all(Path(p["drawn"]) == out / f"{Path(p['file']).name}_det.jpg" and Path(p["drawn"]).is_file()
               for p in preds)
    assert all(d["category_id"] > 0 and len(d["bbox"]) == 4 for p in preds for d in p["detections"])


def test_predict_names_drawn_images_by_path_and_says_where(retinanet_run, tmp_path, capsys, monkeypatch):
    """a/img.jpg, a/img.png and b/img.jpg each get their own picture, predictions.json points each input at its
    own, the "written:" line says where they went, and the table shows every path whole on a narrow terminal."""
    run, _, _ = retinanet_run
    photos = tmp_path / ("a_long_folder_name_" * 4) / "photos"   # longer than the table column
    for name, colour in (("a/img.jpg", "red"), ("a/img.png", "green"), ("b/img.jpg", "blue")):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), colour).save(photos / name)
    out = tmp_path / "pred"
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["predict", "detect", "--checkpoint", str(run / "last.pt"), "-o", str(out), str(photos)]) == 0
    printed = capsys.readouterr().out
    preds = json.loads((out / "predictions.json").read_text())
    drawn = {Path(p["file"]).relative_to(photos).as_posix(): Path(p["drawn"]) for p in preds}
    assert drawn == {"a/img.jpg": out / "a" / "img.jpg_det.jpg", "a/img.png": out / "a" / "img.png_det.jpg",
                     "b/img.jpg": out / "b" / "img.jpg_det.jpg"}
    for name, colour in (("a/img.jpg", (255, 0, 0)), ("a/img.png", (0, 128, 0)), ("b/img.jpg", (0, 0, 255))):
        with Image.open(drawn[name]) as im:   # each picture is drawn on its own input
            assert np.abs(np.asarray(im, float)[24, 1] - colour).max() < 40
    squeezed = "".join(printed.split())   # rich wraps long lines
    assert "".join(f"written: {out / 'predictions.json'} and 3 pictures (drawn predictions, masks) in {out}".split()) in squeezed
    folded = "".join(line.split("│")[1].strip() for line in printed.splitlines() if line.count("│") >= 3)
    assert all(p["file"] in folded for p in preds)


def test_one_bad_file_never_stops_a_folder(retinanet_run, tmp_path):
    """A 10000×20 image (resized to nothing at --max-size 96) and an unreadable file get an error each; the other
    image is predicted and predictions.json is written."""
    run, _, _ = retinanet_run
    Image.new("RGB", (10000, 20), "gray").save(tmp_path / "long.jpg")
    Image.new("RGB", (64, 48), "gray").save(tmp_path / "ok.jpg")
    (tmp_path / "not.jpg").write_bytes(b"not an image")
    out = tmp_path / "pred"
    assert main(["predict", "detect", "--checkpoint", str(run / "last.pt"), "-o", str(out),
                 str(tmp_path / "long.jpg"), str(tmp_path / "not.jpg"), str(tmp_path / "ok.jpg")]) == 0
    long, bad, ok = json.loads((out / "predictions.json").read_text())
    assert long["error"].startswith("cannot predict this 10000x20 image: RuntimeError: ") and "drawn" not in long
    assert bad["error"].startswith(f"cannot read image {tmp_path / 'not.jpg'}")
    assert "detections" in ok and Path(ok["drawn"]).is_file()


def test_training_step_gives_no_warning(tmp_path):
    images, ann = coco_subset(tmp_path, 2)
    task = DetectTask(resolve(DetectTask.defaults, DetectTask.optional_types, cli_cfg=dict(
        model="test_convnext", arch="maskrcnn", img_size=64, max_size=96, fpn_channels=16, train_images=str(images),
        train_ann=str(ann), val_images=str(images), val_ann=str(ann))))
    ds = task.build_dataset("train")
    model = task.build_model().train()
    batch = task.to_batch(collate([ds[0], ds[1]]), torch.device("cpu"), train=True)
    with warnings_as_errors():
        loss, logs = task.loss(model, batch)
    assert torch.isfinite(loss) and set(logs) >= {"loss_classifier", "loss_mask"}


@pytest.mark.parametrize("change, message", [
    (dict(category_id=999), "unknown category id 999"),
    (dict(bbox=[float("nan"), 2, 30, 40]), "has bbox value nan"),
    (dict(segmentation="a polygon"), "has segmentation 'a polygon'"),
    (dict(segmentation={"size": [10, 20], "counts": "ab"}), "has an RLE segmentation of size [10, 20]"),
])
def test_bad_annotation_exits_2_with_one_line(tmp_path, capsys, change, message):
    images, ann = coco_subset(tmp_path, 2, lambda d: d["annotations"][0].update(**change))
    code = main(["train", "detect", "--model", "test_convnext", "--train-images", str(images), "--train-ann",
                 str(ann), "--val-images", str(images), "--val-ann", str(ann), "--workers", "0", "--epochs", "1",
                 "--img-size", "64", "--max-size", "96", "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
