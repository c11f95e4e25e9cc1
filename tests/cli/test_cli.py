"""The `linglo` command: help, every bad input -> one "error: ..." line and exit 2, eval/predict/demo."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_checks import error_of

from linglo.cli.main import main
from linglo.engine.demo import free_run_dir

TINY = ["--model", "test_convnext", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tiny_folder_session, tmp_path_factory) -> Path:
    """A finished 1-epoch run (with EMA) of a tiny model on the tiny dataset."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--output", str(out)]) == 0
    return out


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["eval", "--help"], ["predict", "--help"],
                                  ["demo", "--help"], ["models", "--help"]])
def test_help(argv, capsys):
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "usage: linglo" in out


def test_train_help_names_flags_and_the_unreadable_image_policy(capsys):
    main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--model", "--data", "--epochs", "--batch-size", "--img-size", "--lr", "--output", "--resume",
                 "--device", "--workers", "--seed", "--amp", "--overwrite", "--config", "--mixup", "--drop-path"):
        assert flag in out
    assert "Unreadable or corrupt images are skipped" in out


def test_bad_dataset_inputs(tiny_folder, tmp_path, capsys):
    assert "not found: not a folder" in error_of(["train", "--data", str(tmp_path / "missing"), *TINY], capsys)
    (tmp_path / "empty").mkdir()
    assert "has no train/ folder" in error_of(["train", "--data", str(tmp_path / "empty"), *TINY], capsys)
    (tiny_folder / "train" / "wasps").mkdir()
    err = error_of(["train", "--data", str(tiny_folder), *TINY, "--output", str(tmp_path / "r")], capsys)
    assert "class folder" in err and "wasps" in err and "has no readable images" in err


def test_unknown_model_suggests_close_names(tiny_folder_session, capsys):
    err = error_of(["train", "--data", str(tiny_folder_session), *TINY, "--model", "linglo_tt"], capsys)
    assert "unknown model 'linglo_tt'" in err and "linglo_t" in err.split("did you mean")[1]


def test_existing_runs_are_never_clobbered(trained, tiny_folder_session, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_folder_session), *TINY]
    assert "already holds a finished run" in error_of([*argv, "--output", str(trained)], capsys)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "last.pt").write_bytes(b"")
    assert "holds an unfinished run" in error_of([*argv, "--output", str(unfinished)], capsys)
    assert "nothing to resume" in error_of([*argv, "--output", str(tmp_path / "new"), "--resume"], capsys)
    assert "already finished 1/1 epochs" in error_of([*argv, "--output", str(trained), "--resume"], capsys)
    copy = Path(shutil.copytree(trained, tmp_path / "copy"))
    assert main([*argv, "--output", str(copy), "--overwrite"]) == 0


def test_checkpoint_of_another_model_or_class_count(trained, tiny_folder, tmp_path, capsys):
    ckpt = str(trained / "last.pt")
    err = error_of(["eval", "--checkpoint", ckpt, "--model", "resnet18"], capsys)
    assert "is for task 'classify', model 'test_convnext' with 2 classes" in err and "model 'resnet18'" in err
    shutil.copytree(tiny_folder / "val" / "bees", tiny_folder / "val" / "wasps")
    err = error_of(["eval", "--checkpoint", ckpt, "--data", str(tiny_folder)], capsys)
    assert "with 2 classes (ants, bees)" in err and "with 3 classes (ants, bees, wasps)" in err
    resumed = Path(shutil.copytree(trained, tmp_path / "resume"))
    err = error_of(["train", "--resume", str(resumed / "last.pt"), "--model", "resnet18", "--epochs", "2"], capsys)
    assert "model 'test_convnext'" in err and "model 'resnet18'" in err
    assert "does not exist" in error_of(["eval", "--checkpoint", str(tmp_path / "none.pt")], capsys)
    assert "--checkpoint is required" in error_of(["eval"], capsys)


@pytest.mark.parametrize("text, suffix, message", [
    ("batchsize: 4\n", ".yaml", "unknown key 'batchsize' (did you mean 'batch_size'?)"),
    ("epochs: [1\n", ".yaml", "is not valid YAML"),
    ('{"epochs": "two"}', ".json", "'epochs' must be int, got 'two'"),
    ("- 1\n", ".yml", "must hold a mapping"),
])
def test_bad_config_files(text, suffix, message, tiny_folder_session, tmp_path, capsys):
    cfg = tmp_path / f"cfg{suffix}"
    cfg.write_text(text)
    assert message in error_of(["train", "--data", str(tiny_folder_session), "--config", str(cfg)], capsys)


