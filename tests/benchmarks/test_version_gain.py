"""benchmarks/version_gain.py runs and prints one row per model: linglo_t as each version built it, each with the
channels-last forward on and off, and the two peers."""
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "version_gain.py"


def test_prints_every_row(capsys):
    spec = importlib.util.spec_from_file_location("linglo_version_gain", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert module.main(["--sizes", "32", "--repeats", "1"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines()[2:] if line.strip()]
    assert [r.rsplit(maxsplit=1)[0].strip() for r in rows] == [
        "linglo_t 0.1, NCHW forward", "linglo_t 0.1, channels-last forward", "linglo_t 0.2, NCHW forward",
        "linglo_t 0.2, channels-last forward", "linglo_t 0.3, NCHW forward", "linglo_t 0.3, channels-last forward",
        "convnext_atto", "edgenext_x_small"]
    assert all(float(r.split()[-1]) > 0 for r in rows)
