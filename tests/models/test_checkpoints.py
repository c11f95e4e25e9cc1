"""Weights written by earlier versions still load: before the model moved into one file (0.1), before 0.2 changed
the family's key-only defaults, before 0.3 changed linglo_t's depths; checkpoint_filter_fn adapts checkpoints.

tests/data/classify_f274e1b.pt is a real `linglo train` checkpoint written by commit f274e1b (version 0.1, before
this layout): linglo_t with --model-kwargs widths=(8,16,16,32) depths=(2,2,2,2) head_dim=8 window=3 ls_init=0.5 (the
older keyword), 1 epoch on the built-in dataset at 32 px, with EMA. 0.1 built linglo_t without the query gate and
value conv 0.2 adds by default, and with MLP ratio 4: timm users name those (legacy_model_kwargs gives them), the CLI
restores them itself.

tests/data/classify_730cb98.pt is one written by commit 730cb98 (version 0.2.0): linglo_t with --model-kwargs
widths=(8,16,16,32) head_dim=8 window=3 ls_init_value=0.5 and 0.2's default depths (2, 2, 6, 2), 1 epoch on the
built-in dataset at 32 px, with EMA.
"""
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch

import linglo  # noqa: F401  (registers the family)
from linglo.cli.main import main
from linglo.models import checkpoint_filter_fn, legacy_model_kwargs

OLD = Path(__file__).resolve().parents[1] / "data" / "classify_f274e1b.pt"
V02 = Path(__file__).resolve().parents[1] / "data" / "classify_730cb98.pt"


@pytest.fixture(scope="module")
def old():
    return torch.load(OLD, map_location="cpu", weights_only=True)


def _assert_weights(model, state):
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], rtol=0, atol=0, msg=name)


def test_timm_loads_the_old_train_checkpoint(old):
    """timm.create_model(pretrained=True, pretrained_cfg_overlay=dict(file=best.pt)): exactly its "model" weights,
    with the older keyword ls_init still accepted and 0.1's defaults named."""
    kwargs = legacy_model_kwargs("linglo_t", old["config"]["model_kwargs"])
    assert "ls_init" in kwargs and kwargs["query_gate"] is False and kwargs["mlp_ratio"] == 4.0
    model = timm.create_model("linglo_t", pretrained=True, num_classes=2,
                              pretrained_cfg_overlay=dict(file=str(OLD), num_classes=2), **kwargs)
    _assert_weights(model, old["model"])
    assert model.stages[0].blocks[0].ls.gamma.shape == (8,)


def test_old_weights_in_a_default_model_name_the_arguments_that_fit():
    """0.1 weights into a default model: one ValueError naming the arguments, not a list of size mismatches."""
    old_model = timm.create_model("linglo_t", **legacy_model_kwargs("linglo_t", dict(
        widths=(8, 16, 16, 32), depths=(2, 2, 2, 2), head_dim=8)))
    with pytest.raises(ValueError, match=r"0.1's defaults \(.*mlp_ratio=4.0, query_gate=False, value_conv=0"):
        timm.create_model("linglo_t", pretrained=True, widths=(8, 16, 16, 32), depths=(2, 2, 2, 2), head_dim=8,
                          pretrained_cfg_overlay=dict(state_dict=old_model.state_dict()))


def test_filter_unwraps_model_or_ema_weights(old):
    kwargs = legacy_model_kwargs("linglo_t", old["config"]["model_kwargs"])
    # the whole checkpoint dict as a state_dict overlay: the filter picks its "model" weights
    model = timm.create_model("linglo_t", pretrained=True, num_classes=2,
                              pretrained_cfg_overlay=dict(state_dict=dict(old), num_classes=2), **kwargs)
    _assert_weights(model, old["model"])
    ema = checkpoint_filter_fn(old, model, use_ema=True)
    assert any(not torch.equal(ema[k], old["model"][k]) for k in ema)   # EMA weights are another set
    model.load_state_dict(ema)
    _assert_weights(model, old["ema"])
    with pytest.raises(ValueError, match="no EMA weights"):
        checkpoint_filter_fn({**old, "ema": None}, model, use_ema=True)
    wrapped = checkpoint_filter_fn({f"module.{k}": v for k, v in old["model"].items()}, model)   # DDP prefix
    assert set(wrapped) == set(old["model"])


