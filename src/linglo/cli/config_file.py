"""--config FILE: a YAML or JSON mapping of flag names (either "batch-size" or "batch_size") to values, or the name
of a recipe shipped in linglo/configs (e.g. `--config imagenette`)."""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from linglo.errors import LingloError


def presets() -> dict[str, Path]:
    """Recipe name -> its file in linglo/configs."""
    folder = Path(str(resources.files("linglo") / "configs"))
    return {f.stem: f for f in sorted(folder.glob("*.yaml"))}


def load_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file() and path in presets():
        p = presets()[path]
    elif not p.is_file():
        raise LingloError(f"config file '{path}' does not exist (shipped recipes: {', '.join(presets())})")
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise LingloError(f"config file '{path}' is not valid {'JSON' if p.suffix.lower() == '.json' else 'YAML'}: "
                          f"{' '.join(str(e).split())}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LingloError(f"config file '{path}' must hold a mapping of flag names to values, got {type(data).__name__}")
    return data
