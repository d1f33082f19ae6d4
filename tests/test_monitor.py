"""Collapse monitor and multi-crop encoding, on hand-made inputs."""

from __future__ import annotations

import math

import torch

from selfsup.methods.base import Method, RunInfo, effective_rank, embedding_std
from selfsup.views.recipes import ViewSpec, local_views
from selfsup.views.view import View


def test_effective_rank_hand_values():
    two_dirs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert abs(effective_rank(two_dirs).item() - 2.0) < 1e-5
    # singular values 2 and 1 (rows centred): p = (2/3, 1/3) -> exp(H)
    uneven = torch.tensor([[math.sqrt(2), 0.0], [-math.sqrt(2), 0.0], [0.0, math.sqrt(0.5)], [0.0, -math.sqrt(0.5)]])
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert abs(effective_rank(uneven).item() - math.exp(h)) < 1e-5
    one_dir = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [2.0, 4.0]])
    assert abs(effective_rank(one_dir).item() - 1.0) < 1e-4


def test_embedding_std_is_zero_when_collapsed_and_positive_otherwise():
    assert embedding_std(torch.ones(8, 4)).item() == 0.0
    # four orthonormal one-hot rows: each column of the normalised matrix is (1,0,0,0) permuted
    assert abs(embedding_std(torch.eye(4)).item() - torch.tensor([1.0, 0, 0, 0]).std().item()) < 1e-6


class _Recorder(torch.nn.Module):
    """A stand-in backbone that records the batch shapes it sees."""

    out_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x, x.mean(dim=(2, 3))


def test_encode_groups_views_by_resolution():
    backbone = _Recorder()
    method = Method(backbone, RunInfo())
    views = [View(torch.full((2, 3, s, s), float(i)), torch.zeros(2, 4), torch.zeros(2, dtype=torch.bool))
             for i, s in enumerate([32, 32, 16, 16, 16])]
    pooled = method.encode(views)
    assert backbone.calls == [(4, 3, 32, 32), (6, 3, 16, 16)]
    assert [p[0, 0].item() for p in pooled] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_local_views_copy_photometrics_with_their_own_size_and_scale():
    like = ViewSpec(size=32, scale=(0.2, 1.0), blur_p=0.5, solarize_p=0.2)
    locals_ = local_views(like, 3, 16, (0.05, 0.4))
    assert len(locals_) == 3
    assert all(v.size == 16 and v.scale == (0.05, 0.4) and v.solarize_p == 0.2 and v.blur_p == 0.5 for v in locals_)
    assert local_views(like, 0, 16, (0.05, 0.4)) == []
