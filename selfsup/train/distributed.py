"""Distributed helpers: process-group set-up, rank queries and a gather that keeps gradients.

The same command runs single-process or under ``torchrun --nproc_per_node N`` (DDP with
NCCL on GPUs, gloo on CPU). Everything here degrades to a no-op on one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


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


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over ranks, then slices.

    Every rank's loss depends on every rank's features, so the gradient reaching this
    rank's slice is the sum over all ranks' losses; returning only the local gradient
    (a bug in several public libraries) silently drops the cross-rank terms.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks in rank order, keeping gradients to every rank."""
    return _GatherWithGrad.apply(x) if world_size() > 1 else x


@torch.no_grad()
def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) from all ranks, without gradients."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Average a tensor over ranks (a copy; no gradient)."""
    if world_size() == 1:
        return x
    x = x.detach().clone()
    dist.all_reduce(x)
    return x / world_size()


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; every rank's output depends on every input, so backward sums too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def all_reduce_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over ranks, differentiably (identity on one process)."""
    return _AllReduceWithGrad.apply(x) if world_size() > 1 else x


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over the GLOBAL batch (all ranks), on any device.

    PyTorch's ``SyncBatchNorm`` runs only on CUDA; this one all-reduces the per-channel
    sums and count, then the centred sums of squares, with gradient, so CPU (gloo) runs and tests normalise
    exactly like one process holding the whole batch. Alone it is a plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # at least float32 (AMP), float64 kept
        # two passes (mean, then centred squares) for the same round-off as one process
        total = all_reduce_with_grad(torch.cat([xf.sum(dims), xf.new_tensor([x.numel() / c])]))
        n = total[-1]
        mean = total[:c] / n
        centred = xf - mean.view(shape)
        var = all_reduce_with_grad((centred * centred).sum(dims)) / n
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1)).to(self.running_var.dtype), m)
                self.num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_global_bn(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every batch norm by a cross-rank one: PyTorch's SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
        if module.affine:
            out.weight.requires_grad_(module.weight.requires_grad)
            out.bias.requires_grad_(module.bias.requires_grad)
    for name, child in module.named_children():
        out.add_module(name, convert_global_bn(child, device))
    return out


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
