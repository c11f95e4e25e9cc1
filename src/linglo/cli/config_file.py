"""--config FILE: a YAML or JSON mapping of flag names (either "batch-size" or "batch_size") to values."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from linglo.errors import LingloError


def load_config_file(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise LingloError(f"config file '{path}' does not exist")
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
