"""The LinGlo family, whole in one file: stem, blocks, stages and model, then the variants registered with timm.

A 4-stage hybrid backbone: every stage alternates convolution blocks (local mixing) and attention blocks whose
token mixer is key-only attention (local-global mixing at linear cost; layers.KeyOnlyAttention, which calls
ops.key_only_attention). Read top to bottom: Stem -> Downsample -> ConvBlock -> AttentionBlock -> LinGloStage ->
LinGlo -> the variant table (FAMILY) and the timm registration.

Any input size works without padding: stride-2 convs round up, so stage i has ceil(H / 2^(i+2)) rows, the
same grid a "pad to a multiple of 32, then crop back" scheme gives, minus the wasted work. For batches of
differently sized images padded to a common size (detection), pass `mask` (B, H, W) of real pixels to
forward_features / forward_intermediates: padded tokens then stay zero and take no attention weight, so each
image gets exactly the features it gets alone.
"""
from __future__ import annotations

import copy
import re
import zlib
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, LayerNorm2d, LayerScale2d, NormMlpClassifierHead, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers import TOKEN_MIXERS, BandedConvMlp, apply_mask, create_token_mixer
from ..layers.fuse import fold_norm_after_conv, fold_norm_before_conv, fold_scale_after_conv
from ..ops import eager_plain

__all__ = ["LinGlo", "LinGloStage", "AttentionBlock", "ConvBlock", "Downsample", "Stem", "FAMILY", "LAYOUTS",
           "block_kinds", "checkpoint_filter_fn", "fuse", "HISTORY", "KEY_ONLY_DEFAULTS", "legacy_model_kwargs"]

LAYOUTS = ("alternate", "graft")
POSITION_BIASES = ("rel_bias", "bias_y", "bias_x", "r_inf")   # positional parameters of the key-only mixer

NormLayer = Callable[..., nn.Module]


def _factory(device, dtype) -> dict[str, Any]:
    """device/dtype for the layers built here, only those given (torchvision's FrozenBatchNorm2d takes neither)."""
    return {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}


def _downsample_mask(mask: Tensor | None, factor: int) -> Tensor | None:
    """Real-token mask at a coarser stride: a token is real when its centre pixel is (3×3 s2 convs, pad 1)."""
    return None if mask is None else mask[:, ::factor, ::factor]


def _fold(owner: nn.Module, name: str, folded: bool) -> None:
    """Replace owner.<name> (a norm or layer scale just folded into a conv) by nn.Identity."""
    if folded:
        setattr(owner, name, nn.Identity())


def _mixer_conv(mixer: nn.Module, names: Sequence[str]) -> nn.Conv2d | None:
    """The mixer's first (input) or last (output) 1×1 conv by name, or None (IdentityMixer has neither)."""
    return next((getattr(mixer, n) for n in names if isinstance(getattr(mixer, n, None), nn.Conv2d)), None)


def _residual_branch(dim: int, ls_init_value: float | None, drop_path: float,
                     dd: Mapping[str, Any]) -> tuple[nn.Module, nn.Module]:
    """Layer scale (None or 0: none) and stochastic depth of one residual branch."""
    return (LayerScale2d(dim, ls_init_value, **dd) if ls_init_value else nn.Identity(),
            DropPath(drop_path) if drop_path > 0 else nn.Identity())


