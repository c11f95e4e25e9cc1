"""curves.png: a run's loss, validation metrics and learning rate per epoch, side by side."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from linglo.atomic import atomic_savefig


def plot_history(rows: Sequence[Mapping[str, Any]], out_dir: Path, primary: str) -> Path:
    """Write out_dir/curves.png from the metrics rows; `primary` is the task's metric (e.g. "top1")."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    val_keys = [k for k in rows[-1] if k.startswith(("val_", "ema_val_"))]
    panels = [("loss", ["train_loss"] + [k for k in val_keys if k.endswith("_loss")]),
              (f"validation metrics (primary: val_{primary})", [k for k in val_keys if not k.endswith("_loss")]),
              ("learning rate (end of epoch)", ["lr"])]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if all(r.get("lr", 0) > 0 for r in rows):   # a schedule that ends at lr 0 has no log scale
        axes[2].set_yscale("log")
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.13, top=0.9, wspace=0.25)
    path = out_dir / "curves.png"
    atomic_savefig(fig, path, dpi=100)
    plt.close(fig)
    return path
