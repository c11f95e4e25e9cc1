"""layers.blocks: the MLP's banded inference path gives the same output with a fraction of the memory."""
import pytest
import torch

from linglo.bench import peak_bytes
from linglo.layers import blocks
from linglo.layers.blocks import ConvMlp


def _full(mlp: ConvMlp, x: torch.Tensor) -> torch.Tensor:
    return mlp.fc2(mlp.act(mlp.fc1(x)))


@pytest.mark.parametrize("shape", [(2, 8, 37, 29), (1, 8, 64, 64)])
def test_banded_mlp_equals_the_whole_map(shape, monkeypatch):
    monkeypatch.setattr(blocks, "MLP_BAND_PIXELS", 256)            # several bands, the last one shorter
    torch.manual_seed(0)
    mlp, x = ConvMlp(8, 4.0).eval(), torch.randn(shape)
    with torch.no_grad():
        banded = mlp(x)
        channels_last = mlp(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(banded, _full(mlp, x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(channels_last, banded, rtol=1e-5, atol=1e-6)


def test_banded_mlp_holds_less_than_the_hidden_map_and_training_keeps_gradients(monkeypatch):
    monkeypatch.setattr(blocks, "MLP_BAND_PIXELS", 1024)
    mlp, x = ConvMlp(16, 4.0).eval(), torch.randn(1, 16, 128, 128)
    hidden = 64 * 128 * 128 * 4
    with torch.no_grad():
        assert peak_bytes(lambda: mlp(x), torch.device("cpu")) < 0.6 * hidden    # output, bands, concatenation
        assert peak_bytes(lambda: _full(mlp, x), torch.device("cpu")) > hidden
    xg = x.clone().requires_grad_()
    mlp(xg).square().mean().backward()
    ref = x.clone().requires_grad_()
    _full(mlp, ref).square().mean().backward()
    torch.testing.assert_close(xg.grad, ref.grad)