class Stem(nn.Module):
    """Stride-4 stem: two 3×3 stride-2 convs, each followed by a norm (any input size; ceil(H/4) × ceil(W/4))."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: NormLayer = nn.BatchNorm2d, device=None, dtype=None):
        """
        Args:
            in_chs: image channels.
            out_chs: channels of stage 1 (the first conv gives half).
            act_layer: activation between the two convs.
            norm_layer: norm after each conv.
        """
        dd = _factory(device, dtype)
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = norm_layer(out_chs // 2, **dd)
        self.act = act_layer()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1, **dd)
        self.norm2 = norm_layer(out_chs, **dd)

    def fuse(self) -> "Stem":
        """Inference (timm's reparameterize convention): each BatchNorm folded into its conv; returns self."""
        _fold(self, "norm1", fold_norm_after_conv(self.conv1, self.norm1))
        _fold(self, "norm2", fold_norm_after_conv(self.conv2, self.norm2))
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """mask: (B, H, W) real pixels; padded pixels act as zero padding at every conv."""
        half = _downsample_mask(mask, 2)
        x = apply_mask(self.act(self.norm1(self.conv1(apply_mask(x, mask)))), half)   # (B, C/2, H/2, W/2)
        return self.norm2(self.conv2(x))                                                # (B, C, H/4, W/4)


class Downsample(nn.Module):
    """Between stages: a 3×3 stride-2 conv (ceil(H/2) × ceil(W/2)), then a norm."""

    def __init__(self, in_chs: int, out_chs: int, norm_layer: NormLayer = nn.BatchNorm2d, device=None, dtype=None):
        dd = _factory(device, dtype)
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, **dd)
        self.norm = norm_layer(out_chs, **dd)

    def fuse(self) -> "Downsample":
        """Inference: the BatchNorm folded into the conv; returns self."""
        _fold(self, "norm", fold_norm_after_conv(self.conv, self.norm))
        return self

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.conv(x))                                    # (B, C_out, ceil(H/2), ceil(W/2))


