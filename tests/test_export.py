"""linglo export: ONNX with dynamic batch/height/width equals PyTorch under onnxruntime at three sizes (incl. one
not a multiple of 32 and maps small enough that the eager op's shortcuts would apply), backbones too."""
import sys

import pytest
import timm
import torch

import linglo  # noqa: F401
from linglo.errors import LingloError
from linglo.export import ExportConfig, export, verify_onnx

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

TINY = dict(widths=(16, 32, 64, 128), depths=(2, 2, 2, 2), ls_init=1.0)   # every stage has an attention block


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights of unit-scale activations, so a wrong attention path could not hide below the tolerance."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
    return model.eval()


def test_checkpoint_export_matches_torch_at_three_sizes(tmp_path):
    """A classification checkpoint: its (randomised) weights are what onnxruntime runs, at sizes 96 (stage-4 map
    3x3, inside the 7x7 window: the eager shortcut drops the global term), 224 and 77x131 (not multiples of 32)."""
    model = _randomise(timm.create_model("linglo_t", num_classes=5, **TINY))
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "ema": None, "config": {},
                "meta": {"task": "classify", "model": "linglo_t", "num_classes": 5}}, ckpt)
    out = tmp_path / "model.onnx"
    sizes = [(96, 96), (224, 224), (77, 131)]
    cfg = ExportConfig(output=out, checkpoint=ckpt, extra=TINY, size=128, check_sizes=sizes)
    rows = export(cfg, log=lambda _: None)
    assert [r["input"] for r in rows] == ["1x3x96x96", "2x3x224x224", "3x3x77x131"]
    for r in rows:
        assert r["ok"] and r["max_abs_diff"] < 1e-4 and r["max_abs_torch"] > 0.1, r
    import onnx
    graph = onnx.load(str(out)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims[1] == 3 and all(isinstance(d, str) for d in (dims[0], dims[2], dims[3]))   # batch, H, W dynamic
    # the check compares against the checkpoint's weights: a fresh model would not match
    other = timm.create_model("linglo_t", num_classes=5, **TINY).eval()
    assert not all(r["ok"] for r in verify_onnx(_randomise(other, seed=1), out, sizes[:1]))


def test_features_only_backbone_export(tmp_path):
    out = tmp_path / "backbone.onnx"
    rows = export(ExportConfig(output=out, model="linglo_t", features_only=True, out_indices=(1, 2, 3), extra=TINY,
                               size=96, check_sizes=[(64, 64), (100, 132)]), log=lambda _: None)
    assert len(rows) == 2 and all(r["ok"] for r in rows)
    import onnx
    assert [o.name for o in onnx.load(str(out)).graph.output] == ["features_0", "features_1", "features_2"]


def test_missing_onnxruntime_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import onnxruntime -> ImportError
    with pytest.raises(LingloError, match="onnxruntime is not installed") as err:
        export(ExportConfig(output=tmp_path / "m.onnx", model="linglo_t"), log=lambda _: None)
    assert "\n" not in str(err.value) and not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("cfg,message", [
    (dict(model="swin_tiny_patch4_window7_224"), "takes only 224x224 input"),
    (dict(model="linglo_tt"), "unknown model 'linglo_tt'"),
    (dict(), "give --model NAME or --checkpoint FILE"),
    (dict(model="linglo_t", opset=13, check=False), "--opset must be >= 17"),
    (dict(model="linglo_t", size=32, check=False), "--size must be over 32 px .* got 32"),
])
def test_bad_inputs_are_one_line_errors(tmp_path, cfg, message):
    with pytest.raises(LingloError, match=message) as err:
        export(ExportConfig(output=tmp_path / "m.onnx", **cfg), log=lambda _: None)
    assert "\n" not in str(err.value)


# ---- the timm user's own export call ---------------------------------------------------------------
def plain_export_rows(name: str, dynamo: bool, path, example: int, sizes, **kwargs) -> list[tuple]:
    """torch.onnx.export as a timm user calls it (example batch 1, dynamic_axes, nothing else), then onnxruntime
    against eager PyTorch at batch 1 and 2 for each (H, W): rows of (batch, H, W, max |diff|, max |torch|, ok)."""
    import warnings

    import numpy as np
    import onnxruntime as ort
    model = _randomise(timm.create_model(name, ls_init=1.0, **kwargs))
    with warnings.catch_warnings():   # torch's advice on its own API: dynamic_shapes over dynamic_axes, dynamo
        warnings.filterwarnings("ignore", message=".*(dynamic_axes|legacy TorchScript)")
        torch.onnx.export(model, torch.randn(1, 3, example, example), str(path), input_names=["x"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}}, dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = []
    for batch in (1, 2):
        for hh, ww in sizes:
            x = torch.randn(batch, 3, hh, ww, generator=torch.Generator().manual_seed(hh * ww + batch))
            with torch.no_grad():
                ref = model(x).numpy()   # eager: the batch-1 branches, dense small maps and cropped windows
            out = session.run(None, {"x": x.numpy()})[0]
            rows.append((batch, hh, ww, float(np.abs(out - ref).max()), float(np.abs(ref).max()),
                         out.shape == ref.shape and np.allclose(out, ref, rtol=1e-4, atol=1e-4)))
    return rows


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_plain_torch_onnx_export_runs_any_batch_and_size(tmp_path, dynamo):
    """linglo_t (its real widths) exported at batch 1 runs at batch 2 and at sizes with other map shapes, one not a
    multiple of 32, with either exporter."""
    rows = plain_export_rows("linglo_t", dynamo, tmp_path / "m.onnx", 64, [(64, 64), (96, 96), (72, 104)])
    assert all(ok and big > 0.1 for *_, big, ok in rows), rows


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", ["linglo_t", "linglo_xs", "linglo_s", "linglo_m"])
def test_plain_torch_onnx_export_every_family_member(tmp_path, name, dynamo):
    rows = plain_export_rows(name, dynamo, tmp_path / "m.onnx", 224, [(224, 224), (160, 160), (200, 200)])
    assert all(ok and big > 0.1 for *_, big, ok in rows), rows


def test_torch_export_keeps_sizes_dynamic():
    """torch.export (what the dynamo exporter builds on): the op's size-dependent shortcuts stay out of the graph,
    so sizes whose maps the eager shortcuts treat differently run, at other batch sizes too."""
    from torch.export import Dim
    model = _randomise(timm.create_model("linglo_t", num_classes=5, **TINY))
    dynamic = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}
    program = torch.export.export(model, (torch.randn(2, 3, 128, 128),), dynamic_shapes=(dynamic,)).module()
    for shape in [(1, 3, 128, 128), (3, 3, 77, 45), (2, 3, 40, 72)]:   # stage-4 maps 4x4, 3x2, 2x3
        x = torch.randn(shape)
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)
