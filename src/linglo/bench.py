"""`linglo bench`: speed and memory of timm models (LinGlo and peers) across input resolutions.

For each resolution every model is measured in the same process, interleaved (one forward of each model in
turn, the order rotated every round) after warm-up, so a machine whose load drifts slows all models alike:

- latency: median and inter-quartile range of single forwards at batch 1, each right after ``warm_visits`` untimed
  forwards of the same model (default 1: as in a serving loop, the model's weights and threads are warm; 0
  times it straight after the other models);
- throughput: images/s at a larger batch (``throughput_batch`` at 224², scaled down with the pixel count);
- peak memory: bytes the forward holds at its peak above what was held before it — CUDA:
  torch.cuda.max_memory_allocated; CPU: the allocator's alloc/free events of one forward (torch.profiler),
  replayed in time order (the same quantity: no RSS noise from other threads, caches or the allocator's pools);
- params, and GMACs at batch 1 (torch.utils.flop_counter: convolutions and matrix products).

Each model's latency and memory are fitted against pixels on log-log axes: the slope is its scaling exponent
(1.0 = linear in the number of pixels). On the CPU the process first keeps freed memory for reuse
(linglo.cpu_allocator; ``allocator="system"`` measures glibc's default, which page-faults large activations in
again every forward and adds its own growth with resolution). Results: a rich table, a CSV, a PNG plot and,
for LinGlo variants benchmarked beside their SPEC peers, a table of LinGlo/peer ratios.
"""
from __future__ import annotations

import csv
import io
import math
import os
import platform
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from linglo.atomic import atomic_savefig, atomic_write_text, ensure_dir
from linglo.cpu_allocator import allocator_state, reuse_freed_memory
from linglo.errors import LingloError

__all__ = ["BenchConfig", "PEERS", "expand_models", "unsupported_reason", "interleaved_latency", "run_bench", "fit_exponent", "peak_bytes",
           "synchronize", "environment", "peer_ratios", "write_csv", "loglog_axes", "plot", "print_tables", "bench"]

# The timm peers of each LinGlo variant: the 2024-26 efficient backbones of its SPEC size row.
PEERS: dict[str, tuple[str, ...]] = {
    "linglo_t": ("starnet_s1", "mobilenetv4_conv_small", "fastvit_t8", "convnext_atto", "edgenext_x_small"),
    "linglo_xs": ("repvit_m0_9", "starnet_s3", "tiny_vit_5m_224", "edgenext_small", "mobilevitv2_100"),
    "linglo_s": ("mobilenetv4_hybrid_medium", "repvit_m1_1", "fastvit_sa12", "efficientvit_b1", "tiny_vit_11m_224"),
    "linglo_m": ("caformer_s18", "fastvit_sa24", "efficientvit_b2", "tiny_vit_21m_224", "pvt_v2_b2"),
}
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}   # reduced precision = autocast


@dataclass
class BenchConfig:
    models: list[str]
    resolutions: list[int]
    device: str = "cpu"
    threads: int | None = None           # CPU intra-op threads (None: torch's default)
    dtype: str = "fp32"
    warmup: int = 3
    repeats: int = 10
    warm_visits: int = 1                 # untimed forwards of the same model right before each timed one
    throughput_batch: int = 16           # at 224²; scaled by (224/res)², at least 1; 0 = skip throughput
    memory: bool = True
    compile: bool = False
    channels_last: bool = False
    fuse: bool = True                    # fold every model for inference (timm's reparameterize_model; linglo.fuse)
    allocator: str = "reuse"             # "reuse": keep freed CPU memory for reuse (linglo.cpu_allocator); "system"
    skip_unsupported: bool = False       # resolutions a model can't take become notes instead of an error
    output: Path | None = None           # folder for bench.csv, bench.png, ratios.csv
    extra: dict[str, Any] = field(default_factory=dict)   # timm.create_model kwargs for every model


