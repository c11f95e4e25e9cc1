"""Inference-time folding helpers: a BatchNorm or a layer scale merged into the convolution next to it.

Each returns True when it folded (so a module's fuse() can replace the folded norm / scale by nn.Identity) and
False when the norm cannot be folded exactly (GroupNorm, LayerNorm, a BatchNorm without running statistics).
"""
from __future__ import annotations

import torch
from timm.layers import LayerScale2d
from torch import Tensor, nn

__all__ = ["norm_affine", "fold_norm_after_conv", "fold_norm_before_conv", "fold_scale_after_conv"]


def norm_affine(norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """Eval-mode BatchNorm (nn.BatchNorm2d, SyncBatchNorm, torchvision's FrozenBatchNorm2d) as y = scale·x + shift
    per channel ((C,), (C,)); None for any other norm."""
    mean, var = getattr(norm, "running_mean", None), getattr(norm, "running_var", None)
    if mean is None or var is None or not hasattr(norm, "eps"):
        return None
    weight = norm.weight if getattr(norm, "weight", None) is not None else torch.ones_like(mean)
    bias = norm.bias if getattr(norm, "bias", None) is not None else torch.zeros_like(mean)
    scale = weight / torch.sqrt(var + norm.eps)
    return scale, bias - mean * scale


def _bias(conv: nn.Conv2d) -> Tensor:
    """The conv's bias, created (zeros) when it has none."""
    if conv.bias is None:
        conv.bias = nn.Parameter(torch.zeros(conv.out_channels, device=conv.weight.device, dtype=conv.weight.dtype))
    return conv.bias


@torch.no_grad()
def fold_norm_after_conv(conv: nn.Conv2d, norm: nn.Module) -> bool:
    """norm(conv(x)) -> conv'(x): per output channel, W' = scale·W, b' = scale·b + shift."""
    affine = norm_affine(norm)
    if affine is None:
        return False
    scale, shift = affine
    bias = _bias(conv)
    conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
    bias.copy_(bias * scale + shift)
    return True


@torch.no_grad()
def fold_norm_before_conv(norm: nn.Module, conv: nn.Conv2d) -> bool:
    """conv(norm(x)) -> conv'(x) for a 1×1, ungrouped conv (padding would see the norm's shift, so no other):
    W' = W·diag(scale), b' = b + W·shift."""
    affine = norm_affine(norm)
    if affine is None or conv.kernel_size != (1, 1) or conv.groups != 1 or conv.padding not in ((0, 0), "valid"):
        return False
    scale, shift = affine
    bias = _bias(conv)
    w = conv.weight[:, :, 0, 0]                                              # (C_out, C_in)
    bias.add_(w @ shift.to(w.dtype))
    conv.weight.mul_(scale.view(1, -1, 1, 1).to(w.dtype))
    return True


@torch.no_grad()
def fold_scale_after_conv(conv: nn.Conv2d, scale: nn.Module) -> bool:
    """layer_scale(conv(x)) -> conv'(x) for a timm LayerScale2d (x·gamma per channel); False for anything else."""
    if not isinstance(scale, LayerScale2d):
        return False
    bias = _bias(conv)
    conv.weight.mul_(scale.gamma.view(-1, 1, 1, 1))
    bias.mul_(scale.gamma)
    return True
