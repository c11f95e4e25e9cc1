"""Atomic file writes (temporary file in the same folder, fsync, os.replace): a crash or a full
disk mid-write leaves the previous version of the file intact and no partial file behind; and
output folders checked before any work is done (ensure_dir).

Shared by every layer that writes results (engine: checkpoints, metrics; tasks: figures).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

from linglo.errors import LingloError

_UMASK = os.umask(0)
os.umask(_UMASK)


def ensure_dir(path: str | Path, flag: str = "--output", hint: str = "") -> Path:
    """Create folder `path` (and its parents) for results; one clear error when that is impossible
    (a file of that name, no permission, a read-only disk) rather than a traceback at the first write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LingloError(f"{flag} '{path}' exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):   # the folder may exist and still refuse new files
            pass
    except OSError as e:
        raise LingloError(f"{flag} '{path}': cannot write there ({e.strerror or e}){hint}") from e
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call write(f) on a temporary binary file next to `path`, then rename it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)   # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_savefig(fig: Any, path: str | Path, dpi: int = 120) -> None:
    """Save a matplotlib figure as PNG atomically."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
