"""Semantic segmentation: Semantic FPN or UPerNet on a timm backbone, ADE20K-style data, mIoU/mAcc/aAcc.

Default recipe: Semantic FPN 40k — 32 epochs (40k iterations at batch 16 on ADE20K's 20,210
images), 512×512 crops of 0.5–2× rescaled images, flip and colour jitter, AdamW lr 2e-4 per 16
images (linear scaling), weight decay 1e-4, 1 warmup epoch then cosine. UPerNet 160k (Swin's
recipe) is `--head upernet --epochs 127 --lr-base 6e-5 --weight-decay 0.01`. Evaluation resizes
the shorter side to --img-size and scores at the original resolution, on the whole image or with
a sliding window (--eval-mode slide).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from linglo.errors import LingloError
from linglo.tasks.base import Batch, Task
from linglo.tasks.dense.layouts import backbone_weights, seg_classes_file, seg_paths
from linglo.tasks.images import predict_each
from linglo.tasks.segment.data import IGNORE, LabelMap, SegmentationFolder
from linglo.tasks.segment.heads import AUX_WEIGHT, HEADS, SegmentationModel
from linglo.tasks.segment.metrics import ConfusionMatrix

EVAL_MODES = ("whole", "slide")


def collate(batch):
    """Stack equal-sized items (training crops); keep lists when sizes differ (evaluation)."""
    images, masks = zip(*batch)
    same = len({im.shape for im in images}) == 1 and len({m.shape for m in masks}) == 1
    return (torch.stack(images), torch.stack(masks)) if same else (list(images), list(masks))


def slide_logits(model: nn.Module, image: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """1×K×H×W logits averaged over crop×crop windows `stride` apart (mmsegmentation's 'slide')."""
    H, W = image.shape[-2:]
    rows = max(math.ceil((H - crop) / stride), 0) + 1
    cols = max(math.ceil((W - crop) / stride), 0) + 1
    total, count = None, image.new_zeros(1, 1, H, W)
    for r in range(rows):
        for c in range(cols):
            y, x = min(r * stride, max(H - crop, 0)), min(c * stride, max(W - crop, 0))
            out = model(image[..., y:y + crop, x:x + crop])["out"].float()  # 1×K×h×w
            if total is None:
                total = image.new_zeros(1, out.shape[1], H, W)
            total[..., y:y + crop, x:x + crop] += out
            count[..., y:y + crop, x:x + crop] += 1
    return total / count


class SegmentTask(Task):
    name = "segment"
    primary_metric = "mIoU"
    higher_is_better = True
    defaults = {
        "model": "linglo_t",
        "head": "fpn",
        "epochs": 32,
        "batch_size": 16,
        "img_size": 512,          # training crop; evaluation shorter side
        "lr_base": 2e-4,
        "lr_base_size": 16,
        "weight_decay": 1e-4,
        "warmup_epochs": 1,
        "min_lr": 0.0,
        "ema": False,
        "drop_path": 0.1,
        "head_channels": None,    # None: the head's recipe width (fpn 256, upernet 512)
        "num_classes": 150,       # ADE20K numbering (raw 1..K) when there is no class file
        "classes": None,          # YAML `classes: {id: name}`; default ROOT/classes.yaml if present
        "eval_mode": "whole",
        "slide_stride": None,     # None: 2/3 of --img-size (341 for 512, as mmsegmentation)
        "train_images": None, "train_masks": None, "val_images": None, "val_masks": None,
        "backbone_weights": None,
        "frozen_bn": False,       # mmsegmentation trains the backbone's norms
        "trainable_stages": None,  # None: all
    }
    optional_types = {"head_channels": int, "classes": str, "slide_stride": int, "train_images": str,
                      "train_masks": str, "val_images": str, "val_masks": str, "backbone_weights": str,
                      "trainable_stages": int}
    collate_fn = staticmethod(collate)

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.cfg
        if c["head"] not in HEADS:
            raise LingloError(f"--head must be one of {', '.join(HEADS)}, got '{c['head']}'")
        if c["eval_mode"] not in EVAL_MODES:
            raise LingloError(f"--eval-mode must be one of {', '.join(EVAL_MODES)}, got '{c['eval_mode']}'")
        for key in ("num_classes", "head_channels", "slide_stride"):
            if c[key] is not None and c[key] <= 0:
                raise LingloError(f"--{key.replace('_', '-')} must be > 0, got {c[key]}")
        self.datasets: dict[str, SegmentationFolder] = {}
        self._label_map: LabelMap | None = None

    # ---- data -------------------------------------------------------------------------------
    def label_map(self) -> LabelMap:
        if self._label_map is None:
            path = seg_classes_file(self.cfg)
            self._label_map = LabelMap.from_yaml(path) if path else LabelMap.ade(self.cfg["num_classes"])
        return self._label_map

    def build_dataset(self, split: str) -> SegmentationFolder:
        images, masks = seg_paths(self.cfg, split)
        lm = self.label_map()
        ds = SegmentationFolder(images, masks, lm, self.cfg["img_size"], train=split == "train", seed=self.cfg["seed"])
        meta = {"num_classes": lm.num_classes, "class_names": lm.names, "raw_ids": lm.raw_ids}
        if not self.meta:
            self.meta = meta
        self.datasets[split] = ds
        return ds

    # ---- model and loss ---------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        c = self.cfg
        return SegmentationModel(c["model"], c["head"], self.meta["num_classes"], channels=c["head_channels"],
                                 drop_path_rate=c["drop_path"], pretrained_path=backbone_weights(c, self.datasets),
                                 model_kwargs=c["model_kwargs"], frozen_bn=c["frozen_bn"],
                                 trainable_stages=c["trainable_stages"])

    def to_batch(self, raw: Any, device: torch.device, train: bool) -> Batch:
        images, masks = raw  # B×3×H×W and B×H×W, or lists of differently sized items
        if torch.is_tensor(images):
            return Batch(images.to(device, non_blocking=True), masks.to(device, non_blocking=True), len(images))
        return Batch([im.to(device) for im in images], [m.to(device) for m in masks], len(images))

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        out = model(batch.inputs)  # {'out': B×K×H×W (+ 'aux')}
        main = F.cross_entropy(out["out"].float(), batch.targets, ignore_index=IGNORE)
        if "aux" not in out:
            return main, {}
        aux = F.cross_entropy(out["aux"].float(), batch.targets, ignore_index=IGNORE)
        return main + AUX_WEIGHT * aux, {"loss_main": main.item(), "loss_aux": aux.item()}

    # ---- evaluation ---------------------------------------------------------------------------
    def logits(self, model: nn.Module, image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """1×K×size logits of one 3×h×w image (resized for the model), upsampled to `size`."""
        x = image[None]
        if self.cfg["eval_mode"] == "slide":
            crop = self.cfg["img_size"]
            out = slide_logits(model, x, crop, self.cfg["slide_stride"] or max(1, crop * 2 // 3))
        else:
            out = model(x)["out"]
        return F.interpolate(out.float(), size=size, mode="bilinear", align_corners=False)

    def eval_begin(self) -> torch.Tensor:
        n = self.meta["num_classes"]
        return torch.zeros(n, n, dtype=torch.int64)  # label × prediction pixel counts

    def eval_step(self, model: nn.Module, batch: Batch, state: torch.Tensor) -> None:
        cm = ConfusionMatrix(self.meta["num_classes"])
        for image, mask in zip(batch.inputs, batch.targets):
            pred = self.logits(model, image, tuple(mask.shape[-2:])).argmax(1)[0]  # H×W
            cm.update(pred, mask)
        state += cm.matrix

    def eval_end(self, states: Sequence[torch.Tensor]) -> dict[str, Any]:
        cm = ConfusionMatrix(self.meta["num_classes"])
        for s in states:
            cm.merge(s)
        if cm.matrix.sum() == 0:
            raise LingloError("evaluation saw no labelled pixels")
        metrics: dict[str, Any] = {k: 100.0 * v for k, v in cm.compute().items()}
        iou, acc = cm.per_class()
        names = self.meta["class_names"]
        metrics["per_class_iou"] = {n: round(100.0 * float(v), 2) for n, v in zip(names, iou) if not v.isnan()}
        metrics["per_class_acc"] = {n: round(100.0 * float(v), 2) for n, v in zip(names, acc) if not v.isnan()}
        return metrics

    def eval_report(self, metrics: Mapping[str, Any], out_dir: Path | None) -> list[Any]:
        from rich.table import Table
        ious = metrics["per_class_iou"]
        shown = sorted(ious, key=ious.get, reverse=True)
        table = Table(title=f"per-class IoU % ({len(ious)} classes present; best and worst 10)" if len(shown) > 20
                      else "per-class IoU %")
        table.add_column("class")
        table.add_column("IoU %", justify="right")
        table.add_column("Acc %", justify="right")
        for name in (shown[:10] + shown[-10:] if len(shown) > 20 else shown):
            table.add_row(name, f"{ious[name]:.1f}", f"{metrics['per_class_acc'].get(name, float('nan')):.1f}")
        return [table]

    # ---- prediction ---------------------------------------------------------------------------
    def predict(self, model: nn.Module, files: Sequence[Path], device: torch.device,
                out_dir: Path | None) -> list[dict[str, Any]]:
        from linglo.tasks.dense.draw import draw_segmentation, output_names, save_label_png
        size = self.cfg["img_size"]
        resize = v2.Resize(size, max_size=4 * size, antialias=True)
        names, raw_ids = self.meta["class_names"], torch.tensor(self.meta["raw_ids"])
        drawn = dict(zip(files, output_names(files)))

        def predict_one(path: Path, image: torch.Tensor) -> dict[str, Any]:   # image: 3×H×W uint8
            H, W = image.shape[-2:]
            x = resize(image).to(device).float().div(255)
            pred = self.logits(model, x, (H, W)).argmax(1)[0].cpu()  # H×W train ids
            ids, counts = pred.unique(return_counts=True)
            order = counts.argsort(descending=True)
            record = {"file": str(path), "width": W, "height": H,
                      "classes": [{"label": names[int(ids[i])], "id": int(raw_ids[ids[i]]),
                                   "fraction": round(float(counts[i]) / (H * W), 4)} for i in order]}
            if out_dir is not None:
                record["mask"] = str(save_label_png(raw_ids[pred], out_dir / f"{drawn[path]}_mask.png"))
                record["drawn"] = str(draw_segmentation(image, pred, len(names), out_dir / f"{drawn[path]}_seg.png"))
            return record

        return predict_each(files, predict_one)

    def predict_report(self, predictions: Sequence[Mapping[str, Any]]) -> list[Any]:
        from rich.table import Table
        table = Table(title="segmentation (classes by area)")
        table.add_column("file", overflow="fold")   # whole paths: rows must be told apart
        table.add_column("classes")
        for p in predictions:
            text = p.get("error") or ", ".join(f"{c['label']} {100 * c['fraction']:.0f}%" for c in p["classes"][:6])
            table.add_row(p["file"], text)
        return [table]

    def describe(self) -> dict[str, Any]:
        lm = self._label_map
        return {"data": self.cfg["data"] or str(next(iter(self.datasets.values())).pairs[0][0].parent),
                "head": self.cfg["head"],
                "images": {s: len(ds) for s, ds in self.datasets.items()},
                "skipped_without_mask": {s: ds.skipped for s, ds in self.datasets.items()},
                "classes": lm.source if lm else None,
                "class_names": self.meta.get("class_names")}