def expand_models(names: Sequence[str]) -> list[str]:
    """'linglo_s+peers' -> linglo_s and its timm peers; names are checked against timm (close names suggested).

    A name may carry model kwargs, 'linglo_t[token_mixer=softmax,window=3]', to compare variants of one model."""
    import linglo  # noqa: F401  registers the LinGlo family with timm
    from linglo.models.names import split_model_spec

    out: list[str] = []
    for name in names:
        base, plus = (name[:-len("+peers")], True) if name.endswith("+peers") else (name, False)
        if plus and base not in PEERS:
            raise LingloError(f"'{name}': '+peers' works for {', '.join(PEERS)} (their SPEC peers), got '{base}'")
        for n in (base, *PEERS[base]) if plus else (base,):
            split_model_spec(n)
            if n not in out:
                out.append(n)
    if not out:
        raise LingloError("no models given (e.g. --models linglo_t,convnext_atto or linglo_t+peers)")
    return out


def unsupported_reason(name: str, res: int) -> str | None:
    """Why `name` cannot take a res×res input, known from its timm config before running it; None if it can."""
    import timm

    from linglo.models.names import split_model_spec
    cfg = timm.models.get_pretrained_cfg(split_model_spec(name)[0])
    if cfg is not None and cfg.fixed_input_size:
        h, w = cfg.input_size[-2:]
        if (res, res) != (h, w):
            return (f"{name} takes only {h}x{w} input (timm marks it fixed_input_size: its attention window / "
                    f"position-bias layout is built for that size), asked {res}x{res}")
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes the call holds above what was held when it started (see the module docstring)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile
    if not torch.cuda.is_available():
        # kineto (the profiler's backend) in a CUDA build of torch asks the CUDA driver for its GPUs when a
        # profile ends and logs "gpuGetDeviceCount failed" where there are none; silence its log (read once,
        # at the first profile) unless the user set a level
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()          # + on alloc, − on free
        peak = max(peak, held)
    return peak


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:200]


def fit_exponent(pixels: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) against log(pixels); None with fewer than two distinct sizes."""
    pts = [(math.log(p), math.log(v)) for p, v in zip(pixels, values) if v and v > 0]
    if len({p for p, _ in pts}) < 2:
        return None
    mx = sum(p for p, _ in pts) / len(pts)
    my = sum(v for _, v in pts) / len(pts)
    return sum((p - mx) * (v - my) for p, v in pts) / sum((p - mx) ** 2 for p, _ in pts)


def _device(cfg: BenchConfig) -> torch.device:
    try:
        device = torch.device(cfg.device)
    except RuntimeError as e:
        raise LingloError(f"--device: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LingloError(f"--device {cfg.device}: CUDA is not available on this machine (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise LingloError(f"--device must be cpu or cuda[:N], got {cfg.device!r}")
    return device


def _check(cfg: BenchConfig) -> None:
    if cfg.dtype not in DTYPES:
        raise LingloError(f"--dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    bad = [r for r in cfg.resolutions if r < 16]
    if bad or not cfg.resolutions:
        raise LingloError(f"--resolutions must be sizes >= 16 pixels, got {cfg.resolutions}")
    if cfg.warmup < 0 or cfg.repeats < 1 or cfg.warm_visits < 0:
        raise LingloError(f"--warmup and --warm-visits must be >= 0 and --repeats >= 1, got {cfg.warmup}, "
                          f"{cfg.warm_visits} and {cfg.repeats}")
    if cfg.threads is not None and cfg.threads < 1:
        raise LingloError(f"--threads must be >= 1, got {cfg.threads}")
    if cfg.allocator not in ("reuse", "system"):
        raise LingloError(f"--allocator must be reuse or system, got {cfg.allocator!r}")


def environment(device: torch.device, dtype: str = "fp32", compile: bool = False,
                channels_last: bool = False) -> dict[str, Any]:
    """What the numbers were measured on (also written into every CSV row)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                        if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {"device": f"{device.type}: {name}", "threads": torch.get_num_threads(), "dtype": dtype,
            "torch": torch.__version__, "compile": compile, "channels_last": channels_last,
            "allocator": allocator_state()}


