"""`linglo demo`: the project's main job in one command — train a small LinGlo on the embedded
default dataset, evaluate it, print the tables and write the plots, in a few minutes on 2 CPU cores."""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Mapping

from linglo.engine.trainer import train
from linglo.tasks.classify.task import DEMO_CONFIG


def free_run_dir(base: str = "runs/demo") -> str:
    """The first of runs/demo, runs/demo-2, ... that holds no run yet."""
    for n in itertools.count(1):
        path = Path(base if n == 1 else f"{base}-{n}")
        if not ((path / "summary.json").exists() or (path / "last.pt").exists()):
            return str(path)
    raise AssertionError("unreachable")


def run_demo(cli_cfg: Mapping[str, Any]) -> dict[str, Any]:
    cfg = {"output": free_run_dir(), **cli_cfg}
    return train("classify", file_cfg=DEMO_CONFIG, cli_cfg=cfg)
