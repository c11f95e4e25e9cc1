"""A timm `features_only` backbone cut to its stride 4/8/16/32 maps: the input of every dense head.

Any timm model with a feature pyramid works (LinGlo or a peer), so detection and segmentation
compare backbones on equal terms. Stages are picked by their stride (`feature_info.reduction()`),
not by index, because models differ in whether their first feature is at stride 2 or 4.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import timm
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from linglo.errors import LingloError
from linglo.tasks.model_names import check_model_name, create_model

STRIDES = (4, 8, 16, 32)


def check_weights(name: str, path: str, model_kwargs: Mapping[str, Any] | None = None) -> None:
    """Refuse a weights file (a timm / `linglo train` checkpoint) that does not hold every backbone
    tensor of `name` — timm's own loader would skip missing keys silently when it drops a classifier."""
    try:
        state = timm.models.load_state_dict(str(path))
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise LingloError(f"cannot read backbone weights '{path}': {type(e).__name__}: {e}") from e
    wanted = timm.create_model(name, num_classes=0, **(model_kwargs or {})).state_dict()
    fit = sum(1 for k, v in wanted.items() if k in state and state[k].shape == v.shape)
    if fit < len(wanted):
        raise LingloError(f"backbone weights '{path}' do not fit model '{name}': {fit} of {len(wanted)} "
                          "tensors match (a checkpoint of another model?)")


def _create(name: str, pretrained_path: str | None, drop_path_rate: float, **kwargs) -> nn.Module:
    """timm.create_model with a features_only head; weights only ever from a local file."""
    if pretrained_path:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(pretrained_path)))
    optional = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    return create_model(name, optional, features_only=True, **kwargs)


class Pyramid(nn.Module):
    """timm backbone returning the maps at `strides` (a list, finest first); `channels` per map."""

    def __init__(self, name: str, strides: tuple[int, ...] = STRIDES, drop_path_rate: float = 0.0,
                 pretrained_path: str | None = None, model_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        check_model_name(name)
        if pretrained_path:
            check_weights(name, pretrained_path, model_kwargs)
        kwargs = dict(model_kwargs or {}, drop_path_rate=drop_path_rate)
        try:
            body = _create(name, pretrained_path, **kwargs)
        except (RuntimeError, TypeError, ValueError, AttributeError) as e:
            raise LingloError(f"model '{name}' cannot be built as a features_only backbone: {e}") from e
        info = body.feature_info
        reductions = info.reduction()
        picked = []
        for s in strides:
            at = [i for i, r in enumerate(reductions) if r == s]
            if not at:
                raise LingloError(f"model '{name}' has no feature map at stride {s} "
                                  f"(its feature strides are {reductions}); a dense head needs {list(strides)}")
            picked.append(at[-1])  # the deepest map at that stride
        out_indices = tuple(info.out_indices[i] for i in picked)
        if out_indices != tuple(info.out_indices):
            body = _create(name, pretrained_path, out_indices=out_indices, **kwargs)
        self.body = body
        self.channels = list(body.feature_info.channels())
        self.strides = list(strides)
        cfg = body.pretrained_cfg
        self.mean = tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.body(x))  # [B×C_i×H/s_i×W/s_i]


class PyramidFPN(nn.Module):
    """Pyramid + torchvision FPN: an OrderedDict of `out_channels` maps ('0', '1', … + extras).

    The interface torchvision's detectors expect from a backbone (`out_channels`, dict output).
    """

    def __init__(self, pyramid: Pyramid, out_channels: int, extra_blocks: ExtraFPNBlock | None = None):
        super().__init__()
        self.body = pyramid
        self.fpn = FeaturePyramidNetwork(pyramid.channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
