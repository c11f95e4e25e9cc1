"""torchvision RetinaNet / Mask R-CNN over any timm backbone + FPN.

RetinaNet uses P3–P5 from the backbone plus P6/P7 (LastLevelP6P7, as in the paper); Mask R-CNN
uses P2–P5 plus a max-pooled P6 for the RPN (LastLevelMaxPool). One width knob, `fpn_channels`,
sets the FPN and the heads; at 256 the heads equal torchvision's defaults (box MLP 1024, mask
convs 256). Labels are 1..K with 0 = background, so the predictors have K + 1 outputs.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from linglo.tasks.pyramid import Pyramid, PyramidFPN

ARCHS = ("retinanet", "maskrcnn")


def build_detector(model: str, arch: str, num_classes: int, min_size: int = 800, max_size: int = 1333,
                   fpn_channels: int = 256, drop_path_rate: float = 0.0, pretrained_path: str | None = None,
                   score_thresh: float = 0.05, detections_per_img: int = 100,
                   model_kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A detector for `num_classes` foreground classes; images are resized inside the model
    (shorter side `min_size`, longer side at most `max_size`, aspect kept) and normalised with
    the backbone's own mean/std. `model_kwargs` go to timm.create_model of the backbone."""
    ch = fpn_channels
    backbone_kw = dict(drop_path_rate=drop_path_rate, pretrained_path=pretrained_path, model_kwargs=model_kwargs)
    common = dict(min_size=min_size, max_size=max_size, detections_per_img=detections_per_img)
    if arch == "retinanet":
        pyramid = Pyramid(model, strides=(8, 16, 32), **backbone_kw)
        backbone = PyramidFPN(pyramid, ch, LastLevelP6P7(ch, ch))
        return RetinaNet(backbone, num_classes=num_classes + 1, image_mean=pyramid.mean, image_std=pyramid.std,
                         score_thresh=score_thresh, **common)
    if arch == "maskrcnn":
        pyramid = Pyramid(model, strides=(4, 8, 16, 32), **backbone_kw)
        backbone = PyramidFPN(pyramid, ch, LastLevelMaxPool())
        common["box_detections_per_img"] = common.pop("detections_per_img")
        return MaskRCNN(backbone, image_mean=pyramid.mean, image_std=pyramid.std, box_score_thresh=score_thresh,
                        box_head=TwoMLPHead(ch * 7 * 7, 4 * ch),
                        box_predictor=FastRCNNPredictor(4 * ch, num_classes + 1),
                        mask_head=MaskRCNNHeads(ch, [ch] * 4, 1),
                        mask_predictor=MaskRCNNPredictor(ch, ch, num_classes + 1), **common)
    raise ValueError(f"unknown detection architecture {arch!r}; expected one of {ARCHS}")
