"""torchrun DDP: process group setup (nccl on GPU, gloo on CPU), device choice, cross-rank gathers.

Started by `torchrun --nproc_per_node N -m linglo.cli train ...` (or `--no-python linglo train ...`);
without torchrun (WORLD_SIZE unset) everything runs in one process and the gathers are identities.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from linglo.errors import LingloError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def sum(self, *values: float) -> list[float]:
        """Element-wise sum of `values` over ranks."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def pick_device(flag: str, local_rank: int) -> torch.device:
    """--device auto|cpu|cuda|cuda:N; under torchrun "cuda"/"auto" mean this process's local GPU."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(flag)
    except RuntimeError as e:
        raise LingloError(f"--device: '{flag}' is not a device (use auto, cpu, cuda or cuda:N)") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LingloError(f"--device {flag}: CUDA is not available on this machine; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise LingloError(f"--device {flag}: only {torch.cuda.device_count()} GPU(s) visible")
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise LingloError(f"--device: unsupported device type '{device.type}' (use auto, cpu, cuda or cuda:N)")
    return device


def setup(device_flag: str) -> DistContext:
    """Join the torchrun process group if there is one; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_flag, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return DistContext(rank, world, local_rank, device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