def test_bad_flag_values(tiny_folder_session, tmp_path, capsys):
    argv = ["train", "--data", str(tiny_folder_session), *TINY, "--output", str(tmp_path / "r")]
    assert "is not a device" in error_of([*argv, "--device", "tpu"], capsys)
    assert "'epochs' must be > 0" in error_of([*argv, "--epochs", "0"], capsys)
    assert main([*argv, "--epochs", "two"]) == 2          # argparse's own usage error
    assert "invalid int value" in capsys.readouterr().err
    assert "does not exist" in error_of(["predict", "--checkpoint", str(tmp_path / "x.pt"), "img.jpg"], capsys)


def test_config_file_sets_flags_and_the_command_line_wins(tiny_folder_session, tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {tiny_folder_session}\nmodel: test_convnext\nimg-size: 32\nepochs: 1\nbatch_size: 8\n"
                   "workers: 0\nema: false\nmixup: 0.0\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--batch-size", "4", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["batch_size"] == 4 and summary["config"]["img_size"] == 32
    assert summary["config"]["mixup"] == 0.0 and summary["config"]["ema"] is False


def test_eval_reproduces_the_runs_last_val_metrics(trained, tmp_path, capsys):
    summary = json.loads((trained / "summary.json").read_text())
    for extra, prefix in (([], "val_"), (["--use-ema"], "ema_val_")):
        out = tmp_path / prefix
        assert main(["eval", "--checkpoint", str(trained / "last.pt"), "--output", str(out), *extra]) == 0
        metrics = json.loads((out / "eval.json").read_text())["metrics"]
        assert metrics["top1"] == pytest.approx(summary["last"][f"{prefix}top1"])
        assert metrics["loss"] == pytest.approx(summary["last"][f"{prefix}loss"], rel=1e-5)
        assert (out / "confusion_matrix.png").is_file()
        assert "top5" not in metrics                       # 2 classes: top-5 would always be 100
    assert "per-class accuracy" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(trained / "best.pt")]) == 0   # default: next to the checkpoint
    assert (trained / "eval-best" / "eval.json").is_file()


def test_predict_a_folder(trained, tiny_folder_session, tmp_path, capsys):
    folder = tiny_folder_session / "val" / "bees"
    assert main(["predict", "--checkpoint", str(trained / "best.pt"), str(folder), "--topk", "1",
                 "--output", str(tmp_path)]) == 0
    preds = json.loads((tmp_path / "predictions.json").read_text())
    assert [Path(p["file"]).name for p in preds] == sorted(p.name for p in folder.iterdir())
    assert all(len(p["top"]) == 1 and p["top"][0]["label"] in ("ants", "bees") for p in preds)
    assert "predictions" in capsys.readouterr().out


def test_predict_runs_the_fused_model_unless_no_fuse(trained, tiny_folder_session, tmp_path, monkeypatch):
    """predict folds the model (linglo.fuse) by default and not with --no-fuse; the predictions are the same."""
    from linglo.engine import trainer
    calls = []

    def spy(model, inplace=False):
        calls.append(model)
        return fuse(model, inplace=inplace)

    fuse = trainer.fuse_model
    monkeypatch.setattr(trainer, "fuse_model", spy)
    folder = str(tiny_folder_session / "val" / "ants")
    results = []
    for flags in ([], ["--no-fuse"]):
        out = tmp_path / ("fused" if not flags else "plain")
        assert main(["predict", "--checkpoint", str(trained / "best.pt"), folder, "--output", str(out), *flags]) == 0
        results.append(json.loads((out / "predictions.json").read_text()))
        assert len(calls) == 1   # the first run fused, the second did not
    (fused, plain) = results
    for a, b in zip(fused, plain):
        assert [t["label"] for t in a["top"]] == [t["label"] for t in b["top"]]
        assert all(abs(x["prob"] - y["prob"]) < 1e-5 for x, y in zip(a["top"], b["top"]))


def test_bench_and_export_fuse_unless_no_fuse(tmp_path):
    """bench records whether it timed folded models (bench.csv column `fused`); export writes a graph without
    BatchNormalization nodes (folded into the convs) unless --no-fuse."""
    import csv

    import onnx
    pytest.importorskip("onnxscript")
    bench = ["bench", "--models", "linglo_t", "--resolutions", "32", "--warmup", "0", "--repeats", "1",
             "--throughput-batch", "0", "--no-memory", "--threads", "1"]
    for flags, want in (([], "True"), (["--no-fuse"], "False")):
        out = tmp_path / f"bench{len(flags)}"
        assert main([*bench, "--output", str(out), *flags]) == 0
        with open(out / "bench.csv") as f:
            assert [r["fused"] for r in csv.DictReader(f)] == [want]
        path = tmp_path / f"m{len(flags)}.onnx"
        assert main(["export", "--model", "linglo_t", "--output", str(path), "--size", "64", "--no-check", *flags]) == 0
        norms = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(path)).graph.node)
        assert (norms == 0) == (not flags)


