"""InfoNCE-type losses (pure functions of tensors)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """NT-Xent, the normalised-temperature cross-entropy of SimCLR (Chen et al., 2020).

    With u = z / ||z|| and the 2N embeddings of both views of a global batch of N images,
    the loss of anchor i whose positive is its other view p(i) is

        l_i = -log( exp(u_i . u_p(i) / t) / sum_{k != i} exp(u_i . u_k / t) ),

    averaged over this process's 2n anchors (both views: the loss is symmetric).

    z1, z2: (n, d) this rank's projections of view 1 and view 2.
    z1_all, z2_all: (N, d) the same gathered over all ranks in rank order (default: z1, z2);
        gather them with gradient so negatives from other ranks are trained too.
    offset: index of this rank's first sample in the gathered batch (rank * n).
    """
    z1_all = z1 if z1_all is None else z1_all
    z2_all = z2 if z2_all is None else z2_all
    n, big_n = z1.shape[0], z1_all.shape[0]
    q = F.normalize(torch.cat([z1, z2]), dim=1)
    k = F.normalize(torch.cat([z1_all, z2_all]), dim=1)
    logits = q @ k.T / temperature
    local = torch.arange(n, device=z1.device) + offset
    self_idx = torch.cat([local, local + big_n])
    pos_idx = torch.cat([local + big_n, local])
    rows = torch.arange(2 * n, device=z1.device)
    logits = logits.masked_fill(
        torch.zeros_like(logits, dtype=torch.bool).index_put_((rows, self_idx), torch.tensor(True)),
        float("-inf"),
    )
    return F.cross_entropy(logits, pos_idx)


def info_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (van den Oord et al., 2018; MoCo's loss) from similarities.

        l_i = -log( exp(s_i+ / t) / (exp(s_i+ / t) + sum_j exp(s_ij- / t)) ),  averaged over i.

    pos: (N,) similarity of each anchor to its positive (cosine for normalised embeddings).
    neg: (N, M) similarities of each anchor to its M negatives (e.g. a MoCo queue).
    """
    logits = torch.cat([pos[:, None], neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device))


def nce(
    pos: torch.Tensor, neg: torch.Tensor, temperature: float, num_items: int, log_z: torch.Tensor | float
) -> torch.Tensor:
    """Binary noise-contrastive estimation (Gutmann & Hyvarinen, 2010) as used by InstDisc
    (Wu et al., 2018) over ``num_items`` instance classes with uniform noise P_n = 1 / n.

    With P(i | v) = exp(s_i / t) / Z and m noise samples per anchor, the posterior that a
    sample came from the data is h = P / (P + m P_n) = sigmoid(log P - log(m / n)), and

        L = -mean_i [ log h(pos_i) + sum_j log(1 - h(neg_ij)) ].

    pos: (N,) similarity to the positive; neg: (N, m) similarities to the noise samples;
    log_z: log of the normalising constant Z (InstDisc estimates it once, from the first
    batch, as n * mean exp(s / t), and keeps it fixed).
    """
    shift = math.log(neg.shape[1] / num_items)
    h_pos = F.logsigmoid(pos / temperature - log_z - shift)
    h_neg = F.logsigmoid(-(neg / temperature - log_z - shift)).sum(dim=1)
    return -(h_pos + h_neg).mean()
