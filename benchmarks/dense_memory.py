"""Peak CPU memory of dense prediction at high resolution: LinGlo vs timm peers, batch 1 inference.

    python benchmarks/dense_memory.py                       # default pairs, table to stdout
    python benchmarks/dense_memory.py --models linglo_xs edgenext_small --json out.json

Three cases per model, each in a fresh process (a process's peak RSS only ever grows):
- detect:   Mask R-CNN + FPN 256 (80 classes) on a 1333×800 image; score threshold 0 so every model
            returns the same 100 detections (mask pasting then costs the same for all).
- segment:  Semantic FPN (150 classes) on a 2048×512 image, logits at full resolution.
- backbone: the bare backbone's stride 4–32 features at 2048×512.
Peak = the process's high-water RSS during one forward minus its RSS just before (Linux: the HWM is
reset through /proc/self/clear_refs), i.e. what that forward needs on top of the loaded model.
Time = the median of 3 further forwards.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = {"detect": (800, 1333), "segment": (512, 2048), "backbone": (512, 2048)}  # H, W
DEFAULT_MODELS = ["linglo_t", "edgenext_x_small", "linglo_xs", "edgenext_small", "linglo_s", "pvt_v2_b1"]


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure(model_name: str, case: str, threads: int) -> dict:
    """Run in a child process: build the model, then one forward with the RSS high-water mark reset."""
    import torch

    import linglo  # noqa: F401  registers the LinGlo models
    from linglo.tasks.detect.models import build_detector
    from linglo.tasks.dense.pyramid import Pyramid
    from linglo.tasks.segment.heads import SegmentationModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    H, W = CASES[case]
    if case == "detect":
        model = build_detector(model_name, "maskrcnn", 80, min_size=800, max_size=1333, score_thresh=0.0)
        run = lambda x: model([x[0]])  # noqa: E731  (list of 3×H×W images)
    elif case == "segment":
        model = SegmentationModel(model_name, "fpn", 150)
        run = model
    else:
        model = Pyramid(model_name)
        run = model
    model.eval()
    backbone = model.backbone.body if case != "backbone" else model.body
    x = torch.rand(1, 3, H, W)
    with torch.inference_mode():
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        t0 = time.perf_counter()
        run(x)
        first = time.perf_counter() - t0
        peak = _status_kib("VmHWM")
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            run(x)
            times.append(time.perf_counter() - t0)
    return {"model": model_name, "case": case, "input": f"{W}x{H}", "threads": threads,
            "backbone_params_m": sum(p.numel() for p in backbone.parameters()) / 1e6,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "peak_mib": (peak - before) / 1024, "rss_before_mib": before / 1024,
            "first_s": first, "median_s": statistics.median(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.threads)))
        return
    rows = []
    for case in args.cases:
        for name in args.models:
            proc = subprocess.run([sys.executable, __file__, "--child", name, case, "--threads", str(args.threads)],
                                  capture_output=True, text=True)
            if proc.returncode:
                lines = (proc.stderr.strip() or f"exit code {proc.returncode}").splitlines()
                rows.append({"model": name, "case": case, "error": lines[-1]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"{case:8s} {name:18s} " + (f"error: {r['error']}" if "error" in r else
                  f"{r['input']:>9s}  backbone {r['backbone_params_m']:5.2f} M  peak {r['peak_mib']:7.0f} MiB  "
                  f"{r['median_s']:6.2f} s"), flush=True)
    print("\n| case | input | model | backbone params (M) | peak RSS above model (MiB) | time (s) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['case']} | | {r['model']} | | error: {r['error']} | |")
        else:
            print(f"| {r['case']} | {r['input']} | {r['model']} | {r['backbone_params_m']:.2f} | "
                  f"{r['peak_mib']:.0f} | {r['median_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
