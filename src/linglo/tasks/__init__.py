"""Task registry: task name -> "module:Class" of its Task subclass (imported only when used).

To add a task, add one line here; the CLI offers every name in TASKS as `linglo train NAME`.
"""
from __future__ import annotations

import importlib

from linglo.errors import LingloError
from linglo.extras import EXTRAS, missing
from linglo.tasks.base import Batch, Task

TASKS: dict[str, str] = {
    "classify": "linglo.tasks.classify.task:ClassifyTask",
    "detect": "linglo.tasks.detect.task:DetectTask",
    "segment": "linglo.tasks.segment.task:SegmentTask",
}


def get_task(name: str) -> type[Task]:
    """The Task class registered as `name`."""
    if name not in TASKS:
        raise LingloError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    module, cls = TASKS[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as e:   # an optional dependency of this task (pyproject's extras)
        root = (e.name or "").split(".")[0]
        if root in EXTRAS:
            raise missing(root, f"the {name} task needs it") from None
        raise


__all__ = ["Batch", "Task", "TASKS", "get_task"]