class ConvBlock(nn.Module):
    """ConvNeXt-style block (local mixing): depthwise k×k conv, norm, pointwise MLP, layer scale, residual."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0, ls_init_value: float | None = 1e-6,
                 drop_path: float = 0.0, act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: NormLayer = nn.BatchNorm2d, device=None, dtype=None):
        """
        Args:
            dim: channels in and out.
            kernel_size: the depthwise conv's k.
            mlp_ratio: MLP hidden width / dim.
            ls_init_value: layer-scale init; None or 0 = no layer scale.
            drop_path: stochastic depth probability.
            act_layer: the MLP's activation.
            norm_layer: norm after the depthwise conv.
        """
        dd = _factory(device, dtype)
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.norm = norm_layer(dim, **dd)
        self.mlp = BandedConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, **dd)
        self.ls, self.drop_path = _residual_branch(dim, ls_init_value, drop_path, dd)

    def fuse(self) -> "ConvBlock":
        """Inference: the BatchNorm folded into the depthwise conv, the layer scale into the MLP's last conv;
        returns self."""
        _fold(self, "norm", fold_norm_after_conv(self.conv_dw, self.norm))
        _fold(self, "ls", fold_scale_after_conv(self.mlp.fc2, self.ls))
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.ls(self.mlp(self.norm(self.conv_dw(x)))))   # (B, C, H, W)
        return apply_mask(x, mask)


class AttentionBlock(nn.Module):
    """Local-global mixing: conditional position encoding (3×3 depthwise conv, residual), then norm + token mixer
    + residual, then norm + MLP + residual.

    The token mixer is built here from explicit arguments: key-only attention by default, whose options (window,
    axial, global_term, query_gate, gate, saliency_conv, value_conv; None = KeyOnlyAttention's default) reach
    layers.KeyOnlyAttention unchanged; given with another mixer they are a ValueError (layers.create_token_mixer).
    """

    def __init__(self, dim: int, token_mixer: str = "key_only", head_dim: int = 32, window: int | None = None,
                 axial: bool | None = None, global_term: bool | None = None, query_gate: bool | None = None,
                 gate: str | None = None, saliency_conv: int | None = None, value_conv: int | None = None,
                 mlp_ratio: float = 4.0, ls_init_value: float | None = 1e-6, drop_path: float = 0.0,
                 act_layer: Callable[[], nn.Module] = nn.GELU, norm_layer: NormLayer = nn.BatchNorm2d,
                 device=None, dtype=None):
        """
        Args:
            dim: channels in and out.
            token_mixer: a name of layers.TOKEN_MIXERS ("key_only", "softmax", "linear", "separable", "none").
            head_dim: channels per attention head.
            window, axial, global_term, query_gate, gate, saliency_conv, value_conv: key-only attention options
                (layers.KeyOnlyAttention); None = its default.
            mlp_ratio: MLP hidden width / dim.
            ls_init_value: layer-scale init of both residual branches; None or 0 = no layer scale.
            drop_path: stochastic depth probability.
            act_layer: the MLP's activation.
            norm_layer: norm before the mixer and before the MLP.
        """
        dd = _factory(device, dtype)
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = norm_layer(dim, **dd)
        self.mixer = create_token_mixer(token_mixer, dim, head_dim, window=window, axial=axial,
                                        global_term=global_term, query_gate=query_gate, gate=gate,
                                        saliency_conv=saliency_conv, value_conv=value_conv, **dd)
        self.ls1, self.drop_path1 = _residual_branch(dim, ls_init_value, drop_path, dd)
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = BandedConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, **dd)
        self.ls2, self.drop_path2 = _residual_branch(dim, ls_init_value, drop_path, dd)

    def fuse(self) -> "AttentionBlock":
        """Inference: each BatchNorm folded into the 1×1 conv it feeds (the mixer's input projection, the MLP's
        first conv), each layer scale into the conv before it (the mixer's output projection, the MLP's last conv).
        A mixer without such convs (token_mixer="none") keeps its norm and scale. Returns self."""
        first, last = _mixer_conv(self.mixer, ("proj_in", "qkv")), _mixer_conv(self.mixer, ("proj_out",))
        if first is not None:
            _fold(self, "norm1", fold_norm_before_conv(self.norm1, first))
        if last is not None:
            _fold(self, "ls1", fold_scale_after_conv(last, self.ls1))
        _fold(self, "norm2", fold_norm_before_conv(self.norm2, self.mlp.fc1))
        _fold(self, "ls2", fold_scale_after_conv(self.mlp.fc2, self.ls2))
        return self

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        x = apply_mask(x + self.cpe(x), mask)                                              # (B, C, H, W)
        x = x + self.drop_path1(self.ls1(self.mixer(self.norm1(x), mask)))                 # token mixing
        x = x + self.drop_path2(self.ls2(self.mlp(self.norm2(apply_mask(x, mask)))))       # channel mixing
        return apply_mask(x, mask)


def block_kinds(layout: str, stage: int, depth: int) -> list[str]:
    """Which block goes where: "alternate" = [conv, attn, conv, …] in every stage; "graft" = conv only in
    stages 1–2, attention only in stages 3–4 (same depth and width)."""
    if layout == "alternate":
        return ["conv" if j % 2 == 0 else "attn" for j in range(depth)]
    if layout == "graft":
        return ["conv" if stage < 2 else "attn"] * depth
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


class LinGloStage(nn.Module):
    """Downsample (stages 2–4), then ConvBlocks and AttentionBlocks as `block_types` says; blocks take the mask."""

    def __init__(self, in_chs: int, out_chs: int, block_types: Sequence[str], downsample: bool = True,
                 drop_path_rates: Sequence[float] | None = None, kernel_size: int = 7, mlp_ratio: float = 4.0,
                 ls_init_value: float | None = 1e-6, token_mixer: str = "key_only", head_dim: int = 32,
                 window: int | None = None, axial: bool | None = None, global_term: bool | None = None,
                 query_gate: bool | None = None, gate: str | None = None, saliency_conv: int | None = None,
                 value_conv: int | None = None, act_layer: Callable[[], nn.Module] = nn.GELU,
                 norm_layer: NormLayer = nn.BatchNorm2d, device=None, dtype=None):
        """
        Args:
            in_chs: channels of the previous stage (or the stem).
            out_chs: channels of this stage.
            block_types: "conv" or "attn" per block (block_kinds).
            downsample: halve the resolution first (a 3×3 stride-2 conv); else in_chs must equal out_chs.
            drop_path_rates: stochastic depth per block (default 0).
            kernel_size: the ConvBlocks' depthwise k.
            mlp_ratio, ls_init_value, act_layer, norm_layer: as in ConvBlock / AttentionBlock.
            token_mixer, head_dim, window, axial, global_term, query_gate, gate, saliency_conv, value_conv:
                the AttentionBlocks' mixer (AttentionBlock).
        """
        dd = _factory(device, dtype)
        super().__init__()
        self.downsample = Downsample(in_chs, out_chs, norm_layer=norm_layer, **dd) if downsample else nn.Identity()
        drop_path_rates = drop_path_rates or [0.0] * len(block_types)
        blocks = []
        for kind, dp in zip(block_types, drop_path_rates):
            if kind == "conv":
                blocks.append(ConvBlock(out_chs, kernel_size=kernel_size, mlp_ratio=mlp_ratio,
                                        ls_init_value=ls_init_value, drop_path=dp, act_layer=act_layer,
                                        norm_layer=norm_layer, **dd))
            else:
                blocks.append(AttentionBlock(out_chs, token_mixer=token_mixer, head_dim=head_dim, window=window,
                                             axial=axial, global_term=global_term, query_gate=query_gate, gate=gate,
                                             saliency_conv=saliency_conv, value_conv=value_conv, mlp_ratio=mlp_ratio,
                                             ls_init_value=ls_init_value, drop_path=dp, act_layer=act_layer,
                                             norm_layer=norm_layer, **dd))
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B, C_in, H, W); mask: (B, H', W') real tokens at this stage's resolution."""
        x = apply_mask(self.downsample(x), mask)                          # (B, C_out, H', W')
        for block in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting() and x.requires_grad:
                x = checkpoint(block, x, mask, use_reentrant=False)
            else:
                x = block(x, mask)
        return x


class LinGlo(nn.Module):
    """LinGlo backbone + classifier: Stem, 4 LinGloStages (strides 4, 8, 16, 32), a norm + pool + linear head."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), depths: Sequence[int] = (2, 2, 6, 2),
                 in_chans: int = 3, num_classes: int = 1000, global_pool: str = "avg", layout: str = "alternate",
                 token_mixer: str = "key_only", head_dim: int = 32, window: int | None = None,
                 axial: bool | None = None, global_term: bool | None = None, query_gate: bool | None = None,
                 gate: str | None = None, saliency_conv: int | None = None, value_conv: int | None = None,
                 conv_kernel: int = 7, mlp_ratio: float = 4.0, ls_init_value: float | None = 1e-6,
                 head_hidden_size: int | None = None, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer: str | NormLayer = nn.BatchNorm2d, act_layer: str | Callable[[], nn.Module] = nn.GELU,
                 device=None, dtype=None):
        """
        Args:
            widths: channels per stage (4 stages).
            depths: blocks per stage.
            in_chans: image channels.
            num_classes: classifier outputs (0 = no classifier: pooled features).
            global_pool: the head's pooling (timm's pool types).
            layout: "alternate" (conv and attention blocks in every stage) or "graft" (conv stages 1–2, attention
                stages 3–4); block_kinds.
            token_mixer: the attention blocks' mixer: "key_only" | "softmax" | "linear" | "separable" | "none".
            head_dim: channels per attention head.
            window: key-only k×k relative-bias window (odd; 0 = global only). None: KeyOnlyAttention's default (7).
            axial: key-only separable window (cost 2k, not k²). None: off.
            global_term: key-only e^{r_inf} term for keys outside the window. None: on.
            query_gate: key-only elementwise output gate σ(W_q x_i) (no query-key product). None: off.
            gate: key-only "softmax" normaliser or "sigmoid" weights. None: softmax.
            saliency_conv: key-only depthwise conv over the saliency logits (k, odd; 0 = off). None: off.
            value_conv: key-only depthwise conv over the values, added to the output (k, odd; 0 = off). None: off.
                (The seven key-only options given with another token_mixer are a ValueError.)
            conv_kernel: the ConvBlocks' depthwise k.
            mlp_ratio: MLP hidden width / block width.
            ls_init_value: layer-scale init; 0 = no layer scale (timm.create_model drops arguments given as None,
                so there None leaves the default); timm.create_model also takes the older name ls_init.
            head_hidden_size: a pre-logits MLP of this width in the head (None = none).
            drop_rate: dropout before the classifier.
            drop_path_rate: stochastic depth, rising linearly over all blocks to this value.
            norm_layer: every norm of the backbone (class or timm name: BatchNorm2d by default; FrozenBatchNorm2d,
                SyncBatchNorm, GroupNorm, ... for detection); the head keeps LayerNorm2d.
            act_layer: the stem's and the MLPs' activation (class or timm name).
            device, dtype: where and in which dtype the parameters are created.
        """
        super().__init__()
        init_seed = int(torch.randint(0, 2**62, (1,), device="cpu"))   # see _init_weights
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"LinGlo: widths and depths need 4 stages, got {len(widths)} and {len(depths)}")
        if token_mixer not in TOKEN_MIXERS:
            raise ValueError(f"LinGlo: token_mixer must be one of {sorted(TOKEN_MIXERS)}, got {token_mixer!r}")
        dd = _factory(device, dtype)
        norm_layer, act_layer = get_norm_layer(norm_layer), get_act_layer(act_layer)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        self.layout, self.token_mixer = layout, token_mixer
        # eager forwards compute in channels-last memory whatever the input's layout (same values, faster on CPU;
        # _run_stages); an attribute, as timm's fused_attn: False keeps the input's layout
        self.channels_last_forward = True
        self.stem = Stem(in_chans, widths[0], act_layer=act_layer, norm_layer=norm_layer, **dd)
        n = sum(depths)   # drop-path rate rising linearly over all blocks (plain floats: works on the meta device)
        rates = [drop_path_rate * j / max(n - 1, 1) for j in range(n)]
        dpr = [rates[sum(depths[:i]):sum(depths[:i + 1])] for i in range(len(depths))]
        self.stages = nn.Sequential(*(
            LinGloStage(widths[max(i - 1, 0)], widths[i], block_kinds(layout, i, depths[i]), downsample=i > 0,
                        drop_path_rates=dpr[i], kernel_size=conv_kernel, mlp_ratio=mlp_ratio,
                        ls_init_value=ls_init_value, token_mixer=token_mixer, head_dim=head_dim, window=window,
                        axial=axial, global_term=global_term, query_gate=query_gate, gate=gate,
                        saliency_conv=saliency_conv, value_conv=value_conv, act_layer=act_layer,
                        norm_layer=norm_layer, **dd)
            for i in range(4)))
        self.feature_info = [dict(num_chs=w, reduction=4 * 2 ** i, module=f"stages.{i}") for i, w in enumerate(widths)]
        self.head = NormMlpClassifierHead(widths[-1], num_classes, hidden_size=head_hidden_size,
                                          pool_type=global_pool, drop_rate=drop_rate, norm_layer=LayerNorm2d, **dd)
        if head_hidden_size:
            self.head_hidden_size = head_hidden_size
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
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in POSITION_BIASES}

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
        if getattr(self, "channels_last_forward", True) and eager_plain(x):   # (absent in a pickled 0.1 model)
            # channels-last memory from here on, same values: on CPU a 1×1 conv over NCHW memory runs up to 5×
            # slower on stage-1/2 maps than over NHWC (oneDNN reorders NCHW first); on GPUs NHWC is the tensor-core
            # layout. Eager only: an exported graph would fix a batch-1 example's strides (ONNX has its own layout)
            x = x.contiguous(memory_format=torch.channels_last)   # (B, 3, H, W), NHWC in memory
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
        """(B, 3, H, W) -> (B, C4, ceil(H/32), ceil(W/32)); `mask`: (B, H, W) real pixels."""
        return self._run_stages(x, mask, last=len(self.stages) - 1)[0]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """`model` ready for inference, folded: every BatchNorm into the conv next to it, every layer scale into the
    conv before it, and the key-only op's exponentiated position kernels computed once. Same outputs (to float
    rounding) as model.eval(), with or without a mask, at any input size; no more training afterwards.

    timm's reparameterize convention: the LinGlo modules have fuse() methods and this is
    timm.utils.reparameterize_model followed by eval(), so it works on any model containing LinGlo parts (a
    features_only backbone, a detector) and on timm models with their own fuse()/reparameterize() (RepViT,
    FastViT, MobileOne). Idempotent. inplace=False (timm's default) works on a deep copy.
    """
    model = model if inplace else copy.deepcopy(model)
    _reparameterize(model.eval())
    return model.eval()


def _reparameterize(module: nn.Module) -> None:
    """timm.models.reparameterize_model's walk, except that a submodule *named* fuse (UperNet's fuse conv) is not
    taken for a fuse() method."""
    for name, child in module.named_children():
        method = getattr(child, "fuse", None)
        if callable(method) and not isinstance(method, nn.Module):
            setattr(module, name, method())
        elif hasattr(child, "reparameterize"):
            child.reparameterize()
        elif hasattr(child, "switch_to_deploy"):
            child.switch_to_deploy()
        _reparameterize(getattr(module, name))


# ---- weights from a file ----------------------------------------------------------------------------------------
def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: LinGlo, use_ema: bool = False) -> dict[str, Tensor]:
    """Weights for `model` from a LinGlo checkpoint (timm's convention: build_model_with_cfg applies it to the
    weights of `pretrained=True`, e.g. pretrained_cfg_overlay=dict(file=...)).

    - A `linglo train` checkpoint ({"model": ..., "ema": ..., "config": ...}) gives its "model" weights, or its
      "ema" weights with use_ema (a ValueError when it was trained without EMA). (timm's file loader already
      picks "model"; this covers a checkpoint passed as pretrained_cfg_overlay=dict(state_dict=...).)
    - "module." prefixes (a DDP-wrapped model's state_dict) are dropped.
    - A relative-position bias of another window size is interpolated to the model's window (bicubic over the
      (k, k) offset grid, linear over an axial (k,) one; the centre offset stays the centre), as timm resizes
      relative-position tables. Every other tensor passes unchanged; load_state_dict judges the fit.
    """
    if isinstance(state_dict.get("model"), Mapping):
        if use_ema and state_dict.get("ema") is None:
            raise ValueError("checkpoint has no EMA weights (trained without EMA)")
        state_dict = state_dict["ema"] if use_ema else state_dict["model"]
    wanted = model.state_dict()
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", "")   # the family member, if one
    if any(k.endswith(".mixer.value_conv.weight") for k in wanted) and not any(
            k.endswith(".mixer.value_conv.weight") for k in state_dict) and any(
            k.endswith(".mixer.proj_in.weight") for k in state_dict):
        v01 = legacy_model_kwargs(arch, {}) or HISTORY[0][2]
        raise ValueError("these weights have no value conv in their key-only attention, this model has: weights "
                         "of LinGlo 0.1 load into a model built with 0.1's defaults ("
                         f"{', '.join(f'{k}={v}' for k, v in v01.items())}: linglo.models.legacy_model_kwargs), "
                         "weights trained with value_conv=0 into one built with value_conv=0")
    have, need = _stage_depths(state_dict), _stage_depths(wanted)
    if have and need and have != need:
        older = [v for v, family, _ in HISTORY if tuple(family.get(arch, {}).get("depths", ())) == have]
        raise ValueError(f"these weights have {have} blocks per stage, this model {need}: build it with "
                         f"depths={have}" + (f" ({arch} before {older[0]} had them: timm.create_model({arch!r}, "
                                             f"**linglo.models.legacy_model_kwargs({arch!r}, kwargs, version)))"
                                             if older else ""))
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        target = wanted.get(key)
        if (key.rsplit(".", 1)[-1] in ("rel_bias", "bias_y", "bias_x") and target is not None
                and value.shape != target.shape and value.shape[0] == target.shape[0]):
            mode = "bicubic" if value.dim() == 3 else "linear"
            value = F.interpolate(value[None].float(), size=target.shape[1:], mode=mode,
                                  align_corners=False)[0].to(value.dtype)             # (heads, k', k') or (heads, k')
        out[key] = value
    return out


def _stage_depths(state_dict: Mapping[str, Any]) -> tuple[int, ...]:
    """Blocks per stage of LinGlo weights, from their names (stages.i.blocks.j.…); () for other weights."""
    found = [tuple(int(n) for n in m.groups()) for k in state_dict
             if (m := re.match(r"(?:module\.)?stages\.(\d+)\.blocks\.(\d+)\.", k))]
    return tuple(1 + max((j for i, j in found if i == stage), default=-1)
                 for stage in range(1 + max(i for i, _ in found))) if found else ()


# ---- the family -------------------------------------------------------------------------------------------------
FAMILY: dict[str, dict[str, Any]] = {
    "linglo_t": dict(widths=(32, 64, 128, 256), depths=(2, 2, 4, 2), mlp_ratio=3.75),
    "linglo_xs": dict(widths=(48, 96, 192, 384), depths=(2, 2, 6, 2), head_dim=24, mlp_ratio=3.5),
    "linglo_s": dict(widths=(64, 128, 256, 512), depths=(2, 2, 6, 2)),
    "linglo_m": dict(widths=(96, 192, 384, 768), depths=(2, 2, 6, 2)),
}
ALIASES = {"ls_init": "ls_init_value", "head_hidden": "head_hidden_size"}   # older keyword -> LinGlo's
# The family's key-only formulation, as Imagenette's mixer study chose it (docs/study.md): an elementwise query gate
# on the output and a 3×3 depthwise conv on the value path (still no query-key product, still linear). Applied when
# the token mixer is key-only; version 0.1 built the family without both (HISTORY).
KEY_ONLY_DEFAULTS = {"query_gate": True, "value_conv": 3}
# What each version changed in the family, as the values the versions before it built: (version, per-variant
# kwargs, key-only kwargs). legacy_model_kwargs rebuilds an older version's model from them.
HISTORY: tuple[tuple[str, dict[str, dict[str, Any]], dict[str, Any]], ...] = (
    # the mixer study's formulation; linglo_t's MLP ratio 4 -> 3.75 kept it in its SPEC row (3.0 M)
    ("0.2", {"linglo_t": {"mlp_ratio": 4.0}}, {"query_gate": False, "value_conv": 0}),
    # the macro study: two fewer blocks at stride 16, as accurate and faster at 224² (docs/study.md)
    ("0.3", {"linglo_t": {"depths": (2, 2, 6, 2)}}, {}),
)


def _version(text: str) -> tuple[int, ...]:
    """"0.2.0" -> (0, 2, 0); the numeric prefix of each part ("0.3.0rc1" -> (0, 3, 0))."""
    return tuple(int(m.group()) if (m := re.match(r"\d+", part)) else 0 for part in text.split(".")[:3])


def _cfg(**kwargs) -> dict[str, Any]:
    """No published weights: url stays empty; load local weights with pretrained_cfg_overlay=dict(file=...).
    mean, std, crop_pct and interpolation here are what the classify recipe uses (timm.data.resolve_data_config)."""
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.9,
            "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
            "first_conv": "stem.conv1", "classifier": "head.fc", "fixed_input_size": False, "license": "apache-2.0",
            **kwargs}


default_cfgs = generate_default_cfgs({name: _cfg() for name in FAMILY})


def _create_linglo(variant: str, pretrained: bool = False, **kwargs) -> LinGlo:
    for old, new in ALIASES.items():
        if old in kwargs:
            if new in kwargs:
                raise ValueError(f"{variant}: give {new} or its older name {old}, not both")
            kwargs[new] = kwargs.pop(old)
    if kwargs.get("token_mixer", "key_only") == "key_only":
        kwargs = {**KEY_ONLY_DEFAULTS, **kwargs}
    return build_model_with_cfg(LinGlo, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(out_indices=(0, 1, 2, 3), feature_cls="getter"),
                                **{**FAMILY[variant], **kwargs})


def legacy_model_kwargs(model: str, kwargs: Mapping[str, Any], version: str = "0.1") -> dict[str, Any]:
    """`kwargs` that build family member `model` as linglo `version` built it from the same `kwargs`: the values of
    every default changed since filled in where `kwargs` leave them unset (to load a checkpoint of that version;
    a `linglo train` checkpoint names its version, absent in 0.1's). Other models: unchanged."""
    if model not in FAMILY:
        return dict(kwargs)
    old: dict[str, Any] = {}
    for changed_in, family, key_only in reversed(HISTORY):   # newest first: an older version's value wins
        if _version(version) < _version(changed_in):
            old.update(family.get(model, {}))
            if kwargs.get("token_mixer", "key_only") == "key_only":
                old.update(key_only)
    return {**old, **kwargs}


@register_model
def linglo_t(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-T, 2.57 M params (compare EdgeNeXt-XS, ConvNeXt-atto)."""
    return _create_linglo("linglo_t", pretrained, **kwargs)


@register_model
def linglo_xs(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-XS, 5.97 M params (compare MobileViTv2-1.0, EdgeNeXt-S, EfficientFormerV2-S1)."""
    return _create_linglo("linglo_xs", pretrained, **kwargs)


@register_model
def linglo_s(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-S, 11.34 M params (compare EfficientViT-B1, FastViT-SA12, PVTv2-b1)."""
    return _create_linglo("linglo_s", pretrained, **kwargs)


@register_model
def linglo_m(pretrained: bool = False, **kwargs) -> LinGlo:
    """LinGlo-M, 25.03 M params (compare EfficientViT-B2, PVTv2-b2, Swin-T)."""
    return _create_linglo("linglo_m", pretrained, **kwargs)
