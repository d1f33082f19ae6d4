"""Self-distillation losses: a student matches a momentum teacher's output distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.core.tensors import upcast


def dino_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float | torch.Tensor,
) -> torch.Tensor:
    """DINO's cross-view self-distillation cross-entropy (Caron et al., ICCV 2021, Eq. 1-3, Alg. 1).

    With g_s the student and g_t the teacher network (K-way outputs), the centre c and the
    temperatures tau_s, tau_t:

        P_t(x) = softmax((g_t(x) - c) / tau_t),     P_s(x) = softmax(g_s(x) / tau_s),
        L = 1/|pairs| sum_{i in global} sum_{v != i} mean_batch H(P_t(x_i), P_s(x_v)),
        H(a, b) = - sum_k a_k log b_k,

    every pair of DIFFERENT views: the teacher sees only the global views x_i, the student all
    V views (so |pairs| = |global| (V - 1)). Centring (subtracting the running mean of the
    teacher output) prevents one dimension from dominating; the sharp teacher temperature
    prevents the uniform collapse that centring alone would encourage.

    student: V tensors (n, K) of student logits, the global views first, in the teacher's order.
    teacher: the teacher logits (n, K) of the global views (no gradient flows to them).
    center: (1, K) or (K,) the centre c.
    """
    targets = [F.softmax((upcast(t) - center) / teacher_temp, dim=1).detach() for t in teacher]
    log_p = [F.log_softmax(upcast(s) / student_temp, dim=1) for s in student]
    terms = [-(q * lp).sum(dim=1).mean() for i, q in enumerate(targets) for v, lp in enumerate(log_p) if v != i]
    return sum(terms) / len(terms)


def masked_patch_distillation(
    student: torch.Tensor,
    teacher: torch.Tensor,
    mask: torch.Tensor,
    center: torch.Tensor,
    student_temp: float,
    teacher_temp: float | torch.Tensor,
) -> torch.Tensor:
    """iBOT's masked-image-modelling loss (Zhou et al., "iBOT: Image BERT Pre-Training with Online
    Tokenizer", ICLR 2022, Eq. 2 and Alg. 1): the teacher's patch distribution on the UNMASKED
    view u is the target of the student's on the masked view u^ at every masked patch i,

        P_t(u)_i = softmax((g_t(u)_i - c') / tau_t'),    P_s(u^)_i = softmax(g_s(u^)_i / tau_s),
        L = mean_b [ sum_i m_bi H(P_t(u)_bi, P_s(u^)_bi) / max(sum_i m_bi, 1) ],

    averaged per image over its masked patches, then over the images (an image with no masked
    patch adds 0). Visible patches add nothing.

    student / teacher: (B, N, K) patch logits; mask: bool (B, N), True where masked;
    center: (1, K) or (K,) the patch centre c'.
    """
    target = F.softmax((upcast(teacher) - center) / teacher_temp, dim=-1).detach()
    h = -(target * F.log_softmax(upcast(student) / student_temp, dim=-1)).sum(dim=-1)
    m = mask.to(h.dtype)
    return ((h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)).mean()
