"""Check a model name against timm's registry, suggesting close names when it is unknown."""
from __future__ import annotations

import difflib

import timm

from linglo.errors import LingloError


def check_model_name(name: str) -> None:
    """Raise a LingloError naming up to 5 close timm names when `name` is not registered."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see timm.list_models() or `linglo models`"
    raise LingloError(f"unknown model '{name}'{hint}")
