"""benchmarks/pareto.py: reads the study tables of a budget, times every model of a row, writes the table, CSV and
plot, and names for each model the ones both more accurate and faster."""
from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "pareto.py"
FIELDS = ("study", "task", "arm", "model", "seeds", "top1_mean", "top1_std")


def _load():
    spec = importlib.util.spec_from_file_location("linglo_pareto", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _table(path: Path, study: str, rows: list[tuple]) -> None:
    path.mkdir(parents=True)
    with open(path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        w.writerows((study, "classify", *r) for r in rows)


def test_front_from_study_tables(tmp_path):
    results = tmp_path / "study"
    tiny = "linglo_t[widths=(8,16,16,32),depths=(1,1,1,1),head_dim=8]"
    _table(results / "peers", "peers", [("linglo_t", tiny, 3, 50.0, 1.0), ("test_convnext", "test_convnext", 1, 40.0, "nan")])
    _table(results / "mixer", "mixer", [("key_only", tiny.replace("]", ",query_gate=False,value_conv=0]"), 3, 48.0, 1.0),
                                        ("linear", "linglo_t[token_mixer=linear]", 3, 55.0, 1.0)])
    _table(results / "macro", "macro", [("2-2-6-2 (0.2)", tiny, 3, 50.5, 1.0),
                                        ("2-2-4-2", tiny.replace("]", ",mlp_ratio=3.0]"), 2, 50.0, 0.5)])
    out = tmp_path / "out"
    assert _load().main(["--results", str(results), "--rows", "t", "xs", "--sizes", "32", "--repeats", "1",
                         "--output", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "pareto.csv")))
    # the row's arms, the mixer study's 0.1 point and the macro study's 0.3 point; other arms of those studies and
    # the rows without tables are left out
    assert [r["label"] for r in rows] == ["linglo_t 0.2", "test_convnext", "linglo_t 0.1 (key-only v1)",
                                          "linglo_t 0.3 (depths 2-2-4-2)"]
    assert all(float(r["cpu_ms_32"]) > 0 and float(r["params_m"]) > 0 for r in rows)
    md = (out / "pareto.md").read_text()
    assert "## T row" in md and "no study results" in md and (out / "pareto.png").stat().st_size > 0


def test_a_point_is_dominated_only_by_points_both_more_accurate_and_faster():
    mark = _load().mark_dominated
    pts = [{"label": "a", "top1_mean": 60.0, "ms": 10.0}, {"label": "b", "top1_mean": 50.0, "ms": 20.0},
           {"label": "c", "top1_mean": 70.0, "ms": 30.0}, {"label": "d", "top1_mean": 55.0, "ms": 5.0}]
    mark(pts, "ms")
    assert [p["dominated_by"] for p in pts] == ["", "a d", "", ""]


def test_no_tables_is_one_error_line(tmp_path, capsys):
    assert _load().main(["--results", str(tmp_path), "--rows", "t", "--output", str(tmp_path / "o")]) == 2
    assert "no study results for rows t" in capsys.readouterr().err
