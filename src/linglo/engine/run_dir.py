"""The run directory: refuse to clobber an earlier run unless asked (--resume / --overwrite), one
training process at a time (a lock file), and nothing of an earlier run lost before the new run
has written its first checkpoint.

Life of a run folder (rank 0 only writes):
    run = RunDir(out, resume=..., overwrite=...)
    run.check()       # before the data and model are built: refusals only, nothing written
    run.open()        # once they are valid: create the folder, take OUT/.lock, move an earlier
                      # run's files aside into OUT/.overwritten (with --overwrite)
    run.committed(n)  # after each checkpoint (epoch n): the first one deletes the files moved aside
    run.stopped(status, reason)  # a failed or interrupted run: run.report writes its summary.json
    run.close()       # always: put the earlier run back if no checkpoint was written, release
                      # the lock, remove the folder if this run created it and left it empty
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Callable

from linglo.atomic import atomic_write_text, ensure_dir
from linglo.errors import LingloError

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "summary.json", "eval.json", "predictions.json")
LOCK = ".lock"
ASIDE = ".overwritten"


def read_summary(out: Path) -> dict:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def run_files(out: Path) -> list[Path]:
    """The files of a run in `out` that --overwrite replaces."""
    return [p for p in (*(out / n for n in RUN_FILES), *sorted(out.glob("*.png"))) if p.is_file()]


# ---- the lock -------------------------------------------------------------------------------------
def _process_start(pid: int) -> str | None:
    """The kernel's start time of process `pid` (clock ticks since boot), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """False only when the lock's process is known to be gone (same host, pid dead or reused)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass                                  # another user's live process
    start = _process_start(holder["pid"])
    return holder.get("proc_start") is None or start is None or start == holder["proc_start"]


def _read_lock(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _held_message(out: Path, holder: dict) -> str:
    who = (f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
           if holder else "unreadable lock")
    return (f"output folder '{out}' is in use by another training run ({who}; lock file {out / LOCK}): "
            "wait for it to finish or choose another --output (if that run is gone, delete the lock file)")


class RunDir:
    """One training run's output folder (see the module docstring)."""

    def __init__(self, out: Path, resume: bool, overwrite: bool, main: bool = True):
        self.out, self.resume, self.overwrite, self.main = Path(out), resume, overwrite, main
        self.created = self.locked = False
        self.aside: Path | None = None
        self.saved_epoch: int | None = None       # the epoch of this run's last.pt, once there is one
        self.report: Callable[[str, str], None] | None = None   # writes summary.json(status, reason)

    def check(self) -> None:
        """Refuse a folder that holds another run (unless --resume / --overwrite) or is in use."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise LingloError(f"--output '{out}' exists and is not a folder")
        holder = _read_lock(out / LOCK)
        if holder is not None and _alive(holder):
            raise LingloError(_held_message(out, holder))
        if self.resume or self.overwrite:
            return
        summary = read_summary(out)
        if summary.get("status") == "finished":
            raise LingloError(f"output folder '{out}' already holds a finished run ({summary.get('epochs_done')} "
                              "epochs); pass --overwrite to replace it, --resume with a larger --epochs to "
                              "continue it, or choose another --output")
        if (out / "last.pt").exists():
            raise LingloError(f"output folder '{out}' holds an unfinished run (last.pt); pass --resume to "
                              "continue it or --overwrite to start over")

    def open(self) -> None:
        """Create the folder, take the lock, move an earlier run aside (--overwrite). Rank 0 only."""
        if not self.main:
            return
        self.check()
        self.created = not self.out.exists()
        ensure_dir(self.out)
        self._lock()
        if self.overwrite and not self.resume:
            files = run_files(self.out)
            if files:
                self.aside = self.out / ASIDE
                shutil.rmtree(self.aside, ignore_errors=True)   # left by a run killed before its checkpoint
                self.aside.mkdir()
                for f in files:
                    f.rename(self.aside / f.name)

    def _lock(self) -> None:
        pid = os.getpid()
        info = {"pid": pid, "host": socket.gethostname(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                "proc_start": _process_start(pid)}
        tmp = self.out / f"{LOCK}.{pid}.tmp"
        atomic_write_text(tmp, json.dumps(info) + "\n")
        try:
            for _ in range(2):
                try:
                    os.link(tmp, self.out / LOCK)      # atomic: fails if the lock exists
                    self.locked = True
                    return
                except FileExistsError:
                    holder = _read_lock(self.out / LOCK)
                    if holder is not None and _alive(holder):
                        raise LingloError(_held_message(self.out, holder)) from None
                    if holder is not None:
                        print(f"warning: taking over the stale lock of a training run that is gone (pid "
                              f"{holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')})")
                        (self.out / LOCK).unlink(missing_ok=True)
            raise LingloError(_held_message(self.out, _read_lock(self.out / LOCK) or {}))
        finally:
            tmp.unlink(missing_ok=True)

    def committed(self, epoch: int) -> None:
        """last.pt of this run (after `epoch`) is on disk: the earlier run's files are no longer needed."""
        self.saved_epoch = epoch
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None

    def stopped(self, status: str, reason: str) -> None:
        """Record in summary.json why the run stopped (once it has begun training: `report` is set)."""
        if self.main and self.report is not None:
            try:
                self.report(status, reason)
            except (OSError, LingloError) as e:   # a full disk must not hide the error that stopped the run
                print(f"warning: could not record the run's status in '{self.out / 'summary.json'}': {e}")

    def close(self) -> None:
        """Put the earlier run back if this one wrote no checkpoint, release the lock, drop an empty new folder."""
        if not self.main:
            return
        if self.aside is not None:          # committed() clears it once a checkpoint is written
            for f in run_files(self.out):
                f.unlink()
            for f in self.aside.iterdir():
                f.rename(self.out / f.name)
            self.aside.rmdir()
            self.aside = None
        if self.locked and (_read_lock(self.out / LOCK) or {}).get("pid") == os.getpid():
            (self.out / LOCK).unlink(missing_ok=True)
            self.locked = False
        if self.created and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()
