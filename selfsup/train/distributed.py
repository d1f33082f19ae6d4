"""Process-group set-up and the DDP wrapper.

The same command runs single-process or under ``torchrun --nproc_per_node N`` (DDP with
NCCL on GPUs, gloo on CPU). The collectives the losses and methods use are in
``selfsup.core.comm``; cross-rank batch norm in ``selfsup.models.global_bn``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from selfsup.models.global_bn import convert_global_bn


@dataclass
class DistInfo:
    """Where this process sits: rank, world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else run alone.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world_size, local_rank, dev)


def wrap_model(method: nn.Module, info: DistInfo, sync_bn: bool) -> tuple[nn.Module, nn.Module]:
    """Prepare a method for this process: cross-rank BN if asked, DDP when distributed.

    Returns ``(method, model)``: the (possibly converted) method, whose hooks and weights the
    trainer uses, and the module to call for the forward pass (DDP-wrapped or the same).
    """
    if info.world_size == 1:
        return method, method
    if sync_bn:
        method = convert_global_bn(method, info.device)
    ids = [info.local_rank] if info.device.type == "cuda" else None
    return method, nn.parallel.DistributedDataParallel(method, device_ids=ids)
