"""Checkpoints: atomic save (the previous file survives a crash or a full disk), safe load
(weights_only), RNG capture/restore for exact resume, and a compatibility check with a clear error.

A checkpoint is a dict: model, ema (or None), optimizer, scheduler, scaler, epoch (completed),
global_step, history (metrics rows), best, rng (one entry per rank), config, meta (task, model,
and the task's meta, e.g. class names), version (linglo's; absent in 0.1's). load_checkpoint writes the family
defaults of the version that wrote it into its config, so the model is rebuilt as trained.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from linglo.atomic import atomic_write
from linglo.errors import LingloError
from linglo.models import legacy_model_kwargs

ZIP_MAGIC, PICKLE_MAGIC = b"PK\x03\x04", b"\x80"   # torch.save's zip format; the legacy pickle format


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, as weights_only-loadable values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: Mapping[str, Any]) -> None:
    """Write `state` to `path` atomically; on failure the previous `path` is left untouched."""
    _write(path, lambda f: torch.save(dict(state), f))


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Copy checkpoint file `src` to `dst` atomically (the same file, byte for byte)."""
    with open(src, "rb") as f:
        _write(dst, lambda out: shutil.copyfileobj(f, out))


def _write(path: Path, write) -> None:
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        reason = (e.strerror if isinstance(e, OSError) and e.strerror
                  else f"the write stopped short, disk full or a file size limit? ({_first_line(e)})")
        raise LingloError(f"could not write checkpoint '{path}': {reason}; the previous checkpoint is kept") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LingloError(f"checkpoint '{path}' does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise LingloError(f"cannot read checkpoint '{path}': {e.strerror or e}") from e
    if not head:
        raise LingloError(f"checkpoint '{path}' is empty (0 bytes): an interrupted copy or download?")
    if not head.startswith((ZIP_MAGIC, PICKLE_MAGIC)):
        raise LingloError(f"'{path}' is not a PyTorch checkpoint (neither a zip archive nor a pickle; "
                          f"it starts with {head!r})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise LingloError(f"cannot read checkpoint '{path}': {_first_line(e)}") from e
    if not isinstance(ckpt, dict) or not {"model", "config", "meta"} <= ckpt.keys():
        raise LingloError(f"'{path}' is not a linglo checkpoint (no model/config/meta entries)")
    config = ckpt["config"]
    if isinstance(config, dict) and isinstance(config.get("model"), str):
        config["model_kwargs"] = legacy_model_kwargs(config["model"], config.get("model_kwargs") or {},
                                                     checkpoint_version(ckpt))
    return ckpt


def checkpoint_version(ckpt: Mapping[str, Any]) -> str:
    """The linglo version that wrote a checkpoint ("0.1" when it names none): its model takes that version's
    family defaults (models.legacy_model_kwargs), which load_checkpoint writes into its config."""
    return str(ckpt.get("version", "0.1"))


def backbone_file_version(path: str | Path) -> str | None:
    """The linglo version of --backbone-weights FILE when it is a `linglo train` checkpoint; None for a file that
    cannot be read here or is not a linglo checkpoint (the backbone loader judges it)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not one of ours; the backbone loader reports it
        return None
    is_ours = isinstance(ckpt, dict) and {"model", "config", "meta"} <= ckpt.keys()
    return checkpoint_version(ckpt) if is_ours else None


def _describe(meta: Mapping[str, Any]) -> str:
    names = meta.get("class_names")
    classes = f" with {meta['num_classes']} classes" if "num_classes" in meta else ""
    if names and len(names) <= 8:
        classes += f" ({', '.join(map(str, names))})"
    return f"task '{meta.get('task')}', model '{meta.get('model')}'{classes}"


def check_compatible(ckpt: Mapping[str, Any], path: str | Path, meta: Mapping[str, Any]) -> None:
    """Refuse a checkpoint made for another task, model or output space (e.g. class count)."""
    stored = ckpt["meta"]
    if any(stored.get(k) != v for k, v in meta.items()):
        raise LingloError(f"checkpoint '{path}' is for {_describe(stored)}, but this run is for {_describe(meta)}")


def load_weights(module: torch.nn.Module, state_dict: Mapping[str, Any], path: str | Path) -> None:
    try:
        module.load_state_dict(state_dict)
    except RuntimeError as e:
        raise LingloError(f"checkpoint '{path}' does not fit the model: {str(e).splitlines()[0]}") from e
