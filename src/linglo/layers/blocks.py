"""LinGlo's building blocks: a convolution block and an attention block, both (B, C, H, W) -> (B, C, H, W).

Both take an optional `mask` (B, H, W) of real tokens: padded tokens are kept at zero after every block, so
convolutions see them as zero padding and attention gives them no weight.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath, LayerScale2d
from torch import Tensor, nn

from ..ops import eager_plain
from .token_mixers import create_token_mixer

__all__ = ["ConvMlp", "ConvBlock", "AttentionBlock", "Downsample", "Stem", "apply_mask", "MLP_BAND_PIXELS"]

MLP_BAND_PIXELS = 4096   # inference runs the pointwise MLP over bands of rows of about this many pixels


def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask[:, None].to(x.dtype)


def _eager_without_input_grad(x: Tensor) -> bool:
    """An eager call on a plain tensor (ops.eager_plain) that needs no gradient: inference, or a frozen network
    before this layer."""
    return eager_plain(x) and not (torch.is_grad_enabled() and x.requires_grad)


class ConvMlp(nn.Module):
    """Pointwise MLP: 1×1 expand, GELU, 1×1 project.

    When its input needs no gradient it runs over bands of rows (MLP_BAND_PIXELS each): the same result up to
    float rounding (each pixel's MLP is unchanged), but the mlp_ratio-times-wider hidden map never exists whole.
    That map was the forward's memory peak at high resolution (with its layout copy inside the 1×1 convolution).
    """

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        if not _eager_without_input_grad(x):   # first: never compare a symbolic size
            return self._mlp(x)
        rows = max(1, MLP_BAND_PIXELS // x.shape[-1])
        if x.shape[-2] <= rows:
            return self._mlp(x)
        return torch.cat([self._mlp(band) for band in x.split(rows, dim=-2)], dim=-2)   # (B, C, H, W)

    def _mlp(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _residual_branch(dim: int, ls_init: float | None, drop_path: float) -> tuple[nn.Module, nn.Module]:
    return (LayerScale2d(dim, ls_init) if ls_init else nn.Identity(),
            DropPath(drop_path) if drop_path > 0 else nn.Identity())


class ConvBlock(nn.Module):
    """ConvNeXt-style block: depthwise k×k conv, norm, pointwise MLP, layer scale, residual (local mixing)."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 ls_init: float | None = 1e-6, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = norm_layer(dim)
        self.mlp = ConvMlp(dim, mlp_ratio)
        self.ls, self.drop_path = _residual_branch(dim, ls_init, drop_path)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.ls(self.mlp(self.norm(self.conv_dw(x)))))
        return apply_mask(x, mask)


class AttentionBlock(nn.Module):
    """Conditional position encoding (3×3 depthwise conv), then norm + token mixer + residual,
    then norm + MLP + residual (local-global mixing)."""

    def __init__(self, dim: int, token_mixer: str = "key_only", head_dim: int = 32, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, ls_init: float | None = 1e-6, norm_layer=nn.BatchNorm2d,
                 mixer_kwargs: dict | None = None):
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.mixer = create_token_mixer(token_mixer, dim, head_dim, **(mixer_kwargs or {}))
        self.ls1, self.drop_path1 = _residual_branch(dim, ls_init, drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = ConvMlp(dim, mlp_ratio)
        self.ls2, self.drop_path2 = _residual_branch(dim, ls_init, drop_path)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = apply_mask(x + self.cpe(x), mask)
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x), mask)))
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(apply_mask(x, mask)))))
        return apply_mask(x, mask)


class Stem(nn.Module):
    """Stride-4 stem: two 3×3 stride-2 convs (any input size; output ceil(H/4) × ceil(W/4))."""

    def __init__(self, in_chans: int, dim: int, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = norm_layer(dim // 2)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = norm_layer(dim)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: (B, H, W) real pixels; padded pixels act as zero padding at every conv."""
        half = None if mask is None else mask[:, ::2, ::2]        # a token is real when its centre pixel is
        x = apply_mask(self.act(self.norm1(self.conv1(apply_mask(x, mask)))), half)   # (B, C/2, H/2, W/2)
        return self.norm2(self.conv2(x))                                                # (B, C, H/4, W/4)


class Downsample(nn.Module):
    """Stride-2 3×3 conv between stages (ceil(H/2) × ceil(W/2)), then norm."""

    def __init__(self, in_dim: int, out_dim: int, norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)
        self.norm = norm_layer(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))
