"""torchvision RetinaNet / Mask R-CNN over any timm backbone + FPN.

RetinaNet uses P3–P5 from the backbone plus P6/P7 (LastLevelP6P7, as in the paper); Mask R-CNN
uses P2–P5 plus a max-pooled P6 for the RPN (LastLevelMaxPool). One width knob, `fpn_channels`,
sets the FPN and the heads; at 256 the heads equal torchvision's defaults (box MLP 1024, mask
convs 256). Labels are 1..K with 0 = background, so the predictors have K + 1 outputs.

torchvision pads a batch of differently sized images to one size. Here the padding is invisible: RealPixelTransform
hands the backbone which pixels are real, so a LinGlo backbone gives each image exactly the features it gets
alone, the FPN keeps padded tokens at zero (PyramidFPN), and Mask R-CNN's RPN proposes no anchor centred on
padding (RealPixelRPN): each image of a padded batch gets the detections it gets alone. (RetinaNet's four stacked
head convs and its P6/P7 convs still see the padding next to an image: there only the backbone and FPN maps
P3–P5 are exact.)
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from linglo.tasks.dense.pyramid import Pyramid, PyramidFPN

ARCHS = ("retinanet", "maskrcnn")


class RealPixelTransform(GeneralizedRCNNTransform):
    """torchvision's resize + normalise + pad, with one more channel: 1 on each image's pixels, 0 on the padding
    (it is padded with the image), for PyramidFPN(pixel_mask=True) to split off as the backbone's mask. Only the
    backbone reads the batch tensor's channels (anchors and heads read its size and image_sizes)."""

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        images = [torch.cat([im, im.new_ones(1, *im.shape[-2:])]) for im in images]   # (C + 1, H_i, W_i) each
        return super().batch_images(images, size_divisible)                              # (B, C + 1, H, W)


class RealPixelRPN(RegionProposalNetwork):
    """torchvision's region proposal network, except that an anchor centred on padding (by the real-pixel channel of
    RealPixelTransform) is never a proposal: its objectness is −inf and its box empty, so it neither takes a place
    among the top-n candidates nor survives box filtering. Anchors are centred at the top-left pixel of their token,
    so an anchor is real exactly when its token is for the backbone."""

    def forward(self, images: ImageList, features: dict[str, torch.Tensor], targets=None):
        real = images.tensors[:, -1] > 0.5                                      # (B, H, W)
        centres = []   # the pixel each anchor of a level is centred on: (y, x) · the generator's stride
        for f, a in zip(features.values(), self.anchor_generator.num_anchors_per_location()):
            (hh, ww), (h, w) = real.shape[-2:], f.shape[-2:]
            centres.append(real[:, ::hh // h, ::ww // w][:, :h, :w].flatten(1).repeat_interleave(a, dim=1))
        # (B, anchors) in torchvision's order, for filter_proposals within this same call
        self._real_anchors = torch.cat(centres, dim=1)
        return super().forward(images, features, targets)

    def filter_proposals(self, proposals: torch.Tensor, objectness: torch.Tensor, image_shapes, num_anchors_per_level):
        real = self._real_anchors                                                # (B, anchors)
        objectness = objectness.reshape(real.shape).masked_fill(~real, float("-inf"))
        proposals = proposals * real[..., None]                                 # empty boxes: removed as small
        return super().filter_proposals(proposals, objectness, image_shapes, num_anchors_per_level)


def build_detector(model: str, arch: str, num_classes: int, min_size: int = 800, max_size: int = 1333,
                   fpn_channels: int = 256, drop_path_rate: float = 0.0, pretrained_path: str | None = None,
                   score_thresh: float = 0.05, detections_per_img: int = 100,
                   model_kwargs: Mapping[str, Any] | None = None, frozen_bn: bool | None = None,
                   trainable_stages: int | None = None) -> nn.Module:
    """A detector for `num_classes` foreground classes; images are resized inside the model
    (shorter side `min_size`, longer side at most `max_size`, aspect kept) and normalised with
    the backbone's own mean/std. `model_kwargs` go to timm.create_model of the backbone; `frozen_bn` and
    `trainable_stages` are Pyramid's (torchvision's backbone conventions)."""
    ch = fpn_channels
    backbone_kw = dict(drop_path_rate=drop_path_rate, pretrained_path=pretrained_path, model_kwargs=model_kwargs,
                       frozen_bn=frozen_bn, trainable_stages=trainable_stages)
    common = dict(min_size=min_size, max_size=max_size, detections_per_img=detections_per_img)
    if arch == "retinanet":
        pyramid = Pyramid(model, strides=(8, 16, 32), **backbone_kw)
        backbone = PyramidFPN(pyramid, ch, LastLevelP6P7(ch, ch), pixel_mask=True)
        detector = RetinaNet(backbone, num_classes=num_classes + 1, image_mean=pyramid.mean, image_std=pyramid.std,
                             score_thresh=score_thresh, **common)
    elif arch == "maskrcnn":
        pyramid = Pyramid(model, strides=(4, 8, 16, 32), **backbone_kw)
        backbone = PyramidFPN(pyramid, ch, LastLevelMaxPool(), pixel_mask=True)
        common["box_detections_per_img"] = common.pop("detections_per_img")
        detector = MaskRCNN(backbone, image_mean=pyramid.mean, image_std=pyramid.std, box_score_thresh=score_thresh,
                            box_head=TwoMLPHead(ch * 7 * 7, 4 * ch),
                            box_predictor=FastRCNNPredictor(4 * ch, num_classes + 1),
                            mask_head=MaskRCNNHeads(ch, [ch] * 4, 1),
                            mask_predictor=MaskRCNNPredictor(ch, ch, num_classes + 1), **common)
        detector.rpn.__class__ = RealPixelRPN   # same parameters and state-dict keys, padding-aware proposals
    else:
        raise ValueError(f"unknown detection architecture {arch!r}; expected one of {ARCHS}")
    detector.transform = RealPixelTransform(min_size, max_size, pyramid.mean, pyramid.std)
    return detector
