"""Key-only attention vs ReLU linear attention vs softmax attention (SDPA): time and peak memory against tokens.

    python benchmarks/op_scaling.py                      # CPU, 2 threads, fp32, batch 1, C=64, 4 heads
    python benchmarks/op_scaling.py --device cuda        # adds the torch-ops key-only path beside the fused kernel

Every mixer gets the same projected inputs (v, s for key-only; q, k, v for the others) of width C = heads·d, so
the numbers compare the token mixing itself (key_only_channels_last: v, s sliced from a channels_last projection,
as a channels_last model feeds them). For each size, all mixers run interleaved (one call of each in turn)
after warm-up; time = median of the repeats (the fastest call is reported too: on a shared machine it is
the least disturbed estimate). With --warm-visits N (default 1) each timed call follows N untimed calls of the
same mixer, as inside a model, where the op's inputs were just written and the thread pool is busy; 0 times
each mixer straight after the others (cold caches, sleeping threads after a long SDPA call). Peak memory =
bytes the call holds above its inputs (CUDA: max_memory_allocated; CPU: allocator events of one call, see
linglo.bench). The scaling exponent is the log-log
slope over the --scaling sizes; the targets (issue 6): key-only exponent <= 1.05 for time and memory from 64² to
1024² tokens, and key-only / linear time <= 1.0 at 56²..224². SDPA's time and score matrix grow with N²: sizes
whose N×N fp32 scores (per head) would pass --sdpa-cap-mb are skipped and marked so.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from linglo.bench import environment, fit_exponent, loglog_axes, peak_bytes, synchronize
from linglo.cpu_allocator import reuse_freed_memory
from linglo.ops import key_only_attention


def linear_core(q, k, v, eps: float = 1e-15):
    """The token mixing of layers.LinearAttention (EfficientViT LiteMLA): q·(kᵀv) / q·(kᵀ1).

    q, k, v: (B, h, d, N)."""
    q, k = F.relu(q), F.relu(k)
    kv = k @ v.transpose(-1, -2)                                   # (B, h, d, d)
    num = kv.transpose(-1, -2) @ q                                 # (B, h, d, N)
    den = k.sum(-1, keepdim=True).transpose(-1, -2) @ q            # (B, h, 1, N)
    return num / (den + eps)


def make_inputs(side: int, channels: int, heads: int, window: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    d, n = channels // heads, side * side

    def r(*shape):
        return torch.randn(*shape, generator=g).to(device)
    # v and s as KeyOnlyAttention slices them from a channels_last projection (what a channels_last model feeds)
    proj = r(1, channels + heads, side, side).contiguous(memory_format=torch.channels_last)
    return {"v5": r(1, heads, d, side, side), "s": r(1, heads, side, side), "rel_bias": r(heads, window, window),
            "v5_cl": proj[:, :channels].reshape(1, heads, d, side, side), "s_cl": proj[:, channels:],
            "by": r(heads, window), "bx": r(heads, window), "r_inf": r(heads),
            "q": r(1, heads, d, n), "k": r(1, heads, d, n), "v": r(1, heads, d, n),
            "qt": r(1, heads, n, d), "kt": r(1, heads, n, d), "vt": r(1, heads, n, d)}


def mixers(device: torch.device) -> dict:
    """name -> fn(inputs). On CUDA the key-only entries run the fused Triton kernels (opt-in in the library,
    measured here on purpose) and key_only_torch_ops the same op on plain torch ops, to show what the kernels buy."""
    fused = device.type == "cuda"
    out = {
        "key_only": lambda x: key_only_attention(x["v5"], x["s"], x["rel_bias"], x["r_inf"], fused=fused),
        "key_only_axial": lambda x: key_only_attention(x["v5"], x["s"], r_inf=x["r_inf"], axial_bias=(x["by"], x["bx"]),
                                                       fused=fused),
        "key_only_channels_last": lambda x: key_only_attention(x["v5_cl"], x["s_cl"], x["rel_bias"], x["r_inf"],
                                                               fused=fused),
        "linear": lambda x: linear_core(x["q"], x["k"], x["v"]),
        "sdpa": lambda x: F.scaled_dot_product_attention(x["qt"], x["kt"], x["vt"]),
    }
    if fused:
        out["key_only_torch_ops"] = lambda x: key_only_attention(x["v5"], x["s"], x["rel_bias"], x["r_inf"])
    return out


def run(args) -> list[dict]:
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.allocator == "reuse":
        reuse_freed_memory()
    fns = mixers(device)
    sizes = sorted(set(args.scaling) | set(args.ratio))
    rows = []
    with torch.inference_mode():
        for side in sizes:
            x = make_inputs(side, args.channels, args.heads, args.window, device)
            n = side * side
            scores_mb = args.heads * n * n * 4 / 2 ** 20
            active = {k: f for k, f in fns.items() if k != "sdpa" or scores_mb <= args.sdpa_cap_mb}
            if "sdpa" not in active:
                rows.append({"mixer": "sdpa", "side": side, "tokens": n,
                             "note": f"skipped: N×N scores {scores_mb:.0f} MiB > cap {args.sdpa_cap_mb} MiB"})
            times = {k: [] for k in active}
            for _ in range(args.warmup):
                for f in active.values():
                    f(x)
            for r in range(args.repeats):
                names = list(active)
                names = names[r % len(names):] + names[:r % len(names)]
                for k in names:
                    for _ in range(args.warm_visits):
                        active[k](x)
                    synchronize(device)
                    t0 = time.perf_counter()
                    active[k](x)
                    synchronize(device)
                    times[k].append(time.perf_counter() - t0)
            for k, f in active.items():
                rows.append({"mixer": k, "side": side, "tokens": n, "time_ms": statistics.median(times[k]) * 1e3,
                             "time_min_ms": min(times[k]) * 1e3,
                             "peak_mem_mb": peak_bytes(partial(f, x), device) / 2 ** 20})
            print(f"{side}²: " + ", ".join(f"{r['mixer']} {r['time_ms']:.3g} ms / {r['peak_mem_mb']:.3g} MiB"
                                           for r in rows if r["side"] == side and "time_ms" in r), flush=True)
            del x
    return rows


def summarise(rows: list[dict], args) -> dict:
    """Exponents over the scaling sizes, key-only/linear time ratios at the ratio sizes, and the targets."""
    out: dict = {"exponents": {}, "ratios": {}}
    for mixer in dict.fromkeys(r["mixer"] for r in rows):
        pts = [r for r in rows if r["mixer"] == mixer and r["side"] in args.scaling and "time_ms" in r]
        out["exponents"][mixer] = {
            "time": fit_exponent([r["tokens"] for r in pts], [r["time_ms"] for r in pts]),
            "memory": fit_exponent([r["tokens"] for r in pts], [r["peak_mem_mb"] for r in pts]),
            "sides": [r["side"] for r in pts]}
    by = {(r["mixer"], r["side"]): r for r in rows if "time_ms" in r}
    for mixer in ("key_only", "key_only_axial", "key_only_channels_last"):
        for stat in ("time_ms", "time_min_ms"):   # medians (the target) and the fastest call (least disturbed)
            out["ratios"][f"{mixer} ({stat})"] = {
                side: by[(mixer, side)][stat] / by[("linear", side)][stat]
                for side in args.ratio if (mixer, side) in by and ("linear", side) in by}
    e = out["exponents"].get("key_only", {})
    ratios = out["ratios"].get("key_only (time_ms)", {})
    out["targets"] = {
        "key_only time exponent <= 1.05": e.get("time") is not None and e["time"] <= 1.05,
        "key_only memory exponent <= 1.05": e.get("memory") is not None and e["memory"] <= 1.05,
        "key_only / linear time <= 1.0 at every ratio size": bool(ratios) and max(ratios.values()) <= 1.0,
    }
    return out


def plot(rows: list[dict], summary: dict, env: dict, path: Path) -> None:
    """Time and peak memory against tokens, log-log, one line per mixer with its fitted exponents."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, label in ((axes[0], "time_ms", "time (ms, median)"), (axes[1], "peak_mem_mb", "peak memory (MiB)")):
        for mixer in dict.fromkeys(r["mixer"] for r in rows):
            pts = sorted((r["tokens"], r[key]) for r in rows if r["mixer"] == mixer and key in r)
            if pts:
                e = summary["exponents"][mixer]["time" if key == "time_ms" else "memory"]
                ax.plot(*zip(*pts), "-" if mixer.startswith("key_only") else "--", marker="o",
                        label=mixer + (f" (exp {e:.2f})" if e is not None else ""))
        loglog_axes(ax, "tokens (H·W)", label, legend_size=8)
    fig.suptitle(f"{env['device']} · {env['threads']} threads · fp32 · batch 1 · C={env['channels']}, "
                 f"{env['heads']} heads, window {env['window']} · torch {env['torch']} · allocator {env['allocator']}"
                 f" · {env['warm_visits']} warm visit(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--window", type=int, default=7)
    p.add_argument("--scaling", type=lambda t: [int(v) for v in t.split(",")], default=[64, 128, 256, 512, 1024],
                   help="sides (tokens per side) for the exponent fit")
    p.add_argument("--ratio", type=lambda t: [int(v) for v in t.split(",")], default=[56, 112, 224],
                   help="sides for the key-only / linear time ratio")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warm-visits", type=int, default=1,
                   help="untimed calls of the same mixer right before each timed call (0: cold, after the others)")
    p.add_argument("--sdpa-cap-mb", type=float, default=1024)
    p.add_argument("--allocator", default="reuse", choices=("reuse", "system"),
                   help="keep freed CPU memory for reuse (as linglo bench does), or the C library's default")
    p.add_argument("--output", type=Path, default=None, help="folder for op_scaling.csv, .json and .png")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = run(args)
    summary = summarise(rows, args)
    env = environment(device)
    env.update(channels=args.channels, heads=args.heads, window=args.window, batch=1, warm_visits=args.warm_visits)
    print(json.dumps({"environment": env, **summary}, indent=1, default=str))
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        with open(args.output / "op_scaling.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["mixer", "side", "tokens", "time_ms", "time_min_ms", "peak_mem_mb",
                                              "note"])
            w.writeheader()
            w.writerows(rows)
        plot(rows, summary, env, args.output / "op_scaling.png")
        (args.output / "op_scaling.json").write_text(json.dumps({"environment": env, **summary, "rows": rows},
                                                                indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
