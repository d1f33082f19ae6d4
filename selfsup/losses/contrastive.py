"""InfoNCE-type losses (pure functions of tensors).

Every loss of the family takes the same "similarities" form as :func:`info_nce`:
``pos`` (N,), the similarity of each anchor to its positive, and ``neg`` (N, M), its
similarities to M negatives (cosines of L2-normalised embeddings), plus a temperature t.
:func:`simclr_pairs` turns SimCLR's 2N embeddings into that form; :func:`pair_loss` picks a
loss of the family by name (``PAIR_LOSSES``), the way a method's ``loss`` option does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

from selfsup.core.errors import ConfigError


def simclr_pairs(
    z1: torch.Tensor,
    z2: torch.Tensor,
    z1_all: torch.Tensor | None = None,
    z2_all: torch.Tensor | None = None,
    offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SimCLR's anchors in similarities form: ``(pos (2n,), neg (2n, 2N - 2))``.

    With u = z / ||z||, the anchors are this rank's 2n embeddings (view 1, then view 2); the
    positive of anchor i is its other view, its negatives are the other 2N - 2 embeddings of
    the global batch (both views of every other image), in gathered order (view 1 then view 2).

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
    sims = q @ k.T
    local = torch.arange(n, device=q.device) + offset
    rows = torch.arange(2 * n, device=q.device)
    self_idx = torch.cat([local, local + big_n])
    pos_idx = torch.cat([local + big_n, local])
    return sims[rows, pos_idx], drop_columns(sims, self_idx, pos_idx)


def drop_columns(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Row i of ``x`` (R, C) without its column ``a[i]`` (and ``b[i]`` != ``a[i]``), the other
    columns in order: (R, C - 1) or (R, C - 2).

    A gather at computed columns, c_j = j + [j >= lo] + [j >= hi - 1] with lo < hi the dropped
    ones (c_j = j + [j >= a] for one), the same values as a boolean mask would select, without
    the host waiting for the device to count the mask's elements (a host-device sync on GPUs).
    """
    cols = x.shape[1]
    if b is None:
        j = torch.arange(cols - 1, device=x.device)[None]
        return x.gather(1, j + (j >= a[:, None]))
    lo, hi = torch.minimum(a, b)[:, None], torch.maximum(a, b)[:, None]
    j = torch.arange(cols - 2, device=x.device)[None]
    return x.gather(1, j + (j >= lo) + (j >= hi - 1))


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

    averaged over this process's 2n anchors (both views: the loss is symmetric). It is
    :func:`info_nce` on :func:`simclr_pairs`; the arguments are those of :func:`simclr_pairs`.
    """
    return info_nce(*simclr_pairs(z1, z2, z1_all, z2_all, offset), temperature)


def _logits(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """pos / t and neg / t in at least float32 (the losses below exponentiate them)."""
    dtype = torch.promote_types(pos.dtype, torch.float32)
    return pos.to(dtype) / temperature, neg.to(dtype) / temperature


def info_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE (van den Oord et al., 2018; MoCo's loss) from similarities.

        l_i = -log( exp(s_i+ / t) / (exp(s_i+ / t) + sum_j exp(s_ij- / t)) ),  averaged over i.

    pos: (N,) similarity of each anchor to its positive (cosine for normalised embeddings).
    neg: (N, M) similarities of each anchor to its M negatives (e.g. a MoCo queue).
    """
    p, n = _logits(pos, neg, temperature)
    return F.cross_entropy(torch.cat([p[:, None], n], dim=1), torch.zeros_like(p, dtype=torch.long))


def hard_negative_contrastive(
    pos: torch.Tensor, neg: torch.Tensor, temperature: float, beta: float = 1.0, tau_plus: float = 0.1
) -> torch.Tensor:
    """Hard-negative contrastive loss (Robinson, Chuang, Sra, Jegelka: "Contrastive Learning
    with Hard Negative Samples", ICLR 2021), with the debiasing of :func:`debiased_contrastive`.

    Negatives are drawn from q_beta(x-) ∝ exp(beta s-) p(x-), estimated by importance
    weighting the M negatives at hand. With p = s+ / t and n_j = s_j- / t,

        w_j   = exp(beta n_j) / sum_k exp(beta n_k)                 (importance weights)
        Ng    = max( (M sum_j w_j exp(n_j) - tau_plus M exp(p)) / (1 - tau_plus),  M e^{-1/t} )
        l     = -log( exp(p) / (exp(p) + Ng) ),  averaged over anchors.

    beta = 0 is the debiased loss; beta = 0 and tau_plus = 0 is InfoNCE (for cosines).
    As in the authors' code, beta multiplies s / t (the paper writes exp(beta s), i.e. its
    beta is this beta / t) and the weights are not detached. The clamp at M e^{-1/t}, the
    smallest value exp(s / t) can take for cosines, keeps the estimate positive.
    """
    p, n = _logits(pos, neg, temperature)
    m = neg.shape[1]
    shift = torch.maximum(p, n.max(dim=1).values).detach()  # exp(x - shift) <= 1, no overflow
    e_pos, e_neg = torch.exp(p - shift), torch.exp(n - shift[:, None])
    weighted = m * (torch.softmax(beta * n, dim=1) * e_neg).sum(dim=1)
    ng = (weighted - tau_plus * m * e_pos) / (1 - tau_plus)
    ng = torch.maximum(ng, m * torch.exp(-1 / temperature - shift))
    return (torch.log(e_pos + ng) - (p - shift)).mean()


