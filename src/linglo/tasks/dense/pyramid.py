"""A timm `features_only` backbone cut to its stride 4/8/16/32 maps: the input of every dense head.

Any timm model with a feature pyramid works (LinGlo or a peer), so detection and segmentation
compare backbones on equal terms. Stages are picked by their stride (`feature_info.reduction()`),
not by index, because models differ in whether their first feature is at stride 2 or 4.

The backbone is built once, by timm. Weights come only from a local file, loaded by timm through the
model's own checkpoint_filter_fn (LinGlo's unwraps `linglo train` checkpoints and resizes relative-position
biases) and strictly: a file that lacks a backbone tensor, or holds one of another shape, is refused. Then
torchvision's conventions for detection backbones: BatchNorm frozen (FrozenBatchNorm2d) when weights are loaded,
and only the last `trainable_stages` feature stages trained. A model whose forward_intermediates takes a
real-pixel `mask` (LinGlo) gets it, so zero-padded batches give each image its own features.
"""
from __future__ import annotations

import inspect
import re
from collections import OrderedDict
from typing import Any, Mapping

import timm
import torch
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from timm.utils.model import freeze
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

from linglo.errors import LingloError
from linglo.layers import apply_mask
from linglo.models.names import check_model_name, create_model

STRIDES = (4, 8, 16, 32)


def read_weights(name: str, path: str) -> dict[str, torch.Tensor]:
    """The tensors of a weights file (a timm or `linglo train` checkpoint: its "model" entry) for backbone `name`,
    without its classifier (a detector or segmenter has its own head)."""
    try:
        state = timm.models.load_state_dict(str(path))
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise LingloError(f"cannot read backbone weights '{path}': {type(e).__name__}: {e}") from e
    classifier = timm.models.get_pretrained_cfg_value(name, "classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return {k: v for k, v in state.items() if not k.startswith(tuple(f"{h}." for h in heads))}


def _misfit(report: str) -> str:
    """torch's strict load_state_dict report in one line: how many tensors are missing, unexpected, misshapen."""
    def names(label: str) -> list[str]:
        found = re.search(rf"{label} key\(s\) in state_dict: ([^\n]*)", report)
        return re.findall(r'"([^"]+)"', found.group(1)) if found else []
    missing, unexpected = names("Missing"), names("Unexpected")
    shapes = re.findall(r"size mismatch for ([^:]+):", report)
    first = [f" (first: {names[0]})" if names else "" for names in (missing, shapes)]
    return (f"{len(missing)} backbone tensors missing{first[0]}, {len(unexpected)} unexpected, "
            f"{len(shapes)} of another shape{first[1]}")


def _create(name: str, state: Mapping[str, torch.Tensor] | None, drop_path_rate: float, **kwargs) -> nn.Module:
    """timm.create_model as a features_only backbone without classifier; `state`: its weights, loaded strictly."""
    if state is not None:   # num_classes 0 on both sides: timm keeps its strict load (no classifier to adapt)
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(state_dict=dict(state), num_classes=0))
    optional = {"drop_path_rate": drop_path_rate} if drop_path_rate else {}
    return create_model(name, optional, features_only=True, num_classes=0, **kwargs)


def _frozen_parts(module: nn.Module, boundary: nn.Module, prefix: str = "") -> list[str]:
    """Names of the largest submodules of `module` registered before `boundary` (on the path down to it)."""
    names = []
    for name, child in module.named_children():
        if child is boundary:
            break
        if any(m is boundary for m in child.modules()):
            return names + _frozen_parts(child, boundary, f"{prefix}{name}.")
        names.append(prefix + name)
    return names


