"""benchmarks/study.py at the toy budget: every study runs end to end on the real data (tables, CSV, plots),
arms of the mixer study have equal parameters, finished runs are not retrained, an interrupted run resumes,
the unpaired and the paired readings call differences inside the noise "no difference", and the GPU script
runs at toy size on the CPU."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "study.py"
STUDIES = ["mixer", "layout", "window", "macro", "macro_xs", "peers"]   # the toy budget's `all` (with cost)
BIG_PEERS = ["peers_xs", "peers_s", "peers_m"]              # larger timm peers: a slow check


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


def test_every_study_is_in_all():
    assert set(STUDIES) | set(BIG_PEERS) | {"cost"} == set(study.ALL)
    assert set(study.BUDGETS["toy"]["all"]) == set(STUDIES) | {"cost"}


def _check_table(out: Path, name: str) -> None:
    rows = _rows(out / "results.csv")
    s = study.get_study(name)
    assert [(r["task"], r["arm"]) for r in rows] == [("classify", a.label) for a in s.arms]
    for r in rows:
        assert 0 <= float(r["top1_mean"]) <= 100 and int(r["val_images"]) == 10
        assert float(r["top1_val_se"]) == pytest.approx(study.val_sampling_error(float(r["top1_mean"]), 10))
        assert float(r["params_m"]) > 0 and float(r["gmacs_64"]) > 0 and float(r["latency_ms_64"]) > 0
    md = (out / "results.md").read_text()
    assert all(f"| {a.label} |" in md for a in s.arms) and "python benchmarks/study.py" in md
    assert f"top1 paired vs {s.arms[0].label}" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_writes_its_table_csv_and_plot(toy, name):
    root, _ = toy
    _check_table(root / "results" / name, name)


@pytest.mark.slow
def test_the_larger_peer_rows_write_their_tables(tmp_path):
    if not study.DATA.is_dir():
        pytest.skip(f"{study.DATA} not available")
    assert study.main([*BIG_PEERS, "--budget", "toy", "--runs", str(tmp_path / "runs"),
                       "--results", str(tmp_path / "results")]) == 0
    for name in BIG_PEERS:
        _check_table(tmp_path / "results" / name, name)


def test_report_writes_a_partial_table_from_the_finished_runs_without_training(toy, tmp_path, capsys):
    root, argv = toy
    runs = root / "runs"
    before = sorted(p.name for p in runs.iterdir())
    out = tmp_path / "results"
    assert study.main(["mixer", "--budget", "toy", "--seeds", "2", "--report", "--runs", str(runs),
                       "--results", str(out)]) == 0
    assert sorted(p.name for p in runs.iterdir()) == before                 # nothing trained
    n_arms = len(study.get_study("mixer").arms)
    assert f"({n_arms} run(s) missing)" in capsys.readouterr().out
    md = (out / "mixer" / "results.md").read_text()
    assert f"Partial: {n_arms} of {2 * n_arms} runs not finished" in md
    rows = _rows(out / "mixer" / "results.csv")
    assert all(r["seeds"] == "1" for r in rows) and rows[1]["top1_paired_vs_none"].endswith("n/a (1 seed)")


def test_mixer_arms_have_the_baselines_parameter_count_and_are_compared_with_none_and_linear(toy):
    root, _ = toy
    rows = _rows(root / "results" / "mixer" / "results.csv")
    base = float(rows[0]["backbone_params_m"])
    assert {r["arm"] for r in rows} == {*study.KEY_ONLY_ARMS, *study.MIXERS[1:]}
    for r in rows:
        assert abs(float(r["backbone_params_m"]) / base - 1) < 0.005, r["arm"]
    assert all("mlp_ratio" in r["model"] for r in rows[1:])   # equal parameters come from the MLP width
    assert {"top1_paired_vs_none", "top1_paired_vs_linear"} <= set(rows[0])


def test_derived_studies_vary_the_default_arm():
    default = study.default_arm()
    assert default.label == study.DEFAULT
    for name in ("layout", "window"):
        base = study.get_study(name).arms[0]
        assert dict(base.kwargs) == dict(default.kwargs)
    graft = study.get_study("layout").arms[1]
    assert dict(graft.kwargs) == {**dict(default.kwargs), "layout": "graft"}
    assert study.get_study("peers").arms[0].kwargs == default.kwargs


def test_arms_build_over_0_1_defaults_and_fastvit_trains_nchw_on_cpu(tmp_path):
    """Arms are spelled over LinGlo 0.1's defaults (the base the studies ran on), so the first key-only arm still
    builds 0.1's linglo_t; FastViT trains NCHW on CPU (its channels-last backward aborts the process there)."""
    v1 = study.resolve_arms(study.get_study("mixer"))[0]
    assert v1.build_kwargs["mlp_ratio"] == 4.0 and v1.build_kwargs["value_conv"] == 0
    peers = replace(study.get_study("peers"), tasks=("classify",))
    data = {"classify": tmp_path}
    cpu = {cfg["model"]: cfg for _, cfg in study.plan_runs([peers], "cpu", 1, data, tmp_path, "cpu").values()}
    assert cpu["fastvit_t8"]["channels_last"] is False and cpu["convnext_atto"]["channels_last"] is True
    assert all(cfg["channels_last"] for _, cfg in study.plan_runs([peers], "cpu", 1, data, tmp_path, "cuda").values())


