"""The gain of linglo.fuse: batch-1 fp32 CPU latency of each family member, unfused vs fused, in one process.

    python benchmarks/fuse_gain.py                      # linglo_t/xs/s/m at 224², 2 threads, 21 rounds
    python benchmarks/fuse_gain.py --models linglo_t --size 64 --repeats 3 --warmup 1   # a quick check it runs

A plain process (glibc allocator, default OpenMP settings), as issue 15's headline numbers. Every round times
one call of each (model, unfused|fused) pair in turn, each right after one untimed warm call of the same model,
so a change in the machine's load hits both; prints the median per pair and ratio = unfused / fused (above 1.0:
fusing is faster), and the largest |difference| of the two models' logits on the timed input.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

import linglo
from linglo.models import FAMILY


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(FAMILY), help="comma-separated (default: the family)")
    p.add_argument("--size", type=int, default=224, help="input size (default: 224)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per model first (default: 3)")
    p.add_argument("--repeats", type=int, default=21, help="timed rounds (default: 21)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.size, args.size)
    pairs = {}
    for name in args.models.split(","):
        model = timm.create_model(name).eval()
        pairs[name] = (model, linglo.fuse(model))
    times = {(name, i): [] for name in pairs for i in range(2)}
    with torch.inference_mode():
        diffs = {name: float((a(x) - b(x)).abs().max()) for name, (a, b) in pairs.items()}
        for (name, i) in times:
            for _ in range(args.warmup):
                pairs[name][i](x)
        for _ in range(args.repeats):
            for (name, i), record in times.items():
                model = pairs[name][i]
                model(x)                                      # the warm call
                start = time.perf_counter()
                model(x)
                record.append((time.perf_counter() - start) * 1e3)
    print(f"linglo.fuse gain: fp32, batch 1, {args.size}², {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds, torch {torch.__version__}")
    print(f"{'model':<10} {'unfused ms':>11} {'fused ms':>9} {'ratio':>6} {'max |diff|':>11}")
    for name in pairs:
        plain, fused = (statistics.median(times[name, i]) for i in range(2))
        print(f"{name:<10} {plain:>11.2f} {fused:>9.2f} {plain / fused:>6.3f} {diffs[name]:>11.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
