"""On CUDA, with fused=True (KeyOnlyAttention.fused_attn), the op runs the fused Triton kernels: exact against the
reference, equal to the torch-ops path inside a whole model (values and gradients), finite under AMP and extreme
logits. Skipped without a GPU."""
import pytest
import torch

from linglo.ops import key_only as key_only_module
from linglo.ops import key_only_attention, key_only_attention_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
pytest.importorskip("triton")


def _inputs(b, h, d, hh, ww, k, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, d, hh, ww, generator=g), torch.randn(b, h, hh, ww, generator=g) * scale,
            torch.randn(h, k, k, generator=g), torch.randn(h, generator=g))


@pytest.fixture(autouse=True)
def no_dense_path(monkeypatch):
    """Keep small maps off the dense path so that every size reaches the kernels."""
    monkeypatch.setattr(key_only_module, "DENSE_MAX_TOKENS", 0)


@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
def test_dense_small_map_path_matches_reference_under_amp(amp, monkeypatch):
    """Maps up to DENSE_MAX_TOKENS take the dense N×N path on CUDA too: exact in fp32, finite and close under
    autocast with logits of 1e4; a fully masked item gets 0 and every gradient stays finite."""
    monkeypatch.setattr(key_only_module, "DENSE_MAX_TOKENS", 14 * 14)   # this map on the dense path
    v, s, rb, ri = _inputs(3, 4, 16, 14, 14, 7)
    s[0, :, :3] = 1e4
    mask = torch.ones(3, 14, 14, dtype=torch.bool)
    mask[1, :, 7:] = False
    mask[2] = False
    tensors = [t.cuda().requires_grad_() for t in (v, s, rb, ri)]
    with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
        out = key_only_attention(*tensors, mask.cuda(), fused=True)
    grads = torch.autograd.grad(out.float().square().sum(), tensors)
    ref = key_only_attention_reference(v.double(), s.double(), rb.double(), ri.double(), mask)
    assert torch.isfinite(out).all() and out[2].abs().max() == 0
    assert all(torch.isfinite(g).all() for g in grads)
    tol = {None: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[amp]
    torch.testing.assert_close(out.float().cpu(), ref.float(), rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", [(2, 2, 3, 5, 7, 3), (1, 4, 32, 56, 56, 7), (1, 3, 40, 33, 17, 7),
                                   (3, 2, 16, 9, 130, 1), (1, 1, 8, 3, 2, 7)])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_matches_reference(shape, masked):
    b, h, d, hh, ww, k = shape
    cpu = _inputs(*shape, seed=sum(shape))
    mask = torch.rand(b, hh, ww, generator=torch.Generator().manual_seed(1)) > 0.3 if masked else None
    tensors = [t.cuda().requires_grad_() for t in cpu]
    out = key_only_attention(*tensors, None if mask is None else mask.cuda(), fused=True)
    ref_in = [t.double().requires_grad_() for t in cpu]
    ref = key_only_attention_reference(*ref_in, mask)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-4, atol=1e-5)
    w = torch.randn(ref.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((out.double() * w.cuda()).sum(), tensors)
    refs = torch.autograd.grad((ref * w).sum(), ref_in)
    for g, r in zip(grads, refs):
        torch.testing.assert_close(g.double().cpu(), r, rtol=1e-3, atol=1e-4)


def test_fused_axial_matches_reference():
    v, s, _, ri = _inputs(2, 2, 8, 20, 24, 7, seed=5)
    g = torch.Generator().manual_seed(6)
    by, bx = torch.randn(2, 7, generator=g), torch.randn(2, 7, generator=g)
    out = key_only_attention(v.cuda(), s.cuda(), r_inf=ri.cuda(), axial_bias=(by.cuda(), bx.cuda()), fused=True)
    ref = key_only_attention_reference(v.double(), s.double(), (by[:, :, None] + bx[:, None, :]).double(), ri.double())
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_inputs_and_extreme_logits(dtype):
    v, s, rb, ri = _inputs(2, 2, 16, 32, 32, 7)
    s[:, :, 3, 4], s[:, :, 20, 9] = 1e4, -1e4
    vh, sh = v.cuda().to(dtype).requires_grad_(), s.cuda().to(dtype).requires_grad_()
    out = key_only_attention(vh, sh, rb.cuda(), ri.cuda(), fused=True)
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert torch.isfinite(vh.grad).all() and torch.isfinite(sh.grad).all()
    ref = key_only_attention_reference(*(t.to(dtype).double() for t in (v, s, rb, ri)))
    tol = 3e-3 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(out.double().cpu(), ref, rtol=tol, atol=tol)


def test_large_map_half_is_finite():
    v, s, rb, ri = _inputs(1, 2, 8, 1024, 1024, 7, scale=1e3)
    out = key_only_attention(v.cuda().half(), s.cuda().half(), rb.cuda(), ri.cuda(), fused=True)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("amp", [None, torch.float16, torch.bfloat16])
def test_model_fused_equals_torch_ops_under_amp(amp, monkeypatch):
    """A LinGlo built with LINGLO_FUSED=1, forward+backward (fp32 or autocast): the fused kernels and the torch ops
    (each mixer's fused_attn switched off) agree, all finite."""
    import timm

    import linglo  # noqa: F401
    from linglo.layers import KeyOnlyAttention
    monkeypatch.setenv("LINGLO_FUSED", "1")   # read when the mixers are built
    model = timm.create_model("linglo_t", num_classes=10, ls_init=1.0).cuda().train()
    mixers = [m for m in model.modules() if isinstance(m, KeyOnlyAttention)]
    assert mixers and all(m.fused_attn for m in mixers)
    x = torch.randn(4, 3, 96, 128, device="cuda")

    def step():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None):
            out = model(x)
        out.float().square().mean().backward()
        return out.float(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}

    out, grads = step()
    for m in mixers:
        m.fused_attn = False
    ref_out, ref_grads = step()
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads.values())
    tol = {None: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}[amp]
    torch.testing.assert_close(out, ref_out, rtol=tol, atol=tol)
    for n in ("stages.0.blocks.1.mixer.rel_bias", "stages.2.blocks.1.mixer.proj_in.weight"):
        scale = ref_grads[n].abs().max().item()
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=10 * tol, atol=10 * tol * scale)
