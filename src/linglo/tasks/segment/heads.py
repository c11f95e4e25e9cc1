"""Semantic segmentation heads on a stride 4/8/16/32 pyramid, and the model that joins them to a
backbone.

- Semantic FPN (Kirillov et al., Panoptic FPN): FPN neck, then per level 3×3 conv + 2× upsample
  steps down to stride 4, summed, 1×1 classifier. mmsegmentation's FPNHead layout.
- UPerNet (Xiao et al.): pyramid pooling on the last map, FPN top-down path, all levels fused at
  stride 4, plus the auxiliary FCN head on stage 3 (loss weight 0.4) of the standard recipe.

Widths default to the recipes' (FPN 256 / head 128; UPerNet 512); tiny tests pass smaller ones.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import Conv2dNormActivation, FeaturePyramidNetwork

from linglo.tasks.dense.pyramid import Pyramid

HEADS = ("fpn", "upernet")
AUX_WEIGHT = 0.4  # UPerNet auxiliary loss weight (mmsegmentation's recipe)


def _conv(cin: int, cout: int, k: int = 3) -> nn.Module:
    return Conv2dNormActivation(cin, cout, k, norm_layer=nn.BatchNorm2d)


def _up(x: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class Classifier(nn.Sequential):
    """Dropout + 1×1 conv to class logits."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__(nn.Dropout2d(0.1), nn.Conv2d(channels, num_classes, 1))


class SemanticFPNHead(nn.Module):
    """FPN neck (`channels` wide) + per-level upsampling branches (`channels // 2`), summed at stride 4."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 256):
        super().__init__()
        self.neck = FeaturePyramidNetwork(in_channels, channels)
        mid = channels // 2
        self.branches = nn.ModuleList()
        for level in range(len(in_channels)):  # level i is at stride 4·2^i: i upsampling steps
            layers = []
            for j in range(max(level, 1)):
                layers.append(_conv(channels if j == 0 else mid, mid))
                if level > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.branches.append(nn.Sequential(*layers))
        self.classifier = Classifier(mid, num_classes)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        p = list(self.neck(OrderedDict((str(i), f) for i, f in enumerate(feats))).values())
        out = self.branches[0](p[0])  # B×mid×H/4×W/4
        for branch, x in zip(self.branches[1:], p[1:]):
            out = out + _up(branch(x), out.shape[-2:])  # sizes differ by rounding when H is not a power of 2
        return dict(out=self.classifier(out))


class UPerHead(nn.Module):
    """Pyramid pooling module + FPN fusion (`channels` wide) and the stage-3 auxiliary FCN head."""

    def __init__(self, in_channels: list[int], num_classes: int, channels: int = 512,
                 pool_scales: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        top = in_channels[-1]
        self.ppm = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), _conv(top, channels, 1)) for s in pool_scales)
        self.ppm_bottleneck = _conv(top + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(_conv(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(_conv(channels, channels) for _ in in_channels[:-1])
        self.fuse = _conv(len(in_channels) * channels, channels)
        self.classifier = Classifier(channels, num_classes)
        self.aux = _conv(in_channels[-2], channels // 2)  # FCN head: 256 wide at the default 512
        self.aux_classifier = Classifier(channels // 2, num_classes)

    def forward(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        top = feats[-1]
        pooled = [_up(m(top), top.shape[-2:]) for m in self.ppm]
        laterals = [conv(f) for conv, f in zip(self.lateral, feats[:-1])]
        laterals.append(self.ppm_bottleneck(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + _up(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]  # stride 4
        fused = self.fuse(torch.cat([outs[0]] + [_up(x, size) for x in outs[1:]], dim=1))
        result = dict(out=self.classifier(fused))
        if self.training:
            result["aux"] = self.aux_classifier(self.aux(feats[-2]))
        return result


class SegmentationModel(nn.Module):
    """Backbone pyramid + head. Takes images in [0, 1] of any size (B×3×H×W), normalises them with
    the backbone's mean/std, pads to a multiple of 32 and returns logits cropped back to H×W:
    {'out': B×K×H×W} (+ 'aux' in training for UPerNet)."""

    def __init__(self, model: str, head: str, num_classes: int, channels: int | None = None,
                 drop_path_rate: float = 0.0, pretrained_path: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None, frozen_bn: bool | None = False,
                 trainable_stages: int | None = None):
        super().__init__()
        self.backbone = Pyramid(model, drop_path_rate=drop_path_rate, pretrained_path=pretrained_path,
                                model_kwargs=model_kwargs, frozen_bn=frozen_bn, trainable_stages=trainable_stages)
        if head == "fpn":
            self.head = SemanticFPNHead(self.backbone.channels, num_classes, channels or 256)
        elif head == "upernet":
            self.head = UPerHead(self.backbone.channels, num_classes, channels or 512)
        else:
            raise ValueError(f"unknown segmentation head {head!r}; expected one of {HEADS}")
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(self.backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.backbone.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        H, W = images.shape[-2:]
        x = (images - self.mean) / self.std
        x = F.pad(x, (0, -W % 32, 0, -H % 32))  # zero = the mean colour after normalising
        result = self.head(self.backbone(x))
        return {k: _up(v, x.shape[-2:])[..., :H, :W] for k, v in result.items()}  # B×K×H×W
