"""Split-batch normalisation: batch-norm statistics over equal sub-batches of the batch.

MoCo (He et al., 2020) trains its key encoder on 8 GPUs whose batch norms each see 32
images, and shuffles the keys across GPUs so that a query and its key never share those
statistics ("shuffling BN"); otherwise the model cheats through BN's intra-batch
communication. On one device the same effect needs a batch norm that normalises
``num_splits`` sub-batches separately, fed with a shuffled batch.
"""

from __future__ import annotations

import torch
from torch import nn

from selfsup.core.comm import world_size
from selfsup.core.tensors import upcast


class SplitBatchNorm(nn.Module):
    """Batch norm whose training statistics come from ``num_splits`` equal, contiguous
    sub-batches of the GLOBAL batch, i.e. like a plain batch norm on ``num_splits`` devices.

    Under DDP with W processes each process normalises its share in ``num_splits // W``
    sub-batches (at least one), so the sub-batch size, and hence the statistics, do not
    depend on how many processes run. In eval mode it is a plain batch norm on the running
    statistics, which are updated with the MEAN of the sub-batches' statistics (the same as
    averaging ``num_splits`` batch norms that each took one step).

    Deliberately not a ``_BatchNorm`` subclass: converting a model to SyncBatchNorm /
    GlobalBatchNorm must leave these per-sub-batch statistics alone. Parameters and buffers
    are named and ordered as in ``nn.BatchNorm2d``, so state dicts and EMA updates line up.
    """

    def __init__(
        self, num_features: int, num_splits: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True
    ) -> None:
        super().__init__()
        if num_splits < 1:
            raise ValueError(f"num_splits must be >= 1, got {num_splits}")
        self.num_features, self.num_splits, self.eps, self.momentum = num_features, num_splits, eps, momentum
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batch_norm(cls, bn: nn.modules.batchnorm._BatchNorm, num_splits: int) -> SplitBatchNorm:
        """A split batch norm with ``bn``'s options, weights and running statistics."""
        out = cls(bn.num_features, num_splits, bn.eps, bn.momentum if bn.momentum is not None else 0.1, bn.affine)
        out.load_state_dict(bn.state_dict())
        out.train(bn.training)
        if bn.affine:
            out.weight.requires_grad_(bn.weight.requires_grad)
            out.bias.requires_grad_(bn.bias.requires_grad)
        return out

    def local_splits(self) -> int:
        """Sub-batches per process: ``num_splits // world_size``, at least one."""
        return max(1, self.num_splits // world_size())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        if not self.training:
            y = (x - self.running_mean.view(shape)) * torch.rsqrt(self.running_var.view(shape) + self.eps)
        else:
            s, n = self.local_splits(), x.shape[0]
            if n % s:
                raise ValueError(f"SplitBatchNorm: batch {n} does not split into {s} equal sub-batches")
            xs = upcast(x).reshape(s, n // s, c, -1)  # (split, sample, channel, position)
            var, mean = torch.var_mean(xs, dim=(1, 3), correction=0, keepdim=True)
            y = ((xs - mean) * torch.rsqrt(var + self.eps)).view(x.shape)
            with torch.no_grad():
                count = xs.shape[1] * xs.shape[3]
                self.running_mean.lerp_(mean.flatten(1).mean(0).to(self.running_mean.dtype), self.momentum)
                unbiased = var.flatten(1).mean(0) * count / max(count - 1, 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
                self.num_batches_tracked.add_(1)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return torch.empty_like(x).copy_(y)  # keeps x's dtype and memory format (channels_last)

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_splits={self.num_splits}, eps={self.eps}, momentum={self.momentum}"


def convert_split_bn(module: nn.Module, num_splits: int) -> nn.Module:
    """Replace every batch norm in ``module`` by a :class:`SplitBatchNorm` (returns the new root)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return SplitBatchNorm.from_batch_norm(module, num_splits)
    for name, child in module.named_children():
        module.add_module(name, convert_split_bn(child, num_splits))
    return module
