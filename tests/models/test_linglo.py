"""The LinGlo family through timm's public API: shapes at any size, features, checkpoints, options."""
import math

import pytest
import timm
import torch

import linglo  # noqa: F401  (registers the family)
from linglo.models import FAMILY, count_params

TINY = dict(widths=(16, 32, 32, 64), depths=(2, 2, 2, 2), head_dim=16)
PARAM_RANGES = {"linglo_t": (2.5, 3.0), "linglo_xs": (5.0, 6.0), "linglo_s": (10, 12), "linglo_m": (22, 26)}


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_family_param_counts_in_spec_range(name):
    model = timm.create_model(name)
    low, high = PARAM_RANGES[name]
    assert low <= count_params(model) / 1e6 <= high
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_registered_and_listed():
    assert set(FAMILY) <= set(timm.list_models("linglo*"))
    cfg = timm.create_model("linglo_t").pretrained_cfg
    assert not cfg.get("url") and cfg["classifier"] == "head.fc" and cfg["first_conv"] == "stem.conv1"


@pytest.mark.parametrize("layout", ["alternate", "graft"])
@pytest.mark.parametrize("mixer", ["key_only", "softmax", "linear", "separable", "none"])
def test_every_mixer_and_layout_trains_one_step(layout, mixer):
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", num_classes=3, layout=layout, token_mixer=mixer, drop_path_rate=0.1, **TINY)
    x, y = torch.randn(4, 3, 48, 40), torch.tensor([0, 1, 2, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_layouts_put_blocks_where_spec_says():
    alt = timm.create_model("linglo_t", **TINY)
    graft = timm.create_model("linglo_t", layout="graft", **TINY)
    kinds = lambda m: [[type(b).__name__ for b in s.blocks] for s in m.stages]  # noqa: E731
    assert all(k == ["ConvBlock", "AttentionBlock"] for k in kinds(alt))
    assert kinds(graft) == [["ConvBlock"] * 2] * 2 + [["AttentionBlock"] * 2] * 2
    assert count_params(alt) > 0 and sum(len(s) for s in kinds(alt)) == sum(len(s) for s in kinds(graft))


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (101, 67), (224, 160)])
def test_features_only_shapes_on_odd_sizes(size):
    model = timm.create_model("linglo_t", features_only=True, out_indices=(0, 1, 2, 3), **TINY).eval()
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    feats = model(torch.randn(2, 3, *size))
    for f, c, r in zip(feats, model.feature_info.channels(), model.feature_info.reduction()):
        assert f.shape == (2, c, math.ceil(size[0] / r), math.ceil(size[1] / r))


def test_features_only_subset_and_intermediates_agree(tmp_path):
    torch.manual_seed(0)
    full = timm.create_model("linglo_t", **TINY).eval()
    torch.save(full.state_dict(), tmp_path / "w.pth")
    feats = timm.create_model("linglo_t", features_only=True, out_indices=(1, 3), pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "w.pth")), **TINY).eval()
    x = torch.randn(1, 3, 70, 90)
    final, inter = full.forward_intermediates(x)
    assert len(inter) == 4
    sub = feats(x)
    torch.testing.assert_close(sub[0], inter[1])
    torch.testing.assert_close(sub[1], inter[3])
    torch.testing.assert_close(final, full.forward_features(x))
    torch.testing.assert_close(full.forward_head(final), full(x))


def test_large_and_tiny_inputs():
    model = timm.create_model("linglo_t", features_only=True, **TINY).eval()
    with torch.no_grad():
        for size in [(32, 32), (2048, 2048), (1000, 1333)]:
            assert model(torch.randn(1, 3, *size))[-1].shape[-2:] == tuple(math.ceil(s / 32) for s in size)


