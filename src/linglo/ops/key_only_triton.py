"""Fused Triton kernels for key-only attention with a k×k window (CUDA; also runs under TRITON_INTERPRET=1).

The torch path makes several passes over the (B, h, d, H, W) map (e^s·v, two depthwise convs, the division) and
keeps their results for backward. Here one forward kernel reads v and w = e^{s−max} once per window tap (from
cache) and writes the normalised output directly (peak memory about half the torch path's); one backward kernel
produces the gradients of v, w and of the window kernel in one pass:

    out_i = (Σ_δ K'[δ] w_{i+δ} v_{i+δ} + T_v) / (Σ_δ K'[δ] w_{i+δ} + T_w),   K' = e^{b−M} − e^{r_inf−M}
    T_v = e^{r_inf−M}·Σ_j w_j v_j,  T_w = e^{r_inf−M}·Σ_j w_j    (the global term: two reductions, in torch)

Everything that is not per-pixel (maxima, exponentials of the biases, the global sums) stays in torch, so the
gradients of rel_bias / r_inf / the global term flow through ordinary autograd around one autograd.Function.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["window_attention", "is_supported"]

# Taps run as a loop, not unrolled (tl.static_range): the unrolled 49 taps of a 7×7 window took too long to compile
# (docs/performance.md, GPU section).
_BLOCK_P = 128      # pixels per program (flattened y·W + x, so loads are coalesced along x)
_MAX_BLOCK_D = 32   # channels per inner chunk (register tile BLOCK_D × BLOCK_P)


@triton.jit
def _fwd_kernel(v_ptr, w_ptr, kp_ptr, tv_ptr, tw_ptr, out_ptr, den_ptr, H, W, D, NH,
                K: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)          # batch·heads + head
    head = bh % NH
    n = H * W
    p = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < n
    y = p // W
    x = p % W
    w_base = w_ptr + bh * n
    den = tl.zeros([BLOCK_P], dtype=tl.float32)
    for t in range(K * K):
        yy = y + (t // K - K // 2)
        xx = x + (t % K - K // 2)
        ok = pmask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        den += tl.load(kp_ptr + head * K * K + t) * tl.load(w_base + yy * W + xx, mask=ok, other=0.0)
    den += tl.load(tw_ptr + bh)
    tl.store(den_ptr + bh * n + p, den, mask=pmask)
    safe = tl.where(den > 0, den, 1.0)           # no real token: output 0 (numerator is 0 too)
    cs = tl.arange(0, BLOCK_D)
    for c0 in range(0, D, BLOCK_D):
        c = c0 + cs
        cmask = c < D
        rows = (bh * D + c)[:, None] * n         # (BLOCK_D, 1) channel-plane offsets
        acc = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
        for t in range(K * K):
            yy = y + (t // K - K // 2)
            xx = x + (t % K - K // 2)
            ok = pmask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            q = yy * W + xx
            wq = tl.load(w_base + q, mask=ok, other=0.0)
            vq = tl.load(v_ptr + rows + q[None, :], mask=cmask[:, None] & ok[None, :], other=0.0).to(tl.float32)
            acc += tl.load(kp_ptr + head * K * K + t) * (vq * wq[None, :])
        acc += tl.load(tv_ptr + bh * D + c, mask=cmask, other=0.0)[:, None]
        out = acc / safe[None, :]
        tl.store(out_ptr + rows + p[None, :], out.to(out_ptr.dtype.element_ty), mask=cmask[:, None] & pmask[None, :])


@triton.jit
def _bwd_kernel(go_ptr, den_ptr, gden_ptr, v_ptr, w_ptr, kp_ptr, gv_ptr, gw_ptr, gk_ptr, H, W, D, NH,
                K: tl.constexpr, KK_BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per source pixel j: gu_j = Σ_δ K'[δ]·gnum_{j−δ}, gwin_j = Σ_δ K'[δ]·gden_{j−δ}; gv = w·gu,
    gw = Σ_c v·gu + gwin; and this tile's share of gK'[δ] = Σ_j (Σ_c gnum_{j−δ}·u_j + gden_{j−δ}·w_j)."""
    bh = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    head = bh % NH
    n = H * W
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < n
    y = p // W
    x = p % W
    taps = tl.arange(0, KK_BLOCK)
    gk = tl.zeros([KK_BLOCK], dtype=tl.float32)
    w_j = tl.load(w_ptr + bh * n + p, mask=pmask, other=0.0)
    gw = tl.zeros([BLOCK_P], dtype=tl.float32)
    for t in range(K * K):
        yy = y - (t // K - K // 2)                # query i = j − δ
        xx = x - (t % K - K // 2)
        ok = pmask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        g_i = tl.load(gden_ptr + bh * n + yy * W + xx, mask=ok, other=0.0)
        gw += tl.load(kp_ptr + head * K * K + t) * g_i
        gk += tl.where(taps == t, tl.sum(g_i * w_j, axis=0), 0.0)
    cs = tl.arange(0, BLOCK_D)
    for c0 in range(0, D, BLOCK_D):
        c = c0 + cs
        cmask = c < D
        rows = (bh * D + c)[:, None] * n
        m2 = cmask[:, None] & pmask[None, :]
        v_j = tl.load(v_ptr + rows + p[None, :], mask=m2, other=0.0).to(tl.float32)
        u_j = v_j * w_j[None, :]
        gu = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
        for t in range(K * K):
            yy = y - (t // K - K // 2)
            xx = x - (t % K - K // 2)
            ok = pmask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            q = yy * W + xx
            d_i = tl.load(den_ptr + bh * n + q, mask=ok, other=1.0)
            d_i = tl.where(d_i > 0, d_i, 1.0)
            go_i = tl.load(go_ptr + rows + q[None, :], mask=cmask[:, None] & ok[None, :], other=0.0).to(tl.float32)
            gnum = go_i / d_i[None, :]
            gu += tl.load(kp_ptr + head * K * K + t) * gnum
            gk += tl.where(taps == t, tl.sum(tl.sum(gnum * u_j, axis=1), axis=0), 0.0)
        tl.store(gv_ptr + rows + p[None, :], (gu * w_j[None, :]).to(gv_ptr.dtype.element_ty), mask=m2)
        gw += tl.sum(gu * v_j, axis=0)
    tl.store(gw_ptr + bh * n + p, gw, mask=pmask)
    tl.store(gk_ptr + (bh * tl.num_programs(1) + tile) * (K * K) + taps, gk, mask=taps < K * K)


def _block_d(d: int) -> int:
    return min(triton.next_power_of_2(d), _MAX_BLOCK_D)


class _WindowMix(torch.autograd.Function):
    """out = (conv(w·v, K') + T_v) / (conv(w, K') + T_w) over (B, h, d, H, W), fused; see the module docstring."""

    @staticmethod
    def forward(ctx, v: Tensor, w: Tensor, kp: Tensor, tv: Tensor, tw: Tensor) -> Tensor:
        b, h, d, hh, ww = v.shape
        k = kp.shape[-1]
        v, w, kp = v.contiguous(), w.contiguous(), kp.contiguous()
        out = torch.empty_like(v)
        den = torch.empty_like(w)
        grid = (b * h, triton.cdiv(hh * ww, _BLOCK_P))
        _fwd_kernel[grid](v, w, kp, tv.contiguous(), tw.contiguous(), out, den, hh, ww, d, h,
                          K=k, BLOCK_D=_block_d(d), BLOCK_P=_BLOCK_P)
        ctx.save_for_backward(v, w, kp, out, den)
        return out

    @staticmethod
    def backward(ctx, go: Tensor):
        v, w, kp, out, den = ctx.saved_tensors
        b, h, d, hh, ww = v.shape
        k = kp.shape[-1]
        go = go.contiguous()
        real = den > 0
        safe = torch.where(real, den, 1.0)
        # ∂L/∂den_i = −Σ_c go·out / den (0 where the guard replaced den by 1)
        gden = torch.where(real, -(go.float() * out.float()).sum(2) / safe, 0.0).contiguous()  # (B, h, H, W)
        gtv = torch.einsum("bhdyx,bhyx->bhd", go.float(), 1.0 / safe)                           # Σ_i gnum_i
        gtw = gden.sum(dim=(-2, -1))
        tiles = triton.cdiv(hh * ww, _BLOCK_P)
        gv = torch.empty_like(v)
        gw = torch.empty_like(w)
        gk = torch.empty(b * h, tiles, k * k, device=v.device, dtype=torch.float32)
        _bwd_kernel[(b * h, tiles)](go, den, gden, v, w, kp, gv, gw, gk, hh, ww, d, h, K=k,
                                    KK_BLOCK=triton.next_power_of_2(k * k), BLOCK_D=_block_d(d), BLOCK_P=_BLOCK_P)
        gkp = gk.view(b, h, tiles, k, k).sum(dim=(0, 2))
        return gv, gw, gkp, gtv, gtw


def is_supported(v: Tensor) -> bool:
    """The fused path runs fp32/fp16/bf16 on CUDA (float64 stays on the exact torch path)."""
    return v.is_cuda and v.dtype in (torch.float32, torch.float16, torch.bfloat16)


def window_attention(v: Tensor, s: Tensor, kernel: Tensor, glob: Tensor | None, mask: Tensor | None = None) -> Tensor:
    """Softmax-gated key-only attention with a k×k window, fused.

    v: (B, h, d, H, W); s: (B, h, H, W) logits; kernel: (h, k, k) = e^{b−M} (already max-shifted, fp32);
    glob: (h,) = e^{r_inf−M} or None (window only); mask: (B, H, W) bool or None. Returns v's shape and dtype.
    """
    with torch.autocast(device_type=v.device.type, enabled=False):
        s = s.float()
        logits = s if mask is None else s.masked_fill(~mask[:, None], float("-inf"))
        peak = logits.detach().amax(dim=(-2, -1), keepdim=True)                     # (B, h, 1, 1)
        peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))     # all masked: weights 0
        w = torch.exp(logits - peak)                                               # (B, h, H, W) in [0, 1]
        kernel = kernel.float()
        if glob is None:
            kp = kernel
            tv = torch.zeros(v.shape[:3], device=v.device, dtype=torch.float32)
            tw = torch.zeros(v.shape[:2], device=v.device, dtype=torch.float32)
        else:
            glob = glob.float()
            kp = kernel - glob.view(-1, 1, 1)
            tv = glob.view(1, -1, 1) * torch.einsum("bhdyx,bhyx->bhd", v.float(), w)   # (B, h, d)
            tw = glob.view(1, -1) * w.sum(dim=(-2, -1))                                 # (B, h)
        return _WindowMix.apply(v, w, kp, tv, tw)
