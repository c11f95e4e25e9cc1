"""layers.mlp: the banded MLP's inference path gives the same output with a fraction of the memory."""
import pytest
import torch

from linglo.bench import peak_bytes
from linglo.layers import BandedConvMlp, mlp as mlp_module


def _full(mlp: BandedConvMlp, x: torch.Tensor) -> torch.Tensor:
    return mlp.fc2(mlp.act(mlp.fc1(x)))


@pytest.mark.parametrize("shape", [(2, 8, 37, 29), (1, 8, 64, 64)])
def test_banded_mlp_equals_the_whole_map(shape, monkeypatch):
    monkeypatch.setattr(mlp_module, "MLP_BAND_PIXELS", 256)            # several bands, the last one shorter
    torch.manual_seed(0)
    mlp, x = BandedConvMlp(8, 32).eval(), torch.randn(shape)
    with torch.no_grad():
        banded = mlp(x)
        channels_last = mlp(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(banded, _full(mlp, x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(channels_last, banded, rtol=1e-5, atol=1e-6)


def test_banded_mlp_holds_less_than_the_hidden_map(monkeypatch):
    monkeypatch.setattr(mlp_module, "MLP_BAND_PIXELS", 1024)
    mlp, x = BandedConvMlp(16, 64).eval(), torch.randn(1, 16, 128, 128)
    hidden = 64 * 128 * 128 * 4
    with torch.no_grad():
        assert peak_bytes(lambda: mlp(x), torch.device("cpu")) < 0.6 * hidden    # output, bands, concatenation
        assert peak_bytes(lambda: _full(mlp, x), torch.device("cpu")) > hidden


@pytest.mark.parametrize("input_grad", [False, True])
def test_gradients_match_the_whole_map(input_grad, monkeypatch):
    """An input without gradient (a frozen network before the MLP) takes the bands under autograd; one with
    gradient takes the whole map. Both give the whole map's parameter (and input) gradients."""
    monkeypatch.setattr(mlp_module, "MLP_BAND_PIXELS", 256)
    torch.manual_seed(0)
    mlp, x = BandedConvMlp(8, 32), torch.randn(2, 8, 40, 24)

    def grads(forward):
        mlp.zero_grad()
        xi = x.clone().requires_grad_(input_grad)
        forward(xi).square().mean().backward()
        return [p.grad.clone() for p in mlp.parameters()] + ([xi.grad] if input_grad else [])

    for got, want in zip(grads(mlp), grads(lambda t: _full(mlp, t))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_takes_timm_conv_mlp_arguments_and_weights():
    """Built with timm.layers.ConvMlp's arguments, it holds the same parameters and computes the same function."""
    from timm.layers import ConvMlp
    torch.manual_seed(0)
    ref = ConvMlp(8, 24, out_features=6, act_layer=torch.nn.GELU).eval()
    mlp = BandedConvMlp(8, 24, out_features=6, act_layer=torch.nn.GELU).eval()
    mlp.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 9, 7)
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), ref(x))
