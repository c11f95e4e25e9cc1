"""Key-only attention, the op: weights from the keys alone (a saliency gate), mixed at linear cost.

Query i attends to key j with weight a_ij ∝ exp(s_j + r(j − i)): s_j is the key's saliency logit, r a
relative-position term that is rel_bias[δ] for key-minus-query offsets δ inside a k×k window and one
scalar r_inf outside it. Because exp(s_j + r) = exp(s_j)·exp(r), no N×N matrix is ever needed:

    Σ_j e^{r(j−i)} u_j = conv_δ((e^b − e^{r_inf}), u)_i + e^{r_inf}·Σ_all u_j          (u = e^s·v, or e^s)

a depthwise convolution plus a global sum (positional_mix): O(N·C·k²) time, O(N·C) memory.

One entry point, key_only_attention (every variant the model uses), and beside it the explicit O(N²)
definition, key_only_attention_reference, that the tests hold it to. Inside, the global sum rides in the
depthwise conv's bias, products keep v's memory layout (channels_last stays channels_last), maps of at most
DENSE_MAX_TOKENS tokens take the N×N definition itself (a handful of calls), and on CUDA the window variants
may run as fused Triton kernels (key_only_triton) when the caller asks (`fused=True`; the module switch is
KeyOnlyAttention.fused_attn). Measurements behind each of these: docs/performance.md.
"""
from __future__ import annotations

import functools
import os
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["key_only_attention", "key_only_attention_reference", "positional_mix", "position_kernels",
           "use_fused_kernels", "eager_plain"]

FUSED_ENV = "LINGLO_FUSED"   # "1": modules built afterwards run the fused Triton kernels on CUDA (use_fused_kernels)
AXIAL_AS_SQUARE_MAX_K = 11   # axial windows up to this k run as one k×k conv (faster than four 1-D passes)
DENSE_MAX_TOKENS = 64        # maps up to this many tokens (8×8) take the dense path (see _attend_dense)
GATES = ("softmax", "sigmoid")


def use_fused_kernels() -> bool:
    """Whether a module built now should run the fused Triton kernels: LINGLO_FUSED=1, read when called (at module
    construction, as timm's use_fused_attn). Off by default: on an H200 the kernels use half the memory of the
    torch ops but are slower inside the model (docs/performance.md)."""
    return os.environ.get(FUSED_ENV, "0") == "1"


