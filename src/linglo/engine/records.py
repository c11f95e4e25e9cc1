"""metrics.csv (one row per epoch) and summary.json, rewritten atomically after every epoch.

The rows live in the checkpoint too, so a resumed run rewrites metrics.csv exactly up to the
checkpoint's epoch (no duplicated or missing rows after a crash between the two writes).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from linglo.atomic import atomic_write_json, atomic_write_text

TIMING_COLUMNS = ("epoch_time_s", "train_img_per_s")  # differ between otherwise identical runs


def scalars(metrics: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The float/int entries of an eval dict, prefixed (e.g. "val_top1"); the rest is detail."""
    return {f"{prefix}{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def write_metrics_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    atomic_write_json(path, summary)
