"""The accuracy-speed front: Imagenette top-1 (the study's results, same recipe for every model) against batch-1 CPU
latency at 224² and 1024², measured here in one interleaved run; GPU bf16 throughput when a GPU is present.

    python benchmarks/pareto.py                         # every size row with results in docs/study/cpu
    python benchmarks/pareto.py --budget gpu --rows t   # another budget's results, one row
    python benchmarks/pareto.py --sizes 64 --repeats 1 --output /tmp/p   # a quick check that it runs

Accuracy: mean ± sample std over seeds of each arm's top-1 in docs/study/BUDGET/{peers,peers_xs,...}/results.csv
(benchmarks/study.py wrote them; that budget's recipe). In the T row, beside the peer study's lead arm (labelled
0.2: linglo_t as 0.2 built it, at the mixer study's equal-parameter MLP ratio 3.73 where 0.2 ships 3.75, 0.2 % of
the parameters): the first key-only formulation from the mixer study (0.1's default), and the macro study's
depths 2-2-4-2 arms (0.3's linglo_t, with and without layer scale).
Latency: the models exactly as the study trained them (10 classes), folded for inference (linglo.fuse, which is
timm's reparameterize for the peers), fp32, batch 1, torch.inference_mode, in this plain process (glibc allocator,
default OpenMP settings, torch's default threads); every round times one call of each model in turn, each right after
one untimed warm call of the same model, so a change in the machine's load hits every model; median over rounds.
Writes OUTPUT/pareto.md (one table per row: who is on the front, who dominates whom), pareto.csv and pareto.png.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import timm
import torch

import linglo
from linglo.atomic import atomic_savefig, atomic_write_text
from linglo.bench import interleaved_latency
from linglo.models import legacy_model_kwargs
from linglo.models.names import split_model_spec
from linglo.models.summary import count_gmacs, count_params

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"t": "peers", "xs": "peers_xs", "s": "peers_s", "m": "peers_m"}
# More LinGlo points of the T row, plotted beside the peer study's lead arm (linglo_t as 0.2 built it): 0.1's mixer
# from the mixer study, 0.3's depths from the macro study (study: {arm: label})
T_POINTS = {"mixer": {"key_only": "linglo_t 0.1 (key-only v1)"},
            "macro": {"2-2-4-2": "linglo_t 0.3 (depths 2-2-4-2)",
                      "2-2-4-2, no layer scale": "linglo_t 2-2-4-2, no layer scale"}}
COLUMNS = ("row", "label", "model", "params_m", "gmacs_224", "seeds", "top1_mean", "top1_std", "cpu_ms_224",
           "cpu_ms_1024", "gpu_bf16_img_s", "dominated_by")


def read_points(results: Path, row: str) -> list[dict[str, Any]]:
    """One point per arm of the row's peer study (and the mixer study's extra LinGlo points for the T row)."""
    points = []
    for study, keep in ((ROWS[row], None), *(T_POINTS.items() if row == "t" else ())):
        path = results / study / "results.csv"
        if not path.is_file():
            continue
        for r in csv.DictReader(path.open()):
            if keep is not None and r["arm"] not in keep:
                continue
            label = keep[r["arm"]] if keep else (f"{r['arm']} 0.2" if r["arm"].startswith("linglo") else r["arm"])
            points.append({"row": row, "label": label, "model": r["model"], "seeds": int(r["seeds"]),
                           "top1_mean": float(r["top1_mean"]), "top1_std": float(r["top1_std"])})
    return points


def build(spec: str) -> torch.nn.Module:
    """The model a study run trained (its arm's kwargs over LinGlo 0.1's defaults, the studies' base), folded."""
    name, kwargs = split_model_spec(spec)
    return linglo.fuse(timm.create_model(name, num_classes=10, **legacy_model_kwargs(name, kwargs)).eval())


def time_cpu(models: dict[str, torch.nn.Module], size: int, repeats: int) -> dict[str, float]:
    """Median batch-1 latency (ms) of each model, interleaved rounds, each timed call after one warm call."""
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        for m in models.values():
            m(x)
        seconds = interleaved_latency({k: lambda m=m: m(x) for k, m in models.items()}, repeats)
    return {k: s * 1e3 for k, s in seconds.items()}


def gpu_throughput(spec: str, batch: int = 64, repeats: int = 10) -> float | None:
    """Images/s at 224², bf16 autocast, channels_last, on the current CUDA device (None without one)."""
    if not torch.cuda.is_available():
        return None
    model = build(spec).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def mark_dominated(points: list[dict[str, Any]], key: str) -> None:
    """dominated_by: the points both more accurate (mean top-1) and faster (`key`) than this one."""
    for p in points:
        p["dominated_by"] = " ".join(q["label"] for q in points if q is not p and q["top1_mean"] > p["top1_mean"]
                                     and q[key] < p[key])


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(points: list[dict[str, Any]], sizes: Sequence[int], env: str) -> str:
    lines = [f"| model | params (M, 10 classes) | GMACs 224² | seeds | Imagenette top-1 | "
             + " | ".join(f"CPU {s}² ms" for s in sizes)
             + f" | GPU bf16 img/s | more accurate and faster at {sizes[0]}² (CPU) |",
             "|---" * (7 + len(sizes)) + "|"]
    for p in sorted(points, key=lambda p: p[f"cpu_ms_{sizes[0]}"]):
        acc = f"{p['top1_mean']:.2f} ± {_fmt(p['top1_std'])}"
        lines.append(f"| {p['label']} | {p['params_m']:.2f} | {p['gmacs_224']:.2f} | {p['seeds']} | {acc} | "
                     + " | ".join(_fmt(p[f'cpu_ms_{s}'], 1) for s in sizes)
                     + f" | {_fmt(p['gpu_bf16_img_s'], 0)} | {p['dominated_by'] or 'on the front'} |")
    return "\n".join(lines) + f"\n\n{env}\n"


def plot(points: list[dict[str, Any]], sizes: Sequence[int], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, s in zip(axes[0], sizes):
        for p in points:
            ours = p["label"].startswith("linglo")
            ax.errorbar(p[f"cpu_ms_{s}"], p["top1_mean"], yerr=None if p["top1_std"] != p["top1_std"]
                        else p["top1_std"], fmt="*" if ours else "o", ms=12 if ours else 7,
                        color="C3" if ours else "C0", capsize=3)
            ax.annotate(p["label"], (p[f"cpu_ms_{s}"], p["top1_mean"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(f"CPU latency at {s}², batch 1, fp32 (ms, log)")
        ax.set_ylabel("Imagenette top-1 (%)")
        ax.grid(alpha=0.3)
    fig.suptitle("Accuracy-speed front (up and left is better); bars: std over seeds", fontsize=10)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", default="cpu", help="whose study results give the accuracy (default: cpu)")
    p.add_argument("--results", type=Path, default=None, help="study results folder (default: docs/study/BUDGET)")
    p.add_argument("--rows", nargs="+", choices=tuple(ROWS), default=list(ROWS), help="size rows (default: all)")
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 1024], help="CPU latency sizes (224 1024)")
    p.add_argument("--repeats", type=int, default=11, help="timed rounds per size (default: 11)")
    p.add_argument("--output", type=Path, default=ROOT / "docs", help="where pareto.md/.csv/.png go (docs)")
    args = p.parse_args(argv)
    results = args.results or ROOT / "docs" / "study" / args.budget
    points = [pt for row in args.rows for pt in read_points(results, row)]
    if not points:
        print(f"error: no study results for rows {' '.join(args.rows)} in {results} "
              f"(run benchmarks/study.py peers --budget {args.budget} first)", file=sys.stderr)
        return 2
    models = {}
    for pt in points:
        models[pt["label"]] = build(pt["model"])
        pt["params_m"] = count_params(models[pt["label"]]) / 1e6
        pt["gmacs_224"] = count_gmacs(models[pt["label"]], 224)
    for s in args.sizes:
        for label, ms in time_cpu(models, s, args.repeats).items():
            next(pt for pt in points if pt["label"] == label)[f"cpu_ms_{s}"] = ms
    for pt in points:
        pt["gpu_bf16_img_s"] = gpu_throughput(pt["model"])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU here: not measured"
    env = (f"Accuracy: {results.relative_to(ROOT) if results.is_relative_to(ROOT) else results} (the {args.budget} "
           f"budget's recipe). CPU: {torch.get_num_threads()} thread(s), torch {torch.__version__}, timm "
           f"{timm.__version__}, plain process, folded models, median of {args.repeats} interleaved rounds. "
           f"GPU: {gpu}.")
    md = ["# Accuracy-speed front", "", "Written by `python benchmarks/pareto.py` (see its docstring).", ""]
    for row in args.rows:
        pts = [pt for pt in points if pt["row"] == row]
        if not pts:
            md += [f"## {row.upper()} row", "", f"no study results in {results / ROWS[row]}", ""]
            continue
        mark_dominated(pts, f"cpu_ms_{args.sizes[0]}")
        md += [f"## {row.upper()} row", "", table(pts, args.sizes, env)]
        print(table(pts, args.sizes, env))
    args.output.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.output / "pareto.md", "\n".join(md))
    buf = io.StringIO()
    cols = [c for c in COLUMNS if not c.startswith("cpu_ms")] + [f"cpu_ms_{s}" for s in args.sizes]
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(points)
    atomic_write_text(args.output / "pareto.csv", buf.getvalue())
    plot(points, args.sizes, args.output / "pareto.png")
    print(f"wrote {args.output}/pareto.md, pareto.csv, pareto.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
