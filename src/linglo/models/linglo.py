"""The LinGlo family: a 4-stage hybrid backbone where every stage alternates convolution blocks (local) and
key-only attention blocks (local-global, linear cost), registered with timm.

Any input size works without padding: stride-2 convs round up, so stage i has ceil(H / 2^(i+2)) rows, the
same grid a "pad to a multiple of 32, then crop back" scheme gives, minus the wasted work. For batches of
differently sized images padded to a common size (detection), pass `mask` (B, H, W) of real pixels to
forward_features: padded tokens then stay zero and take no attention weight.
"""
from __future__ import annotations

import zlib
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm2d, NormMlpClassifierHead
from timm.models._features import feature_take_indices
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import AttentionBlock, ConvBlock, Downsample, Stem, TOKEN_MIXERS, apply_mask

__all__ = ["LinGlo", "LAYOUTS", "block_kinds"]

LAYOUTS = ("alternate", "graft")


def block_kinds(layout: str, stage: int, depth: int) -> list[str]:
    """Which block goes where: "alternate" = [conv, attn, conv, …] in every stage; "graft" = conv only in
    stages 1–2, attention only in stages 3–4 (same depth and width)."""
    if layout == "alternate":
        return ["conv" if j % 2 == 0 else "attn" for j in range(depth)]
    if layout == "graft":
        return ["conv" if stage < 2 else "attn"] * depth
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


class LinGloStage(nn.Module):
    """Downsample (stages 2–4) then a list of blocks; blocks take the real-token mask."""

    def __init__(self, in_dim: int, dim: int, downsample: bool, kinds: list[str], drop_paths: list[float],
                 **block_kwargs):
        super().__init__()
        self.downsample = Downsample(in_dim, dim) if downsample else nn.Identity()
        conv_kw = {k: block_kwargs[k] for k in ("mlp_ratio", "ls_init")}
        conv_kw["kernel_size"] = block_kwargs["conv_kernel"]
        attn_kw = {k: block_kwargs[k] for k in ("mlp_ratio", "ls_init", "token_mixer", "head_dim", "mixer_kwargs")}
        self.blocks = nn.ModuleList(
            ConvBlock(dim, drop_path=dp, **conv_kw) if kind == "conv" else AttentionBlock(dim, drop_path=dp, **attn_kw)
            for kind, dp in zip(kinds, drop_paths))
        self.grad_checkpointing = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = apply_mask(self.downsample(x), mask)
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and x.requires_grad:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


def _downsample_mask(mask: Tensor | None, factor: int) -> Tensor | None:
    """Real-token mask at a coarser stride: a token is real when its centre pixel is (3×3 s2 convs, pad 1)."""
    return None if mask is None else mask[:, ::factor, ::factor]