def test_mask_makes_padding_invisible():
    """An image padded to a larger canvas, with its mask, gives the same features as the image alone."""
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", **TINY).eval()
    img = torch.randn(1, 3, 70, 90)
    canvas = torch.randn(1, 3, 96, 128) * 5            # garbage outside the image
    canvas[..., :70, :90] = img
    mask = torch.zeros(1, 96, 128, dtype=torch.bool)
    mask[:, :70, :90] = True
    with torch.no_grad():
        _, plain = model.forward_intermediates(img)
        _, padded = model.forward_intermediates(canvas, mask=mask)
    for a, b in zip(plain, padded):
        torch.testing.assert_close(b[..., :a.shape[-2], :a.shape[-1]], a, rtol=1e-4, atol=1e-5)


def test_reset_classifier_and_pre_logits():
    model = timm.create_model("linglo_t", **TINY)
    model.reset_classifier(7)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    model.reset_classifier(0)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 64)
    assert model.get_classifier is not None


def test_no_weight_decay_names_positional_params():
    model = timm.create_model("linglo_t", **TINY)
    names = model.no_weight_decay()
    params = dict(model.named_parameters())
    assert names and names <= set(params)
    assert all(n.endswith(("rel_bias", "r_inf")) for n in names)
    axial = timm.create_model("linglo_t", axial=True, **TINY)
    assert any(n.endswith("bias_y") for n in axial.no_weight_decay())


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", num_classes=4, **TINY)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for r, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, r, rtol=1e-4, atol=1e-6)


def test_drop_path_rate_reaches_blocks():
    model = timm.create_model("linglo_t", drop_path_rate=0.2, **TINY)
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert max(rates) > 0 and rates == sorted(rates)


def test_local_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", num_classes=5, **TINY).eval()
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    # the overlay names the file and the class count it was trained with (timm drops a mismatched classifier)
    loaded = timm.create_model("linglo_t", pretrained=True, num_classes=5,
                               pretrained_cfg_overlay=dict(file=str(path), num_classes=5), **TINY).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x))
    # a different class count keeps the backbone and re-initialises only the classifier
    other = timm.create_model("linglo_t", pretrained=True, num_classes=3,
                              pretrained_cfg_overlay=dict(file=str(path), num_classes=5), **TINY).eval()
    torch.testing.assert_close(other.forward_features(x), model.forward_features(x))


def test_channels_last_matches_eager():
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", **TINY).eval()
    x = torch.randn(2, 3, 67, 75)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_eager_forward_runs_in_channels_last_memory_with_the_same_values():
    """A plain NCHW call computes in NHWC memory (the CPU speed of its 1×1 convs); a traced graph, which exporters
    build, stays NCHW: both give the same values."""
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", **TINY).eval()
    x = torch.randn(2, 3, 67, 75)
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        traced = torch.jit.trace(model, x)
        torch.testing.assert_close(model(x), traced(x), rtol=1e-4, atol=1e-5)
    assert all(f.is_contiguous(memory_format=torch.channels_last) for f in feats)
    model.channels_last_forward = False   # the switch keeps the input's layout
    with torch.no_grad():
        assert not any(f.is_contiguous(memory_format=torch.channels_last)
                       for f in model.forward_intermediates(x, intermediates_only=True))


def test_compile_matches_eager_without_graph_breaks():
    torch.manual_seed(0)
    model = timm.create_model("linglo_t", widths=(16, 16, 16, 16), depths=(2, 1, 1, 1), head_dim=16).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = torch.compile(model, fullgraph=True)(x)   # fullgraph: a graph break would raise
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    (dict(layout="zigzag"), "layout must be one of"),
    (dict(token_mixer="conv"), "token_mixer must be one of"),
    (dict(window=4), "window must be 0 .* or odd"),
    (dict(widths=(16, 32)), "need 4 stages"),
    (dict(token_mixer="softmax", window=3), "token_mixer='softmax' takes no window=3"),
    (dict(token_mixer="linear", query_gate=True), "token_mixer='linear' takes no query_gate=True"),
    (dict(ls_init=0.1, ls_init_value=0.1), "not both"),
])
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        timm.create_model("linglo_t", **{**TINY, **kwargs})


def test_unknown_variant_raises():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("linglo_xxl")


