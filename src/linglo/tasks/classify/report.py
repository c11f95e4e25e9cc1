"""Human-readable classification results: per-class table, confusion-matrix PNG, predictions table."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from rich.table import Table

MAX_ROWS = 30  # classes shown in the per-class table (the worst ones when there are more)


def per_class_table(metrics: Mapping[str, Any]) -> Table:
    conf = metrics["confusion_matrix"]
    acc = metrics["per_class_acc"]
    names = sorted(acc, key=acc.get)[:MAX_ROWS] if len(acc) > MAX_ROWS else list(acc)
    title = "per-class accuracy" + (f" (worst {MAX_ROWS} of {len(acc)})" if len(acc) > MAX_ROWS else "")
    table = Table(title=title)
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("accuracy %", justify="right")
    index = {n: i for i, n in enumerate(metrics["class_names"])}
    for name in names:
        table.add_row(name, str(sum(conf[index[name]])), f"{acc[name]:.1f}")
    return table


def confusion_figure(metrics: Mapping[str, Any], path: Path) -> None:
    """Confusion matrix (rows = true class) as a PNG, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from linglo.atomic import atomic_savefig

    conf = metrics["confusion_matrix"]
    names = metrics["class_names"]
    n = len(names)
    size = min(4 + 0.4 * n, 16)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(conf, cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        dark = max(max(row) for row in conf) / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(conf[i][j]), ha="center", va="center", fontsize=9,
                        color="white" if conf[i][j] > dark else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (top-1 {metrics['top1']:.1f}%)")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def predictions_table(predictions: Sequence[Mapping[str, Any]]) -> Table:
    """One row per file, named relative to the files' common folder and never cut short (folded)."""
    files = [os.path.abspath(p["file"]) for p in predictions]
    common = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    table = Table(title="predictions" + (f" (files in {common})" if common else ""))
    table.add_column("file", overflow="fold")
    table.add_column("top-k (label: probability)")
    for p, f in zip(predictions, files):
        text = p.get("error") or ", ".join(f"{t['label']}: {t['prob']:.3f}" for t in p["top"])
        table.add_row(os.path.relpath(f, common) if common else f, text)
    return table
