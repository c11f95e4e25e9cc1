"""COCO box / mask AP of detections against an instances json (faster-coco-eval or pycocotools).

Both backends implement the reference COCOeval protocol; faster-coco-eval (C++) is the default
because it is several times quicker, pycocotools is kept selectable and the tests check that the
two agree. Results use COCO's json result format, so they can be saved and scored elsewhere.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six of COCOeval.stats


def to_coco_results(output: dict[str, torch.Tensor], image_id: int, cat_ids: list[int],
                    mask_threshold: float = 0.5) -> list[dict]:
    """One image's torchvision detections (labels 1..K, xyxy boxes, N×1×H×W mask probabilities)
    as COCO result dicts (category ids, xywh boxes, RLE masks)."""
    boxes = output["boxes"].detach().cpu().float()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    scores = output["scores"].detach().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    rles = []
    if "masks" in output:
        binary = (output["masks"][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)  # N×H×W
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    results = []
    for i, (box, score, label) in enumerate(zip(xywh, scores, labels)):
        r = dict(image_id=image_id, category_id=cat_ids[label - 1], bbox=[round(v, 2) for v in box], score=score)
        if rles:
            rle = rles[i]
            r["segmentation"] = dict(size=rle["size"], counts=rle["counts"].decode("ascii"))
        results.append(r)
    return results


def _evaluate(gt: dict, results: list[dict], iou_type: str, backend: str) -> np.ndarray:
    """COCOeval.stats (12 numbers) for one iou type."""
    with contextlib.redirect_stdout(io.StringIO()):  # both libraries print their tables
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster
            coco_gt = COCO(copy.deepcopy(gt))
            evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type,
                                        print_function=lambda *a, **k: None)
        elif backend == "pycocotools":
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iou_type)
        else:
            raise ValueError(f"unknown COCO evaluation backend {backend!r}")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=float)


def _no_detection_stats(gt: dict) -> np.ndarray:
    """COCOeval.stats[:6] of an empty detector: 0, or -1 for a size range without ground truth."""
    areas = [a.get("area", 0) for a in gt["annotations"] if not a.get("iscrowd", 0)]
    ranges = [(0, 1e10)] * 3 + [(0, 32**2), (32**2, 96**2), (96**2, 1e10)]  # COCOeval's areaRng
    return np.array([0.0 if any(lo <= x <= hi for x in areas) else -1.0 for lo, hi in ranges])


def coco_evaluate(gt: dict, results: list[dict], iou_types: tuple[str, ...] = ("bbox",),
                  backend: str = "faster") -> dict[str, float]:
    """{'bbox_AP', 'bbox_AP50', …, 'segm_APl'} in percent (COCOeval.stats × 100, as papers report);
    -1 where COCO has no ground truth in that size range. No detections at all scores 0 where there
    is ground truth (COCOeval itself would report -1 everywhere)."""
    metrics = {}
    for iou_type in iou_types:
        if results:
            stats = _evaluate(gt, [r for r in results if iou_type != "segm" or "segmentation" in r], iou_type, backend)
        else:
            stats = _no_detection_stats(gt)
        metrics.update({f"{iou_type}_{name}": float(100 * v if v >= 0 else v) for name, v in zip(METRICS, stats)})
    return metrics