def test_fp16_autocast_forward_is_finite():
    model = timm.create_model("linglo_t", **TINY).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 64, 64) * 50)
    assert torch.isfinite(out).all()


def test_same_seed_gives_shared_modules_the_same_init():
    """Each module's init comes from the global seed and its name: variants share the init of what they share."""
    torch.manual_seed(3)
    a = timm.create_model("linglo_t", num_classes=10)
    torch.manual_seed(3)
    b = timm.create_model("linglo_t", num_classes=10, token_mixer="none", layout="alternate")
    torch.manual_seed(4)
    c = timm.create_model("linglo_t", num_classes=10)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    shared = [k for k in sa if k in sb and sa[k].shape == sb[k].shape and k.endswith("weight") and sa[k].dim() > 1]
    assert len(shared) > 30
    assert all(torch.equal(sa[k], sb[k]) for k in shared)
    assert not any(torch.equal(sa[k], sc[k]) for k in shared)
    w = sa["stages.0.blocks.0.mlp.fc1.weight"]
    assert w.std().item() == pytest.approx(0.02, rel=0.15)                 # trunc_normal(std 0.02), as timm's


def test_parameters_reach_the_blocks_by_name():
    """Explicit arguments from the model to the block and the mixer: window, mlp_ratio, conv_kernel, ls_init_value
    (and its older name ls_init) end up in the modules they name; other mixers build with the key-only defaults
    left at None."""
    from linglo.layers import KeyOnlyAttention, SoftmaxAttention
    model = timm.create_model("linglo_t", window=3, conv_kernel=5, mlp_ratio=2.0, ls_init=0.5, query_gate=True,
                              saliency_conv=3, value_conv=5, **TINY)
    mixers = [m for m in model.modules() if isinstance(m, KeyOnlyAttention)]
    assert mixers and all(m.rel_bias.shape[-1] == 3 and m.query_gate for m in mixers)
    assert all(m.saliency_conv.kernel_size == (3, 3) and m.value_conv.kernel_size == (5, 5) for m in mixers)
    block = model.stages[1].blocks[0]
    assert block.conv_dw.kernel_size == (5, 5) and block.mlp.fc1.out_channels == 2 * 32
    assert torch.all(block.ls.gamma == 0.5)
    same = timm.create_model("linglo_t", window=3, conv_kernel=5, mlp_ratio=2.0, ls_init_value=0.5, query_gate=True,
                             saliency_conv=3, value_conv=5, **TINY)
    assert {k: v.shape for k, v in same.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    softmax = timm.create_model("linglo_t", token_mixer="softmax", **TINY)
    assert any(isinstance(m, SoftmaxAttention) for m in softmax.modules())


@pytest.mark.parametrize("norm_layer,expected", [
    ("frozenbatchnorm2d", "FrozenBatchNorm2d"), (torch.nn.SyncBatchNorm, "SyncBatchNorm"),
    ("groupnorm1", "GroupNorm1")])
def test_norm_layer_reaches_every_backbone_norm(norm_layer, expected):
    """As timm models take it, so detection can ask for frozen BN, SyncBN or GroupNorm; the head keeps LayerNorm2d."""
    model = timm.create_model("linglo_t", norm_layer=norm_layer, **TINY).eval()
    norms = [type(m).__name__ for n, m in model.named_modules() if n.rsplit(".", 1)[-1].startswith("norm")
             and not n.startswith("head")]
    assert norms and set(norms) == {expected}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and type(m) is torch.nn.BatchNorm2d for m in model.modules())
    if expected != "SyncBatchNorm":   # (SyncBatchNorm runs only in a process group)
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_act_layer_device_and_dtype_reach_every_layer():
    model = timm.create_model("linglo_t", act_layer="relu", dtype=torch.float64, **TINY)
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.modules()) == 1 + 8   # the stem and every MLP
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    assert model(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64
    meta = timm.create_model("linglo_t", device="meta", **TINY)
    assert {p.device.type for p in meta.parameters()} == {"meta"}
