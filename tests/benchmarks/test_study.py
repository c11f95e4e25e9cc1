"""benchmarks/study.py at the toy budget: every study runs end to end on the real data (tables, CSV, plots),
arms of the mixer study have equal parameters, finished runs are not retrained, an interrupted run resumes,
and the reading calls differences inside the seed spread "no difference"."""
from __future__ import annotations

import csv
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "study.py"


def _load():
    spec = importlib.util.spec_from_file_location("linglo_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


study = _load()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    if not study.DATA.is_dir():
        pytest.skip(f"{study.DATA} not available")
    root = tmp_path_factory.mktemp("study")
    argv = ["all", "--budget", "toy", "--runs", str(root / "runs"), "--results", str(root / "results")]
    assert study.main(argv) == 0
    return root, argv


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", list(study.STUDIES))
def test_each_study_writes_its_table_csv_and_plot(toy, name):
    root, _ = toy
    out = root / "results" / name
    rows = _rows(out / "results.csv")
    s = study.STUDIES[name]
    assert [(r["task"], r["arm"]) for r in rows] == [(t, a.label) for t in s.tasks for a in s.arms]
    for r in rows:
        for m in study.METRICS[r["task"]]:
            assert 0 <= float(r[f"{m}_mean"]) <= 100
        assert float(r["params_m"]) > 0 and float(r["gmacs_64"]) > 0 and float(r["latency_ms_64"]) > 0
    md = (out / "results.md").read_text()
    assert all(f"| {a.label} |" in md for a in s.arms) and "python benchmarks/study.py" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


def test_mixer_arms_have_the_baselines_parameter_count(toy):
    root, _ = toy
    rows = [r for r in _rows(root / "results" / "mixer" / "results.csv") if r["task"] == "classify"]
    base = float(rows[0]["backbone_params_m"])
    assert {r["arm"] for r in rows} == set(study.MIXERS)
    for r in rows:
        assert abs(float(r["backbone_params_m"]) / base - 1) < 0.005, r["arm"]
    assert "mlp_ratio" in rows[1]["model"]   # equal parameters come from the MLP width


def test_cost_study_benches_every_mixer_at_every_size(toy):
    root, _ = toy
    rows = _rows(root / "results" / "cost" / "bench.csv")
    assert {(r["model"], int(r["resolution"])) for r in rows} == {
        (f"linglo_t[token_mixer={m}]", res) for m in study.MIXERS for res in study.BUDGETS["toy"]["cost"]}
    assert (root / "results" / "cost" / "bench.png").is_file()


def test_rerun_reads_finished_runs_back_and_an_unfinished_run_resumes(toy, tmp_path):
    root, argv = toy
    runs = root / "runs"
    finished = runs / "classify-linglo_t-s0"
    stamp = (finished / "last.pt").stat().st_mtime_ns
    assert study.main(["layout", *argv[1:]]) == 0
    assert (finished / "last.pt").stat().st_mtime_ns == stamp       # read back, not retrained
    # a run whose plan has more epochs than its last.pt: it resumes from there (as after an interruption)
    cut = tmp_path / "cut"
    shutil.copytree(finished, cut)
    data = {"classify": runs / "data" / "hymenoptera-40-first4", "segment": runs / "data" / "coco128_semseg-64-first4"}
    task, cfg = study.plan_runs([study.STUDIES["layout"]], "toy", 1, data, runs, "cpu")[finished]
    summary = study.train_one(task, {**cfg, "epochs": 2, "output": str(cut)})
    assert summary["epochs_done"] == 2 and "resuming after epoch 1" in (cut / "train.log").read_text()


def test_reading_calls_differences_inside_the_seed_spread_no_difference():
    assert study.compare([60.0, 62.0, 64.0], [59.0, 61.0, 63.0]) == "no difference"
    assert study.compare([70.0, 71.0, 72.0], [60.0, 61.0, 62.0]) == "better"
    assert study.compare([50.0, 51.0, 52.0], [60.0, 61.0, 62.0]) == "worse"
    assert study.compare([70.0], [60.0]) == "n/a (1 seed)"
    mean, std = study.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == 1.0


def test_parallel_jobs_from_the_command_line(toy):
    """--jobs 2: runs in worker processes (the way the small budget runs on 2 cores)."""
    root, _ = toy
    out = root / "parallel"
    proc = subprocess.run([sys.executable, str(SCRIPT), "layout", "--budget", "toy", "--jobs", "2",
                           "--runs", str(out / "runs"), "--results", str(out / "results")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 runs (2 at a time" in proc.stdout
    assert len(_rows(out / "results" / "layout" / "results.csv")) == 4
