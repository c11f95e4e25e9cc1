"""benchmarks/op_scaling.py end to end at tiny sizes: CSV, JSON (exponents, ratios, targets) and plot written."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "op_scaling.py"


def _load():
    spec = importlib.util.spec_from_file_location("linglo_op_scaling", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_op_scaling_writes_every_mixer_and_the_targets(tmp_path):
    out = tmp_path / "op"
    assert _load().main(["--threads", "1", "--scaling", "8,16", "--ratio", "8", "--warmup", "1", "--repeats", "2",
                         "--warm-visits", "1", "--output", str(out)]) == 0
    with open(out / "op_scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["mixer"] for r in rows} == {"key_only", "key_only_axial", "key_only_channels_last", "linear", "sdpa"}
    assert all(float(r["time_ms"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in rows)
    summary = json.loads((out / "op_scaling.json").read_text())
    assert summary["environment"]["warm_visits"] == 1 and summary["environment"]["allocator"] in ("reuse", "system")
    assert summary["exponents"]["key_only"]["sides"] == [8, 16]
    assert set(summary["ratios"]["key_only (time_ms)"]) == {"8"}
    assert set(summary["targets"]) == {"key_only time exponent <= 1.05", "key_only memory exponent <= 1.05",
                                       "key_only / linear time <= 1.0 at every ratio size"}
    assert (out / "op_scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
