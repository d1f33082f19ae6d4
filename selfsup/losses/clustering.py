"""Online clustering losses: Sinkhorn-Knopp equipartitioned codes and SwAV's swapped prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.comm import all_reduce_with_grad, world_size
from selfsup.core.tensors import upcast


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft cluster codes with equally used prototypes (SwAV, Caron et al., NeurIPS 2020, Sec. 3.1;
    Sinkhorn-Knopp matrix scaling as in Cuturi, 2013).

    With scores S (B samples x K prototypes), the codes solve the entropic transport problem

        max_Q  Tr(Q^T S^T) + epsilon H(Q)   over   Q >= 0 (K x B),  Q 1_B = 1_K / K,  Q^T 1_K = 1_B / B,

    whose solution is Q* = Diag(u) exp(S^T / epsilon) Diag(v). ``iterations`` rounds of
    alternate scaling approximate u and v:

        Q <- exp(S^T / epsilon);  Q <- Q / sum(Q)
        repeat:  Q_kb <- Q_kb / (K sum_b' Q_kb')      (every prototype gets mass 1/K)
                 Q_kb <- Q_kb / (B sum_k' Q_k'b)      (every sample gets mass 1/B)
        codes = B Q^T                                  (every sample's code sums to 1)

    The last step normalises samples, so each code sums to 1 exactly; the prototype marginals
    reach 1/K only in the limit. No max is subtracted before the exponential (as in the
    official code): the scores are cosines, |s| <= 1, and exp(1 / 0.05) is far from overflow;
    float32 overflows for epsilon below about 1 / 88 (SwAV rejects such values), and the sum
    over the n x K entries needs a little more room.

    scores: (n, K) this rank's rows. Under DDP every rank holds n rows of the global batch of
        B = n * world_size samples (equal shards); the sums over samples (the total and each
        prototype's) are all-reduced, so the codes equal those of one process holding all rows.
    Returns (n, K) float32 codes, without gradient.
    """
    q = torch.exp(upcast(scores) / epsilon).T  # (K, n)
    k, b = q.shape[0], q.shape[1] * world_size()
    q /= all_reduce_with_grad(q.sum())
    for _ in range(iterations):
        q /= all_reduce_with_grad(q.sum(dim=1, keepdim=True)) * k
        q /= q.sum(dim=0, keepdim=True) * b
    return (q * b).T


def swapped_prediction(
    scores: list[torch.Tensor], codes: list[torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """SwAV's swapped prediction loss with multi-crop (Caron et al., NeurIPS 2020, Eq. 1-3).

    Every view v predicts the code q_i of every assigned view i != v from its own scores s_v
    (cosines between its normalised embedding and the normalised prototypes):

        p_v = softmax(s_v / temperature),     l(q_i, p_v) = - sum_k q_ik log p_vk,
        L = 1/|A| sum_{i in A} 1/(V - 1) sum_{v != i} mean_batch l(q_i, p_v),

    where the assigned views A are the first ``len(codes)`` views (the global crops) and V =
    ``len(scores)``. The codes are targets: pass them without gradient (Sinkhorn output).

    scores: V tensors (n, K), one per view; codes: |A| tensors (n, K).
    """
    log_p = [F.log_softmax(upcast(s) / temperature, dim=1) for s in scores]
    loss = upcast(scores[0]).new_zeros(())
    for i, q in enumerate(codes):
        others = [lp for v, lp in enumerate(log_p) if v != i]
        loss = loss + sum(-(q * lp).sum(dim=1).mean() for lp in others) / len(others)
    return loss / len(codes)