def key_only_attention(v: Tensor, s: Tensor, rel_bias: Tensor | None = None, r_inf: Tensor | None = None,
                       mask: Tensor | None = None, *, axial_bias: tuple[Tensor, Tensor] | None = None,
                       gate: str = "softmax", fused: bool = False,
                       position: tuple[Tensor | None, tuple[Tensor, Tensor] | None, Tensor | None] | None = None
                       ) -> Tensor:
    """Key-only attention: each query mixes the values with weights that come from the keys' saliency alone,

        a_ij = exp(s_j + r(j − i)) / Σ_j' exp(s_j' + r(j' − i)),      out_i = Σ_j a_ij v_j = num_i / den_i,
        num_i = Σ_j e^{r(j−i)} · e^{s_j} v_j,                          den_i = Σ_j e^{r(j−i)} · e^{s_j},

    and both sums are positional mixes (a depthwise conv plus a global sum, positional_mix): no N×N matrix.

    Args:
        v: (B, h, d, H, W) values.
        s: (B, h, H, W) saliency logits.
        rel_bias: (h, k, k), k odd: rel_bias[:, Δy + k//2, Δx + k//2] is the bias of key-minus-query offset
            (Δy, Δx).
        r_inf: (h,) bias of every key outside the window; None = window only. Unused without a window.
        mask: (B, H, W) bool, True = real token: other tokens get no weight; a query with no real key gets 0.
        axial_bias: ((h, k), (h, k)) instead of rel_bias: the separable window bias_y[:, a] + bias_x[:, b]
            (cost 2k per token, not k²). Neither rel_bias nor axial_bias: global only (r uniform).
        gate: "softmax" (above), or "sigmoid": weights σ(s_j)·e^{r(j−i)}, normalised by Σ_j e^{r(j−i)} alone.
        fused: on CUDA (fp32/fp16/bf16, softmax gate, a window, eager, triton installed), run the fused Triton
            kernels (key_only_triton); elsewhere the torch ops.
        position: the kernels position_kernels(rel_bias, axial_bias, r_inf, ...) returns, computed once ahead
            (KeyOnlyAttention.fuse, for inference): used when their dtype is the one the op computes in, else
            recomputed; must match rel_bias / axial_bias / r_inf (which the small-map path still reads).

    Returns:
        (B, h, d, H, W) in v's dtype, computed in fp32 after subtracting the per-head maxima of s and of r
        (float64 stays float64), whatever autocast says.
    """
    if not torch.jit.is_tracing():   # (a jit trace would record the checks' shape comparisons as constants)
        _check_inputs(v, s, rel_bias, r_inf, mask, axial_bias, gate)
    windowed = rel_bias is not None or axial_bias is not None
    if gate == "softmax" and windowed and _small_map(v, s):
        square = rel_bias if rel_bias is not None else axial_bias[0][:, :, None] + axial_bias[1][:, None, :]
        return _attend_dense(v, s, square, r_inf, mask)
    acc = torch.promote_types(v.dtype, torch.float32)   # fp32 accumulation; float64 stays float64
    if position is None or _position_dtype(position) != acc:
        position = position_kernels(rel_bias, axial_bias, r_inf, v.shape[1], acc, v.device)
    kernel, axial, glob = position
    kernels = _fused_kernels(v) if fused and gate == "softmax" and windowed else None
    if kernels is not None:   # the fused kernel takes the k×k kernel (an axial one as its outer product)
        square = kernel if kernel is not None else axial[0][:, :, None] * axial[1][:, None, :]
        return kernels.window_attention(v, s, square, glob, mask)
    mix = functools.partial(positional_mix, glob=glob, kernel=kernel, axial=axial)
    with _autocast_off(v):
        vf, sf = v.to(acc), s.to(acc)
        if gate == "softmax":
            w = torch.exp(_shifted_logits(sf, mask))                          # e^{s − max s}: (B, h, H, W) in [0, 1]
            den_in = w
        else:
            real = torch.ones_like(sf) if mask is None else mask[:, None].to(acc).expand_as(sf)
            w = torch.sigmoid(sf) * real
            den_in = real                                                      # positional normaliser
        num = mix(vf * w[:, :, None])            # (B, h, d, H, W); v first: the product keeps v's memory layout
        den = mix(den_in[:, :, None])                                          # (B, h, 1, H, W)
        out = num / torch.where(den > 0, den, 1.0)                             # no real key in reach -> 0
    return out.to(v.dtype)


