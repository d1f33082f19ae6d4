"""Attentive probe (CAE, Chen et al., IJCV 2023; ../shared/docs/methods-spec.md s. 4) on frozen
ViT tokens, extracted once.

The tokens are the encoder's output after its final LN, CLS and patches, frozen. ONE
cross-attention block pools them: a learnable query q0 (1, D), initialised to zero, attends to
all N tokens T with separate LNs on the query, keys and values,
    a = softmax(LN_q(q0) W_q (LN_k(T) W_k)^T / sqrt(d_h)) (LN_v(T) W_v)   per head, then W_o,
with no residual and no MLP; then a BatchNorm without affine parameters and a linear classifier.
The projections' biases start at zero (as CAE's), so at initialisation LN_q(0) W_q = 0, every
logit is equal and the block pools exactly the mean of the value projections: it starts as a
mean-pooled linear probe and learns where to look.

Training (ours; the paper's ImageNet recipe is not given in the spec): AdamW with a cosine
schedule, no augmentation (the tokens are extracted once from the whole images). The LAST
epoch's test accuracy is the result; the best epoch is reported too, labelled as such.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.progress import progress
from selfsup.eval.linear import LinearResult
from selfsup.models.attention import CrossAttention


class AttentiveProbe(nn.Module):
    """Query cross-attention pooling + BN (no affine) + linear classifier over (B, N, D) tokens."""

    def __init__(self, dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm_q, self.norm_k, self.norm_v = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, num_heads)
        for projection in (self.attn.q, self.attn.k, self.attn.v):
            nn.init.zeros_(projection.bias)
        self.bn = nn.BatchNorm1d(dim, affine=False)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The query's attention output (B, D) over the tokens (B, N, D)."""
        q = self.norm_q(self.query).expand(tokens.shape[0], -1, -1)
        return self.attn(q, self.norm_k(tokens), self.norm_v(tokens))[:, 0]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.pool(tokens)))


def attentive_probe(
    train_tokens: torch.Tensor,
    train_labels: torch.Tensor,
    test_tokens: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    num_heads: int,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> LinearResult:
    """Train an :class:`AttentiveProbe` on frozen training tokens (N, T, D); test every epoch."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = AttentiveProbe(train_tokens.shape[-1], num_classes, num_heads).to(device)
    decayed = [p for p in probe.parameters() if p.ndim > 1]
    others = [p for p in probe.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decayed, "weight_decay": weight_decay},
                             {"params": others, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(train_tokens) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    accs, pred = [], torch.empty(0, dtype=torch.int64)
    for _ in progress(range(epochs), "attentive probe epochs"):
        probe.train()
        for idx in torch.randperm(len(train_tokens), generator=gen).split(batch_size):
            if len(idx) < 2:  # batch norm needs two samples
                continue
            loss = F.cross_entropy(probe(train_tokens[idx].to(device)), train_labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        probe.eval()
        with torch.no_grad():
            pred = torch.cat([probe(t.to(device)).argmax(1).cpu() for t in test_tokens.split(1024)])
            accs.append((pred == test_labels).float().mean().item())
    best = max(range(epochs), key=accs.__getitem__)
    return LinearResult(accs[-1], accs[best], best + 1, epochs, pred)
