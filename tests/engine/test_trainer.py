"""The training loop: a tiny model learns, resume is exact, a full disk loses nothing, DDP ranks agree."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import subprocess

import pytest
import torch

from linglo.engine import trainer
from linglo.engine.checkpoint import load_checkpoint
from linglo.engine.records import TIMING_COLUMNS
from linglo.errors import LingloError

TINY = dict(model="test_convnext", img_size=32, batch_size=8, workers=0, lr=3e-3, warmup_epochs=0)


def rows(path):
    with open(path) as f:
        return [{k: v for k, v in r.items() if k not in TIMING_COLUMNS} for r in csv.DictReader(f)]


def test_tiny_model_learns_and_writes_its_run(tiny_folder_session, tmp_path):
    out = tmp_path / "run"
    summary = trainer.train("classify", cli_cfg=dict(
        TINY, data=str(tiny_folder_session), epochs=5, batch_size=4, output=str(out), ema=False,
        scale=[1.0, 1.0], aa="none", reprob=0.0, mixup=0.0, cutmix=0.0, drop_path=0.0))
    history = rows(out / "metrics.csv")
    assert len(history) == 5
    assert float(history[-1]["train_loss"]) < 0.85 * float(history[0]["train_loss"])
    assert summary["status"] == "finished" and json.loads((out / "summary.json").read_text()) == json.loads(
        json.dumps(summary, default=str))
    assert {"last.pt", "best.pt", "curves.png", "confusion_matrix.png"} <= {p.name for p in out.iterdir()}
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == summary["best"]["epoch"]
    assert best["meta"] == {"task": "classify", "model": "test_convnext", "num_classes": 2,
                            "class_names": ["ants", "bees"]}


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(tiny_folder_session, tmp_path, monkeypatch):
    # The full recipe (RandAugment, mixup/cutmix, erasing, drop path, EMA) and a loader worker:
    # every random stream must continue exactly after the resume.
    cfg = dict(TINY, data=str(tiny_folder_session), epochs=2, workers=1)
    trainer.train("classify", cli_cfg=dict(cfg, output=str(tmp_path / "straight")))

    real_plot = trainer.plot_history

    def killed_after_first_checkpoint(*args, **kwargs):
        real_plot(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "plot_history", killed_after_first_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        trainer.train("classify", cli_cfg=dict(cfg, output=str(tmp_path / "resumed")))
    monkeypatch.undo()
    assert len(rows(tmp_path / "resumed" / "metrics.csv")) == 1
    trainer.train("classify", cli_cfg=dict(cfg, output=str(tmp_path / "resumed"), resume="auto"))

    assert rows(tmp_path / "resumed" / "metrics.csv") == rows(tmp_path / "straight" / "metrics.csv")
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("straight", "resumed"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_folder_session, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = dict(TINY, data=str(tiny_folder_session), output=str(out), ema=False)
    trainer.train("classify", cli_cfg=dict(cfg, epochs=1))
    before = load_checkpoint(out / "last.pt")

    def disk_full(obj, f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(LingloError, match="could not write checkpoint .*No space left"):
        trainer.train("classify", cli_cfg=dict(cfg, epochs=2, resume="auto"))
    monkeypatch.undo()
    after = load_checkpoint(out / "last.pt")
    assert after["epoch"] == 1 and all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert len(rows(out / "metrics.csv")) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_two_process_torchrun_ranks_agree(tiny_folder_session, tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    out = tmp_path / "ddp"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "linglo.cli", "train",
           "--data", str(tiny_folder_session), "--model", "test_convnext", "--img-size", "32",
           "--batch-size", "4", "--epochs", "2", "--workers", "0", "--device", "cpu", "--output", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    ranks = summary["distributed"]["per_rank"]
    assert summary["world_size"] == 2 and len(ranks) == 2
    assert ranks[0] == ranks[1]                       # same weights and same val metrics on both ranks
    assert summary["global_batch"] == 8
    assert len(rows(out / "metrics.csv")) == 2


def test_eval_interval_and_channels_last(tiny_folder_session, tmp_path):
    """--eval-interval 2 over 3 epochs evaluates after epochs 2 and 3 (the last) only; best.pt is an evaluated epoch;
    --channels-last trains and evaluates the same model in NHWC."""
    out = tmp_path / "run"
    summary = trainer.train("classify", cli_cfg=dict(
        TINY, data=str(tiny_folder_session), epochs=3, eval_interval=2, channels_last=True, output=str(out),
        ema=False, aa="none", mixup=0.0, cutmix=0.0))
    history = rows(out / "metrics.csv")
    assert [bool(r.get("val_top1")) for r in history] == [False, True, True]
    assert summary["best"]["epoch"] in (2, 3) and load_checkpoint(out / "best.pt")["epoch"] == summary["best"]["epoch"]
    assert summary["last"]["val_top1"] >= 0