class Pyramid(nn.Module):
    """timm backbone returning the maps at `strides` (a list, finest first); `channels` per map.

    Args:
        name: a timm model name.
        strides: the feature strides to return.
        drop_path_rate: the backbone's stochastic depth (dropped with a warning for models without it).
        pretrained_path: a local weights file for the backbone (None: random init). For a `linglo train`
            checkpoint of an older version give model_kwargs with that version's defaults
            (models.legacy_model_kwargs; the trainer does so for --backbone-weights).
        model_kwargs: more timm.create_model arguments.
        frozen_bn: every BatchNorm of the backbone as FrozenBatchNorm2d (running statistics and affine fixed);
            None = exactly when pretrained_path is given (torchvision's rule).
        trainable_stages: train only the last N of the model's feature stages (timm's feature_info, e.g. 4 for
            LinGlo, 5 for a ResNet whose first is the stride-2 stem); everything before them is frozen, their
            BatchNorms included. None = all.
    """

    def __init__(self, name: str, strides: tuple[int, ...] = STRIDES, drop_path_rate: float = 0.0,
                 pretrained_path: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                 frozen_bn: bool | None = None, trainable_stages: int | None = None):
        super().__init__()
        check_model_name(name)
        state = read_weights(name, pretrained_path) if pretrained_path else None
        misfit = f"backbone weights '{pretrained_path}' do not fit model '{name}'"
        unbuildable = f"model '{name}' cannot be built as a features_only backbone"
        try:
            body = _create(name, state, drop_path_rate, **dict(model_kwargs or {}))
        except RuntimeError as e:
            if state is not None and "Error(s) in loading state_dict" in str(e):
                raise LingloError(f"{misfit}: {_misfit(str(e))} (a checkpoint of another model?)") from e
            raise LingloError(f"{unbuildable}: {e}") from e
        except ValueError as e:   # LinGlo's checkpoint_filter_fn judges weights (other depths, 0.1's mixer)
            raise LingloError(f"{misfit if state is not None else unbuildable}: {e}") from e
        except (TypeError, AttributeError) as e:
            raise LingloError(f"{unbuildable}: {e}") from e
        for module in (body, getattr(body, "model", None)):   # the weights are in the model now: drop the copy
            if isinstance(getattr(module, "pretrained_cfg", None), dict):
                module.pretrained_cfg.pop("state_dict", None)
        info = body.feature_info
        reductions = info.reduction()
        picked = []
        for s in strides:
            at = [i for i, r in enumerate(reductions) if r == s]
            if not at:
                raise LingloError(f"model '{name}' has no feature map at stride {s} "
                                  f"(its feature strides are {reductions}); a dense head needs {list(strides)}")
            picked.append(at[-1])  # the deepest map at that stride
        self.body = body
        self.picked = picked                                   # positions in the body's outputs
        self.channels = [info.channels()[i] for i in picked]
        self.strides = list(strides)
        cfg = body.pretrained_cfg
        self.mean = tuple(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        self.std = tuple(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
        getter = getattr(body, "model", None)
        self.takes_mask = (getter is not None and hasattr(getter, "forward_intermediates")
                           and "mask" in inspect.signature(getter.forward_intermediates).parameters)
        self._freeze(name, trainable_stages, bool(pretrained_path) if frozen_bn is None else frozen_bn)

    def _freeze(self, name: str, trainable_stages: int | None, frozen_bn: bool) -> None:
        stages = [entry["module"] for entry in self.body.feature_info.info]   # every feature stage, in order
        if trainable_stages is not None and not 0 <= trainable_stages <= len(stages):
            raise LingloError(f"--trainable-stages must be 0..{len(stages)} for '{name}' (its feature stages: "
                              f"{', '.join(stages)}), got {trainable_stages}")
        if trainable_stages == 0:
            freeze(self.body)
        elif trainable_stages is not None and trainable_stages < len(stages):
            boundary = self._stage_module(stages[len(stages) - trainable_stages])
            freeze(self.body, _frozen_parts(self.body, boundary))
        if frozen_bn:
            self.body = freeze_batch_norm_2d(self.body)

    def _stage_module(self, module: str) -> nn.Module:
        """The body's module of a feature stage (timm's feature wrappers keep it as `model.<name>`, `<name>`, or
        with the first dots flattened to underscores)."""
        for candidate in (f"model.{module}", module, module.replace(".", "_")):
            try:
                return self.body.get_submodule(candidate)
            except AttributeError:
                continue
        raise LingloError(f"cannot find feature stage '{module}' in the backbone")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """x: (B, 3, H, W); mask: (B, H, W) real pixels (used by backbones that take it, e.g. LinGlo)."""
        if mask is not None and self.takes_mask:
            feats = self.body.model.forward_intermediates(x, indices=self.body.out_indices, intermediates_only=True,
                                                          mask=mask)
        else:
            feats = self.body(x)
        return [feats[i] for i in self.picked]  # [B×C_i×H/s_i×W/s_i]


class PyramidFPN(nn.Module):
    """Pyramid + torchvision FPN: an OrderedDict of `out_channels` maps ('0', '1', … + extras).

    The interface torchvision's detectors expect from a backbone (`out_channels`, dict output). With
    `pixel_mask`, the input's last channel is the real-pixel mask (detect.models.RealPixelTransform adds it) and the
    other channels the image: the backbone gets the mask, and the FPN keeps padded tokens at zero at every level
    (before its 3×3 convs too), so the maps the heads read are, on each image's tokens, those it gets alone.
    """

    def __init__(self, pyramid: Pyramid, out_channels: int, extra_blocks: ExtraFPNBlock | None = None,
                 pixel_mask: bool = False):
        super().__init__()
        self.body = pyramid
        self.fpn = FeaturePyramidNetwork(pyramid.channels, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        self.pixel_mask = pixel_mask

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        if not self.pixel_mask:
            return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(self.body(x))))
        x, mask = x[:, :-1], x[:, -1] > 0.5                      # (B, 3, H, W), (B, H, W)
        feats = self.body(x, mask)
        masks = [mask[:, ::s, ::s] for s in self.body.strides]   # a token is real when its centre pixel is
        fpn = self.fpn   # torchvision's FeaturePyramidNetwork.forward, with the padded tokens zeroed
        last = apply_mask(fpn.inner_blocks[-1](feats[-1]), masks[-1])
        results = [apply_mask(fpn.layer_blocks[-1](last), masks[-1])]
        for i in range(len(feats) - 2, -1, -1):
            lateral = fpn.inner_blocks[i](feats[i])
            last = apply_mask(lateral + F.interpolate(last, size=lateral.shape[-2:], mode="nearest"), masks[i])
            results.insert(0, apply_mask(fpn.layer_blocks[i](last), masks[i]))
        names = [str(i) for i in range(len(results))]
        if fpn.extra_blocks is not None:
            results, names = fpn.extra_blocks(results, feats, names)
        return OrderedDict(zip(names, results))
