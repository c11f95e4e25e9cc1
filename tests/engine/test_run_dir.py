"""The run folder: --overwrite loses nothing before the new run's first checkpoint, one training
process per folder (a lock), no empty folders after early errors, an interrupted run says so."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import error_of

from linglo.cli.main import main
from linglo.engine.checkpoint import load_checkpoint

TINY = ["--model", "test_convnext", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--no-ema"]


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def finished(tiny_folder_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--output", str(out)]) == 0
    return out


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_a_checkpoint(finished, tiny_folder_session,
                                                                            tmp_path, capsys):
    run = Path(shutil.copytree(finished, tmp_path / "run"))
    before = contents(run)
    assert {"best.pt", "last.pt", "metrics.csv", "summary.json", "curves.png"} <= before.keys()
    # bad data: refused before anything is touched
    assert "not found" in error_of(["train", "--data", str(tmp_path / "typo"), *TINY, "--epochs", "1",
                                    "--overwrite", "--output", str(run)], capsys)
    assert contents(run) == before
    # the new run fails in its first epoch (loss not finite): the earlier run is put back
    err = error_of(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--lr", "1e30", "--warmup-epochs", "0",
                    "--overwrite", "--output", str(run)], capsys)
    assert "the earlier run in" in err and "is kept" in err
    assert contents(run) == before
    # a good run replaces it
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--seed", "7",
                 "--overwrite", "--output", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["config"]["seed"] == 7
    assert not (run / ".overwritten").exists() and not (run / ".lock").exists()


def test_no_empty_run_folder_after_an_early_error(tiny_folder_session, tmp_path, capsys):
    out = tmp_path / "runs" / "new"
    error_of(["train", "--data", str(tmp_path / "missing"), *TINY, "--output", str(out)], capsys)
    error_of(["train", "--data", str(tiny_folder_session), *TINY, "--model", "linglo_tt", "--output", str(out)],
             capsys)
    assert not out.exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "linglo.cli", *args]


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_a_second_process_is_refused_and_sigint_leaves_a_resumable_interrupted_run(tiny_folder_session, tmp_path,
                                                                                  capsys):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT back to its default in the child: a test run started in the background (`cmd &` in a script) inherits
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler, so the run would train on
    first = subprocess.Popen(_cli("train", "--data", str(tiny_folder_session), *TINY, "--epochs", "200",
                                  "--output", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for(out / "last.pt", first)
        err = error_of(["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--overwrite",
                        "--output", str(out)], capsys)
        assert "in use by another training run" in err and f"pid {first.pid} on host {socket.gethostname()}" in err
        assert (out / "last.pt").exists()
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130, stderr[-2000:]
    assert f"continue with: linglo train --resume --output {out}" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["epochs_done"] >= 1
    assert load_checkpoint(out / "last.pt")["epoch"] == summary["epochs_done"]
    assert not (out / ".lock").exists()


def test_a_stale_lock_is_taken_over_with_a_warning_and_a_live_one_is_not(tiny_folder_session, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    argv = ["train", "--data", str(tiny_folder_session), *TINY, "--epochs", "1", "--output", str(out)]

    def lock(pid: int) -> None:
        (out / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                               "started": "2025-01-01T00:00:00"}))

    with subprocess.Popen(["sleep", "60"]) as alive:
        lock(alive.pid)
        assert f"in use by another training run (pid {alive.pid} on host" in error_of(argv, capsys)
        alive.kill()
    lock(alive.pid)                                   # that process has ended (and was reaped)
    assert main(argv) == 0
    assert f"taking over the stale lock of a training run that is gone (pid {alive.pid}" in capsys.readouterr().out
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert not (out / ".lock").exists()
