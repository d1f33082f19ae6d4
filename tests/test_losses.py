"""Losses against values computed by hand, invariances and gradient checks."""

import math

import torch

from selfsup.losses.contrastive import nt_xent
from selfsup.losses.regression import normalized_mse


def test_nt_xent_hand_computed_orthogonal_pair():
    # two images whose views coincide, embeddings orthogonal between images, t = 1:
    # each anchor sees its positive at cos 1 and two negatives at cos 0 -> log(1 + 2/e)
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = nt_xent(z, z.clone(), temperature=1.0)
    assert math.isclose(loss.item(), math.log(1 + 2 / math.e), rel_tol=1e-6)


def test_nt_xent_hand_computed_with_temperature_and_scale():
    # scaling embeddings changes nothing (they are normalised); t = 0.5 doubles the logits.
    z1 = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert math.isclose(nt_xent(z1, z2, 0.5).item(), expected, rel_tol=1e-6)


def test_nt_xent_single_negative_by_hand():
    # N = 2 with non-trivial angles: anchor a has positive cos c_p, negatives cos c_1, c_2
    z1 = torch.tensor([[1.0, 0.0], [math.cos(1.0), math.sin(1.0)]])
    z2 = torch.tensor([[math.cos(0.3), math.sin(0.3)], [math.cos(1.2), math.sin(1.2)]])
    u = torch.cat([z1, z2])
    t = 0.7
    total = 0.0
    for i, p in [(0, 2), (1, 3), (2, 0), (3, 1)]:
        sims = [float(u[i] @ u[k]) / t for k in range(4) if k != i]
        total += -(float(u[i] @ u[p]) / t - math.log(sum(math.exp(s) for s in sims)))
    assert math.isclose(nt_xent(z1, z2, t).item(), total / 4, rel_tol=1e-5)


def test_nt_xent_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    perm = torch.randperm(16, generator=g)
    assert torch.allclose(nt_xent(z1, z2, 0.2), nt_xent(z1[perm], z2[perm], 0.2), atol=1e-6)
    # swapping the two views is a symmetry of the loss as well
    assert torch.allclose(nt_xent(z1, z2, 0.2), nt_xent(z2, z1, 0.2), atol=1e-6)


def test_nt_xent_rank_slices_average_to_full_batch():
    # what each rank computes (its anchors against the gathered batch) averages to the
    # single-process loss over the whole batch
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    full = nt_xent(z1, z2, 0.3)
    parts = [
        nt_xent(z1[r * 4 : (r + 1) * 4], z2[r * 4 : (r + 1) * 4], 0.3, z1, z2, offset=r * 4)
        for r in range(3)
    ]
    assert torch.allclose(torch.stack(parts).mean(), full, atol=1e-6)


def test_nt_xent_gradcheck():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.5), (z1, z2))


def test_normalized_mse_by_hand():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    z = torch.tensor([[0.0, 3.0], [2.0, 2.0], [0.0, 1.0]])
    # cosines 0, 1, -1 -> losses 2, 0, 4 -> mean 2
    assert math.isclose(normalized_mse(p, z).item(), 2.0, rel_tol=1e-6)


def test_normalized_mse_gradcheck():
    g = torch.Generator().manual_seed(3)
    p = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    z = torch.randn(5, 4, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda a: normalized_mse(a, z), (p,))
