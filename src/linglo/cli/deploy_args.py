"""`linglo bench` and `linglo export`: flags and calls (speed, memory, deployment).

    linglo bench  --models linglo_t+peers --resolutions 224,512,1024 [--device cuda] [--output DIR]
    linglo export --model linglo_xs --output linglo_xs.onnx [--features-only] [--checkpoint FILE]

register(subparsers) adds both commands; run(command, args) executes one and returns the exit code.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from linglo.errors import LingloError
from linglo.models.names import split_top_level

COMMANDS = ("bench", "export")


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"{what} must not be empty")
    return values


def _sizes(text: str) -> list[tuple[int, int]]:
    """'224,160x192' -> [(224, 224), (160, 192)]."""
    out = []
    for item in text.replace(" ", "").split(","):
        parts = item.lower().split("x")
        if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise argparse.ArgumentTypeError(f"--check-sizes: expected sizes like 224 or 160x192, got {item!r}")
        out.append((int(parts[0]), int(parts[-1])))
    return out


def register(sub: argparse._SubParsersAction) -> None:
    """Add the bench and export subcommands to the `linglo` parser."""
    p = sub.add_parser("bench", help="latency, throughput, peak memory, params and GMACs of models across resolutions",
                       description="Measure models (LinGlo and timm peers) in one process, interleaved, with "
                                   "warm-up: latency median/IQR at batch 1, throughput at a larger batch, peak "
                                   "memory, params, GMACs; writes a table, bench.csv, bench.png (log-log vs "
                                   "pixels with fitted exponents) and ratios.csv (LinGlo / SPEC peers).")
    p.add_argument("--models", required=True, type=split_top_level,
                   help="comma-separated timm names; NAME+peers adds a LinGlo variant's SPEC peers "
                        "(e.g. linglo_t+peers,linglo_xs); NAME[key=value,...] passes model kwargs, to compare "
                        "variants (e.g. 'linglo_t[token_mixer=softmax],linglo_t[window=3]')")
    p.add_argument("--resolutions", default=[224], type=lambda t: _ints(t, "--resolutions"),
                   help="square input sizes, comma-separated (default: 224)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's default). On a CPU shared with other jobs, run with "
                        "OMP_WAIT_POLICY=PASSIVE: spinning OpenMP threads that get descheduled make multi-thread "
                        "medians swing by 100x. On an idle CPU leave it unset: passive threads add a wake-up to "
                        "every parallel op (2-3x the latency of small models)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="fp32, or bf16/fp16 autocast (default: fp32)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards per model and size (default: 3)")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds over all models (default: 10)")
    p.add_argument("--warm-visits", type=int, default=1,
                   help="untimed forwards of the same model right before each timed one: 1 times a model warm, as "
                        "in a serving loop; 0 straight after the other models (default: 1)")
    p.add_argument("--throughput-batch", type=int, default=16,
                   help="throughput batch at 224², scaled down with pixels; 0 = skip (default: 16)")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurement")
    p.add_argument("--compile", action="store_true", help="torch.compile every model (warm-up includes compiling)")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="time the models as built. By default each is folded for inference as timm users deploy "
                        "it: timm.utils.reparameterize_model (RepViT, FastViT, MobileOne, LeViT, ... fold their "
                        "branches and BatchNorms; models without fuse()/reparameterize() are unchanged), which for "
                        "LinGlo is linglo.fuse")
    p.add_argument("--allocator", default="reuse", choices=("reuse", "system"),
                   help="reuse: keep freed CPU memory in the process, so large activations are not page-faulted "
                        "in again every forward (glibc mallopt; what jemalloc/tcmalloc do); system: the C "
                        "library's default (default: reuse)")
    p.add_argument("--skip-unsupported", action="store_true",
                   help="note resolutions a model cannot take in the table instead of stopping")
    p.add_argument("--output", "-o", type=Path, default=None, help="folder for bench.csv, bench.png, ratios.csv")

    e = sub.add_parser("export", help="export a model to ONNX (dynamic batch/height/width), checked with onnxruntime",
                       description="Export a timm model (LinGlo or any peer) or a linglo classification "
                                   "checkpoint to ONNX with dynamic batch, height and width, then compare "
                                   "onnxruntime with PyTorch at three input sizes (fp32, 1e-4).")
    e.add_argument("--model", default=None, help="timm model name (default: the checkpoint's)")
    e.add_argument("--checkpoint", type=Path, default=None,
                   help="linglo classification checkpoint (e.g. runs/x/best.pt)")
    e.add_argument("--use-ema", action="store_true", help="export the checkpoint's EMA weights")
    e.add_argument("--num-classes", type=int, default=None,
                   help="classifier size (default: the model's or the checkpoint's)")
    e.add_argument("--features-only", action="store_true", help="export the backbone's feature pyramid")
    e.add_argument("--out-indices", type=lambda t: tuple(_ints(t, "--out-indices")), default=None,
                   help="feature levels with --features-only, e.g. 1,2,3 (default: all)")
    e.add_argument("--output", "-o", type=Path, required=True, help="the .onnx file to write")
    e.add_argument("--size", type=int, default=224,
                   help="example input size used for tracing, over 32 (default: 224); the exported model takes any size")
    e.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: 18)")
    e.add_argument("--check-sizes", type=_sizes, default=None,
                   help="sizes checked with onnxruntime, e.g. 224,192x256,115x131 (default: those three, "
                        "derived from --size)")
    e.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime comparison")
    e.add_argument("--no-fuse", dest="fuse", action="store_false",
                   help="export the model as trained; by default it is folded for inference first (linglo.fuse / "
                        "timm.utils.reparameterize_model: BatchNorm and layer scale folded into convs, same outputs)")


def run(command: str, args: dict[str, Any]) -> int:
    """Execute `linglo bench` / `linglo export` with the parsed flags."""
    if command == "bench":
        from linglo.bench import BenchConfig, bench
        bench(BenchConfig(**args))
        return 0
    if command == "export":
        from linglo.export import ExportConfig, export
        export(ExportConfig(**args))
        return 0
    raise LingloError(f"unknown command {command!r}")
