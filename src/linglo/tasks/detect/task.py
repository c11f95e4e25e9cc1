"""Object detection / instance segmentation: torchvision RetinaNet or Mask R-CNN on a timm backbone + FPN,
COCO-format data, COCO box (and mask) AP.

Default recipe: Mask R-CNN 1x — 12 epochs, AdamW lr 2e-4 per 16 images (linear scaling), weight
decay 0.05, shorter side 800 / longer side at most 1333, flip only (multi-scale off), 1 warmup
epoch then cosine. RetinaNet 1x uses the same schedule (--arch retinanet).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from linglo.errors import LingloError
from linglo.extras import require
from linglo.tasks.base import Batch, Task
from linglo.tasks.dense.layouts import backbone_weights, coco_paths
from linglo.tasks.detect.data import CocoDetection, collate
from linglo.tasks.detect.metrics import coco_evaluate, to_coco_results
from linglo.tasks.detect.models import ARCHS, build_detector
from linglo.tasks.images import predict_each

EVAL_SCORE_THRESH = 0.05  # detections kept for COCO AP (torchvision's / detectron2's test threshold)
TRAINABLE_STAGES = 3      # backbone stages trained on top of loaded weights (torchvision's trainable_layers=3)


class DetectTask(Task):
    name = "detect"
    primary_metric = "bbox_AP"
    higher_is_better = True
    defaults = {
        "model": "linglo_t",
        "arch": "maskrcnn",
        "epochs": 12,
        "batch_size": 2,
        "img_size": 800,          # shorter image side
        "max_size": 1333,         # longer image side at most
        "lr_base": 2e-4,
        "lr_base_size": 16,
        "weight_decay": 0.05,
        "warmup_epochs": 1,
        "min_lr": 0.0,
        "ema": False,
        "drop_path": 0.1,
        "fpn_channels": 256,
        "score_thresh": 0.3,      # predict: detections shown and written
        "train_images": None, "train_ann": None, "val_images": None, "val_ann": None,
        "backbone_weights": None,
        "frozen_bn": None,        # None: FrozenBatchNorm2d exactly when --backbone-weights is given (torchvision)
        "trainable_stages": None,  # None: TRAINABLE_STAGES with --backbone-weights, else all
    }
    optional_types = {"train_images": str, "train_ann": str, "val_images": str, "val_ann": str,
                      "backbone_weights": str, "frozen_bn": bool, "trainable_stages": int}
    collate_fn = staticmethod(collate)

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        require("faster_coco_eval", "COCO AP of the detections")   # imported at evaluation: say so before training
        if self.cfg["arch"] not in ARCHS:
            raise LingloError(f"--arch must be one of {', '.join(ARCHS)}, got '{self.cfg['arch']}'")
        for key in ("fpn_channels", "max_size"):
            if self.cfg[key] <= 0:
                raise LingloError(f"--{key.replace('_', '-')} must be > 0, got {self.cfg[key]}")
        self.datasets: dict[str, CocoDetection] = {}

    @property
    def with_masks(self) -> bool:
        return self.cfg["arch"] == "maskrcnn"

    # ---- data -------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> CocoDetection:
        images, ann = coco_paths(self.cfg, split)
        ds = CocoDetection(images, ann, train=split == "train", with_masks=self.with_masks and split == "train",
                           seed=self.cfg["seed"])
        meta = {"num_classes": ds.num_classes, "class_names": ds.class_names, "category_ids": ds.cat_ids}
        if not self.meta:
            self.meta = meta
        elif self.meta["category_ids"] != ds.cat_ids:
            raise LingloError(f"categories of {ann} (ids {ds.cat_ids[:10]}…) differ from the train split's "
                              f"({self.meta['category_ids'][:10]}…)")
        self.datasets[split] = ds
        return ds

    # ---- model and loss ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        c = self.cfg
        # the conventions follow the --backbone-weights flag, not whether this run loads it (eval / predict take
        # the weights from their checkpoint), so a checkpoint is rebuilt with the layers it was trained with
        weighted = bool(c["backbone_weights"])
        frozen_bn = weighted if c["frozen_bn"] is None else c["frozen_bn"]
        trainable = (TRAINABLE_STAGES if weighted else None) if c["trainable_stages"] is None else c["trainable_stages"]
        return build_detector(c["model"], c["arch"], self.meta["num_classes"], min_size=c["img_size"],
                              max_size=c["max_size"], fpn_channels=c["fpn_channels"], drop_path_rate=c["drop_path"],
                              pretrained_path=backbone_weights(c, self.datasets), score_thresh=EVAL_SCORE_THRESH,
                              model_kwargs=c["model_kwargs"], frozen_bn=frozen_bn, trainable_stages=trainable)

    def to_batch(self, raw: Any, device: torch.device, train: bool) -> Batch:
        images, targets = raw
        images = [im.to(device, non_blocking=True) for im in images]  # each 3×H×W in [0, 1]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        return Batch(images, targets, len(images))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        losses = model(batch.inputs, batch.targets)  # torchvision: dict of loss terms in train mode
        return sum(losses.values()), {k: v.item() for k, v in losses.items()}

    # ---- evaluation ---------------------------------------------------------------------------
    def eval_begin(self) -> list[dict]:
        return []  # COCO result dicts of this rank's images

    def eval_step(self, model: nn.Module, batch: Batch, state: list[dict]) -> None:
        for output, target in zip(model(batch.inputs), batch.targets):
            state += to_coco_results(output, target["image_id"], self.meta["category_ids"])

    def eval_end(self, states: Sequence[list[dict]]) -> dict[str, Any]:
        results = [r for s in states for r in s]
        iou_types = ("bbox", "segm") if self.with_masks else ("bbox",)
        metrics: dict[str, Any] = coco_evaluate(self.datasets["val"].coco, results, iou_types)
        metrics["counts"] = {"images": len(self.datasets["val"]), "detections": len(results)}
        return metrics

    # ---- prediction ---------------------------------------------------------------------------
    def predict(self, model: nn.Module, files: Sequence[Path], device: torch.device,
                out_dir: Path | None) -> list[dict[str, Any]]:
        from linglo.tasks.dense.draw import draw_detections, output_names
        names = self.meta["class_names"]
        drawn = dict(zip(files, output_names(files)))

        def predict_one(path: Path, image: torch.Tensor) -> dict[str, Any]:   # image: 3×H×W uint8
            out = model([image.to(device).float().div(255)])[0]
            keep = out["scores"] >= self.cfg["score_thresh"]
            out = {k: v[keep].cpu() for k, v in out.items()}
            dets = to_coco_results(out, 0, self.meta["category_ids"])  # COCO result format (xywh, RLE)
            for d, label in zip(dets, out["labels"].tolist()):
                del d["image_id"]
                d["label"] = names[label - 1]
            record = {"file": str(path), "width": image.shape[-1], "height": image.shape[-2], "detections": dets}
            if out_dir is not None:
                record["drawn"] = str(draw_detections(image, out, names, out_dir / f"{drawn[path]}_det.jpg"))
            return record

        return predict_each(files, predict_one)

    def predict_report(self, predictions: Sequence[Mapping[str, Any]]) -> list[Any]:
        from rich.table import Table
        table = Table(title=f"detections (score >= {self.cfg['score_thresh']})")
        table.add_column("file", overflow="fold")   # whole paths: rows must be told apart
        table.add_column("objects")
        for p in predictions:
            text = p.get("error") or ", ".join(f"{d['label']} {d['score']:.2f}" for d in p["detections"][:8])
            if "detections" in p and len(p["detections"]) > 8:
                text += f", … ({len(p['detections'])} in all)"
            table.add_row(p["file"], text or "-")
        return [table]

    def describe(self) -> dict[str, Any]:
        return {"data": self.cfg["data"] or str(self.datasets.get("train", self.datasets.get("val")).images_dir),
                "arch": self.cfg["arch"],
                "images": {s: len(ds) for s, ds in self.datasets.items()},
                "annotations": {s: ds.stats for s, ds in self.datasets.items()},
                "class_names": self.meta.get("class_names")}