class _Cell:
    """One (model, resolution) pair: its runnable forward and its measurements."""

    def __init__(self, name: str, res: int, forward: Callable[[torch.Tensor], Any]):
        self.name, self.forward = name, forward
        self.times: list[float] = []
        self.row: dict[str, Any] = {"model": name, "resolution": res}


def _rounds(cells: list[_Cell], n: int):
    """n rounds over all cells, each round starting one cell later (no model always runs first)."""
    for r in range(n):
        k = r % len(cells) if cells else 0
        yield from cells[k:] + cells[:k]


def interleaved_latency(forwards: Mapping[str, Callable[[], Any]], repeats: int, warm_visits: int = 1,
                        device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Median seconds of each forward over `repeats` rounds that call every forward in turn (order rotated each
    round), each timed call right after `warm_visits` untimed calls of the same forward: a change in the machine's
    load hits every forward alike. For scripts that time their own models (run_bench times specs)."""
    cells = [_Cell(name, 0, lambda _, f=f: f()) for name, f in forwards.items()]
    for cell in _rounds(cells, repeats):
        for _ in range(warm_visits):
            cell.forward(None)
        cell.times.append(_timed(lambda: cell.forward(None), device))
    return {cell.name: statistics.median(cell.times) for cell in cells}


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Measure every (model, resolution); returns (rows, environment). See the module docstring."""
    import timm

    from linglo.models import count_gmacs, fuse
    from linglo.models.names import split_model_spec

    _check(cfg)
    device = _device(cfg)
    names = expand_models(cfg.models)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    if cfg.allocator == "reuse" and not reuse_freed_memory():
        log("note: could not set glibc's malloc thresholds here; freed CPU memory goes back to the system "
            "(see linglo.cpu_allocator)")
    if cfg.allocator == "system" and allocator_state() == "reuse":
        log("note: this process already keeps freed memory for reuse (it cannot be undone), so this run measures "
            "allocator=reuse; run --allocator system in a fresh process")
    env = {**environment(device, cfg.dtype, cfg.compile, cfg.channels_last), "warm_visits": cfg.warm_visits,
           "fused": cfg.fuse}
    log("bench on " + ", ".join(f"{k}={v}" for k, v in env.items()))
    amp = DTYPES[cfg.dtype]
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    rows: list[dict[str, Any]] = []
    plan: dict[int, list[str]] = {}
    for res in cfg.resolutions:
        for name in names:
            reason = unsupported_reason(name, res)
            if reason and not cfg.skip_unsupported:
                raise LingloError(f"{reason} (benchmark it at its size, or pass --skip-unsupported)")
            if reason:
                rows.append({"model": name, "resolution": res, "note": reason})
            else:
                plan.setdefault(res, []).append(name)

    models: dict[str, torch.nn.Module] = {}
    runners: dict[str, Callable] = {}
    for name in dict.fromkeys(n for ns in plan.values() for n in ns):
        base, kwargs = split_model_spec(name)
        try:
            model = timm.create_model(base, pretrained=False, **{**cfg.extra, **kwargs})
        except (TypeError, ValueError) as e:
            raise LingloError(f"model '{name}' rejected its arguments: {e}") from None
        model = fuse(model, inplace=True) if cfg.fuse else model.eval()
        model = model.to(device, memory_format=fmt)
        models[name] = model
        runners[name] = torch.compile(model) if cfg.compile else model

    def make_input(res: int, batch: int) -> torch.Tensor:
        return torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=fmt)

    def call(name: str, x: torch.Tensor):
        with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            return runners[name](x)

    with torch.inference_mode():
        for res, res_names in plan.items():
            x1 = make_input(res, 1)
            cells: list[_Cell] = []
            for name in res_names:
                cell = _Cell(name, res, lambda x, n=name: call(n, x))
                model = models[name]
                cell.row.update(params_m=sum(p.numel() for p in model.parameters()) / 1e6)
                try:
                    cell.row["gmacs"] = count_gmacs(model, example=x1)
                    for _ in range(max(cfg.warmup, 1)):
                        cell.forward(x1)
                except (RuntimeError, ValueError, AssertionError) as e:
                    reason = f"{name} cannot run at {res}x{res}: {_first_line(e)}"
                    if not cfg.skip_unsupported:
                        raise LingloError(f"{reason} (pass --skip-unsupported to note it and go on)") from None
                    rows.append({"model": name, "resolution": res, "note": reason})
                    continue
                cells.append(cell)
            log(f"{res}x{res}: latency, {cfg.repeats} interleaved rounds over {len(cells)} models")
            for cell in _rounds(cells, cfg.repeats):
                for _ in range(cfg.warm_visits):
                    cell.forward(x1)
                cell.times.append(_timed(lambda: cell.forward(x1), device))
            tb = max(1, round(cfg.throughput_batch * (224 / res) ** 2)) if cfg.throughput_batch else 0
            if tb:
                xb = make_input(res, tb)
                tput: dict[str, list[float]] = {c.name: [] for c in cells}
                for cell in cells:
                    cell.forward(xb)   # warm-up at this batch size (a compiled model specialises on it)
                for cell in _rounds(cells, max(3, cfg.repeats // 2)):
                    tput[cell.name].append(_timed(lambda: cell.forward(xb), device))
                for cell in cells:
                    cell.row.update(throughput_img_s=tb / statistics.median(tput[cell.name]), throughput_batch=tb)
            for cell in cells:
                q1, _, q3 = statistics.quantiles(cell.times, n=4) if len(cell.times) > 1 else (cell.times[0],) * 3
                cell.row.update(latency_ms=statistics.median(cell.times) * 1e3, latency_iqr_ms=(q3 - q1) * 1e3)
                if cfg.memory:
                    cell.row["peak_mem_mb"] = peak_bytes(lambda: cell.forward(x1), device) / 2 ** 20
                rows.append(cell.row)
    _add_exponents(rows)
    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: (order[r["model"]], r["resolution"]))
    return [{**r, **env} for r in rows], env


def _add_exponents(rows: list[dict[str, Any]]) -> None:
    for name in {r["model"] for r in rows}:
        mine = [r for r in rows if r["model"] == name and r.get("latency_ms")]
        pixels = [r["resolution"] ** 2 for r in mine]
        lat = fit_exponent(pixels, [r["latency_ms"] for r in mine])
        mem = fit_exponent(pixels, [r.get("peak_mem_mb") for r in mine])
        for r in mine:
            r.update(latency_exponent=lat, memory_exponent=mem)


def peer_ratios(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """LinGlo / peer latency and peak-memory ratios at each resolution where both ran (< 1: LinGlo better)."""
    by = {(r["model"], r["resolution"]): r for r in rows if r.get("latency_ms")}
    out = []
    for variant, peers in PEERS.items():
        for peer in peers:
            for res in sorted({r for (_, r) in by}):
                a, b = by.get((variant, res)), by.get((peer, res))
                if a and b:
                    both = a.get("peak_mem_mb") and b.get("peak_mem_mb")
                    mem = a["peak_mem_mb"] / b["peak_mem_mb"] if both else None
                    out.append({"linglo": variant, "peer": peer, "resolution": res,
                                "latency_ratio": a["latency_ms"] / b["latency_ms"], "memory_ratio": mem})
    return out


COLUMNS = ["model", "resolution", "params_m", "gmacs", "latency_ms", "latency_iqr_ms", "throughput_img_s",
           "throughput_batch", "peak_mem_mb", "latency_exponent", "memory_exponent", "note",
           "device", "threads", "dtype", "torch", "compile", "channels_last", "allocator", "warm_visits", "fused"]


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_csv(rows: Sequence[dict[str, Any]], path: Path, columns: Sequence[str] = COLUMNS) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def loglog_axes(ax, xlabel: str, ylabel: str, legend_size: int) -> None:
    """Log-log axes with labels, a light grid and a legend: the look of every scaling plot."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=legend_size)


def plot(rows: Sequence[dict[str, Any]], path: Path, env: dict[str, Any]) -> None:
    """Latency and peak memory against pixels (log-log), one line per model, its fitted exponent in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    names = list(dict.fromkeys(r["model"] for r in rows))
    colours = {n: plt.get_cmap("tab20")(i % 20) for i, n in enumerate(names)}   # tab10 repeats after 10 models
    for ax, key, exp_key, label in ((axes[0], "latency_ms", "latency_exponent", "latency, batch 1 (ms)"),
                                    (axes[1], "peak_mem_mb", "memory_exponent", "peak memory, batch 1 (MiB)")):
        for name in names:
            pts = sorted((r["resolution"] ** 2, r[key]) for r in rows if r["model"] == name and r.get(key))
            if not pts:
                continue
            exponent = next((r.get(exp_key) for r in rows if r["model"] == name and r.get(exp_key) is not None), None)
            tag = f"{name} (exp {exponent:.2f})" if exponent is not None else name
            style = "-" if name.startswith("linglo") else "--"
            ax.plot(*zip(*pts), style, marker="o", color=colours[name], label=tag)
        loglog_axes(ax, "pixels (H·W)", label, legend_size=7)
    fig.suptitle(f"{env['device']} · {env['threads']} threads · {env['dtype']} · torch {env['torch']}"
                 + (" · compiled" if env["compile"] else "") + (" · channels_last" if env["channels_last"] else "")
                 + ("" if env.get("fused", True) else " · unfused")
                 + (" · malloc reuse" if env.get("allocator") == "reuse" else ""),
                 fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def print_tables(rows: Sequence[dict[str, Any]], ratios: Sequence[dict[str, Any]], env: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:   # a log file or pipe: don't squeeze the table into 80 columns
        console = Console(width=200)
    table = Table(title="linglo bench · " + ", ".join(f"{k}={v}" for k, v in env.items()))
    heads = ["model", "res", "params (M)", "GMACs", "latency ms", "IQR ms", "img/s (batch)", "peak MiB",
             "lat exp", "mem exp", "note"]
    for h in heads:
        table.add_column(h, justify="left" if h in ("model", "note") else "right", overflow="fold")
    for r in rows:
        tput = f"{r['throughput_img_s']:.3g} ({r['throughput_batch']})" if r.get("throughput_img_s") else ""
        table.add_row(escape(r["model"]), str(r["resolution"]), _fmt(r.get("params_m")), _fmt(r.get("gmacs")),
                      _fmt(r.get("latency_ms")), _fmt(r.get("latency_iqr_ms")), tput, _fmt(r.get("peak_mem_mb")),
                      _fmt(r.get("latency_exponent")), _fmt(r.get("memory_exponent")), escape(r.get("note") or ""))
    console.print(table)
    if ratios:
        rt = Table(title="LinGlo / peer (same run; < 1 = LinGlo faster / leaner)")
        for h in ("linglo", "peer", "res", "latency ratio", "memory ratio"):
            rt.add_column(h, justify="left" if h in ("linglo", "peer") else "right")
        for q in ratios:
            rt.add_row(q["linglo"], q["peer"], str(q["resolution"]), f"{q['latency_ratio']:.2f}",
                       _fmt(q["memory_ratio"] and round(q["memory_ratio"], 2)))
        console.print(rt)


def bench(cfg: BenchConfig, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run, print the tables, write bench.csv / bench.png / ratios.csv under cfg.output (if given)."""
    if cfg.output is not None:
        ensure_dir(cfg.output)      # before minutes of measuring
    rows, env = run_bench(cfg, log)
    ratios = peer_ratios(rows)
    print_tables(rows, ratios, env)
    if cfg.output is not None:
        out = Path(cfg.output)
        write_csv(rows, out / "bench.csv")
        plot(rows, out / "bench.png", env)
        if ratios:
            write_csv(ratios, out / "ratios.csv", ["linglo", "peer", "resolution", "latency_ratio", "memory_ratio"])
        log(f"wrote {out / 'bench.csv'}, {out / 'bench.png'}" + (f", {out / 'ratios.csv'}" if ratios else ""))
    return rows
