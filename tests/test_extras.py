"""Optional dependencies (pyproject extras): the base install runs the classify path without them, and a command
that needs a missing one says which extra to install, in one error line."""
import subprocess
import sys

import pytest

from linglo.cli.main import main
from linglo.extras import EXTRAS

BLOCK = f"""
import importlib.abc, importlib.machinery, sys
class Block(importlib.abc.MetaPathFinder, importlib.abc.Loader):   # as if the optional packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(EXTRAS)!r}:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Block())
"""


def test_base_install_covers_the_classify_path():
    """README line 1 (`pip install -e . && linglo demo`): everything the demo imports, without any extra."""
    code = BLOCK + """
import linglo, linglo.cli.main, linglo.engine.trainer, linglo.models
from linglo.tasks import get_task
get_task("classify")
try:
    get_task("detect")
except Exception as e:
    print(type(e).__name__, e)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith("LingloError pycocotools is not installed (the detect task needs it): "
                                         "pip install 'linglo[coco]'")


@pytest.mark.parametrize("argv,extra", [
    (["export", "--model", "linglo_t", "--output", "x.onnx"], "export"),
    (["train", "detect", "--model", "linglo_t", "--data", "nowhere"], "coco"),
])
def test_missing_extra_is_one_error_line(argv, extra, monkeypatch, capsys, tmp_path):
    for name in list(sys.modules):   # forget the optional packages and the task modules that import them
        if name.split(".")[0] in EXTRAS or name in ("linglo.tasks.detect.task", "linglo.tasks.detect.data",
                                                    "linglo.tasks.detect.metrics"):
            monkeypatch.delitem(sys.modules, name)
    for name in EXTRAS:
        monkeypatch.setitem(sys.modules, name, None)   # import raises ImportError
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and f"pip install 'linglo[{extra}]'" in err