def test_demo_trains_on_the_embedded_dataset(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--model", "test_convnext", "--epochs", "1", "--img-size", "32", "--output", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["class_names"] == ["object", "person"]
    assert summary["data"]["data"].endswith("assets/default_dataset") and summary["status"] == "finished"


def test_demo_picks_a_free_run_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert free_run_dir() == "runs/demo"
    Path("runs/demo").mkdir(parents=True)
    assert free_run_dir() == "runs/demo"                  # an empty folder holds no run
    Path("runs/demo/summary.json").write_text("{}")
    Path("runs/demo-2").mkdir()
    Path("runs/demo-2/last.pt").write_bytes(b"")
    assert free_run_dir() == "runs/demo-3"


def test_models_table(capsys):
    if not hasattr(pytest.importorskip("linglo.models"), "describe_family"):
        pytest.skip("linglo.models.describe_family is not there yet")
    assert main(["models"]) == 0
    assert "linglo_t" in capsys.readouterr().out


def test_model_kwargs_build_the_variant_and_eval_rebuilds_it(tiny_folder_session, tmp_path, capsys):
    """--model-kwargs reach timm.create_model, are kept in the checkpoint, and eval rebuilds the same model."""
    tiny = list(TINY)
    tiny[tiny.index("--model") + 1] = "linglo_t"
    runs = {}
    for name, extra in (("plain", []), ("variant", ["--model-kwargs", "token_mixer=none", "widths=(16,32,64,128)"])):
        runs[name] = tmp_path / name
        assert main(["train", "--data", str(tiny_folder_session), *tiny, "--no-ema", *extra,
                     "--output", str(runs[name])]) == 0
    plain, variant = (json.loads((runs[n] / "summary.json").read_text()) for n in ("plain", "variant"))
    assert variant["config"]["model_kwargs"] == {"token_mixer": "none", "widths": [16, 32, 64, 128]}
    assert variant["params"] < plain["params"] / 2                      # narrower, no attention: a smaller model
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(runs["variant"] / "last.pt"), "--output", str(out)]) == 0
    metrics = json.loads((out / "eval.json").read_text())["metrics"]
    assert metrics["top1"] == pytest.approx(variant["last"]["val_top1"])
    capsys.readouterr()
    assert "rejected its arguments" in error_of(["train", "--data", str(tiny_folder_session), *tiny,
                                                 "--model-kwargs", "no_such_arg=1", "--output", str(tmp_path / "x")],
                                                capsys)
    assert "KEY=VALUE" in error_of(["train", "--data", str(tiny_folder_session), *tiny, "--model-kwargs", "window",
                                    "--output", str(tmp_path / "y")], capsys)


def test_an_error_from_a_dataloader_worker_stays_one_line():
    """torch re-raises a worker's error with the worker traceback in its message; the CLI prints the original line."""
    from torch._utils import ExceptionWrapper

    from linglo.cli.main import one_line
    from linglo.errors import LingloError
    try:
        raise LingloError("image 'a.png': mask is 10x10, expected 12x12")
    except LingloError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(LingloError) as info:
        wrapped.reraise()
    assert "\n" in str(info.value)
    assert one_line(info.value) == "image 'a.png': mask is 10x10, expected 12x12"


def test_shipped_imagenette_recipe_by_name(tiny_folder_session, tmp_path, capsys):
    """--config imagenette: the shipped 128 px recipe (decoded cache, light augmentation); flags still win."""
    out = tmp_path / "run"
    assert main(["train", "--config", "imagenette", "--data", str(tiny_folder_session), "--model", "test_convnext",
                 "--img-size", "32", "--epochs", "1", "--batch-size", "4", "--output", str(out)]) == 0
    cfg = json.loads((out / "summary.json").read_text())["config"]
    assert cfg["scale"] == [0.35, 1.0] and cfg["aa"] == "none" and cfg["channels_last"] is True
    assert cfg["img_size"] == 32 and cfg["epochs"] == 1
    assert json.loads((out / "summary.json").read_text())["data"]["decoded_cache"]["train"].startswith("memory")
    err = error_of(["train", "--config", "imagenet", "--data", str(tiny_folder_session)], capsys)
    assert "'imagenet' does not exist" in err and "imagenette" in err
