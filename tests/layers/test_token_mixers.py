"""Token mixers: one interface, padded tokens invisible, KeyOnlyAttention equals its written definition."""
import math

import pytest
import torch

from linglo.layers import TOKEN_MIXERS, KeyOnlyAttention, create_token_mixer
from linglo.ops import key_only_attention_reference


KEY_ONLY_NEW = dict(query_gate=True, value_conv=3, saliency_conv=3)


@pytest.mark.parametrize("name, options", [(n, {}) for n in sorted(TOKEN_MIXERS)] + [("key_only", KEY_ONLY_NEW)])
def test_interface_shapes_and_mask(name, options):
    torch.manual_seed(0)
    mixer = create_token_mixer(name, 32, head_dim=16, **options).eval()
    x = torch.randn(2, 32, 7, 9)
    assert mixer(x).shape == x.shape
    mask = torch.ones(2, 7, 9, dtype=torch.bool)
    mask[:, 5:] = False
    x2 = x.clone()
    x2[..., 5:, :] = torch.randn(2, 32, 2, 9) * 100      # change only the padded tokens
    with torch.no_grad():
        a, b = mixer(x, mask), mixer(x2, mask)
    torch.testing.assert_close(a[..., :5, :], b[..., :5, :], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("options", [dict(), dict(window=0), dict(window=3, axial=True), dict(global_term=False),
                                     dict(query_gate=True), dict(gate="sigmoid"), KEY_ONLY_NEW,
                                     dict(value_conv=5), dict(saliency_conv=3, window=0)])
def test_key_only_options_run_and_backprop(options):
    mixer = KeyOnlyAttention(32, head_dim=16, **options)
    x = torch.randn(2, 32, 6, 5, requires_grad=True)
    mixer(x).square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in mixer.parameters()), "every parameter takes part in the forward"


def test_key_only_module_matches_definition():
    """y = W_o Σ_j a_ij v_j with a_ij = softmax_j(s_j + r(j−i)), s = saliency conv / √d."""
    torch.manual_seed(0)
    mixer = KeyOnlyAttention(32, head_dim=16, window=3)
    with torch.no_grad():
        mixer.rel_bias.normal_()
        mixer.r_inf.normal_()
    x = torch.randn(2, 32, 5, 6)
    y = mixer.proj_in(x)
    v = y[:, :32].reshape(2, 2, 16, 5, 6)
    s = y[:, 32:34] / math.sqrt(16)
    expected = mixer.proj_out(key_only_attention_reference(v, s, mixer.rel_bias, mixer.r_inf).reshape(2, 32, 5, 6))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


def test_softmax_mixer_is_full_attention():
    torch.manual_seed(0)
    mixer = create_token_mixer("softmax", 16, head_dim=16)
    x = torch.randn(1, 16, 3, 4)
    q, k, v = mixer.qkv(x).reshape(1, 3, 16, 12).unbind(1)
    a = torch.softmax(q.transpose(1, 2) @ k / 4.0, dim=-1)                       # (1, N, N)
    expected = mixer.proj_out((v @ a.transpose(1, 2)).reshape(1, 16, 3, 4))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad,message", [(dict(window=4), "odd"), (dict(window=0, global_term=False), "global_term"),
                                         (dict(gate="relu"), "gate"), (dict(value_conv=2), "value_conv"),
                                         (dict(saliency_conv=-1), "saliency_conv")])
def test_bad_key_only_options(bad, message):
    with pytest.raises(ValueError, match=message):
        KeyOnlyAttention(32, **bad)


def test_unknown_mixer_name():
    with pytest.raises(ValueError, match="token_mixer must be one of"):
        create_token_mixer("conv", 32)


def test_value_and_saliency_convs_follow_their_definition():
    """saliency from a depthwise conv over the logits map; a depthwise conv of the values added to the output;
    the query gate multiplies elementwise: y = W_o(σ(q) ⊙ (Σ_j a_ij v_j + dw(v)_i))."""
    torch.manual_seed(0)
    mixer = KeyOnlyAttention(32, head_dim=16, window=3, **KEY_ONLY_NEW)
    with torch.no_grad():
        mixer.rel_bias.normal_()
        mixer.r_inf.normal_()
    x = torch.randn(2, 32, 5, 6)
    y = mixer.proj_in(x)
    v_map, s, q = y[:, :32], y[:, 32:34], y[:, 34:]
    s = mixer.saliency_conv(s) / math.sqrt(16)
    attended = key_only_attention_reference(v_map.reshape(2, 2, 16, 5, 6), s, mixer.rel_bias, mixer.r_inf)
    expected = mixer.proj_out(torch.sigmoid(q) * (attended.reshape(2, 32, 5, 6) + mixer.value_conv(v_map)))
    torch.testing.assert_close(mixer(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(TOKEN_MIXERS) - {"key_only"}))
@pytest.mark.parametrize("option", [dict(window=3), dict(query_gate=True), dict(gate="sigmoid"), dict(value_conv=0)])
def test_key_only_option_with_another_mixer_is_an_error(name, option):
    with pytest.raises(ValueError, match=f"token_mixer='{name}' takes no {next(iter(option))}="):
        create_token_mixer(name, 32, head_dim=16, **option)


def test_key_only_options_left_at_none_take_the_mixers_defaults():
    mixer = create_token_mixer("key_only", 32, head_dim=16, window=None, axial=None, gate=None)
    default = KeyOnlyAttention(32, head_dim=16)
    assert (mixer.window, mixer.axial, mixer.gate, mixer.query_gate) == (default.window, default.axial,
                                                                        default.gate, default.query_gate)
    assert mixer.rel_bias.shape == default.rel_bias.shape and mixer.r_inf is not None


def test_fused_switch_is_read_when_the_module_is_built(monkeypatch):
    """timm's fused_attn pattern: LINGLO_FUSED decides at construction, an argument overrides it, and the attribute
    may be changed afterwards; off CUDA the switch falls back to the torch ops (same output)."""
    monkeypatch.setenv("LINGLO_FUSED", "1")
    on = KeyOnlyAttention(32, head_dim=16)
    assert on.fused_attn and not KeyOnlyAttention(32, head_dim=16, fused_attn=False).fused_attn
    monkeypatch.delenv("LINGLO_FUSED")
    assert on.fused_attn and not KeyOnlyAttention(32, head_dim=16).fused_attn
    x = torch.randn(1, 32, 9, 10)
    with torch.no_grad():
        fused = on(x)
        on.fused_attn = False
        torch.testing.assert_close(on(x), fused)