@pytest.mark.parametrize("window", [1, 5, 7])
def test_relative_bias_is_resized_to_another_window(old, window):
    """The window-3 checkpoint into a window-k model: rel_bias interpolated over the offset grid, the centre offset
    kept at the centre; every other tensor exactly as stored."""
    kwargs = {**legacy_model_kwargs("linglo_t", old["config"]["model_kwargs"]), "window": window}
    model = timm.create_model("linglo_t", pretrained=True, num_classes=2,
                              pretrained_cfg_overlay=dict(file=str(OLD), num_classes=2), **kwargs).eval()
    state = model.state_dict()
    biases = [k for k in old["model"] if k.endswith("rel_bias")]
    assert biases
    for key in biases:
        stored, loaded = old["model"][key], state[key]
        assert stored.shape[1:] == (3, 3) and loaded.shape == (stored.shape[0], window, window)
        torch.testing.assert_close(loaded[:, window // 2, window // 2], stored[:, 1, 1])
    for key, tensor in old["model"].items():
        if key not in biases:
            torch.testing.assert_close(state[key], tensor, rtol=0, atol=0)
    assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


def test_axial_bias_is_resized_too():
    torch.manual_seed(0)
    source = timm.create_model("linglo_t", axial=True, window=3, widths=(8, 16, 16, 32), depths=(2, 2, 2, 2),
                               head_dim=8)
    with torch.no_grad():
        for name, p in source.named_parameters():
            if name.endswith(("bias_y", "bias_x")):
                p.normal_()
    target = timm.create_model("linglo_t", axial=True, window=7, widths=(8, 16, 16, 32), depths=(2, 2, 2, 2),
                               head_dim=8)
    state = checkpoint_filter_fn(source.state_dict(), target)
    target.load_state_dict(state)
    for key in ("stages.0.blocks.1.mixer.bias_y", "stages.3.blocks.1.mixer.bias_x"):
        assert state[key].shape[-1] == 7
        torch.testing.assert_close(state[key][:, 3], source.state_dict()[key][:, 1])


def test_eval_reproduces_the_metrics_the_old_code_recorded(old, tmp_path):
    """`linglo eval` on the old checkpoint rebuilds the model from its stored config and scores the built-in val
    split exactly as the run that wrote it did (same weights, same eval transform)."""
    recorded = old["history"][-1]
    assert main(["eval", "--checkpoint", str(OLD), "--workers", "0", "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["top1"] == pytest.approx(recorded["val_top1"])
    assert metrics["loss"] == pytest.approx(recorded["val_loss"], rel=1e-5)


def test_predict_loads_the_old_checkpoint(tmp_path):
    val = sorted((Path(linglo.__file__).parent / "assets" / "default_dataset" / "val" / "person").glob("*.jpg"))[:2]
    assert main(["predict", "--checkpoint", str(OLD), *map(str, val), "--output", str(tmp_path)]) == 0
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert [p["file"] for p in preds] == list(map(str, val))
    assert all(sum(t["prob"] for t in p["top"]) == pytest.approx(1.0) for p in preds)


def test_resume_keeps_the_old_architecture_with_its_model_kwargs_given_again(tmp_path):
    """`linglo train --resume` of a 0.1 run, with the --model-kwargs it was started with typed again: the same
    recipe (0.1's defaults fill the typed kwargs too), so it resumes and writes a versioned checkpoint of 0.1's
    architecture."""
    shutil.copy(OLD, tmp_path / "last.pt")
    kwargs = ["widths=(8,16,16,32)", "depths=(2,2,2,2)", "head_dim=8", "window=3", "ls_init=0.5"]
    assert main(["train", "--resume", str(tmp_path / "last.pt"), "--epochs", "2", "--model-kwargs", *kwargs,
                 "--workers", "0", "--output", str(tmp_path / "new")]) == 0
    new = torch.load(tmp_path / "new" / "last.pt", weights_only=True)
    assert new["epoch"] == 2 and new["version"] == linglo.__version__
    assert new["config"]["model_kwargs"]["value_conv"] == 0 and new["model"].keys() == torch.load(
        OLD, weights_only=True)["model"].keys()


def test_export_builds_the_old_checkpoint_as_trained(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from linglo.export import ExportConfig, export
    rows = export(ExportConfig(output=tmp_path / "m.onnx", checkpoint=OLD, size=64, check_sizes=[(64, 64)]),
                  log=lambda _: None)
    assert rows and all(r["ok"] for r in rows)


def test_timm_loads_a_0_2_checkpoint_with_its_version_named():
    """0.2 built linglo_t with depths (2, 2, 6, 2): legacy_model_kwargs(..., "0.2") names them, and weights of those
    depths in a 0.3-default model are one ValueError naming the depths, not a list of missing keys."""
    v02 = torch.load(V02, map_location="cpu", weights_only=True)
    assert v02["version"] == "0.2.0"
    kwargs = legacy_model_kwargs("linglo_t", v02["config"]["model_kwargs"], v02["version"])
    assert kwargs["depths"] == (2, 2, 6, 2) and "query_gate" not in kwargs   # 0.2 had the query gate already
    model = timm.create_model("linglo_t", pretrained=True, num_classes=2,
                              pretrained_cfg_overlay=dict(file=str(V02), num_classes=2), **kwargs)
    _assert_weights(model, v02["model"])
    with pytest.raises(ValueError, match=r"\(2, 2, 6, 2\) blocks per stage, this model \(2, 2, 4, 2\): build it "
                                         r"with depths=\(2, 2, 6, 2\)"):
        timm.create_model("linglo_t", pretrained=True, num_classes=2, pretrained_cfg_overlay=dict(
            file=str(V02), num_classes=2), **v02["config"]["model_kwargs"])


def test_eval_and_predict_rebuild_a_0_2_checkpoint_as_trained(tmp_path):
    v02 = torch.load(V02, map_location="cpu", weights_only=True)
    assert main(["eval", "--checkpoint", str(V02), "--workers", "0", "--output", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "eval.json").read_text())["metrics"]
    assert metrics["top1"] == pytest.approx(v02["history"][-1]["val_top1"])
    val = sorted((Path(linglo.__file__).parent / "assets" / "default_dataset" / "val" / "person").glob("*.jpg"))[:1]
    assert main(["predict", "--checkpoint", str(V02), *map(str, val), "--output", str(tmp_path / "p")]) == 0


def test_resume_of_a_0_2_run_keeps_its_depths_with_its_model_kwargs_given_again(tmp_path):
    """`linglo train --resume` of a 0.2 run with its --model-kwargs typed again (depths not among them): 0.2's
    depths fill them, so it resumes with 0.2's architecture and records the depths in its new checkpoint."""
    shutil.copy(V02, tmp_path / "last.pt")
    kwargs = ["widths=(8,16,16,32)", "head_dim=8", "window=3", "ls_init_value=0.5"]
    assert main(["train", "--resume", str(tmp_path / "last.pt"), "--epochs", "2", "--model-kwargs", *kwargs,
                 "--workers", "0", "--output", str(tmp_path / "new")]) == 0
    new = torch.load(tmp_path / "new" / "last.pt", weights_only=True)
    assert new["epoch"] == 2 and new["version"] == linglo.__version__
    assert tuple(new["config"]["model_kwargs"]["depths"]) == (2, 2, 6, 2)
    assert new["model"].keys() == torch.load(V02, weights_only=True)["model"].keys()


def test_legacy_kwargs_fill_only_what_changed_after_the_version():
    assert legacy_model_kwargs("linglo_t", {}, "0.3.0") == {}
    assert legacy_model_kwargs("linglo_t", {}, "0.2.0") == {"depths": (2, 2, 6, 2)}
    assert legacy_model_kwargs("linglo_t", {}) == {"depths": (2, 2, 6, 2), "mlp_ratio": 4.0, "query_gate": False,
                                                   "value_conv": 0}
    assert legacy_model_kwargs("linglo_t", {"depths": (1, 1, 1, 1)}, "0.2")["depths"] == (1, 1, 1, 1)   # given wins
    assert legacy_model_kwargs("linglo_s", {"token_mixer": "linear"}) == {"token_mixer": "linear"}
    assert legacy_model_kwargs("convnext_atto", {"x": 1}, "0.1") == {"x": 1}
