"""Model names and their constructor arguments: check a name against timm's registry (suggesting close
names), parse timm-style `key=value` model kwargs, split a model spec "name[key=value,...]", and build a
model with recipe arguments it may not take (drop path)."""
from __future__ import annotations

import ast
import difflib
import re
from typing import Any, Mapping, Sequence

import timm

from linglo.errors import LingloError

_SPEC = re.compile(r"^([\w.\-]+)(?:\[(.*)\])?$")


def check_model_name(name: str) -> None:
    """Raise a LingloError naming up to 5 close timm names when `name` is not registered."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; did you mean: {', '.join(close)}?" if close else "; see timm.list_models() or `linglo models`"
    raise LingloError(f"unknown model '{name}'{hint}")


def parse_kwargs(items: Sequence[str], what: str = "--model-kwargs") -> dict[str, Any]:
    """["window=3", "token_mixer=softmax", "axial=True"] -> {"window": 3, "token_mixer": "softmax", "axial": True}.

    Values are Python literals where they parse as one (numbers, True/False/None, tuples), else strings,
    as in timm's train.py --model-kwargs."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise LingloError(f"{what}: expected KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            value = ast.literal_eval(text.strip())
        except (ValueError, SyntaxError):
            value = text.strip()
        out[key.strip()] = value
    return out


def split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets: "a[x=1,y=2],b" -> ["a[x=1,y=2]", "b"] (a --models list of specs)."""
    parts, depth, cur = [], 0, []
    for ch in text.replace(" ", ""):
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p]


def split_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """"linglo_t[token_mixer=softmax,window=3]" -> ("linglo_t", {"token_mixer": "softmax", "window": 3}).

    A plain name gives ({}); the name is checked against timm."""
    m = _SPEC.match(spec.strip())
    if not m:
        raise LingloError(f"model spec {spec!r}: expected NAME or NAME[key=value,...], e.g. linglo_t[window=3]")
    name, inner = m.group(1), m.group(2)
    check_model_name(name)
    items = split_top_level(inner or "")
    return name, parse_kwargs(items, what=f"model spec {spec!r}")


def create_model(name: str, optional: Mapping[str, Any], **kwargs: Any):
    """timm.create_model(name, **optional, **kwargs); recipe arguments in `optional` that the model's constructor
    does not take (EfficientViT-B has no drop_path_rate) are dropped with a warning instead of failing."""
    optional = dict(optional)
    while True:
        try:
            return timm.create_model(name, **optional, **kwargs)
        except TypeError as e:
            unknown = next((k for k in optional if f"'{k}'" in str(e)), None)
            if unknown is None:
                raise
            print(f"warning: model '{name}' takes no '{unknown}'; it is left out")
            optional.pop(unknown)
