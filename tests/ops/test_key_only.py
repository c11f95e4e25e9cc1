"""key_only_attention: exact against the O(N²) definition, stable in low precision, clear errors."""
import pytest
import torch

from linglo.ops import key_only_attention, key_only_attention_reference, position_kernels

pytestmark = pytest.mark.usefixtures("both_paths")   # window convolutions and dense matrix


def _inputs(b, h, d, hh, ww, k, dtype=torch.float64, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(b, h, d, hh, ww, generator=g, dtype=dtype)
    s = torch.randn(b, h, hh, ww, generator=g, dtype=dtype) * scale
    rel_bias = torch.randn(h, k, k, generator=g, dtype=dtype)
    r_inf = torch.randn(h, generator=g, dtype=dtype)
    return v, s, rel_bias, r_inf


SHAPES = [  # (B, h, d, H, W, k): odd/even, non-square, smaller than the window, k = 1/3/7, batch 1..3
    (2, 2, 3, 5, 7, 3), (1, 3, 4, 8, 8, 7), (3, 1, 2, 1, 1, 7), (2, 2, 2, 6, 3, 1),
    (1, 2, 5, 2, 9, 7), (2, 4, 2, 12, 10, 7), (1, 1, 1, 4, 6, 3),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("masked", [False, True])
def test_matches_reference_float64(shape, masked):
    b, h, d, hh, ww, k = shape
    v, s, rb, ri = _inputs(b, h, d, hh, ww, k)
    mask = (torch.rand(b, hh, ww, generator=torch.Generator().manual_seed(1)) > 0.4) if masked else None
    out = key_only_attention(v, s, rb, ri, mask)
    ref = key_only_attention_reference(v, s, rb, ri, mask)
    assert out.shape == v.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("global_term", [True, False])
def test_queries_with_no_real_key_give_zeros_and_finite_gradients(global_term):
    """A fully masked batch item (and, without the global term, queries whose whole window is padding) gets 0,
    and no NaN reaches any gradient."""
    tensors = [t.requires_grad_() for t in _inputs(2, 2, 3, 4, 8, 3)]
    v, s, rb, ri = tensors
    mask = torch.ones(2, 4, 8, dtype=torch.bool)
    mask[0, :, 5:] = False      # without the global term, queries in the last column see no real key
    mask[1] = False
    r = ri if global_term else None
    out = key_only_attention(v, s, rb, r, mask)
    assert torch.isfinite(out).all() and out[1].abs().max() == 0
    if global_term:
        torch.testing.assert_close(out, key_only_attention_reference(v, s, rb, ri, mask))
    else:
        assert out[0, ..., 6:].abs().max() == 0 and out[0, ..., 5].abs().min() > 0   # window ±1: cols 6, 7 see none
    grads = torch.autograd.grad(out.square().sum(), tensors if global_term else tensors[:3])
    assert all(torch.isfinite(g).all() for g in grads)


def test_masked_tokens_get_no_weight():
    """Changing values and saliency of padded tokens must not change any real token's output."""
    v, s, rb, ri = _inputs(1, 2, 3, 6, 6, 3)
    mask = torch.ones(1, 6, 6, dtype=torch.bool)
    mask[:, 4:, :] = False
    mask[:, :, 5:] = False
    out1 = key_only_attention(v, s, rb, ri, mask)
    v2, s2 = v.clone(), s.clone()
    v2[..., ~mask[0]] = 1e3
    s2[..., ~mask[0]] = 50.0
    out2 = key_only_attention(v2, s2, rb, ri, mask)
    torch.testing.assert_close(out1[..., mask[0]], out2[..., mask[0]])


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_matches_reference_low_precision(dtype, tol):
    v, s, rb, ri = _inputs(2, 2, 4, 9, 7, 7, dtype=torch.float64)
    out = key_only_attention(v.to(dtype), s.to(dtype), rb.to(dtype), ri.to(dtype))
    ref = key_only_attention_reference(*(t.to(dtype).double() for t in (v, s, rb, ri)))
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_gradients_match_reference(k):
    tensors = [t.requires_grad_() for t in _inputs(2, 2, 3, 5, 6, k)]
    mask = torch.rand(2, 5, 6, generator=torch.Generator().manual_seed(3)) > 0.3
    grads = torch.autograd.grad(key_only_attention(*tensors, mask).pow(2).sum(), tensors)
    ref = torch.autograd.grad(key_only_attention_reference(*tensors, mask).pow(2).sum(), tensors)
    for g, r in zip(grads, ref):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_gradcheck():
    tensors = [t.requires_grad_() for t in _inputs(1, 2, 2, 3, 4, 3, scale=1.0)]
    assert torch.autograd.gradcheck(key_only_attention, tensors, fast_mode=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("extreme", [1e4, -1e4])
def test_finite_with_extreme_saliency(dtype, extreme):
    v, s, rb, ri = _inputs(2, 2, 4, 8, 8, 7, dtype=torch.float32)
    s = s.clone()
    s[:, :, 2, 3] = extreme
    s[:, :, 5, 5] = -extreme
    v, s = v.to(dtype).requires_grad_(), s.to(dtype).requires_grad_()
    out = key_only_attention(v, s, rb.to(dtype), ri.to(dtype))
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.isfinite(v.grad).all() and torch.isfinite(s.grad).all()


def test_fp32_keeps_full_precision_with_large_logits():
    """Logits near 1e4 lose nothing: the op shifts by their max before adding the position bias (fp32 has only
    ~1e-3 absolute resolution at 1e4, which an unshifted sum would pass into the weights)."""
    v, s, rb, ri = _inputs(2, 2, 4, 9, 10, 7, dtype=torch.float32)
    s = s + 1e4
    mask = torch.ones(2, 9, 10, dtype=torch.bool)
    mask[1, 4:] = False
    ref = key_only_attention_reference(v.double(), s.double(), rb.double(), ri.double(), mask)
    out = key_only_attention(v, s, rb, ri, mask)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


def test_finite_under_autocast():
    v, s, rb, ri = _inputs(1, 2, 4, 16, 16, 7, dtype=torch.float32)
    s = s * 5e3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = key_only_attention(v, s, rb, ri)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), key_only_attention_reference(v.double(), s.double(), rb.double(),
                                                                          ri.double()), rtol=1e-4, atol=1e-4)


def test_large_map_is_finite_in_half():
    """A 1024×1024-token map (the reference could not hold its 10^12-entry matrix) stays finite in fp16."""
    v, s, rb, ri = _inputs(1, 1, 1, 1024, 1024, 7, dtype=torch.float16, scale=1e3)
    out = key_only_attention(v, s, rb, ri)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_axial_window_equals_square_window_with_sum_bias():
    v, s, _, ri = _inputs(2, 2, 3, 9, 11, 5)
    g = torch.Generator().manual_seed(5)
    by, bx = torch.randn(2, 5, generator=g, dtype=torch.float64), torch.randn(2, 5, generator=g, dtype=torch.float64)
    for hh, ww in [(9, 11), (2, 3)]:   # the second is smaller than the window
        vv, ss = v[..., :hh, :ww], s[..., :hh, :ww]
        out = key_only_attention(vv, ss, r_inf=ri, axial_bias=(by, bx))
        ref = key_only_attention_reference(vv, ss, by[:, :, None] + bx[:, None, :], ri)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_global_only_and_window_only_variants():
    v, s, rb, ri = _inputs(1, 2, 3, 6, 7, 3)
    # global only == a window whose bias equals r_inf (r uniform)
    glob = key_only_attention(v, s, r_inf=ri)
    torch.testing.assert_close(glob, key_only_attention_reference(v, s, ri[:, None, None].expand(2, 3, 3), ri))
    # window only == r_inf -> -inf
    local = key_only_attention(v, s, rb)
    far = torch.full_like(ri, -1e4)
    torch.testing.assert_close(local, key_only_attention_reference(v, s, rb, far))


def test_sigmoid_gate_definition():
    v, s, rb, ri = _inputs(1, 2, 3, 5, 4, 3)
    out = key_only_attention(v, s, rb, ri, gate="sigmoid")
    # σ(s_j)·e^{r(j−i)} / Σ_j e^{r(j−i)}: the reference's positional softmax (s = 0) applied to σ(s)·v
    ref = key_only_attention_reference(torch.sigmoid(s)[:, :, None] * v, torch.zeros_like(s), rb, ri)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("call,message", [
    (lambda v, s, rb, ri: key_only_attention(v[0], s, rb, ri), "v must be (B, heads, head_dim, H, W)"),
    (lambda v, s, rb, ri: key_only_attention(v, s[:, :1], rb, ri), "s must be (B, heads, H, W)"),
    (lambda v, s, rb, ri: key_only_attention(v, s, torch.zeros(2, 4, 4, dtype=v.dtype), ri), "k odd"),
    (lambda v, s, rb, ri: key_only_attention(v, s, rb[:1], ri), "rel_bias must be (heads, k, k)"),
    (lambda v, s, rb, ri: key_only_attention(v, s, rb, ri[:1]), "r_inf must be (heads,)"),
    (lambda v, s, rb, ri: key_only_attention(v, s, rb, ri, torch.ones(2, 3, 3, dtype=torch.bool)), "mask must be (B, H, W)"),
    (lambda v, s, rb, ri: key_only_attention(v, s, rb, ri, torch.ones(2, 5, 6)), "bool"),
    (lambda v, s, rb, ri: key_only_attention(v, s, rb, ri, gate="relu"), "gate must be one of"),
    (lambda v, s, rb, ri: key_only_attention(v, s, r_inf=ri, axial_bias=(rb[:, 0], rb[:, 0, :2])),
     "bias_x must be (heads, k)"),
])
def test_bad_arguments_raise_value_error(call, message):
    v, s, rb, ri = _inputs(2, 2, 3, 5, 6, 3)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        call(v, s, rb, ri)
    assert "got" in str(err.value)


def test_square_and_axial_window_together_raise():
    v, s, rb, ri = _inputs(1, 2, 3, 5, 6, 3)
    with pytest.raises(ValueError, match="not both"):
        key_only_attention(v, s, rb, ri, axial_bias=(rb[:, 0], rb[:, 0]))


@pytest.mark.parametrize("axial", [False, True])
def test_precomputed_position_kernels(both_paths, axial):
    """`position` (position_kernels computed ahead, as KeyOnlyAttention.fuse stores them) gives the same output
    as computing them in the call; the window path reads them (kernels of other biases change its output), the
    dense path and a call in another dtype recompute them from the biases."""
    v, s, rb, ri = _inputs(2, 2, 3, 12, 12, 5)
    biases = dict(axial_bias=(rb[:, 2], rb[:, :, 1])) if axial else dict(rel_bias=rb)
    other = dict(axial_bias=(rb[:, 0], rb[:, :, 0])) if axial else dict(rel_bias=rb.flip(-1))

    def kernels(b, dtype):
        return position_kernels(b.get("rel_bias"), b.get("axial_bias"), ri, 2, dtype, v.device)

    out = key_only_attention(v, s, r_inf=ri, **biases)
    torch.testing.assert_close(key_only_attention(v, s, r_inf=ri, position=kernels(biases, v.dtype), **biases),
                               out, rtol=0, atol=0)
    stale = key_only_attention(v, s, r_inf=ri, position=kernels(other, v.dtype), **biases)
    assert torch.equal(stale, out) == (both_paths == "dense")
    torch.testing.assert_close(key_only_attention(v, s, r_inf=ri, position=kernels(other, torch.float32), **biases),
                               out, rtol=0, atol=0)
