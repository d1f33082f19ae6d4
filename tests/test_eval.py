"""kNN and linear probe on hand-made features."""

import math

import torch

from selfsup.eval.knn import knn_accuracy, knn_predict
from selfsup.eval.linear import linear_probe


def test_knn_weighted_vote_by_hand():
    # bank: two class-0 vectors near the query's direction, three class-1 vectors further away.
    bank = torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    q = torch.tensor([[1.0, 0.6]])
    # k = 5, T = 0.1: class 0 wins although class 1 has more neighbours (weights exp(s/T))
    u = torch.nn.functional.normalize(bank, dim=1)
    s = (u @ torch.nn.functional.normalize(q, dim=1).T).squeeze(1)
    w0 = math.exp(s[0] / 0.1) + math.exp(s[1] / 0.1)
    w1 = sum(math.exp(s[i] / 0.1) for i in (2, 3, 4))
    assert w0 > w1
    assert knn_predict(bank, labels, q, 2, k=5, temperature=0.1).tolist() == [0]
    # with a very high temperature all votes weigh ~1 and the majority (class 1) wins
    assert knn_predict(bank, labels, q, 2, k=5, temperature=1e4).tolist() == [1]
    # with k = 1 only the nearest neighbour counts
    assert knn_predict(bank, labels, torch.tensor([[0.05, 1.0]]), 2, k=1).tolist() == [1]


def test_knn_accuracy_counts_correct_fraction():
    bank = torch.eye(3)
    labels = torch.tensor([0, 1, 2])
    queries = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [0.9, 0.0, 0.1]])
    assert math.isclose(knn_accuracy(bank, labels, queries, torch.tensor([0, 1, 2]), 3, k=1), 2 / 3, rel_tol=1e-6)


def test_linear_probe_learns_separable_classes_and_reports_last_epoch():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 3
    ytr, yte = torch.randint(0, 4, (400,), generator=g), torch.randint(0, 4, (200,), generator=g)
    xtr = centers[ytr] + torch.randn(400, 16, generator=g)
    xte = centers[yte] + torch.randn(200, 16, generator=g)
    res = linear_probe(xtr, ytr, xte, yte, 4, epochs=10, lr=0.1)
    assert res.last_epoch_accuracy > 0.95
    assert res.best_epoch_accuracy >= res.last_epoch_accuracy and 1 <= res.best_epoch <= 10
    # shuffled labels cannot be learned: chance level
    bad = linear_probe(xtr, ytr[torch.randperm(400, generator=g)], xte, yte, 4, epochs=10)
    assert bad.last_epoch_accuracy < 0.45
