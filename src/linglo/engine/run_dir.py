"""The run directory: refuse to clobber an earlier run unless asked (--resume / --overwrite)."""
from __future__ import annotations

import json
from pathlib import Path

from linglo.errors import LingloError

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "summary.json", "eval.json", "predictions.json")


def read_summary(out: Path) -> dict:
    try:
        return json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def prepare(out: Path, resume: bool, overwrite: bool, main: bool) -> None:
    """Check `out` may receive a new run; with `overwrite`, delete the earlier run's files (rank 0)."""
    if out.exists() and not out.is_dir():
        raise LingloError(f"--output '{out}' exists and is not a folder")
    if not resume and not overwrite:
        summary = read_summary(out)
        if summary.get("status") == "finished":
            raise LingloError(f"output folder '{out}' already holds a finished run ({summary.get('epochs_done')} "
                              "epochs); pass --overwrite to replace it, --resume with a larger --epochs to "
                              "continue it, or choose another --output")
        if (out / "last.pt").exists():
            raise LingloError(f"output folder '{out}' holds an unfinished run (last.pt); pass --resume to "
                              "continue it or --overwrite to start over")
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if overwrite and not resume:
            for f in [*(out / n for n in RUN_FILES), *out.glob("*.png")]:
                f.unlink(missing_ok=True)
