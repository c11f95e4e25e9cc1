"""Model facts for tables (`linglo models`, benchmarks): parameters, GMACs, feature channels."""
from __future__ import annotations

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from .linglo import FAMILY

__all__ = ["count_params", "count_gmacs", "describe", "describe_family"]


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: torch.nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3) -> float:
    """Multiply-accumulates of one forward at batch 1, counted by torch's FlopCounterMode (FLOPs / 2)."""
    hh, ww = (img_size, img_size) if isinstance(img_size, int) else img_size
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_chans, hh, ww, device=next(model.parameters()).device))
    model.train(was_training)
    return counter.get_total_flops() / 2e9


def describe(name: str, img_size: int = 224, **kwargs) -> dict:
    """Params (M, 1000-class classifier), GMACs at img_size², and stage channels of a timm model name."""
    model = timm.create_model(name, **kwargs)
    channels = [f["num_chs"] for f in getattr(model, "feature_info", [])]
    return {"model": name, "params_m": count_params(model) / 1e6, "gmacs": count_gmacs(model, img_size),
            "img_size": img_size, "feature_channels": channels}


def describe_family(img_size: int = 224) -> list[dict]:
    """One row per LinGlo variant."""
    return [describe(name, img_size) for name in FAMILY]
