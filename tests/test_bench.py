"""linglo bench: end to end on small models (table, CSV, PNG, ratios), exponent fit, and one-line bad-input errors."""
import argparse
import csv

import pytest
import torch

from linglo.bench import BenchConfig, bench, fit_exponent, run_bench
from linglo.cli import deploy_args
from linglo.cpu_allocator import allocator_state
from linglo.errors import LingloError


def test_bench_end_to_end_writes_csv_plot_and_peer_ratios(tmp_path):
    out = tmp_path / "bench"
    rows = bench(BenchConfig(models=["linglo_t", "convnext_atto"], resolutions=[32, 64], warmup=1, repeats=3,
                             throughput_batch=2, threads=1, output=out), log=lambda _: None)
    assert [(r["model"], r["resolution"]) for r in rows] == [("linglo_t", 32), ("linglo_t", 64),
                                                             ("convnext_atto", 32), ("convnext_atto", 64)]
    with open(out / "bench.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 4
    for r in table:
        assert float(r["latency_ms"]) > 0 and float(r["latency_iqr_ms"]) >= 0
        assert float(r["throughput_img_s"]) > 0 and int(r["throughput_batch"]) >= 1
        assert float(r["peak_mem_mb"]) > 0 and float(r["params_m"]) > 1 and float(r["gmacs"]) > 0
        assert r["latency_exponent"] and r["memory_exponent"]
        assert r["device"].startswith("cpu") and r["threads"] == "1" and r["dtype"] == "fp32" and r["torch"]
        assert r["allocator"] == allocator_state() and r["allocator"] in ("reuse", "system")
        assert r["warm_visits"] == "1"
    # 4x the pixels: the first-layer GMACs and the peak memory grow with the input
    lin = {int(r["resolution"]): r for r in table if r["model"] == "linglo_t"}
    assert float(lin[64]["gmacs"]) > 3 * float(lin[32]["gmacs"])
    assert float(lin[64]["peak_mem_mb"]) > float(lin[32]["peak_mem_mb"])
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "ratios.csv") as f:
        ratios = list(csv.DictReader(f))
    assert {(r["linglo"], r["peer"]) for r in ratios} == {("linglo_t", "convnext_atto")} and len(ratios) == 2
    assert all(float(r["latency_ratio"]) > 0 for r in ratios)


def test_peak_memory_grows_with_the_forward_not_the_model():
    """The CPU peak is the forward's working memory: 4x the pixels -> about 4x the bytes for a plain conv net.
    (From 128²: at 64² linglo_t's channels-last forward holds a fixed extra ~0.8 MiB, most of that small peak;
    from 128² the NHWC and NCHW forwards have the same peak.)"""
    rows, _ = run_bench(BenchConfig(models=["linglo_t"], resolutions=[128, 256], warmup=1, repeats=1,
                                    throughput_batch=0, threads=1), log=lambda _: None)
    small, large = (r["peak_mem_mb"] for r in rows)
    assert 2.5 < large / small < 5.5
    assert 0.7 < rows[0]["memory_exponent"] < 1.3


def test_fit_exponent_recovers_a_power_law():
    pixels = [64 ** 2, 128 ** 2, 256 ** 2]
    assert fit_exponent(pixels, [3 * p ** 1.5 for p in pixels]) == pytest.approx(1.5)
    assert fit_exponent([64 ** 2], [1.0]) is None


def test_unknown_model_suggests_close_names():
    with pytest.raises(LingloError, match="unknown model 'linglo_tt'.*linglo_t") as err:
        run_bench(BenchConfig(models=["linglo_tt"], resolutions=[64]))
    assert "\n" not in str(err.value)


