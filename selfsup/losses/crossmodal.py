"""InfoNCE between paired embeddings from two modalities or two domains (pure functions).

Both are :func:`selfsup.losses.contrastive.info_nce` on a similarity matrix whose diagonal
holds the positives: CLIP's image-text pairs of a batch, CUT's input-output patches at the same
location of one image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.losses.contrastive import info_nce

CLIP_MAX_SCALE = 100.0  # CLIP clips its learnt logit scale at 100


def _diagonal_pairs(sims: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities (..., n, n) with positives on the diagonal -> ``(pos (N,), neg (N, n - 1))``
    with N = every row of every leading index: row i's positive is column i, the other columns
    its negatives."""
    n = sims.shape[-1]
    rows = sims.reshape(-1, n)
    diag = torch.eye(n, dtype=torch.bool, device=sims.device).repeat(rows.shape[0] // n, 1)
    return rows[diag], rows[~diag].view(-1, n - 1)


def symmetric_info_nce(x: torch.Tensor, y: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """InfoNCE in both directions between N paired embeddings x (N, d) and y (N, d):

        s_ij = u_i . v_j / t,   u = x / ||x||,  v = y / ||y||,
        L = ( CE(s, diag) + CE(s^T, diag) ) / 2,

    each item's positive is its partner, the N - 1 other items of the other side its negatives
    (``info_nce`` once per direction). CLIP's loss (:func:`clip_loss`) and CMC's two-view loss.
    """
    sims = F.normalize(x.float(), dim=1) @ F.normalize(y.float(), dim=1).T
    return (info_nce(*_diagonal_pairs(sims), temperature) + info_nce(*_diagonal_pairs(sims.T), temperature)) / 2


def clip_loss(image: torch.Tensor, text: torch.Tensor, log_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric image-text InfoNCE (Radford et al.: "Learning Transferable Visual Models
    From Natural Language Supervision", ICML 2021).

    With u_i = image_i / ||image_i||, v_j = text_j / ||text_j|| for the N pairs of a batch and the
    learnt logit scale s = exp(log_scale) (CLIP: initialised at 1 / 0.07, clipped at 100),

        logits_ij = s u_i . v_j
        L = ( CE(logits, diag) + CE(logits^T, diag) ) / 2,

    the mean of image-to-text and text-to-image InfoNCE (each pair's positive is its partner,
    the other N - 1 items of the other modality its negatives): :func:`symmetric_info_nce` at
    temperature 1 / s. ``log_scale`` is the learnable parameter (a 0-d tensor, its gradient
    flows; none once the clip at log 100 binds) or a float.

    image, text: (N, d) embeddings of the N pairs, already projected to a shared width d.
    """
    log_scale = torch.as_tensor(log_scale, dtype=torch.float32, device=image.device)
    return symmetric_info_nce(image, text, 1 / log_scale.clamp(max=math.log(CLIP_MAX_SCALE)).exp())


def patch_nce(queries: torch.Tensor, keys: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """PatchNCE, the patch-wise contrastive loss of CUT (Park, Efros, Zhang, Zhu: "Contrastive
    Learning for Unpaired Image-to-Image Translation", ECCV 2020).

    For image b and sampled location p, the query q_bp is the (L2-normalised) feature of the
    output image at p, its positive k_bp the feature of the input image at the same location,
    its negatives the input's features at the other P - 1 sampled locations of the SAME image:

        l_bp = -log( exp(q_bp . k_bp / t) / sum_{p'} exp(q_bp . k_bp' / t) ),  averaged over b, p.

    queries, keys: (B, P, C) features at P locations of each of B images (one layer of the
    encoder; CUT sums this loss over several layers, each with its own MLP head). The caller
    detaches ``keys`` where the official code does (it stops the gradient through the input
    features). Negatives never come from other images (the official default for image pairs,
    ``nce_includes_all_negatives_from_minibatch: False``).
    """
    q, k = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    return info_nce(*_diagonal_pairs(q @ k.transpose(1, 2)), temperature)
