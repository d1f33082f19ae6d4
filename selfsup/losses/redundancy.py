"""Redundancy-reduction losses: Barlow Twins and VICReg (pure functions of tensors).

Both act on the embeddings of the two views of a WHOLE batch: under DDP pass the
embeddings gathered over all ranks with gradient (``gather_with_grad``), which gives the
single-process loss and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins (Zbontar, Jing, Misra, LeCun, Deny, ICML 2021).

    Each embedding dimension is standardised over the batch (biased variance, as an
    affine-free batch norm: z_hat = (z - mean) / sqrt(var + eps)), then the cross-correlation
    matrix of the two views is C_ij = sum_b z1_hat_bi z2_hat_bj / N, and

        L = sum_i (1 - C_ii)^2 + lambda * sum_i sum_{j != i} C_ij^2.

    z1, z2: (N, D) the projections of the two views of the same N images.
    lambd: the off-diagonal weight; the paper writes 5e-3, its official code uses 0.0051.
    Returns the loss and its two (detached) terms ``on_diag`` and ``off_diag`` (unweighted).
    """
    n = z1.shape[0]

    def standardise(z: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(z, dim=0, correction=0)
        return (z - mean) * torch.rsqrt(var + eps)

    c = standardise(z1).T @ standardise(z2) / n
    on_diag = (1 - torch.diagonal(c)).pow(2).sum()
    off_diag = off_diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag, {"on_diag": on_diag.detach(), "off_diag": off_diag.detach()}


def variance_loss(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term: v(Z) = 1/D sum_j max(0, gamma - sqrt(Var(z^j) + eps)),
    with the unbiased variance of dimension j over the batch."""
    return F.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()


def covariance_loss(z: torch.Tensor) -> torch.Tensor:
    """VICReg's covariance term: c(Z) = 1/D sum_{i != j} C(Z)_ij^2, with
    C(Z) = (Z - mean)^T (Z - mean) / (N - 1)."""
    n, d = z.shape
    z = z - z.mean(dim=0)
    return off_diagonal(z.T @ z / (n - 1)).pow(2).sum() / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg (Bardes, Ponce, LeCun, ICLR 2022): variance-invariance-covariance regularisation,

        L = lambda * s(Z, Z') + mu * [v(Z) + v(Z')] / 2 + nu * [c(Z) + c(Z')],

    with the invariance s(Z, Z') = mean over all N x D entries of (z - z')^2 and v, c as in
    :func:`variance_loss` and :func:`covariance_loss`; lambda = mu = 25, nu = 1, gamma = 1,
    eps = 1e-4. As the official code (and unlike the paper's formula) the variance terms are
    averaged, not summed, and s averages over dimensions too.

    z1, z2: (N, D) the projections of the two views of the same N images.
    Returns the loss and its three (detached, unweighted) terms ``invariance``, ``variance``,
    ``covariance``.
    """
    inv = F.mse_loss(z1, z2)
    var = (variance_loss(z1, gamma, eps) + variance_loss(z2, gamma, eps)) / 2
    cov = covariance_loss(z1) + covariance_loss(z2)
    loss = sim_weight * inv + var_weight * var + cov_weight * cov
    return loss, {"invariance": inv.detach(), "variance": var.detach(), "covariance": cov.detach()}
