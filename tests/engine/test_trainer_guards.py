"""The loop refuses to save what is wrong: a non-finite loss stops the run (the last finite checkpoint
stays), running out of memory says what to lower, a resume keeps its recipe and its best.pt."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import error_of

from linglo.cli.main import main
from linglo.engine import trainer
from linglo.engine.checkpoint import load_checkpoint
from linglo.errors import LingloError
from linglo.tasks.classify.task import ClassifyTask

TINY = ["--model", "test_convnext", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--no-ema"]
CFG = dict(model="test_convnext", img_size=32, batch_size=8, workers=0, ema=False, warmup_epochs=0)


def finite(state: dict) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_a_huge_lr_stops_the_run_with_status_failed(tiny_folder_session, tmp_path, capsys):
    out = tmp_path / "run"
    err = error_of(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "2", "--warmup-epochs", "0",
                    "--lr", "1e30", "--output", str(out)], capsys)
    assert "the training loss became nan at epoch 1, step 2 of 2" in err and "lower --lr" in err
    assert "no checkpoint was written" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "loss became nan" in summary["reason"]
    assert not (out / "last.pt").exists() and not (out / "best.pt").exists()


def test_a_loss_gone_nan_keeps_the_last_finite_checkpoint(tiny_folder_session, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_loss = ClassifyTask.loss
    calls = []

    def nan_from_epoch_two(self, model, batch):   # 2 steps per epoch: step 3 is epoch 2, step 1
        calls.append(1)
        loss, logs = real_loss(self, model, batch)
        return (loss * float("nan") if len(calls) > 2 else loss), logs

    monkeypatch.setattr(ClassifyTask, "loss", nan_from_epoch_two)
    with pytest.raises(LingloError, match=r"loss became nan at epoch 2, step 1 of 2 .*last\.pt' keeps epoch 1"):
        trainer.train("classify", cli_cfg=dict(CFG, data=str(tiny_folder_session), epochs=3, output=str(out)))
    last, best = load_checkpoint(out / "last.pt"), load_checkpoint(out / "best.pt")
    assert last["epoch"] == best["epoch"] == 1 and finite(last["model"]) and finite(best["model"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_done"] == 1 and "epoch 2" in summary["reason"]


def _limit_address_space(extra_bytes: int):
    """A preexec_fn: the child may map `extra_bytes` beyond what a process with torch loaded maps."""
    with open("/proc/self/status") as f:
        base = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    return lambda: resource.setrlimit(resource.RLIMIT_AS, (base + extra_bytes, base + extra_bytes))


def test_out_of_memory_says_what_to_lower(tiny_folder_session, tmp_path):
    """A real allocation failure (address space capped at +2 GiB; one 2048 px batch needs far more)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "linglo.cli", "train", "--data", str(tiny_folder_session), "--model", "linglo_t",
           "--img-size", "2048", "--batch-size", "8", "--workers", "0", "--no-ema", "--epochs", "1",
           "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=_limit_address_space(2 << 30),
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert err[-1].startswith("error: out of memory in epoch 1 (training) on cpu (--img-size 2048, --batch-size 8")
    assert "lower --batch-size or --img-size" in err[-1] and "Traceback" not in proc.stderr
    assert json.loads((out / "summary.json").read_text())["status"] == "failed"


@pytest.fixture(scope="module")
def one_epoch(tiny_folder_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("guards") / "run"
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--output", str(out)]) == 0
    return out


def test_a_file_size_limit_while_checkpointing_keeps_the_previous_checkpoint(one_epoch, tmp_path):
    """A real short write (RLIMIT_FSIZE below the checkpoint's size), as on a full disk."""
    run = Path(shutil.copytree(one_epoch, tmp_path / "run"))
    before = (run / "last.pt").read_bytes()
    limit = len(before) // 2

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "linglo.cli", "train", "--resume", str(run / "last.pt"),
                           "--epochs", "2"], capture_output=True, text=True, timeout=300, preexec_fn=small_files)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in err and "Traceback" not in err, err[-3000:]
    assert err.startswith(f"error: could not write checkpoint '{run / 'last.pt'}'") and "previous checkpoint is kept" in err
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]     # no temporary file, no lock left
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "could not write checkpoint" in summary["reason"]


def test_resume_into_another_folder_brings_best_pt(one_epoch, tmp_path, monkeypatch):
    new = tmp_path / "new"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "evaluate_model", killed)    # stopped during the first resumed epoch
    with pytest.raises(KeyboardInterrupt, match=f"keeps epoch 1; continue with: linglo train --resume --output {new}"):
        trainer.train("classify", cli_cfg=dict(resume=str(one_epoch / "last.pt"), output=str(new), epochs=2))
    monkeypatch.undo()
    assert load_checkpoint(new / "best.pt")["epoch"] == load_checkpoint(new / "last.pt")["epoch"] == 1
    summary = trainer.train("classify", cli_cfg=dict(resume="auto", output=str(new), epochs=2))
    assert summary["status"] == "finished" and summary["epochs_done"] == 2
    assert load_checkpoint(new / "best.pt")["epoch"] == summary["best"]["epoch"]
    assert load_checkpoint(one_epoch / "last.pt")["epoch"] == 1           # the source run is untouched


def test_resume_refuses_a_changed_recipe_and_allows_machine_and_length(one_epoch, tmp_path, capsys):
    run = Path(shutil.copytree(one_epoch, tmp_path / "run"))
    err = error_of(["train", "--resume", str(run / "last.pt"), "--epochs", "2", "--lr", "0.01",
                    "--batch-size", "4"], capsys)
    assert "--batch-size 8 -> 4" in err and "--lr (unset) -> 0.01" in err and "keeps its recipe" in err
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert main(["train", "--resume", str(run / "last.pt"), "--epochs", "2", "--workers", "0",
                 "--device", "cpu"]) == 0


def test_warmup_longer_than_training_warns_once(tiny_folder_session, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--warmup-epochs", "3",
                 "--output", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--warmup-epochs" in line]
    assert len(lines) == 1 and "--warmup-epochs 3 >= --epochs 1" in lines[0] and "never reaches its peak" in lines[0]


def test_stored_data_path_is_absolute_so_eval_works_from_elsewhere(tiny_folder_session, tmp_path, monkeypatch):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    shutil.copytree(tiny_folder_session, work / "data")
    elsewhere.mkdir()
    monkeypatch.chdir(work)
    assert main(["train", "--data", "data", *TINY, "--epochs", "1", "--output", "run"]) == 0
    assert load_checkpoint(work / "run" / "last.pt")["config"]["data"] == str(work / "data")
    monkeypatch.chdir(elsewhere)
    assert main(["eval", "--checkpoint", str(work / "run" / "last.pt"), "--output", "ev"]) == 0
    assert (elsewhere / "ev" / "eval.json").is_file()
