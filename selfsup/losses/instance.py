"""Instance-discrimination losses whose classifier is the batch itself (pure functions)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def invariant_spreading(
    f: torch.Tensor,
    f_hat: torch.Tensor,
    temperature: float,
    f_all: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """The Invariant and Spreading loss (Ye, Zhang, Yuen, Chang, CVPR 2019, Eq. 5).

    With L2-normalised embeddings f_k of the batch's N images (the instance "classifier"),
    the probability that an embedding x is recognised as instance i is

        P(i | x) = exp(f_i . x / t) / sum_k exp(f_k . x / t),

    and the loss of image i (f_hat_i: the embedding of its augmented view) is

        l_i = -log P(i | f_hat_i) - sum_{k != i} log(1 - P(k | f_i)),

    averaged over this process's n images: the first term makes the embedding invariant to
    the augmentation, the second spreads the instances apart (the paper's
    sum_i sum_{j != i} log(1 - P(i | x_j)), with the per-sample sum regrouped by sample).

    f, f_hat: (n, d) this rank's embeddings of the images and of their views (normalised here).
    f_all: (N, d) ``f`` gathered over all ranks in rank order (default ``f``); gather it with
        gradient so the classifier rows from other ranks are trained too.
    offset: index of this rank's first image in the gathered batch (rank * n).
    """
    f, f_hat = F.normalize(f, dim=1), F.normalize(f_hat, dim=1)
    f_all = f if f_all is None else F.normalize(f_all, dim=1)
    rows = torch.arange(f.shape[0], device=f.device)
    own = rows + offset
    log_pos = F.log_softmax(f_hat @ f_all.T / temperature, dim=1)[rows, own]
    log_p = F.log_softmax(f @ f_all.T / temperature, dim=1)
    # P(i | f_i) itself can round to 1; keep it out of log(1 - P) so no inf or nan appears
    is_own = torch.zeros_like(log_p, dtype=torch.bool).index_put_((rows, own), torch.tensor(True, device=f.device))
    log_not = torch.log1p(-log_p.masked_fill(is_own, -1.0).exp()).masked_fill(is_own, 0.0)
    return -(log_pos + log_not.sum(dim=1)).mean()