class LinGlo(nn.Module):
    """LinGlo backbone + classifier.

    widths/depths: per stage. layout: "alternate" | "graft". token_mixer: "key_only" | "softmax" | "linear" |
    "separable" | "none". window/axial/global_term/query_gate/gate/saliency_conv/value_conv: key-only attention
    options (see layers.KeyOnlyAttention). head_hidden: pre-logits MLP width (None = none).
    """

    def __init__(self, widths=(32, 64, 128, 256), depths=(2, 2, 6, 2), in_chans: int = 3, num_classes: int = 1000,
                 global_pool: str = "avg", layout: str = "alternate", token_mixer: str = "key_only",
                 head_dim: int = 32, window: int = 7, axial: bool = False, global_term: bool = True,
                 query_gate: bool = False, gate: str = "softmax", saliency_conv: int = 0, value_conv: int = 0,
                 conv_kernel: int = 7, mlp_ratio: float = 4.0,
                 ls_init: float | None = 1e-6, head_hidden: int | None = None, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0):
        super().__init__()
        init_seed = int(torch.randint(0, 2**62, (1,), device="cpu"))   # see _init_weights
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"LinGlo: widths and depths need 4 stages, got {len(widths)} and {len(depths)}")
        if token_mixer not in TOKEN_MIXERS:
            raise ValueError(f"LinGlo: token_mixer must be one of {sorted(TOKEN_MIXERS)}, got {token_mixer!r}")
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.layout, self.token_mixer = layout, token_mixer
        mixer_kwargs = dict(window=window, axial=axial, global_term=global_term, query_gate=query_gate, gate=gate,
                            saliency_conv=saliency_conv, value_conv=value_conv)
        self.stem = Stem(in_chans, widths[0])
        n = sum(depths)   # drop-path rate rising linearly over all blocks (plain floats: works on the meta device)
        rates = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]
        dpr = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
        self.stages = nn.Sequential(*(
            LinGloStage(widths[max(i - 1, 0)], widths[i], i > 0, block_kinds(layout, i, depths[i]), dpr[i],
                        mlp_ratio=mlp_ratio, ls_init=ls_init, conv_kernel=conv_kernel, token_mixer=token_mixer,
                        head_dim=head_dim, mixer_kwargs=mixer_kwargs)
            for i in range(4)))
        self.feature_info = [dict(num_chs=w, reduction=4 * 2 ** i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.head = NormMlpClassifierHead(widths[-1], num_classes, hidden_size=head_hidden, pool_type=global_pool,
                                          drop_rate=drop_rate, norm_layer=LayerNorm2d)
        if head_hidden:
            self.head_hidden_size = head_hidden
        self._init_weights(init_seed)

    def _init_weights(self, base: int) -> None:
        """Conv and linear weights trunc_normal(std 0.02), biases 0. Each module draws from its own generator,
        seeded by one draw from torch's global RNG and the module's name, so two models built after the same
        torch.manual_seed start their same-named, same-shaped modules from the same weights whatever else differs
        between them (arms of a study share the init of their shared parts). `base` is drawn before any module is
        built: building modules draws from the global RNG too, more for some variants than for others."""
        for name, m in self.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if m.weight.device.type != "meta":
                    g = torch.Generator(m.weight.device).manual_seed(base ^ zlib.crc32(name.encode()))
                    nn.init.trunc_normal_(m.weight, std=0.02, generator=g)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # ---- timm model API -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Relative-position biases are positional, not features: no weight decay (norms/biases are 1-D anyway)."""
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in ("rel_bias", "bias_y", "bias_x", "r_inf")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(self, x: Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              mask: Tensor | None = None):
        """Stage outputs (strides 4, 8, 16, 32) as timm's forward_intermediates; `mask`: (B, H, W) real pixels."""
        if output_fmt != "NCHW":
            raise ValueError(f"LinGlo: output_fmt must be 'NCHW', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        x, intermediates = self._run_stages(x, mask, take_indices, max_index if stop_early else len(self.stages) - 1)
        return intermediates if intermediates_only else (x, intermediates)

    def _run_stages(self, x: Tensor, mask: Tensor | None, take=(), last: int = 3):
        """Stem + stages 0..last; returns the last output and the outputs of the stages in `take`."""
        intermediates = []
        x = self.stem(x, mask)                                    # (B, C1, H/4, W/4)
        mask = _downsample_mask(mask, 4)
        x = apply_mask(x, mask)
        for i, stage in enumerate(self.stages[:last + 1]):
            if i > 0:
                mask = _downsample_mask(mask, 2)
            x = stage(x, mask)                                    # (B, Ci, H/2^(i+2), W/2^(i+2))
            if i in take:
                intermediates.append(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[:max_index + 1]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """(B, 3, H, W) -> (B, C4, ceil(H/32), ceil(W/32))."""
        return self._run_stages(x, mask, last=len(self.stages) - 1)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


# ---- the family -------------------------------------------------------------------------------------------------
FAMILY: dict[str, dict[str, Any]] = {
    "linglo_t": dict(widths=(32, 64, 128, 256), depths=(2, 2, 6, 2)),
    "linglo_xs": dict(widths=(48, 96, 192, 384), depths=(2, 2, 6, 2), head_dim=24, mlp_ratio=3.5),
    "linglo_s": dict(widths=(64, 128, 256, 512), depths=(2, 2, 6, 2)),
    "linglo_m": dict(widths=(96, 192, 384, 768), depths=(2, 2, 6, 2)),
}


def _cfg(**kwargs) -> dict[str, Any]:
    """No published weights: url stays empty; load local weights with pretrained_cfg_overlay=dict(file=...)."""
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
            "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": "stem.conv1", "classifier": "head.fc", "fixed_input_size": False, "license": "apache-2.0",
            **kwargs}


default_cfgs = generate_default_cfgs({name: _cfg() for name in FAMILY})


def _create_linglo(variant: str, pretrained: bool = False, **kwargs) -> LinGlo:
    return build_model_with_cfg(LinGlo, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3),
                                feature_cls="getter"), **{**FAMILY[variant], **kwargs})


@register_model
def linglo_t(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-T, 2.87 M params (compare EdgeNeXt-XS, ConvNeXt-atto)."""
    return _create_linglo("linglo_t", pretrained, **kwargs)


@register_model
def linglo_xs(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-XS, 5.68 M params (compare MobileViTv2-1.0, EdgeNeXt-S, EfficientFormerV2-S1)."""
    return _create_linglo("linglo_xs", pretrained, **kwargs)


@register_model
def linglo_s(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-S, 10.85 M params (compare EfficientViT-B1, FastViT-SA12, PVTv2-b1)."""
    return _create_linglo("linglo_s", pretrained, **kwargs)


@register_model
def linglo_m(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-M, 23.93 M params (compare EfficientViT-B2, PVTv2-b2, Swin-T)."""
    return _create_linglo("linglo_m", pretrained, **kwargs)