def test_cost_study_benches_every_mixer_at_every_size(toy):
    root, _ = toy
    rows = _rows(root / "results" / "cost" / "bench.csv")
    assert {(r["model"], int(r["resolution"])) for r in rows} == {
        (f"linglo_t[token_mixer={m}]", res) for m in study.MIXERS for res in study.BUDGETS["toy"]["cost"]}
    assert (root / "results" / "cost" / "bench.png").is_file()


def test_rerun_reads_finished_runs_back_and_an_unfinished_run_resumes(toy, tmp_path):
    root, argv = toy
    runs = root / "runs"
    finished = study.run_dir(runs, "classify", study.default_arm(), 0)
    stamp = (finished / "last.pt").stat().st_mtime_ns
    assert study.main(["layout", *argv[1:]]) == 0
    assert (finished / "last.pt").stat().st_mtime_ns == stamp       # read back, not retrained
    # a run whose plan has more epochs than its last.pt: it resumes from there (as after an interruption)
    cut = tmp_path / "cut"
    shutil.copytree(finished, cut)
    data = {"classify": runs / "data" / "imagenette-orig-first2-val1"}
    layout = replace(study.get_study("layout"), tasks=("classify",))
    task, cfg = study.plan_runs([layout], "toy", 1, data, runs, "cpu")[finished]
    summary = study.train_one(task, {**cfg, "epochs": 2, "output": str(cut)})
    assert summary["epochs_done"] == 2 and "resuming after epoch 1" in (cut / "train.log").read_text()


def test_unpaired_reading_calls_differences_inside_the_seed_spread_no_difference():
    assert study.compare([60.0, 62.0, 64.0], [59.0, 61.0, 63.0]) == "no difference"
    assert study.compare([70.0, 71.0, 72.0], [60.0, 61.0, 62.0]) == "better"
    assert study.compare([50.0, 51.0, 52.0], [60.0, 61.0, 62.0]) == "worse"
    assert study.compare([70.0], [60.0]) == "n/a (1 seed)"
    mean, std = study.mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == 1.0


