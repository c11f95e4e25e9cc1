"""Semantic segmentation metrics from a confusion matrix (mmsegmentation's definitions).

aAcc = correct pixels / labelled pixels; per class IoU = TP / (TP + FP + FN) and Acc = TP / (TP + FN);
mIoU and mAcc average over the classes that occur (in labels or predictions for IoU, in labels
for Acc) — classes with an empty denominator are left out, as in mmsegmentation.
"""
from __future__ import annotations

import torch

from linglo.tasks.segment.data import IGNORE


class ConfusionMatrix:
    """Accumulates a K×K (label × prediction) pixel count over batches."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """pred, label: integer tensors of one shape; label IGNORE pixels are skipped."""
        keep = label != IGNORE
        k = self.num_classes
        idx = label[keep].long().cpu() * k + pred[keep].long().cpu()
        self.matrix += torch.bincount(idx, minlength=k * k).view(k, k)

    def merge(self, other: torch.Tensor) -> None:
        self.matrix += other.cpu()

    def per_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(IoU, Acc) per class as float tensors, NaN where undefined."""
        m = self.matrix.double()
        tp = m.diag()
        label_area, pred_area = m.sum(1), m.sum(0)
        iou = tp / (label_area + pred_area - tp)  # 0/0 -> NaN
        acc = tp / label_area
        return iou, acc

    def compute(self) -> dict[str, float]:
        iou, acc = self.per_class()
        total = self.matrix.sum().item()
        return dict(mIoU=float(iou.nanmean()) if not iou.isnan().all() else 0.0,
                    mAcc=float(acc.nanmean()) if not acc.isnan().all() else 0.0,
                    aAcc=self.matrix.diag().sum().item() / total if total else 0.0)
