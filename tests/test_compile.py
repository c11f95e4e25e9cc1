"""torch.compile sees the whole LinGlo forward as one graph (no graph breaks), in every mixer and layout, in
eval and train mode, with a padding mask and with channels_last inputs (what `linglo bench --compile` relies on)."""
import pytest
import timm
import torch

import linglo  # noqa: F401

TINY = dict(widths=(16, 32, 64, 128), depths=(2, 2, 2, 2), num_classes=3)


def _breaks(fn, *args) -> tuple[int, list[str]]:
    torch._dynamo.reset()
    report = torch._dynamo.explain(fn)(*args)
    return report.graph_count, [str(b.reason).splitlines()[0] for b in report.break_reasons]


@pytest.mark.parametrize("kwargs", [dict(), dict(axial=True), dict(query_gate=True, gate="sigmoid"),
                                    dict(token_mixer="linear"), dict(layout="graft")])
def test_forward_is_one_graph(kwargs):
    model = timm.create_model("linglo_t", **TINY, **kwargs).eval()
    graphs, reasons = _breaks(model, torch.randn(2, 3, 72, 56))
    assert (graphs, reasons) == (1, [])


def test_train_mode_masked_and_channels_last_are_one_graph():
    model = timm.create_model("linglo_t", **TINY).train().to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    assert _breaks(model, x) == (1, [])
    mask = torch.ones(2, 64, 64, dtype=torch.bool)
    mask[1, :, 40:] = False
    assert _breaks(model.forward_features, x, mask) == (1, [])
