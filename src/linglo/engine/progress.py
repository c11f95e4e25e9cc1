"""What a person watching a run sees: a rich progress bar per epoch, one line per epoch, final tables."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table


class EpochBar:
    """A rich progress bar on a terminal; elsewhere (logs, pipes) a plain line every 10% of the steps.

    Use as a context manager; update(stats) advances one step. `transient` bars vanish when done.
    """

    def __init__(self, console: Console, label: str, total: int, transient: bool = False):
        self.console, self.label, self.total, self.done = console, label, total, 0
        self.live = console.is_terminal and not console.quiet
        self.every = total // 10  # 0: too few steps for in-epoch lines, the epoch line suffices
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("<"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
            console=console, transient=transient, disable=not self.live)
        self.job = self.progress.add_task(label, total=total, stats="")

    def __enter__(self) -> "EpochBar":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def update(self, stats: str = "") -> None:
        self.done += 1
        self.progress.update(self.job, advance=1, stats=stats)
        if not self.live and stats and self.every and self.done % self.every == 0 and not self.console.quiet:
            self.console.print(f"{self.label} {self.done}/{self.total}  {stats}", highlight=False)


def step_stats(loss: float, lr: float, img_per_s: float) -> str:
    return f"loss {loss:.4f}  lr {lr:.2e}  {img_per_s:.1f} img/s"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def epoch_line(row: Mapping[str, Any], epochs: int, primary: str, is_best: bool) -> str:
    vals = "  ".join(f"{k} {_fmt(v)}" for k, v in row.items()
                     if k.startswith(("val_", "ema_val_")) or k == "train_loss")
    return f"epoch {row['epoch']}/{epochs}  {vals}  ({row['epoch_time_s']:.1f}s)" + (
        f"  [green]best {primary}[/green]" if is_best else "")


def results_table(last: Mapping[str, Any], best: Mapping[str, Any], title: str) -> Table:
    """Final epoch vs best epoch, one row per logged quantity."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column(f"last (epoch {last['epoch']})", justify="right")
    table.add_column(f"best (epoch {best['epoch']})", justify="right")
    for key in last:
        if key != "epoch":
            table.add_row(key, _fmt(last[key]), _fmt(best.get(key, "")))
    return table


def metrics_table(metrics: Mapping[str, Any], title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            table.add_row(k, _fmt(v))
    return table


def facts_table(facts: Sequence[tuple[str, Any]]) -> Table:
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for k, v in facts:
        table.add_row(k, str(v))
    return table
