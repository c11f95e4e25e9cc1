"""`linglo export`: a timm model (a LinGlo variant, any peer, or a linglo classification checkpoint) to ONNX with
dynamic batch, height and width, then checked against PyTorch with onnxruntime at several input sizes.

The graph comes from torch.export (the dynamo ONNX exporter). Two things make it size-general:
- the key-only op turns its size-dependent shortcuts off while traced or exported (ops.key_only._static_branches),
  so the graph keeps the general path that is exact at every batch and size; this alone makes a user's plain
  torch.onnx.export call (batch-1 example, dynamic_axes; dynamo or TorchScript exporter) run at any batch and size;
- sizes are traced "size-oblivious": torch.export would otherwise specialise any map that could be 1 pixel
  wide (the last stage of a 32-pixel input), and the graph would refuse small inputs.
The check then runs sizes where the eager shortcuts would have applied (small maps) and one that is not a
multiple of 32, each at a different batch size, and requires |onnx − torch| ≤ 1e-4 + 1e-4·|torch| (fp32).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from linglo.errors import LingloError

__all__ = ["ExportConfig", "build_model", "check_example_size", "export_onnx", "verify_onnx", "export",
           "default_check_sizes"]

TOLERANCE = 1e-4


@dataclass
class ExportConfig:
    output: Path
    model: str | None = None               # timm name; taken from --checkpoint when omitted
    checkpoint: Path | None = None         # a linglo classification checkpoint (runs/<run>/best.pt)
    use_ema: bool = False
    num_classes: int | None = None
    features_only: bool = False
    out_indices: tuple[int, ...] | None = None
    size: int = 224                        # example input size for tracing (batch 2)
    opset: int = 18
    check_sizes: list[tuple[int, int]] | None = None   # None: default_check_sizes(size)
    check: bool = True
    fuse: bool = True                      # fold for inference first (linglo.fuse)
    extra: dict[str, Any] = field(default_factory=dict)   # timm.create_model kwargs


def default_check_sizes(size: int) -> list[tuple[int, int]]:
    """The export size, a non-square one, and one not a multiple of 32 with maps small enough that the eager
    op's shortcuts (window covers the whole map) would have applied."""
    return [(size, size), (max(size - 32, 33), size + 32), (size // 2 + 3, size // 2 + 19)]


def _require(module: str, why: str):
    from linglo.extras import require
    return require(module, why)


def build_model(cfg: ExportConfig) -> tuple[torch.nn.Module, str]:
    """The model to export (eval mode, CPU) and its timm name."""
    import timm

    import linglo  # noqa: F401  registers the LinGlo family with timm
    from linglo.models.names import check_model_name

    state = None
    name, num_classes = cfg.model, cfg.num_classes
    if cfg.checkpoint is not None:
        from linglo.engine.checkpoint import load_checkpoint
        ckpt = load_checkpoint(cfg.checkpoint)
        meta = ckpt["meta"]
        if meta.get("task") != "classify":
            raise LingloError(f"checkpoint '{cfg.checkpoint}' is a '{meta.get('task')}' checkpoint; export takes "
                              "classification checkpoints and timm backbones (use --features-only for a backbone)")
        if name is not None and name != meta.get("model"):
            raise LingloError(f"--model {name} does not match checkpoint '{cfg.checkpoint}' "
                              f"(model {meta.get('model')})")
        name = meta.get("model")
        num_classes = meta.get("num_classes", num_classes)
        if cfg.use_ema and ckpt.get("ema") is None:
            raise LingloError(f"checkpoint '{cfg.checkpoint}' has no EMA weights (trained without EMA); drop --use-ema")
        state = ckpt["ema"] if cfg.use_ema else ckpt["model"]
    if name is None:
        raise LingloError("give --model NAME or --checkpoint FILE")
    check_model_name(name)
    pcfg = timm.models.get_pretrained_cfg(name)
    if pcfg is not None and pcfg.fixed_input_size:
        h, w = pcfg.input_size[-2:]
        raise LingloError(f"{name} takes only {h}x{w} input (timm fixed_input_size), so it cannot be exported with "
                          "dynamic height and width")
    kwargs: dict[str, Any] = dict(cfg.extra)
    if state is not None:   # the model as trained: its stored model kwargs (0.1's defaults for a 0.1 checkpoint)
        kwargs = {**(ckpt["config"].get("model_kwargs") or {}), **kwargs}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        if cfg.features_only and state is None:   # the way timm users build a backbone
            model = timm.create_model(name, pretrained=False, features_only=True, out_indices=cfg.out_indices,
                                      **kwargs) if cfg.out_indices else \
                timm.create_model(name, pretrained=False, features_only=True, **kwargs)
        else:
            model = timm.create_model(name, pretrained=False, **kwargs)
            if state is not None:
                from linglo.engine.checkpoint import load_weights
                load_weights(model, state, cfg.checkpoint)
            if cfg.features_only:   # trained classifier -> its backbone, wrapped as timm's features_only does
                from timm.models import FeatureGetterNet
                model = FeatureGetterNet(model, out_indices=cfg.out_indices or tuple(range(len(model.feature_info))))
    except (IndexError, AssertionError) as e:
        raise LingloError(f"--out-indices {list(cfg.out_indices or [])} do not fit {name}: {e}") from None
    from linglo.models import fuse
    return fuse(model, inplace=True) if cfg.fuse else model.eval(), name


def check_example_size(size: int) -> None:
    """The traced example's stride-32 map must be over 1 pixel: torch.export fixes a size-1 dimension."""
    if size <= 32:
        raise LingloError(f"--size must be over 32 px (the stride-32 map of the example must be over 1 pixel, or "
                          f"the export fixes height and width), got {size}; the exported model still takes any size")


def export_onnx(model: torch.nn.Module, path: Path, *, size: int = 224, opset: int = 18,
                output_names: Sequence[str] | None = None) -> None:
    """Export with dynamic batch/height/width (see the module docstring); the file is written atomically."""
    _require("onnxscript", "the ONNX exporter needs it")
    import torch.fx.experimental._config as fx_config
    from torch.export import Dim

    if opset < 17:
        raise LingloError(f"--opset must be >= 17 (LayerNorm and friends), got {opset}")
    check_example_size(size)
    example = torch.randn(2, 3, size, size)   # batch 2: a size-1 example dimension would be specialised
    dims = {0: Dim("batch", min=1), 2: Dim("height", min=1), 3: Dim("width", min=1)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
            program = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                        input_names=["image"], output_names=list(output_names or []) or None,
                                        dynamic_shapes=(dims,), external_data=False, verbose=False)
        program.save(tmp, external_data=False)
        os.replace(tmp, path)
    except LingloError:
        raise
    except Exception as e:  # the exporter raises many kinds; say which model part failed, in one line
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise LingloError(f"ONNX export failed: {type(e).__name__}: {first}") from e
    finally:
        tmp.unlink(missing_ok=True)


def _outputs(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def verify_onnx(model: torch.nn.Module, path: Path, sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Run the ONNX file with onnxruntime and the model with PyTorch at each (H, W), batch 1, 2, 3, …;
    one row per size with the largest difference and whether it is within tolerance."""
    ort = _require("onnxruntime", "needed to check the exported model; or pass --no-check")
    import numpy as np

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    rows = []
    for i, (hh, ww) in enumerate(sizes):
        x = torch.randn(i + 1, 3, hh, ww, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            refs = [t.numpy() for t in _outputs(model(x))]
        outs = session.run(None, {name: x.numpy()})
        if [o.shape for o in outs] != [r.shape for r in refs]:
            raise LingloError(f"ONNX output shapes {[o.shape for o in outs]} != PyTorch {[r.shape for r in refs]} "
                              f"at {i + 1}x3x{hh}x{ww}")
        diff = max(float(np.abs(o - r).max()) for o, r in zip(outs, refs))
        ok = all(np.allclose(o, r, rtol=TOLERANCE, atol=TOLERANCE) for o, r in zip(outs, refs))
        rows.append({"input": f"{i + 1}x3x{hh}x{ww}", "max_abs_diff": diff,
                     "max_abs_torch": max(float(np.abs(r).max()) for r in refs), "ok": ok})
    return rows


def export(cfg: ExportConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Build, export and (unless cfg.check is False) verify; raises LingloError when a check fails."""
    check_example_size(cfg.size)
    if cfg.check:   # say so before the (long) export, not after
        _require("onnxruntime", "needed to check the exported model; or pass --no-check")
    model, name = build_model(cfg)
    names = [f"features_{i}" for i in range(len(model.feature_info.channels()))] if cfg.features_only else ["logits"]
    log(f"exporting {name}{' (features_only)' if cfg.features_only else ''} to {cfg.output} "
        f"(opset {cfg.opset}, dynamic batch/height/width, traced at 2x3x{cfg.size}x{cfg.size})")
    export_onnx(model, cfg.output, size=cfg.size, opset=cfg.opset, output_names=names)
    if not cfg.check:
        return []
    rows = verify_onnx(model, cfg.output, cfg.check_sizes or default_check_sizes(cfg.size))
    for r in rows:
        log(f"  onnxruntime vs torch at {r['input']}: max |diff| {r['max_abs_diff']:.2e} "
            f"(outputs up to {r['max_abs_torch']:.3g}) {'ok' if r['ok'] else 'MISMATCH'}")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise LingloError(f"exported model differs from PyTorch by up to {max(r['max_abs_diff'] for r in bad):.2e} "
                          f"at {', '.join(r['input'] for r in bad)} (tolerance {TOLERANCE:g} + {TOLERANCE:g}·|torch|)")
    return rows