def key_only_attention_reference(v: Tensor, s: Tensor, rel_bias: Tensor, r_inf: Tensor,
                                 mask: Tensor | None = None) -> Tensor:
    """The explicit O(N²) definition (tests): builds every a_ij = softmax_j(s_j + r(j − i)) and applies it."""
    _check_inputs(v, s, rel_bias, r_inf, mask)
    k = rel_bias.shape[-1]
    b, h, d, hh, ww = v.shape
    dtype = torch.promote_types(v.dtype, torch.float32)
    ys, xs = torch.meshgrid(torch.arange(hh, device=v.device), torch.arange(ww, device=v.device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]       # (N_query, N_key): key − query
    inside = (dy.abs() <= k // 2) & (dx.abs() <= k // 2)
    r = rel_bias.to(dtype)[:, (dy + k // 2).clamp(0, k - 1), (dx + k // 2).clamp(0, k - 1)]  # (h, N, N)
    r = torch.where(inside, r, r_inf.to(dtype)[:, None, None])
    logits = s.to(dtype).reshape(b, h, 1, hh * ww) + r                 # (B, h, N, N)
    if mask is not None:
        logits = logits.masked_fill(~mask.reshape(b, 1, 1, hh * ww), float("-inf"))
    a = torch.softmax(logits, dim=-1).nan_to_num(0.0)                   # a row with no real key -> 0
    out = torch.einsum("bhij,bhdj->bhdi", a, v.to(dtype).reshape(b, h, d, hh * ww))
    return out.reshape(b, h, d, hh, ww).to(v.dtype)


# ---- checks ---------------------------------------------------------------------------------------------------
def _shape_error(what: str, expected: str, got) -> ValueError:
    return ValueError(f"key_only_attention: {what} must be {expected}, got {got}")


def _check_inputs(v: Tensor, s: Tensor, rel_bias: Tensor | None, r_inf: Tensor | None, mask: Tensor | None,
                  axial_bias: tuple[Tensor, Tensor] | None = None, gate: str = "softmax") -> None:
    """Shapes, dtypes and options: a few comparisons of sizes, cheap next to the op, so every call makes them."""
    if v.dim() != 5:
        raise _shape_error("v", "(B, heads, head_dim, H, W)", tuple(v.shape))
    b, h, _, hh, ww = v.shape
    if not v.is_floating_point():
        raise _shape_error("v", "a floating-point tensor", v.dtype)
    if tuple(s.shape) != (b, h, hh, ww):
        raise _shape_error("s", f"(B, heads, H, W) = {(b, h, hh, ww)} to match v", tuple(s.shape))
    if r_inf is not None and tuple(r_inf.shape) != (h,):
        raise _shape_error("r_inf", f"(heads,) = {(h,)}", tuple(r_inf.shape))
    if mask is not None:
        if tuple(mask.shape) != (b, hh, ww):
            raise _shape_error("mask", f"(B, H, W) = {(b, hh, ww)}", tuple(mask.shape))
        if mask.dtype != torch.bool:
            raise _shape_error("mask", "a bool tensor (True = real token)", mask.dtype)
    if gate not in GATES:
        raise _shape_error("gate", f"one of {GATES}", repr(gate))
    if rel_bias is not None and axial_bias is not None:
        raise ValueError("key_only_attention: give rel_bias (square window) or axial_bias (separable), not both")
    if rel_bias is not None:
        _check_window(rel_bias, h)
    if axial_bias is not None:
        by, bx = axial_bias
        if _check_window(by, h, "bias_y") != _check_window(bx, h, "bias_x"):
            raise _shape_error("bias_x", f"the same window size as bias_y {tuple(by.shape)}", tuple(bx.shape))


def _check_window(bias: Tensor, heads: int, axis: str = "rel_bias") -> int:
    """Return the window size k of a (heads, k[, k]) bias; k must be odd so the window is centred."""
    k = bias.shape[-1]
    square = axis == "rel_bias"
    want = (heads, k, k) if square else (heads, k)
    if tuple(bias.shape) != want or k % 2 == 0:
        shape = "(heads, k, k)" if square else "(heads, k)"
        raise _shape_error(axis, f"{shape} with heads={heads} and k odd", tuple(bias.shape))
    return k


# ---- the positional mix -----------------------------------------------------------------------------------------
def _static_branches() -> bool:
    """Size-dependent shortcuts are exact but would be frozen into a traced/exported graph: skip them there.
    torch.onnx.export(dynamo=True) and torch.export set is_exporting(); the TorchScript exporter traces."""
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


def eager_plain(*tensors: Tensor) -> bool:
    """True in an eager call on plain tensors: not traced, exported or compiled, and no fake/proxy/functional tensor
    subclass (whose sizes may be symbolic). Size-dependent fast paths and caches are safe only there; checked before
    any size is compared. Shared by the op's dense and fused paths and the banded MLP (layers.mlp)."""
    return _static_branches() and not torch.compiler.is_compiling() and all(type(t) is torch.Tensor for t in tensors)


def _crop(kernel: Tensor, size: int, dim: int) -> Tensor:
    """Taps beyond ±(size−1) never meet a token: crop them so tiny maps don't pay for a large window."""
    if not _static_branches():   # first: a symbolic size must not be compared, or export would fix it
        return kernel
    k = kernel.shape[dim]
    keep = min(k, 2 * size - 1)
    return kernel.narrow(dim, (k - keep) // 2, keep) if keep < k else kernel


def _depthwise(x: Tensor, kernel: Tensor, total: Tensor | None = None) -> Tensor:
    """Per-head depthwise correlation plus a per-channel constant.

    x: (B, h, c, H, W); kernel: (h, kh, kw); total: (B, h, c) added at every position (the global term) or None.
    Returns (B, h, c, H, W), zero padding. Eager: one conv2d over the h·c channels with x's memory layout
    (channels_last input -> channels_last output), the constant riding in the conv's bias (no extra pass over the
    map); for B > 1 the batch is folded into the groups so the per-sample constant is still a bias. Those branches
    depend on the batch size, and the conv2d weight's shape on c, so a traced or exported graph (TorchScript,
    torch.export, either ONNX exporter) takes one conv3d instead, x read as (B, h, c | H, W) with (1, kh, kw)
    kernels: its weight shape and groups are constants of the model, so every batch and size runs the same graph.
    """
    b, h, c, hh, ww = x.shape
    kh, kw = kernel.shape[-2:]
    pad = (kh // 2, kw // 2)
    if not _static_branches():
        out = F.conv3d(x, kernel[:, None, None], padding=(0, *pad), groups=kernel.shape[0])  # (B, h, c, H, W)
        return out if total is None else out + total[..., None, None]
    weight = kernel[:, None, None].expand(h, c, 1, kh, kw).reshape(h * c, 1, kh, kw)  # weights only, tiny
    if total is not None and b > 1 and x.is_contiguous():
        out = F.conv2d(x.view(1, b * h * c, hh, ww), weight.repeat(b, 1, 1, 1), total.reshape(-1), padding=pad,
                       groups=b * h * c)
    elif b == 1:
        x = x.reshape(1, h * c, hh, ww)
        if x.stride(1) == 1 and c * h > 1:
            # channels-last data whose size-1 batch got a small stride: conv would take it for NCHW and copy it
            x = x.as_strided(x.shape, (x.numel(), 1, x.stride(2), x.stride(3)))
        out = F.conv2d(x, weight, None if total is None else total.reshape(-1), padding=pad, groups=h * c)
    else:
        out = F.conv2d(x.reshape(b, h * c, hh, ww), weight, padding=pad, groups=h * c)
        if total is not None:
            out = out + total.reshape(b, h * c, 1, 1)
    return out.view(b, h, c, hh, ww)


def positional_mix(x: Tensor, glob: Tensor | None, kernel: Tensor | None = None,
                   axial: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Σ_j e^{r(j−i)} x_j for every query i, with e^r given already exponentiated (and max-shifted).

    x: (B, h, c, H, W) fp32; glob: (h,) = e^{r_inf} or None (no global term);
    kernel: (h, k, k) = e^{b} for a square window, or axial = ((h, ky), (h, kx)) with e^{b} = outer product;
    neither = global only.
    """
    hh, ww = x.shape[-2:]
    if axial is not None:
        ky, kx = _crop(axial[0], hh, 1), _crop(axial[1], ww, 1)
        # (no "window covers the map, drop the global term" shortcut: r_inf must stay in the graph, or it gets
        # no gradient and DDP stops on an unused parameter)
        total = None if glob is None else glob.view(1, -1, 1) * x.sum(dim=(-2, -1))        # (B, h, c)
        # two 1-D passes: cost 2k, not k²; the global sum rides in the second pass's bias
        window = _depthwise(_depthwise(x, ky[:, :, None]), kx[:, None, :], total)
        if glob is None:
            return window
        ones = torch.ones_like(ky)
        box = _depthwise(_depthwise(x, ones[:, :, None]), -glob[:, None, None] * torch.ones_like(kx)[:, None, :])
        return window + box                                                            # − e^{r_inf}·(box sum)
    if kernel is not None:
        kernel = _crop(_crop(kernel, hh, 1), ww, 2)
        if glob is None:
            return _depthwise(x, kernel)
        total = glob.view(1, -1, 1) * x.sum(dim=(-2, -1))                                 # (B, h, c)
        return _depthwise(x, kernel - glob.view(-1, 1, 1), total)                       # (B, h, c, H, W)
    total = glob.view(1, -1, 1, 1, 1) * x.sum(dim=(-2, -1), keepdim=True)              # (B, h, c, 1, 1)
    return total.expand_as(x)


def _global_scale(bias_max: Tensor, r_inf: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Per-head shift M = max(max bias, r_inf) and e^{r_inf − M} (None without a global term)."""
    if r_inf is None:
        return bias_max, None
    peak = torch.maximum(bias_max, r_inf.detach().to(bias_max.dtype))
    return peak, torch.exp(r_inf.to(bias_max.dtype) - peak)


def _position_dtype(position) -> torch.dtype:
    """The dtype of precomputed position kernels (their glob, or their window kernel when there is no glob)."""
    kernel, axial, glob = position
    return next(t for t in (glob, kernel, None if axial is None else axial[0]) if t is not None).dtype


def position_kernels(rel_bias: Tensor | None, axial_bias: tuple[Tensor, Tensor] | None, r_inf: Tensor | None,
                      heads: int, acc: torch.dtype, device: torch.device):
    """e^{r − M} as positional_mix takes it, M the per-head max of r (so every factor is at most 1):
    (kernel (h, k, k) or None, axial ((h, ky), (h, kx)) or None, glob (h,) = e^{r_inf − M} or None)."""
    if rel_bias is not None:
        bias = rel_bias.to(acc)
        peak, glob = _global_scale(bias.detach().amax(dim=(1, 2)), r_inf)
        return torch.exp(bias - peak.view(-1, 1, 1)), None, glob                    # (h, k, k) in (0, 1]
    if axial_bias is not None:
        by, bx = axial_bias[0].to(acc), axial_bias[1].to(acc)
        my, mx = by.detach().amax(1), bx.detach().amax(1)
        peak, glob = _global_scale(my + mx, r_inf)
        # e^{by+bx−M} = e^{by−my} · e^{bx−mx} · e^{my+mx−M}; fold the last factor into the y kernel
        ky = torch.exp(by - my[:, None] + (my + mx - peak)[:, None])
        kx = torch.exp(bx - mx[:, None])
        if by.shape[1] <= AXIAL_AS_SQUARE_MAX_K:   # one k×k conv of the outer product: fewer passes over the map
            return ky[:, :, None] * kx[:, None, :], None, glob
        return None, (ky, kx), glob
    return None, None, torch.ones(heads, device=device, dtype=acc)   # r uniform: a plain global saliency softmax


def _autocast_off(t: Tensor):
    """The op computes in fp32 whatever autocast says (a no-op context when autocast is off)."""
    autocast = torch.is_autocast_enabled(t.device.type)
    return torch.autocast(device_type=t.device.type, enabled=False) if autocast else nullcontext()


def _shifted_logits(s: Tensor, mask: Tensor | None) -> Tensor:
    """Saliency logits minus their per-head max over real tokens, masked tokens −inf: exp() of it lies in [0, 1]
    and keeps full precision near the max whatever the logits' scale (±1e4 included)."""
    logits = s if mask is None else s.masked_fill(~mask[:, None], float("-inf"))
    peak = logits.detach().amax(dim=(-2, -1), keepdim=True)                      # (B, h, 1, 1)
    if mask is not None:   # an item with every token masked has peak −inf: use 0, its weights are 0
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return logits - peak


# ---- small maps: the definition itself ------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _window_index(hh: int, ww: int, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """For every (query i, key j) of an hh×ww map: the flat index of offset j − i in a k×k bias, and whether
    the offset lies inside the window. (N, N) each; built once per size, outside inference mode so that
    autograd may use them later."""
    with torch.inference_mode(False):
        ys, xs = torch.meshgrid(torch.arange(hh, device=device), torch.arange(ww, device=device), indexing="ij")
        ys, xs = ys.reshape(-1), xs.reshape(-1)
        dy, dx = ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]               # (N, N): key − query
        inside = (dy.abs() <= k // 2) & (dx.abs() <= k // 2)
        index = (dy + k // 2).clamp(0, k - 1) * k + (dx + k // 2).clamp(0, k - 1)
    return index, inside


def _small_map(v: Tensor, s: Tensor) -> bool:
    """An eager call on plain tensors (so _window_index's cache only ever holds real tensors) with at most
    DENSE_MAX_TOKENS tokens."""
    return eager_plain(v, s) and v.shape[-2] * v.shape[-1] <= DENSE_MAX_TOKENS


def _attend_dense(v: Tensor, s: Tensor, bias: Tensor, r_inf: Tensor | None, mask: Tensor | None) -> Tensor:
    """Small maps: the weights a_ij = softmax_j(s_j + r(j − i)) as one N×N matrix per head, applied by one matmul.

    The window path costs ~25 calls and two convolutions whatever the size; on a map this small those calls, not
    the arithmetic, are its time, and here they are a handful (docs/performance.md, "What the fast path changed").
    Same result as the window path (tested); bias: (h, k, k); r_inf None = no global term.
    """
    b, h, d, hh, ww = v.shape
    n = hh * ww
    with _autocast_off(v):
        acc = torch.promote_types(v.dtype, torch.float32)
        index, inside = _window_index(hh, ww, bias.shape[-1], v.device)
        far = float("-inf") if r_inf is None else r_inf.to(acc)[:, None, None]
        r = torch.where(inside, bias.to(acc).flatten(1)[:, index], far)                 # (h, N, N)
        logits = _shifted_logits(s.to(acc), mask).reshape(b, h, 1, n) + r               # (B, h, N, N)
        if mask is None:
            a = torch.softmax(logits, dim=-1)
        else:   # a query with no real key in reach gets 0, and finite gradients (softmax of all −inf is NaN)
            dead = torch.isneginf(logits).all(dim=-1, keepdim=True)
            a = torch.softmax(logits.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
        vf = v.to(acc).reshape(b, h, d, n)
        if v.stride(-1) == 1:                            # NCHW values: NCHW output
            out = (vf @ a.transpose(-1, -2)).view(b, h, d, hh, ww)                     # (B, h, d, H, W)
        else:                                            # channels_last values: channels_last output
            out = (a @ vf.transpose(-1, -2)).permute(0, 2, 1, 3).contiguous()          # (B, N, h, d)
            out = out.view(b, hh, ww, h, d).permute(0, 3, 4, 1, 2)                      # (B, h, d, H, W)
    return out.to(v.dtype)


def _fused_kernels(v: Tensor):
    """The Triton module (key_only_triton) when it can run this call eagerly, else None: CUDA fp32/fp16/bf16,
    triton importable, not being traced/exported/compiled (those take the torch ops, which they fuse themselves)."""
    if not (v.is_cuda and eager_plain(v)):
        return None
    try:
        from . import key_only_triton
    except ImportError:
        return None
    return key_only_triton if key_only_triton.is_supported(v) else None
