"""Outputs that cannot be written, broken checkpoints, a checkpoint of another task, bad --topk: one
`error:` line and exit 2 each; help and tables that say what is true."""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_checks import error_of

from linglo.cli.main import main

TINY = ["--model", "test_convnext", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--epochs", "1",
        "--no-ema"]
BENCH = ["bench", "--models", "test_convnext", "--resolutions", "32", "--repeats", "1", "--warmup", "0",
         "--throughput-batch", "0", "--no-memory"]


@pytest.fixture(scope="module")
def trained(tiny_folder_session, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("outputs") / "run"
    assert main(["train", "--data", str(tiny_folder_session), *TINY, "--output", str(out)]) == 0
    return out


def _no_permission_override() -> None:
    """preexec_fn: as root, drop CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH so file modes bind the child too."""
    if os.geteuid() == 0:
        libc = ctypes.CDLL(None, use_errno=True)
        for cap in (1, 2):
            if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


CHILD = """
import contextlib, io, json, sys
from linglo.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        results.append([main(argv), err.getvalue()])
print(json.dumps(results))
"""


def run_without_write_permission(read_only: Path, argvs: list[list[str]]) -> list[tuple[int, str]]:
    """Run CLI commands in one child process for which `read_only` (mode 0555) really is read-only."""
    read_only.chmod(0o555)
    probe = [sys.executable, "-c", f"open({str(read_only / 'probe')!r}, 'w')"]
    try:
        if subprocess.run(probe, preexec_fn=_no_permission_override, capture_output=True).returncode == 0:
            pytest.skip("cannot make a folder read-only for this process")
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(argvs)], preexec_fn=_no_permission_override,
                              capture_output=True, text=True, timeout=300)
    except subprocess.SubprocessError as e:
        pytest.skip(f"cannot drop the permission override here: {e}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_read_only_output_folders(trained, tiny_folder_session, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(trained / "best.pt", ro / "best.pt")        # eval's default output goes next to the checkpoint
    images = str(tiny_folder_session / "val" / "ants")
    results = run_without_write_permission(ro, [
        ["train", "--data", str(tiny_folder_session), *TINY, "--output", str(ro / "run")],
        ["eval", "--checkpoint", str(ro / "best.pt")],
        ["predict", "--checkpoint", str(ro / "best.pt"), "--output", str(ro / "pred"), images],
        [*BENCH, "--output", str(ro / "bench")],
    ])
    for (code, err), expected in zip(results, ("--output", "eval's default output folder", "--output", "--output")):
        assert code == 2 and err.startswith(f"error: {expected} '{ro}") and "Permission denied" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in ro.iterdir()) == ["best.pt"]


def test_output_that_is_a_file(trained, tiny_folder_session, tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    images = str(tiny_folder_session / "val" / "ants")
    for argv in (["train", "--data", str(tiny_folder_session), *TINY],
                 ["eval", "--checkpoint", str(trained / "best.pt")],
                 ["predict", "--checkpoint", str(trained / "best.pt"), images],
                 ["demo", "--model", "test_convnext", "--epochs", "1", "--img-size", "32"],
                 BENCH):
        assert f"--output '{file}' exists and is not a folder" in error_of([*argv, "--output", str(file)], capsys)
    assert file.read_text() == "x"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty (0 bytes)"),
    (b"hello, this is text\n", "is not a PyTorch checkpoint (neither a zip archive nor a pickle"),
])
def test_empty_or_text_checkpoint(content, message, tmp_path, capsys):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    for argv in (["eval", "--checkpoint", str(path)], ["predict", "--checkpoint", str(path), str(path)],
                 ["train", "--resume", str(path)]):
        assert message in error_of(argv, capsys)


def test_topk_must_be_positive(trained, tiny_folder_session, capsys):
    for k in ("-1", "0"):
        err = error_of(["predict", "--checkpoint", str(trained / "best.pt"), "--topk", k,
                        str(tiny_folder_session / "val" / "ants")], capsys)
        assert f"--topk must be >= 1 (labels shown per image), got {k}" in err


def test_a_checkpoint_of_another_task_names_the_command_to_use(trained, tmp_path, capsys):
    ckpt = torch.load(trained / "last.pt", weights_only=True)
    ckpt["meta"]["task"] = "detect"
    ckpt["config"].update(task="detect", batch_size=3)      # odd: classify's mixup check would complain first
    path = tmp_path / "det.pt"
    torch.save(ckpt, path)
    for argv in (["eval", "--checkpoint", str(path)], ["predict", "--checkpoint", str(path), str(path)]):
        assert (f"checkpoint '{path}' is a detect checkpoint, not classify: use `linglo {argv[0]} detect "
                f"--checkpoint {path}`") in error_of(argv, capsys)


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_help_says_sizes_come_from_the_checkpoint(command, capsys):
    assert main([command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 224)" not in out and "(default: 128)" not in out
    assert "eval shorter side (default: the checkpoint's)" in out


def test_bench_on_cpu_prints_no_cuda_driver_error():
    code = ("import torch; from linglo.bench import peak_bytes; "
            "print(peak_bytes(lambda: torch.randn(1000), torch.device('cpu')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and int(proc.stdout.split()[-1]) > 0, proc.stderr
    assert "gpuGetDeviceCount" not in proc.stderr and "ERROR" not in proc.stderr


def test_predict_table_keeps_file_names_apart(trained, tiny_folder_session, tmp_path, capsys):
    folder = tmp_path / "a_folder_with_a_rather_long_name" / "and_another_long_subfolder_name"
    folder.mkdir(parents=True)
    names = []
    for i, src in enumerate(sorted((tiny_folder_session / "val" / "bees").iterdir())[:3]):
        names.append(f"photo_{i}_of_a_bee_with_a_long_name.jpg")
        shutil.copy(src, folder / names[-1])
    assert main(["predict", "--checkpoint", str(trained / "best.pt"), str(folder)]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in names), out


def test_help_says_a_seed_repeats_a_run_whatever_workers_is(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "repeats a run whatever --workers is" in out


def test_written_line_counts_the_pictures_drawn(trained, tiny_folder_session, tmp_path, monkeypatch, capsys):
    """predict detect/segment draw a picture per image (records' "drawn"/"mask"): the last line says so."""
    from linglo.tasks.classify.task import ClassifyTask
    real = ClassifyTask.predict

    def drawing(self, model, files, device, out_dir):
        return [dict(p, drawn=str(out_dir / f"{i}.jpg")) for i, p in enumerate(real(self, model, files, device, out_dir))]

    monkeypatch.setattr(ClassifyTask, "predict", drawing)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(trained / "best.pt"), "-o", str(out),
                 str(tiny_folder_session / "val" / "ants")]) == 0
    assert f"written: {out / 'predictions.json'} and 4 pictures (drawn predictions, masks) in {out}" in \
        " ".join(capsys.readouterr().out.split())
