"""The banded pointwise MLP: timm's ConvMlp (1×1 expand, activation, 1×1 project) that, when its input needs no
gradient, runs over bands of rows so that its mlp_ratio-times-wider hidden map never exists whole."""
from __future__ import annotations

from typing import Callable

import torch
from timm.layers import get_act_layer
from torch import Tensor, nn

from ..ops import eager_plain

__all__ = ["BandedConvMlp", "MLP_BAND_PIXELS"]

MLP_BAND_PIXELS = 4096   # inference runs the pointwise MLP over bands of rows of about this many pixels


def _eager_without_input_grad(x: Tensor) -> bool:
    """An eager call on a plain tensor (ops.eager_plain) that needs no gradient: inference, or a frozen network
    before this layer."""
    return eager_plain(x) and not (torch.is_grad_enabled() and x.requires_grad)


class BandedConvMlp(nn.Module):
    """Pointwise MLP on (B, C, H, W): 1×1 expand, activation, 1×1 project (timm.layers.ConvMlp's arguments and
    parameter names, without its norm and dropout).

    When its input needs no gradient it runs over bands of rows (MLP_BAND_PIXELS each): the same result up to
    float rounding (each pixel's MLP is unchanged), but the hidden map never exists whole. That map was the
    forward's memory peak at high resolution (with its layout copy inside the 1×1 convolution).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: str | Callable = nn.GELU, bias: bool = True, device=None, dtype=None):
        """
        Args:
            in_features: input channels.
            hidden_features: expanded channels (default in_features).
            out_features: output channels (default in_features).
            act_layer: activation between the two 1×1 convs (class or timm name).
            bias: biases in both 1×1 convs.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1, bias=bias, **dd)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(hidden_features, out_features, 1, bias=bias, **dd)

    def forward(self, x: Tensor) -> Tensor:
        if not _eager_without_input_grad(x):   # first: never compare a symbolic size
            return self._mlp(x)
        rows = max(1, MLP_BAND_PIXELS // x.shape[-1])
        if x.shape[-2] <= rows:
            return self._mlp(x)
        return torch.cat([self._mlp(band) for band in x.split(rows, dim=-2)], dim=-2)   # (B, C_out, H, W)

    def _mlp(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))
