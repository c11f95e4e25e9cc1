"""What each version changed in linglo_t's CPU latency (0.2: the channels-last forward and the new default mixer,
apart; 0.3: depths 2-2-4-2), against two T-row peers, in one plain process (docs/performance.md).

    python benchmarks/version_gain.py                             # 224² and 1024², 15 and 7 rounds
    python benchmarks/version_gain.py --sizes 64 --repeats 1      # a quick check that it runs

Rows: linglo_t as each version built it (0.1: key-only v1, MLP ratio 4; 0.2: query gate + value conv, MLP ratio
3.75; 0.3: depths 2-2-4-2; models.HISTORY), each with the channels-last forward on (the default since 0.2) and off
(`model.channels_last_forward = False`, 0.1's NCHW forward), and convnext_atto, edgenext_x_small. Models as built
(`timm.create_model(name).eval()`, no folding), fp32, batch 1, torch.inference_mode, the C library's allocator and
default threads; every round times one call of each model in turn (order rotated each round), right after one
untimed call of the same model; median per size (linglo.bench.interleaved_latency).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import timm
import torch

import linglo  # noqa: F401  (registers the family)
from linglo.bench import interleaved_latency
from linglo.models import HISTORY, legacy_model_kwargs

PEERS = ("convnext_atto", "edgenext_x_small")


def models() -> dict[str, torch.nn.Module]:
    out = {}
    for version in ("0.1", *(v for v, _, _ in HISTORY)):
        for channels_last in (False, True):
            model = timm.create_model("linglo_t", **legacy_model_kwargs("linglo_t", {}, version)).eval()
            model.channels_last_forward = channels_last
            out[f"linglo_t {version}, {'channels-last' if channels_last else 'NCHW'} forward"] = model
    return {**out, **{p: timm.create_model(p).eval() for p in PEERS}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 1024], help="input sizes (default: 224 1024)")
    p.add_argument("--repeats", nargs="+", type=int, default=[15, 7], help="rounds per size (default: 15 7)")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    built = models()
    medians: dict[str, list[float]] = {k: [] for k in built}
    for size, repeats in zip(args.sizes, args.repeats + args.repeats[-1:] * len(args.sizes)):
        x = torch.randn(1, 3, size, size)
        with torch.inference_mode():
            for m in built.values():
                m(x)
            seconds = interleaved_latency({k: lambda m=m: m(x) for k, m in built.items()}, repeats)
        for k, v in seconds.items():
            medians[k].append(v * 1e3)
    print(f"CPU latency (ms), batch 1, fp32, as built, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'model':<42}" + "".join(f"{f'{s}²':>10}" for s in args.sizes))
    for k, v in medians.items():
        print(f"{k:<42}" + "".join(f"{ms:>10.1f}" for ms in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
