"""Token mixers with one interface: forward(x (B, C, H, W), mask (B, H, W) bool | None) -> (B, C, H, W).

KeyOnlyAttention is LinGlo's; the others are the SPEC's comparison mixers for ablations and benchmarks.
`mask` marks real tokens (True); padded tokens get no attention weight in every mixer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import key_only_attention, position_kernels, use_fused_kernels

__all__ = ["KeyOnlyAttention", "SoftmaxAttention", "LinearAttention", "SeparableAttention", "IdentityMixer",
           "TOKEN_MIXERS", "create_token_mixer", "apply_mask"]


def _heads(dim: int, head_dim: int) -> int:
    if dim % head_dim and head_dim % dim:
        raise ValueError(f"token mixer: dim {dim} must be a multiple of head_dim {head_dim}")
    return max(dim // head_dim, 1)


def apply_mask(x: Tensor, mask: Tensor | None) -> Tensor:
    """(B, C, H, W) with the padded tokens (False in the (B, H, W) mask) set to zero, so that a convolution sees them
    as the zero padding of the unpadded image; None = every token is real."""
    return x if mask is None else x * mask[:, None].to(x.dtype)


class KeyOnlyAttention(nn.Module):
    """Attention whose weights come from the keys alone: a saliency gate s = W_s x scores every token,
    a relative-position bias adds locality, and the op (ops.key_only_attention) mixes values at cost linear in H·W.

    The saliency s_j = <g_h, W_k x_j>/√d is linear in x, so it is stored collapsed as one (h × C) 1×1 conv
    (the same function, C/h times cheaper than materialising the keys).
    """

    def __init__(self, dim: int, head_dim: int = 32, window: int = 7, axial: bool = False, global_term: bool = True,
                 query_gate: bool = False, gate: str = "softmax", saliency_conv: int = 0, value_conv: int = 0,
                 r_inf_init: float = -3.0, fused_attn: bool | None = None, device=None, dtype=None):
        """
        Args:
            dim: channels in and out.
            head_dim: channels per head (heads = dim // head_dim).
            window: k of the k×k relative-bias window (odd; 0 = global only).
            axial: separable window e^{b_y+b_x} (cost 2k, not k²).
            global_term: keep the e^{r_inf} term for keys outside the window.
            query_gate: y_i = W_o(σ(W_q x_i) ⊙ Σ_j a_ij v_j) (elementwise: no query-key product).
            gate: "softmax" normaliser or "sigmoid" weights (see the op).
            saliency_conv: k of a depthwise conv over the saliency logits before the gate (saliency from a
                token's neighbourhood, not the token alone; 0 = off).
            value_conv: k of a depthwise conv over the values added to the attended output (a local value path,
                as CSWin's LePE; 0 = off).
            r_inf_init: initial r_inf (the bias of keys outside the window).
            fused_attn: run the fused Triton kernels on CUDA; None = ops.use_fused_kernels() (LINGLO_FUSED=1),
                read now. An attribute: set `module.fused_attn` to switch later.
        """
        dd = {"device": device, "dtype": dtype}
        super().__init__()
        if window < 0 or (window and window % 2 == 0):
            raise ValueError(f"KeyOnlyAttention: window must be 0 (global only) or odd, got {window}")
        if not window and not global_term:
            raise ValueError("KeyOnlyAttention: window=0 needs global_term=True (nothing would be attended)")
        if gate not in ("softmax", "sigmoid"):
            raise ValueError(f"KeyOnlyAttention: gate must be 'softmax' or 'sigmoid', got {gate!r}")
        for name, k in (("saliency_conv", saliency_conv), ("value_conv", value_conv)):
            if k < 0 or (k and k % 2 == 0):
                raise ValueError(f"KeyOnlyAttention: {name} must be 0 (off) or odd, got {k}")
        self.heads = _heads(dim, head_dim)
        self.head_dim = dim // self.heads
        self.window, self.axial, self.gate = window, axial, gate
        self.query_gate = query_gate
        self.fused_attn = use_fused_kernels() if fused_attn is None else fused_attn
        # one 1×1 conv: values (C), saliency (h) and optionally the query gate (C)
        self.proj_in = nn.Conv2d(dim, dim * (2 if query_gate else 1) + self.heads, 1, **dd)
        self.saliency_conv = (nn.Conv2d(self.heads, self.heads, saliency_conv, padding=saliency_conv // 2,
                                        groups=self.heads, **dd) if saliency_conv else None)
        self.value_conv = (nn.Conv2d(dim, dim, value_conv, padding=value_conv // 2, groups=dim, **dd)
                           if value_conv else None)
        self.proj_out = nn.Conv2d(dim, dim, 1, **dd)
        self.rel_bias = self.bias_y = self.bias_x = None
        if window and axial:
            self.bias_y = nn.Parameter(torch.zeros(self.heads, window, **dd))
            self.bias_x = nn.Parameter(torch.zeros(self.heads, window, **dd))
        elif window:
            self.rel_bias = nn.Parameter(torch.zeros(self.heads, window, window, **dd))
        # with no window every key has the same r: r_inf would be a constant shift, so it only exists beside a window
        self.r_inf = (nn.Parameter(torch.full((self.heads,), r_inf_init, **dd)) if global_term and window
                      else None)
        # e^{r − M} kernels computed once by fuse() (inference); None: the op computes them every call
        self.register_buffer("pos_kernel", None, persistent=False)
        self.register_buffer("pos_ky", None, persistent=False)
        self.register_buffer("pos_kx", None, persistent=False)
        self.register_buffer("pos_glob", None, persistent=False)
        self.position_fused = False

    @torch.no_grad()
    def fuse(self) -> "KeyOnlyAttention":
        """For inference (timm's reparameterize convention): compute the op's exponentiated position kernels once
        from rel_bias / bias_y, bias_x / r_inf, instead of every call. Same outputs; stale if those parameters
        change afterwards, so fuse a trained model, not one still training. Returns self."""
        axial_bias = None if self.bias_y is None else (self.bias_y, self.bias_x)
        weight = self.proj_out.weight
        acc = torch.promote_types(weight.dtype, torch.float32)
        kernel, axial, glob = position_kernels(self.rel_bias, axial_bias, self.r_inf, self.heads, acc, weight.device)
        self.pos_kernel, self.pos_glob = kernel, glob
        self.pos_ky, self.pos_kx = (None, None) if axial is None else axial
        self.position_fused = True
        return self

    def _position(self):
        """The kernels fuse() computed, in the op's `position` form; None before fuse()."""
        if not self.position_fused:
            return None
        return self.pos_kernel, None if self.pos_ky is None else (self.pos_ky, self.pos_kx), self.pos_glob

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        c = x.shape[1]
        y = self.proj_in(x)
        v_map = y[:, :c]                                                   # (B, C, H, W)
        s = y[:, c:c + self.heads]                                         # (B, h, H, W)
        if self.saliency_conv is not None:   # padded tokens act as zero padding, as in the unpadded image
            s = self.saliency_conv(apply_mask(s, mask))
        v = v_map.unflatten(1, (self.heads, self.head_dim))            # (B, h, d, H, W)
        axial_bias = None if self.bias_y is None else (self.bias_y, self.bias_x)
        out = key_only_attention(v, s / math.sqrt(self.head_dim), self.rel_bias, self.r_inf, mask,
                                 axial_bias=axial_bias, gate=self.gate, fused=self.fused_attn,
                                 position=self._position())                                     # (B, h, d, H, W)
        out = out.flatten(1, 2)                                            # (B, C, H, W)
        if self.value_conv is not None:
            out = out + self.value_conv(apply_mask(v_map, mask))
        if self.query_gate:
            out = out * torch.sigmoid(y[:, c + self.heads:])
        return self.proj_out(out)


class SoftmaxAttention(nn.Module):
    """Full softmax self-attention over all H·W tokens (SDPA): quadratic, the accuracy reference."""

    def __init__(self, dim: int, head_dim: int = 32, device=None, dtype=None):
        super().__init__()
        self.heads = _heads(dim, head_dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1, device=device, dtype=dtype)
        self.proj_out = nn.Conv2d(dim, dim, 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, c, hh, ww = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, hh * ww)
        # (B, h, N, d) each, d contiguous: SDPA's fused (flash / memory-efficient) kernels need a unit-stride last
        # dim; strided views fall back to the math kernel, which materialises the N×N scores
        q, k, v = qkv.transpose(-1, -2).contiguous().unbind(1)
        attn_mask = None if mask is None else mask.reshape(b, 1, 1, hh * ww)   # keys only
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)       # (B, h, N, d)
        return self.proj_out(out.transpose(-1, -2).reshape(b, c, hh, ww))


class LinearAttention(nn.Module):
    """ReLU linear attention (EfficientViT LiteMLA style): q·(kᵀv) / q·(kᵀ1), O(N·d²) per head."""

    def __init__(self, dim: int, head_dim: int = 32, eps: float = 1e-15, device=None, dtype=None):
        super().__init__()
        self.heads = _heads(dim, head_dim)
        self.eps = eps
        self.qkv = nn.Conv2d(dim, dim * 3, 1, device=device, dtype=dtype)
        self.proj_out = nn.Conv2d(dim, dim, 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        b, c, hh, ww = x.shape
        out_dtype = x.dtype
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, hh * ww).unbind(1)  # (B, h, d, N)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
            if mask is not None:
                k = k * mask.reshape(b, 1, 1, hh * ww)
            kv = k @ v.transpose(-1, -2)                                   # (B, h, d, d)
            num = kv.transpose(-1, -2) @ q                                 # (B, h, d, N)
            den = k.sum(-1, keepdim=True).transpose(-1, -2) @ q            # (B, h, 1, N)
            out = num / (den + self.eps)
        return self.proj_out(out.to(out_dtype).reshape(b, c, hh, ww))


class SeparableAttention(nn.Module):
    """MobileViTv2 separable self-attention: one softmax context score per token, a single context vector."""

    def __init__(self, dim: int, head_dim: int = 32, device=None, dtype=None):
        super().__init__()
        self.qkv = nn.Conv2d(dim, 1 + dim * 2, 1, device=device, dtype=dtype)
        self.proj_out = nn.Conv2d(dim, dim, 1, device=device, dtype=dtype)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        c = x.shape[1]
        score, k, v = self.qkv(x).split([1, c, c], dim=1)
        score = score.float()
        if mask is not None:
            score = score.masked_fill(~mask[:, None], float("-inf"))
        ctx_w = torch.softmax(score.flatten(2), dim=-1).view_as(score).to(k.dtype)  # (B, 1, H, W)
        context = (k * ctx_w).sum(dim=(2, 3), keepdim=True)                       # (B, C, 1, 1)
        return self.proj_out(F.relu(v) * context)


class IdentityMixer(nn.Module):
    """No token mixing (the "none" ablation arm)."""

    def __init__(self, dim: int, head_dim: int = 32, device=None, dtype=None):
        super().__init__()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x


TOKEN_MIXERS = {"key_only": KeyOnlyAttention, "softmax": SoftmaxAttention, "linear": LinearAttention,
                "separable": SeparableAttention, "none": IdentityMixer}


def create_token_mixer(token_mixer: str, dim: int, head_dim: int = 32, *, window: int | None = None,
                       axial: bool | None = None, global_term: bool | None = None, query_gate: bool | None = None,
                       gate: str | None = None, saliency_conv: int | None = None, value_conv: int | None = None,
                       device=None, dtype=None) -> nn.Module:
    """The mixer named `token_mixer` (a key of TOKEN_MIXERS) for `dim` channels.

    window, axial, global_term, query_gate, gate, saliency_conv and value_conv are KeyOnlyAttention's options:
    None leaves its default; a value given with another mixer is a ValueError (it would otherwise be dropped
    silently, and an ablation arm would not be what its name says).
    """
    if token_mixer not in TOKEN_MIXERS:
        raise ValueError(f"token_mixer must be one of {sorted(TOKEN_MIXERS)}, got {token_mixer!r}")
    options = dict(window=window, axial=axial, global_term=global_term, query_gate=query_gate, gate=gate,
                   saliency_conv=saliency_conv, value_conv=value_conv)
    given = {k: v for k, v in options.items() if v is not None}
    if token_mixer == "key_only":
        return KeyOnlyAttention(dim, head_dim, **given, device=device, dtype=dtype)
    if given:
        shown = ", ".join(f"{k}={v!r}" for k, v in given.items())
        raise ValueError(f"token_mixer={token_mixer!r} takes no {shown}: key-only attention options, given with "
                         "another mixer")
    return TOKEN_MIXERS[token_mixer](dim, head_dim, device=device, dtype=dtype)
