"""The CPU fast path of key_only_attention: channels_last layouts, batch folding, and the traced (export) branch
all equal the O(N²) reference, and channels_last activations come out channels_last (no transposing copies)."""
import pytest
import torch

from linglo.ops import key_only_attention, key_only_attention_reference

pytestmark = pytest.mark.usefixtures("both_paths")   # window convolutions and dense matrix


def _channels_last_inputs(b, h, d, hh, ww, k, seed=0):
    """v and s sliced out of one channels_last (B, h·d + h, H, W) map, as KeyOnlyAttention's projection makes them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(b, h * d + h, hh, ww, generator=g, dtype=torch.float64)
    y = y.contiguous(memory_format=torch.channels_last)
    v = y[:, :h * d].reshape(b, h, d, hh, ww)
    s = y[:, h * d:] * 2
    rb = torch.randn(h, k, k, generator=g, dtype=torch.float64)
    ri = torch.randn(h, generator=g, dtype=torch.float64)
    return v, s, rb, ri


@pytest.mark.parametrize("b", [1, 2])
@pytest.mark.parametrize("hh,ww,k", [(9, 11, 5), (3, 2, 7)])
def test_channels_last_inputs_match_reference_and_stay_channels_last(b, hh, ww, k):
    v, s, rb, ri = _channels_last_inputs(b, 2, 3, hh, ww, k)
    assert not v.is_contiguous()
    tensors = [t.detach().requires_grad_() for t in (v, s, rb, ri)]
    out = key_only_attention(*tensors)
    ref = key_only_attention_reference(*tensors)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert out.reshape(b, -1, hh, ww).is_contiguous(memory_format=torch.channels_last)
    weight = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * weight).sum(), tensors)   # every input, r_inf included, is in the graph
    for g, r in zip(grads, torch.autograd.grad((ref * weight).sum(), tensors)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("b,hh,ww,k", [(1, 7, 6, 5), (3, 7, 6, 5), (2, 15, 16, 13), (1, 5, 6, 13)])
def test_axial_window_both_paths_channels_last_and_batched(b, hh, ww, k):
    """k <= AXIAL_AS_SQUARE_MAX_K runs one conv of the outer-product kernel, larger k the separable 1-D passes."""
    v, s, _, ri = _channels_last_inputs(b, 2, 4, hh, ww, k, seed=2)
    g = torch.Generator().manual_seed(3)
    by, bx = torch.randn(2, k, generator=g, dtype=torch.float64), torch.randn(2, k, generator=g, dtype=torch.float64)
    for vv, ss in ((v, s), (v.contiguous(), s.contiguous())):
        out = key_only_attention(vv, ss, r_inf=ri, axial_bias=(by, bx))
        ref = key_only_attention_reference(vv, ss, by[:, :, None] + bx[:, None, :], ri)
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_traced_graph_is_exact_where_the_eager_shortcuts_would_apply():
    """Tracing disables the size-dependent shortcuts (kernel crop, covered-window cancellation, bias folding):
    a graph traced at 12×12, batch 1 must stay exact at 3×3 (window covers all), 2×5 and batch 2."""
    def op(v, s, rb, ri):
        return key_only_attention(v, s, rb, ri)

    g = torch.Generator().manual_seed(4)
    rb, ri = torch.randn(2, 7, 7, generator=g, dtype=torch.float64), torch.randn(2, generator=g, dtype=torch.float64)
    example = (torch.randn(1, 2, 3, 12, 12, generator=g, dtype=torch.float64),
               torch.randn(1, 2, 12, 12, generator=g, dtype=torch.float64), rb, ri)
    traced = torch.jit.trace(op, example, check_trace=False)
    for b, hh, ww in [(1, 3, 3), (1, 2, 5), (2, 12, 12), (2, 13, 9)]:
        v = torch.randn(b, 2, 3, hh, ww, generator=g, dtype=torch.float64)
        s = torch.randn(b, 2, hh, ww, generator=g, dtype=torch.float64)
        torch.testing.assert_close(traced(v, s, rb, ri), key_only_attention_reference(v, s, rb, ri),
                                   rtol=1e-10, atol=1e-10)


def test_fake_and_symbolic_tracing_take_the_window_path_and_leave_eager_intact():
    """Fake tensors and make_fx's symbolic tracing skip the dense small-map path (symbolic sizes, and its index
    cache must only ever hold real tensors): tracing works, and a real call afterwards returns real, exact values."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    g = torch.Generator().manual_seed(4)
    real = [torch.randn(1, 2, 3, 8, 8, generator=g), torch.randn(1, 2, 8, 8, generator=g),
            torch.randn(2, 7, 7, generator=g), torch.randn(2, generator=g)]
    with FakeTensorMode() as mode:
        fake_out = key_only_attention(*(mode.from_tensor(t) for t in real))
    assert tuple(fake_out.shape) == (1, 2, 3, 8, 8)
    make_fx(lambda v, s, rb, ri: key_only_attention(v, s, rb, ri), tracing_mode="symbolic")(*real)
    out = key_only_attention(*real)
    assert type(out) is torch.Tensor
    torch.testing.assert_close(out, key_only_attention_reference(*real), rtol=1e-5, atol=1e-5)
