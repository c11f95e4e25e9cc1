"""linglo.fuse: the folded model gives the unfused model's outputs (eval, fp32, 1e-5) for every family member and
mixer / layout variant, at two sizes, with and without a mask, after ONNX export too; idempotent; eval mode."""
import pytest
import timm
import torch
from timm.layers import LayerScale2d
from torch import nn

import linglo
from linglo.models import FAMILY

TINY = dict(widths=(16, 32, 32, 64), depths=(2, 2, 2, 2), head_dim=16)
SIZES = [(64, 64), (72, 88)]   # stage-1 map 16×16 (the op's conv path) and one not a multiple of 32
VARIANTS = [dict(), dict(axial=True), dict(window=0), dict(layout="graft"),
            dict(gate="sigmoid", query_gate=True, saliency_conv=3, value_conv=3),
            dict(token_mixer="softmax"), dict(token_mixer="linear"), dict(token_mixer="separable"),
            dict(token_mixer="none")]


def _trained_like(model: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-scale mixer weights, and norm statistics, affine terms, layer scales and position biases far from their
    init (mean 0, var 1, scale 1e-6, bias 0), so that a fold that dropped or misplaced any of them (or stale
    position kernels) could not pass: at init the attention branch is too small to see."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0, 0.5, generator=g)
            elif isinstance(m, LayerScale2d):
                m.gamma.uniform_(0.5, 1.5, generator=g)
            elif isinstance(m, nn.Conv2d):
                if ".mixer." in f".{name}.":
                    m.weight.normal_(0, (m.weight[0].numel()) ** -0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0, 0.1, generator=g)
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("rel_bias", "bias_y", "bias_x", "r_inf"):
                p.uniform_(-2, 1, generator=g)
    return model.eval()


def _mask(batch: int, size: tuple[int, int]) -> torch.Tensor:
    """Item 0 whole, item 1 a smaller image padded on the bottom and right."""
    mask = torch.ones(batch, *size, dtype=torch.bool)
    mask[1, size[0] * 2 // 3:, :] = False
    mask[1, :, size[1] * 3 // 5:] = False
    return mask


def _assert_same(model: nn.Module, fused: nn.Module, sizes=SIZES) -> None:
    """forward and forward_features(mask) of both models agree to 1e-5 of the output's scale, at every size."""
    torch.manual_seed(1)
    with torch.inference_mode():
        for size in sizes:
            x = torch.randn(2, 3, *size)
            pairs = [(model(x), fused(x))]
            pairs += [(model.forward_features(x, mask=m), fused.forward_features(x, mask=m))
                      for m in (None, _mask(2, size))]
            for want, got in pairs:
                scale = max(1.0, float(want.abs().max()))
                assert float((want - got).abs().max()) <= 1e-5 * scale, size


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_fused_family_member_gives_the_same_outputs(name):
    model = _trained_like(timm.create_model(name, num_classes=5, **TINY))
    fused = linglo.fuse(model)
    assert not fused.training
    assert not any(isinstance(m, (nn.BatchNorm2d, LayerScale2d)) for m in fused.modules())
    _assert_same(model, fused)


@pytest.mark.parametrize("kwargs", VARIANTS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
def test_fused_variants_give_the_same_outputs(kwargs):
    model = _trained_like(timm.create_model("linglo_t", num_classes=5, **{**TINY, **kwargs}))
    _assert_same(model, linglo.fuse(model))


def test_fused_linglo_t_at_real_width():
    model = _trained_like(timm.create_model("linglo_t"))
    _assert_same(model, linglo.fuse(model), sizes=[(96, 96), (72, 104)])


def test_fuse_is_idempotent_and_leaves_the_original_alone():
    model = _trained_like(timm.create_model("linglo_t", num_classes=5, **TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = linglo.fuse(model)
    twice = linglo.fuse(fused)
    assert fused.state_dict().keys() == twice.state_dict().keys()
    assert all(torch.equal(v, twice.state_dict()[k]) for k, v in fused.state_dict().items())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # inplace=False: a copy
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    _assert_same(fused, twice, sizes=SIZES[:1])
    assert linglo.fuse(model, inplace=True) is model and not model.training


def test_fused_model_exported_to_onnx_matches_the_unfused_model(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from linglo.export import export_onnx, verify_onnx
    model = _trained_like(timm.create_model("linglo_t", num_classes=5, **TINY))
    path = tmp_path / "fused.onnx"
    export_onnx(linglo.fuse(model), path, size=64)
    rows = verify_onnx(model, path, [(64, 64), (72, 88)])
    for r in rows:
        assert r["max_abs_diff"] <= 1e-5 * max(1.0, r["max_abs_torch"]), r
