"""Token mixers with one interface: forward(x (B, C, H, W), mask (B, H, W) bool | None) -> (B, C, H, W).

KeyOnlyAttention is LinGlo's; the others are the SPEC's comparison mixers for ablations and benchmarks.
`mask` marks real tokens (True); padded tokens get no attention weight in every mixer.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import key_only_attention_general

__all__ = ["KeyOnlyAttention", "SoftmaxAttention", "LinearAttention", "SeparableAttention", "IdentityMixer",
           "TOKEN_MIXERS", "create_token_mixer"]


def _heads(dim: int, head_dim: int) -> int:
    if dim % head_dim and head_dim % dim:
        raise ValueError(f"token mixer: dim {dim} must be a multiple of head_dim {head_dim}")
    return max(dim // head_dim, 1)


class KeyOnlyAttention(nn.Module):
    """Attention whose weights come from the keys alone: a saliency gate s = W_s x scores every token,
    a relative-position bias adds locality, and the op mixes values at cost linear in H·W.

    The saliency s_j = <g_h, W_k x_j>/√d is linear in x, so it is stored collapsed as one (h × C) 1×1 conv
    (the same function, C/h times cheaper than materialising the keys).

    window: k of the k×k relative-bias window (odd; 0 = global only). axial: separable window
    e^{b_y+b_x} (cost 2k, not k²). global_term: keep the e^{r_inf} term for keys outside the window.
    query_gate: y_i = W_o(σ(W_q x_i) ⊙ Σ_j a_ij v_j) (elementwise: no query-key product). gate: "softmax"
    normaliser or "sigmoid" weights. saliency_conv: k of a depthwise conv over the saliency logits before the
    gate (saliency from a token's neighbourhood, not the token alone; 0 = off). value_conv: k of a depthwise
    conv over the values added to the attended output (a local value path, as CSWin's LePE; 0 = off).
    """

    def __init__(self, dim: int, head_dim: int = 32, window: int = 7, axial: bool = False, global_term: bool = True,
                 query_gate: bool = False, gate: str = "softmax", saliency_conv: int = 0, value_conv: int = 0,
                 r_inf_init: float = -3.0):
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
        # one 1×1 conv: values (C), saliency (h) and optionally the query gate (C)
        self.proj_in = nn.Conv2d(dim, dim * (2 if query_gate else 1) + self.heads, 1)
        self.saliency_conv = (nn.Conv2d(self.heads, self.heads, saliency_conv, padding=saliency_conv // 2,
                                        groups=self.heads) if saliency_conv else None)
        self.value_conv = nn.Conv2d(dim, dim, value_conv, padding=value_conv // 2, groups=dim) if value_conv else None
        self.proj_out = nn.Conv2d(dim, dim, 1)
        if window and axial:
            self.bias_y = nn.Parameter(torch.zeros(self.heads, window))
            self.bias_x = nn.Parameter(torch.zeros(self.heads, window))
        elif window:
            self.rel_bias = nn.Parameter(torch.zeros(self.heads, window, window))
        # with no window every key has the same r: r_inf would be a constant shift, so it only exists beside a window
        self.r_inf = nn.Parameter(torch.full((self.heads,), r_inf_init)) if global_term and window else None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        c = x.shape[1]
        y = self.proj_in(x)
        v_map = y[:, :c]                                                   # (B, C, H, W)
        s = y[:, c:c + self.heads]                                         # (B, h, H, W)
        if self.saliency_conv is not None:   # padded tokens act as zero padding, as in the unpadded image
            s = self.saliency_conv(s if mask is None else s * mask[:, None].to(s.dtype))
        v = v_map.unflatten(1, (self.heads, self.head_dim))               # (B, h, d, H, W)
        window = {}
        if self.window and self.axial:
            window["axial_bias"] = (self.bias_y, self.bias_x)
        elif self.window:
            window["rel_bias"] = self.rel_bias
        out = key_only_attention_general(v, s / math.sqrt(self.head_dim), self.r_inf, gate=self.gate, mask=mask,
                                         **window).flatten(1, 2)           # (B, C, H, W)
        if self.value_conv is not None:
            out = out + self.value_conv(v_map if mask is None else v_map * mask[:, None].to(v_map.dtype))
        if self.query_gate:
            out = out * torch.sigmoid(y[:, c + self.heads:])
        return self.proj_out(out)


class SoftmaxAttention(nn.Module):
    """Full softmax self-attention over all H·W tokens (SDPA): quadratic, the accuracy reference."""

    def __init__(self, dim: int, head_dim: int = 32):
        super().__init__()
        self.heads = _heads(dim, head_dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)

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

    def __init__(self, dim: int, head_dim: int = 32, eps: float = 1e-15):
        super().__init__()
        self.heads = _heads(dim, head_dim)
        self.eps = eps
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)

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

    def __init__(self, dim: int, head_dim: int = 32):
        super().__init__()
        self.qkv = nn.Conv2d(dim, 1 + dim * 2, 1)
        self.proj_out = nn.Conv2d(dim, dim, 1)

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

    def __init__(self, dim: int, head_dim: int = 32):
        super().__init__()

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x


TOKEN_MIXERS = {"key_only": KeyOnlyAttention, "softmax": SoftmaxAttention, "linear": LinearAttention,
                "separable": SeparableAttention, "none": IdentityMixer}


def create_token_mixer(name: str, dim: int, head_dim: int = 32, **kwargs) -> nn.Module:
    """Build a mixer by name; `kwargs` (window, axial, ...) apply to key_only only."""
    if name not in TOKEN_MIXERS:
        raise ValueError(f"token_mixer must be one of {sorted(TOKEN_MIXERS)}, got {name!r}")
    return TOKEN_MIXERS[name](dim, head_dim=head_dim, **(kwargs if name == "key_only" else {}))
