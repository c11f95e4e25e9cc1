"""The one small interface through which the engine sees a task (classify, detect, segment).

The engine owns the loop and everything shared: DataLoaders and samplers (incl. DDP sharding),
optimizer, schedule, AMP, EMA, clipping, checkpoints, metrics.csv/summary.json, plots and progress.
A task owns what differs between tasks: its datasets, model, loss, metrics and predictions.

How the engine calls a task (`cfg` is the run's flat config: flag name -> value):

    task = TaskClass(cfg)
    train_ds, val_ds = task.build_dataset("train"), task.build_dataset("val")   # sets task.meta
    model = task.build_model()
    each step:   batch = task.to_batch(raw, device, train=True)
                 loss, logs = task.loss(model, batch)          # under the engine's autocast
    each eval:   state = task.eval_begin()
                 for raw in this rank's share of val_ds:
                     task.eval_step(model, task.to_batch(raw, device, train=False), state)
                 metrics = task.eval_end([state of rank 0, state of rank 1, ...])
                 # every rank gets the same dict; float/int entries become metrics.csv columns
                 # (prefixed "val_"), everything else (lists, dicts) goes to summary.json only
    eval/predict from a checkpoint: task.meta is compared with (eval) or set from (predict)
                 the checkpoint's meta before build_model().

`meta` identifies the model's output space (e.g. {"num_classes": 2, "class_names": [...]});
the engine refuses to load a checkpoint whose meta or model name differ from the run's.
Methods that raise NotImplementedError must be overridden; the others have usable defaults.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset


@dataclass
class Batch:
    """A batch already on the device: `inputs` feed the model, `targets` feed the loss/metrics."""
    inputs: Any
    targets: Any
    size: int  # number of images, for throughput and averaging


class Task:
    name: str = "task"
    primary_metric: str = "loss"   # key of eval_end()'s dict that picks best.pt
    higher_is_better: bool = True
    # Recipe defaults of this task: override the engine's (e.g. lr, epochs) and add task keys
    # (e.g. mixup); every key here is also a valid config-file key.
    defaults: Mapping[str, Any] = {}
    # Types of task keys whose default is None (the engine checks config-file values with them).
    optional_types: Mapping[str, type] = {}
    # DataLoader collate_fn for both splits; None = torch's default (stack tensors).
    # Assign a plain function as staticmethod(fn), or it becomes a bound method.
    collate_fn: Callable | None = None

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = dict(cfg)
        self.meta: dict[str, Any] = {}

    def build_dataset(self, split: str) -> Dataset:
        """The "train" or "val" dataset; fills self.meta from the data (e.g. class names)."""
        raise NotImplementedError

    def workers(self) -> int:
        """DataLoader worker processes for this task's datasets (default: --workers)."""
        return self.cfg["workers"]

    def build_model(self) -> nn.Module:
        """A fresh model for self.meta and self.cfg (never downloads weights)."""
        raise NotImplementedError

    def to_batch(self, raw: Any, device: torch.device, train: bool) -> Batch:
        """Move one loader item to `device` as a Batch (train-time batch transforms go here)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Training forward + loss; returns (loss, extra scalars for the progress bar)."""
        raise NotImplementedError

    def eval_begin(self) -> Any:
        """A fresh, picklable accumulator for eval_step (gathered across DDP ranks)."""
        raise NotImplementedError

    def eval_step(self, model: nn.Module, batch: Batch, state: Any) -> None:
        """Accumulate one val batch into `state` (the model is in eval mode, under no_grad)."""
        raise NotImplementedError

    def eval_end(self, states: Sequence[Any]) -> dict[str, Any]:
        """Metrics from the states of all ranks; must contain `primary_metric`."""
        raise NotImplementedError

    def predict(self, model: nn.Module, files: Sequence[Path], device: torch.device,
                out_dir: Path | None) -> list[dict[str, Any]]:
        """One JSON-able dict per input file (may also write files, e.g. drawn boxes, to out_dir)."""
        raise NotImplementedError

    def eval_report(self, metrics: Mapping[str, Any], out_dir: Path | None) -> list[Any]:
        """Task-specific figures written to out_dir and rich renderables to print after eval."""
        return []

    def predict_report(self, predictions: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Rich renderables that show predict()'s results."""
        return []

    def describe(self) -> dict[str, Any]:
        """Facts about the data for summary.json (sizes, skipped files)."""
        return {}