def test_fixed_size_model_says_which_size_and_why():
    cfg = BenchConfig(models=["swin_tiny_patch4_window7_224"], resolutions=[512], repeats=1)
    with pytest.raises(LingloError, match=r"swin_tiny_patch4_window7_224 takes only 224x224.*fixed_input_size") as err:
        run_bench(cfg)
    assert "\n" not in str(err.value)
    cfg.skip_unsupported = True
    rows, _ = run_bench(cfg, log=lambda _: None)
    assert rows[0]["resolution"] == 512 and "takes only 224x224" in rows[0]["note"] and "latency_ms" not in rows[0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(dtype="fp8"), "--dtype must be one of"),
    (dict(resolutions=[8]), "--resolutions must be sizes >= 16"),
    (dict(repeats=0), "--repeats >= 1"),
    (dict(device="tpu"), "--device"),
    (dict(allocator="jemalloc"), "--allocator must be reuse or system, got 'jemalloc'"),
    (dict(warm_visits=-1), "--warmup and --warm-visits must be >= 0"),
    (dict(models=["linglo_q+peers"]), "'\\+peers' works for"),
])
def test_bad_arguments_are_one_line_errors(kwargs, message):
    cfg = BenchConfig(**{**dict(models=["linglo_t"], resolutions=[64]), **kwargs})
    with pytest.raises(LingloError, match=message) as err:
        run_bench(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(LingloError, match="CUDA is not available"):
        run_bench(BenchConfig(models=["linglo_t"], resolutions=[64], device="cuda"))


def test_cli_flags_parse_into_the_config():
    parser = argparse.ArgumentParser(prog="linglo")
    deploy_args.register(parser.add_subparsers(dest="command"))
    args = vars(parser.parse_args(["bench", "--models", "linglo_t+peers,linglo_xs", "--resolutions", "224,1024",
                                   "--threads", "2", "--compile", "--channels-last", "--no-memory",
                                   "--allocator", "system", "--warm-visits", "0"]))
    assert args.pop("command") == "bench"
    cfg = BenchConfig(**args)
    assert cfg.models == ["linglo_t+peers", "linglo_xs"] and cfg.resolutions == [224, 1024]
    assert cfg.compile and cfg.channels_last and not cfg.memory and cfg.threads == 2 and cfg.allocator == "system"
    assert cfg.warm_visits == 0
    assert BenchConfig(models=["linglo_t"], resolutions=[224]).allocator == "reuse"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--models", "linglo_t", "--resolutions", "224,big"])


@pytest.mark.parametrize("argv,message", [
    (["bench", "--models", "linglo_tt", "--resolutions", "64"], "error: unknown model 'linglo_tt'"),
    (["bench", "--models", "swin_tiny_patch4_window7_224", "--resolutions", "512"], "takes only 224x224"),
    (["export", "--model", "linglo_t", "--output", "m.onnx", "--opset", "13"], "error: --opset must be >= 17"),
])
def test_linglo_cli_bad_input_exits_2_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    from linglo.cli.main import main
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_model_specs_compare_variants_of_one_model_in_one_run(tmp_path):
    """NAME[key=value,...] benches variants side by side, each row under its own spec."""
    specs = ["linglo_t", "linglo_t[token_mixer=none]", "linglo_t[widths=(16,32,64,128)]"]
    rows, _ = run_bench(BenchConfig(models=specs, resolutions=[32], warmup=1, repeats=2, throughput_batch=0,
                                    memory=False, threads=1), log=lambda _: None)
    params = {r["model"]: r["params_m"] for r in rows}
    assert list(params) == specs
    assert params["linglo_t[widths=(16,32,64,128)]"] < params["linglo_t[token_mixer=none]"] < params["linglo_t"]
    with pytest.raises(LingloError, match=r"rejected its arguments"):
        run_bench(BenchConfig(models=["linglo_t[no_such_arg=1]"], resolutions=[32]), log=lambda _: None)
    assert deploy_args.split_top_level("linglo_t[a=1,b=2],convnext_atto") == ["linglo_t[a=1,b=2]", "convnext_atto"]


def test_system_allocator_after_reuse_says_it_measures_reuse():
    from linglo.cpu_allocator import reuse_freed_memory
    if not reuse_freed_memory():
        pytest.skip("this C library has no glibc mallopt")
    lines: list[str] = []
    rows, env = run_bench(BenchConfig(models=["linglo_t"], resolutions=[32], warmup=0, repeats=1, throughput_batch=0,
                                      memory=False, allocator="system"), log=lines.append)
    assert env["allocator"] == "reuse" and rows[0]["allocator"] == "reuse"
    assert any("this run measures allocator=reuse" in line for line in lines)
