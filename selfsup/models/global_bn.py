"""Batch norm over the global batch of all ranks, on any device (CPU gloo runs included)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.core.comm import all_reduce_with_grad, world_size


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
