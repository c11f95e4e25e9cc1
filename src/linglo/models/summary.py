"""Model facts for tables (`linglo models`, benchmarks): parameters, GMACs, feature channels."""
from __future__ import annotations

import timm
import torch
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from .linglo import FAMILY

__all__ = ["count_params", "count_gmacs", "describe", "describe_family"]

# FlopCounterMode counts SDPA's CUDA kernels but not the CPU flash kernel (it would count softmax attention as
# free on CPU): give the CPU kernel the same formula (its q, k, v come first, as for the CUDA flash kernel).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
if _CPU_FLASH is not None and _CPU_FLASH not in flop_counter.flop_registry:
    @flop_counter.register_flop_formula(_CPU_FLASH)
    def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_gmacs(model: torch.nn.Module, img_size: int | tuple[int, int] = 224, in_chans: int = 3,
                example: torch.Tensor | None = None) -> float:
    """Multiply-accumulates of one forward (of `example`, else a zero image at batch 1), counted by torch's
    FlopCounterMode (FLOPs / 2)."""
    hh, ww = (img_size, img_size) if isinstance(img_size, int) else img_size
    if example is None:
        example = torch.zeros(1, in_chans, hh, ww, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
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