def test_paired_reading_sees_a_consistent_shift_that_the_spread_hides():
    base = [60.0, 66.0, 72.0]                                  # large seed-to-seed spread
    arm = [61.0, 67.1, 72.9]                                   # every seed about one point up
    assert study.compare(arm, base) == "no difference"
    p = study.compare_paired(arm, base)
    assert p["call"] == "better" and p["up"] == 3 and p["mean"] == pytest.approx(1.0)
    assert p["t"] == pytest.approx(1.0 / (0.1 / 3 ** 0.5))
    assert study.compare_paired([61.0, 65.0, 73.0], base)["call"] == "no difference"   # +1, −1, +1
    assert study.compare_paired([59.0, 65.0, 71.0], base)["call"] == "worse"           # exactly −1 each: t = −∞
    assert study.compare_paired([61.0], [60.0])["call"] == "n/a (1 seed)"
    shared = study.compare_paired({0: 61.0, 2: 73.0}, dict(enumerate(base)))    # seed 1 of the arm did not finish
    assert shared["n"] == 2 and shared["mean"] == pytest.approx(1.0)
    assert study.compare_paired({1: 61.0}, {0: 60.0})["call"] == "n/a (no shared seed)"
    assert study.paired_text(p).endswith("3/3 up: better")
    assert study.val_sampling_error(70.0, 3925) == pytest.approx(0.7315, abs=1e-3)


def test_parallel_jobs_and_segmentation_from_the_command_line(toy):
    """--jobs 2: runs in worker processes (the way the cpu budget runs on 2 cores); --tasks adds segmentation."""
    root, _ = toy
    out = root / "parallel"
    proc = subprocess.run([sys.executable, str(SCRIPT), "layout", "--budget", "toy", "--jobs", "2",
                           "--tasks", "classify", "segment",
                           "--runs", str(out / "runs"), "--results", str(out / "results")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "4 runs (2 at a time" in proc.stdout
    rows = _rows(out / "results" / "layout" / "results.csv")
    assert [r["task"] for r in rows] == ["classify", "classify", "segment", "segment"]
    assert rows[2]["mIoU_val_se"] == "nan"                      # no binomial error for a mean IoU


def test_no_run_starts_after_the_deadline(tmp_path, capsys):
    if not study.DATA.is_dir():
        pytest.skip(f"{study.DATA} not available")
    code = study.main(["layout", "--budget", "toy", "--deadline-s", "0", "--runs", str(tmp_path / "runs"),
                       "--results", str(tmp_path / "results")])
    out = capsys.readouterr()
    assert code == 1 and "not started: deadline" in out.out and "layout: no table" in out.out
    assert not (tmp_path / "results" / "layout").exists()


def test_gpu_script_runs_at_toy_size_on_cpu(tmp_path):
    """benchmarks/gpu_study.sh end to end (speed, a leaderboard run, a study), the way a lent GPU runs it."""
    if not study.DATA.is_dir():
        pytest.skip(f"{study.DATA} not available")
    data = tmp_path / "data" / "imagenette"
    for split, n in (("train", 2), ("val", 1)):
        for cls in sorted((study.DATA / "imagenette" / split).iterdir()):
            (data / split / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:n]:
                (data / split / cls.name / f.name).symlink_to(f)
    env = {**os.environ, "BUDGET": "toy", "DEVICE": "cpu", "AMP": "none", "STUDIES": "layout", "LEADER_EPOCHS": "1",
           "LEADER_MODELS": "test_convnext", "LEADER_ARGS": "--img-size 32 --batch-size 8",
           "SPEED_ARGS": "--steps 1 --rounds 1 --set img_size=32 batch_size=8", "DATA": str(tmp_path / "data"),
           "OUT": str(tmp_path / "out"), "RUNS": str(tmp_path / "runs"), "GRID_DEADLINE_S": "600"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_study.sh")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "out"
    speed = json.loads((out / "train_speed.json").read_text())
    assert speed["ratio"] > 0 and set(speed["img_per_s"]) == {"model alone", "pipeline"}
    assert "test_convnext 1 epochs: exit 0" in (out / "leaders.txt").read_text()
    assert len(_rows(out / "study" / "layout" / "results.csv")) == 2
    listing = subprocess.run(["tar", "-tzf", str(out / "results.tgz")], capture_output=True, text=True).stdout
    assert "study/layout/results.md" in listing and "leaders/leader-test_convnext-e1/summary.json" in listing