def debiased_contrastive(
    pos: torch.Tensor, neg: torch.Tensor, temperature: float, tau_plus: float = 0.1
) -> torch.Tensor:
    """Debiased contrastive loss (Chuang, Robinson, Lin, Torralba, Jegelka: "Debiased
    Contrastive Learning", NeurIPS 2020).

    Some "negatives" share the anchor's latent class (prior tau_plus); the sum over true
    negatives is estimated by removing that share, with the positive as the sample of the
    anchor's class. With p = s+ / t and n_j = s_j- / t (M negatives):

        Ng = max( (sum_j exp(n_j) - tau_plus M exp(p)) / (1 - tau_plus),  M e^{-1/t} )
        l  = -log( exp(p) / (exp(p) + Ng) ),  averaged over anchors.

    With tau_plus = 0 and cosine similarities (s >= -1, so the clamp never binds) this is
    exactly :func:`info_nce`. It is :func:`hard_negative_contrastive` with beta = 0.
    """
    return hard_negative_contrastive(pos, neg, temperature, beta=0.0, tau_plus=tau_plus)


def decoupled_contrastive(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """Decoupled contrastive loss, DCL (Yeh, Hong, Hsu, Liu, Chen, LeCun: "Decoupled
    Contrastive Learning", ECCV 2022): InfoNCE without the positive in the denominator,

        l_i = -s_i+ / t + log sum_j exp(s_ij- / t),  averaged over i.

    Removing the positive removes the factor 1 - softmax(positive) that shrinks InfoNCE's
    gradient when the positive already wins (the "negative-positive coupling"), so DCL
    needs neither large batches nor a long schedule. It is always below InfoNCE and can be
    negative. The weighted variant (DCLW) is not implemented.
    """
    p, n = _logits(pos, neg, temperature)
    return (torch.logsumexp(n, dim=1) - p).mean()


def flat_nce(pos: torch.Tensor, neg: torch.Tensor, temperature: float) -> torch.Tensor:
    """FlatNCE (Chen, Gan, Li, Huang, Li, Yang, Carin: "Simpler, Faster, Stronger: Breaking
    the log-K Curse on Contrastive Learners with FlatNCE", 2021).

    With v_i = logsumexp_j((s_ij- - s_i+) / t), FlatNCE is mean_i exp(v_i - sg(v_i)): its
    value is always 1 and its gradient is mean_i grad v_i, i.e. per anchor InfoNCE's gradient
    divided by 1 - softmax(positive), which no longer vanishes as the positive wins. (That
    gradient is exactly DCL's: see :func:`decoupled_contrastive`.)

    Returned value: InfoNCE of the same similarities (the paper's diagnostic), so logs stay
    comparable across the family; the gradient is FlatNCE's (the InfoNCE term is detached).
    """
    dcl = decoupled_contrastive(pos, neg, temperature)
    return dcl - dcl.detach() + info_nce(pos.detach(), neg.detach(), temperature)


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


PairLossName = Literal["infonce", "debiased", "hard_negative", "flatnce", "dcl"]  # the keys below
PAIR_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "infonce": info_nce,
    "debiased": debiased_contrastive,
    "hard_negative": hard_negative_contrastive,
    "flatnce": flat_nce,
    "dcl": decoupled_contrastive,
}
PAIR_LOSS_PARAMS: dict[str, tuple[str, ...]] = {"debiased": ("tau_plus",), "hard_negative": ("beta", "tau_plus")}


def pair_loss(
    name: str,
    pos: torch.Tensor,
    neg: torch.Tensor,
    temperature: float,
    tau_plus: float = 0.1,
    beta: float = 1.0,
) -> torch.Tensor:
    """The loss ``PAIR_LOSSES[name]`` of similarities ``pos`` (N,) and ``neg`` (N, M).

    tau_plus (class prior) is used by ``debiased`` and ``hard_negative``, beta (hardness
    concentration) by ``hard_negative``; the other losses ignore them.
    """
    if name not in PAIR_LOSSES:
        raise ConfigError(f"unknown contrastive loss {name!r}; choices: {', '.join(PAIR_LOSSES)}")
    options = {"tau_plus": tau_plus, "beta": beta}
    return PAIR_LOSSES[name](pos, neg, temperature, **{k: options[k] for k in PAIR_LOSS_PARAMS.get(name, ())})
