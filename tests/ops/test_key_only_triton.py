"""The fused Triton kernels equal the O(N²) reference (values and gradients), run on CPU by Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported (its standard library is built then), so the cases
run in one fresh subprocess (this file as a script) and the tests check the errors it reports.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

CASES = {  # name: (B, h, d, H, W, k, masked, global_term)
    "odd_nonsquare_batch2_masked": (2, 2, 3, 5, 7, 3, True, True),
    "head_dim_40_two_chunks": (1, 3, 40, 6, 4, 5, False, True),
    "map_smaller_than_window": (1, 1, 2, 2, 3, 7, True, True),
    "k1_two_pixel_tiles": (1, 2, 4, 9, 16, 1, False, True),
    "window_only": (2, 2, 3, 4, 5, 3, False, False),
}


def _fused_op(module, v, s, rb, ri, mask, global_term):
    """The op's own preparation (max-shifted exponentials of the biases), then the fused kernels."""
    peak = rb.detach().amax(dim=(1, 2))
    if global_term:
        peak = torch.maximum(peak, ri.detach())
    glob = torch.exp(ri - peak) if global_term else None
    return module.window_attention(v, s, torch.exp(rb - peak[:, None, None]), glob, mask)


def _errors(module, b, h, d, hh, ww, k, masked, global_term):
    """Max abs error of the output and of each gradient against the float64 reference."""
    from linglo.ops import key_only_attention_reference
    g = torch.Generator().manual_seed(b + h + d + hh + ww + k)
    v, s = torch.randn(b, h, d, hh, ww, generator=g), torch.randn(b, h, hh, ww, generator=g) * 3
    rb, ri = torch.randn(h, k, k, generator=g), torch.randn(h, generator=g)
    mask = torch.rand(b, hh, ww, generator=g) > 0.3 if masked else None
    if masked and b > 1:
        mask[-1] = False   # one fully padded item: zeros, no NaN
    tensors = [t.requires_grad_() for t in (v, s, rb, ri)]
    out = _fused_op(module, *tensors, mask, global_term)
    far = ri if global_term else torch.full_like(ri, -1e4)   # window only == r_inf → −∞
    ref = key_only_attention_reference(v.double(), s.double(), rb.double(), far.double(), mask)
    weight = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out.double() * weight).sum(), tensors[:3] + ([ri] if global_term else []))
    refs = torch.autograd.grad((ref * weight).sum(), tensors[:3] + ([ri] if global_term else []))
    errs = {"out": (out.double() - ref).abs().max().item(), "dtype": str(out.dtype)}
    errs.update({f"grad_{n}": (a.double() - r).abs().max().item() for n, a, r in zip(("v", "s", "rel_bias", "r_inf"),
                                                                                       grads, refs)})
    # half precision with extreme logits: finite, dtype kept
    vh = v.detach().half().requires_grad_()
    sh = (s.detach() * 3e3).half().requires_grad_()
    outh = _fused_op(module, vh, sh, rb.detach(), ri.detach(), mask, global_term)
    outh.float().sum().backward()
    errs["half_finite"] = bool(torch.isfinite(outh).all() and torch.isfinite(vh.grad).all()
                               and torch.isfinite(sh.grad).all() and outh.dtype == torch.float16)
    return errs


def _run_all() -> dict:
    import linglo.ops.key_only_triton as module
    return {name: _errors(module, *case) for name, case in CASES.items()}


@pytest.fixture(scope="module")
def errors():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        if "interpret" in last.lower():   # an interpreter that cannot run here
            pytest.skip(f"Triton interpreter unavailable: {last}")
        pytest.fail(f"interpreted Triton run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_reference(errors, case):
    e = errors[case]
    assert e["dtype"] == "torch.float32"
    assert e["out"] < 1e-5, e
    for name in ("grad_v", "grad_s", "grad_rel_bias", "grad_r_inf"):
        if name in e:
            assert e[name] < 1e-4, (name, e)
    assert e["half_finite"], e


if __name__ == "__main__":
    print(json.dumps(_run_all()))
