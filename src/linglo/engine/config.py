"""The run config: one flat dict of flag name -> value, with the engine's recipe defaults.

Precedence (lowest first): engine defaults < the task's defaults < the checkpoint's config (when
resuming / evaluating) < the config file (--config) < flags given on the command line.
Defaults reproduce the DeiT/timm ImageNet recipe: 300 epochs, AdamW (lr 5e-4 x global batch / 512,
weight decay 0.05, no decay on norms/biases/model.no_weight_decay()), 5 warmup epochs then cosine
to 1e-5, EMA of the weights, AMP where it helps (bf16 on GPU, off on CPU).
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Mapping

from linglo.errors import LingloError

ENGINE_DEFAULTS: dict[str, Any] = {
    "task": "classify",
    "model": None,            # the task's default
    "model_kwargs": {},       # extra timm.create_model arguments, e.g. {"window": 3} (timm's --model-kwargs)
    "data": None,
    "output": None,           # runs/<task>-<model>
    "epochs": 300,
    "eval_interval": 1,       # evaluate every N epochs, and always after the last
    "batch_size": 128,        # per process
    "img_size": 224,
    "lr": None,               # None: lr_base x global batch / lr_base_size
    "lr_base": 5e-4,
    "lr_base_size": 512,
    "opt": "adamw",
    "weight_decay": 0.05,
    "opt_eps": 1e-8,
    "momentum": 0.9,
    "sched": "cosine",
    "warmup_epochs": 5,
    "warmup_lr": 1e-6,
    "min_lr": 1e-5,
    "clip_grad": None,        # max gradient norm; None: no clipping
    "amp": "auto",            # auto | none | bf16 | fp16
    "channels_last": False,   # model and input batches in NHWC memory format (timm's --channels-last)
    "ema": True,
    "ema_decay": 0.99996,
    "device": "auto",
    "workers": 4,
    "seed": 42,
    "resume": None,           # checkpoint path, or "auto" = OUTPUT/last.pt
    "overwrite": False,
    "checkpoint": None,       # eval / predict: the checkpoint to load
    "use_ema": False,         # eval / predict: use the checkpoint's EMA weights
}
OPTIONAL_TYPES: dict[str, type] = {
    "model": str, "data": str, "output": str, "lr": float, "clip_grad": float,
    "resume": str, "checkpoint": str,
}
CHOICES = {"amp": ("auto", "none", "bf16", "fp16"), "opt": ("adamw", "adam", "lamb", "sgd"),
           "sched": ("cosine", "tanh", "poly", "step", "multistep")}
POSITIVE = ("epochs", "eval_interval", "batch_size", "img_size", "lr", "lr_base", "lr_base_size", "clip_grad")
NON_NEGATIVE = ("weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "workers", "seed")
# Keys that describe one invocation, not the run: never taken from a checkpoint's stored config.
TRANSIENT = ("resume", "overwrite", "checkpoint", "use_ema")
# Keys naming files or folders: stored resolved (absolute), so a checkpoint works from any folder.
PATH_KEYS = ("data", "train_images", "train_ann", "val_images", "val_ann", "train_masks", "val_masks",
             "classes", "backbone_weights")
# What a resumed run may change: its length (the lr schedule is re-planned), how often it is evaluated,
# the machine and memory format, where the data and output are. Any other change would make the resumed run another recipe than its metrics say.
RESUME_MAY_CHANGE = ("epochs", "eval_interval", "workers", "device", "amp", "channels_last", "output", *PATH_KEYS)


def known_defaults(task_defaults: Mapping[str, Any]) -> dict[str, Any]:
    return {**ENGINE_DEFAULTS, **task_defaults}


def normalize_keys(cfg: Mapping[str, Any], source: str, known: Mapping[str, Any]) -> dict[str, Any]:
    """Turn "batch-size" into "batch_size" and reject unknown keys, suggesting close ones."""
    out = {}
    for key, value in cfg.items():
        k = str(key).replace("-", "_")
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=1)
            raise LingloError(f"{source}: unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        out[k] = value
    return out


def _check_type(key: str, value: Any, default: Any, types: Mapping[str, type], source: str) -> Any:
    expected = types.get(key) if default is None else type(default)
    if value is None and default is None or expected is None:
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise LingloError(f"{source}: '{key}' must be {expected.__name__}, got {value!r}")
    return value


def resolve(task_defaults: Mapping[str, Any], task_types: Mapping[str, type], *,
            base: Mapping[str, Any] | None = None, file_cfg: Mapping[str, Any] | None = None,
            cli_cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Merge defaults < base (a checkpoint's config) < file_cfg < cli_cfg, then check every value."""
    known = known_defaults(task_defaults)
    types = {**OPTIONAL_TYPES, **task_types}
    cfg = dict(known)
    stored = {k: v for k, v in (base or {}).items() if k in known and k not in TRANSIENT}
    for source, layer in (("checkpoint config", stored), ("config file", file_cfg or {}),
                          ("command line", cli_cfg or {})):
        layer = normalize_keys(layer, source, known)
        cfg.update({k: _check_type(k, v, known[k], types, source) for k, v in layer.items()})
    for key, choices in CHOICES.items():
        if cfg[key] not in choices:
            raise LingloError(f"'{key}' must be one of {', '.join(choices)}, got {cfg[key]!r}")
    for key in POSITIVE:
        if cfg[key] is not None and cfg[key] <= 0:
            raise LingloError(f"'{key}' must be > 0, got {cfg[key]}")
    for key in NON_NEGATIVE:
        if cfg[key] < 0:
            raise LingloError(f"'{key}' must be >= 0, got {cfg[key]}")
    if not 0 < cfg["ema_decay"] < 1:
        raise LingloError(f"'ema_decay' must be between 0 and 1, got {cfg['ema_decay']}")
    return cfg


def resolve_paths(cfg: dict[str, Any]) -> None:
    """Make the PATH_KEYS values that name existing files or folders absolute (built-in names stay)."""
    for key in PATH_KEYS:
        value = cfg.get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            cfg[key] = str(Path(value).expanduser().resolve())


def changed_on_resume(stored: Mapping[str, Any], cfg: Mapping[str, Any]) -> list[str]:
    """The settings of `cfg` that differ from a checkpoint's `stored` config and may not, as
    "--flag OLD -> NEW" (the model is left to the checkpoint's compatibility check)."""
    fixed = (*TRANSIENT, *RESUME_MAY_CHANGE, "model")

    def show(v: Any) -> str:
        return "(unset)" if v is None else repr(v)

    return [f"--{k.replace('_', '-')} {show(v)} -> {show(cfg[k])}" for k, v in stored.items()
            if k in cfg and k not in fixed and cfg[k] != v]
