"""COCO AP: our evaluator (faster-coco-eval) equals pycocotools, hand-computed cases, result conversion."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from dense_fixtures import coco_json
from pycocotools import mask as mask_utils

from linglo.tasks.detect.metrics import METRICS, coco_evaluate, to_coco_results


def _fixed_predictions(gt: dict, seed: int = 0) -> list[dict]:
    """Jittered copies of the ground truth (some with a wrong class), plus false positives; masks are
    the ground-truth boxes' rectangles, so segm AP differs from bbox AP."""
    rng = random.Random(seed)
    cats = [c["id"] for c in gt["categories"]]
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    results = []
    for a in gt["annotations"]:
        if rng.random() < 0.15:
            continue
        x, y, w, h = (v * (1 + rng.uniform(-0.25, 0.25)) for v in a["bbox"])
        cat = a["category_id"] if rng.random() < 0.85 else rng.choice(cats)
        results.append(dict(image_id=a["image_id"], category_id=cat, bbox=[x, y, w, h], score=rng.random()))
    for image_id in list(sizes)[::3]:
        results.append(dict(image_id=image_id, category_id=rng.choice(cats), bbox=[10, 20, 60, 40], score=rng.random()))
    for r in results:
        H, W = sizes[r["image_id"]]
        rle = mask_utils.frPyObjects(np.array([r["bbox"]], dtype=float), H, W)[0]  # the box as a rectangle mask
        r["segmentation"] = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
    return results


def test_faster_coco_eval_equals_pycocotools():
    gt = coco_json()
    gt["images"] = gt["images"][:40]
    ids = {im["id"] for im in gt["images"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in ids]  # includes crowd RLEs
    results = _fixed_predictions(gt)
    ours = coco_evaluate(gt, results, ("bbox", "segm"), backend="faster")
    ref = coco_evaluate(gt, results, ("bbox", "segm"), backend="pycocotools")
    assert set(ours) == {f"{t}_{m}" for t in ("bbox", "segm") for m in METRICS}
    for key in ours:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    assert 5 < ours["bbox_AP50"] < 95 and ours["segm_AP"] != ours["bbox_AP"]  # a non-trivial case


def _one_box_gt() -> dict:
    return {"images": [{"id": 1, "width": 200, "height": 200, "file_name": "a.jpg"}],
            "categories": [{"id": 7, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [0, 0, 100, 100],
                             "area": 10000, "iscrowd": 0}]}


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_hand_computed_ap(backend):
    gt = _one_box_gt()
    # IoU 0.62 matches at thresholds 0.50, 0.55, 0.60 of the ten: AP = 3/10; a large object (area > 96²)
    m = coco_evaluate(gt, [dict(image_id=1, category_id=7, bbox=[0, 0, 100, 62], score=0.9)], backend=backend)
    assert m["bbox_AP"] == pytest.approx(30.0)
    assert m["bbox_AP50"] == pytest.approx(100.0) and m["bbox_AP75"] == pytest.approx(0.0)
    assert m["bbox_APl"] == pytest.approx(30.0) and m["bbox_APs"] == -1 and m["bbox_APm"] == -1
    # a higher-scored false positive before the true positive: precision 1/2 at recall 1 -> AP50 = 50
    fp_first = [dict(image_id=1, category_id=7, bbox=[150, 150, 40, 40], score=0.9),
                dict(image_id=1, category_id=7, bbox=[0, 0, 100, 100], score=0.5)]
    assert coco_evaluate(gt, fp_first, backend=backend)["bbox_AP50"] == pytest.approx(50.0)


def test_no_detections_scores_zero_where_there_is_ground_truth():
    expected = {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": -1.0, "APm": -1.0, "APl": 0.0}  # one large box
    assert coco_evaluate(_one_box_gt(), [], ("bbox", "segm")) == {f"{t}_{m}": v for t in ("bbox", "segm")
                                                                  for m, v in expected.items()}


def test_to_coco_results_converts_boxes_labels_and_masks():
    masks = torch.zeros(2, 1, 30, 40)
    masks[0, 0, 5:10, 2:8] = 0.9
    masks[1, 0, 20:, 30:] = 0.7
    masks[1, 0, 0, 0] = 0.3  # below the 0.5 threshold
    out = {"boxes": torch.tensor([[2.0, 5.0, 8.0, 10.0], [30.0, 20.0, 40.0, 30.0]]),
           "labels": torch.tensor([1, 3]), "scores": torch.tensor([0.8, 0.6]), "masks": masks}
    res = to_coco_results(out, image_id=42, cat_ids=[5, 9, 11])
    assert [r["category_id"] for r in res] == [5, 11]
    assert res[0]["bbox"] == [2.0, 5.0, 6.0, 5.0] and res[1]["image_id"] == 42
    for r, m in zip(res, masks):
        rle = dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle), (m[0] > 0.5).numpy())
