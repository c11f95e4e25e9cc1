"""Optional dependencies: the pip extra that installs each, and the one-line error that names it when missing."""
from __future__ import annotations

import importlib
from types import ModuleType

from linglo.errors import LingloError

EXTRAS = {"pycocotools": "coco", "faster_coco_eval": "coco",
          "onnx": "export", "onnxruntime": "export", "onnxscript": "export"}


def missing(module: str, why: str) -> LingloError:
    """The error for an optional `module` that is not installed: what needs it, and the extra to install."""
    return LingloError(f"{module} is not installed ({why}): pip install 'linglo[{EXTRAS[module]}]'")


def require(module: str, why: str) -> ModuleType:
    """Import an optional module, or raise the LingloError that names its extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise missing(module, why) from None
