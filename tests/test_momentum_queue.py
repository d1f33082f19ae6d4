"""The shared momentum-encoder and queue blocks, checked against the papers' formulas by hand.

Every method with a momentum encoder uses one convention: the EMA update after the optimiser
step with 0-based index k uses m_k (BYOL's m_k = 1 - (1 - m_0)(cos(pi k / K) + 1) / 2, or a
constant m_0 for MoCo v1 / v2). Each method's update at k = 0, 1 and K - 1 is checked on its
real weights: target <- m target + (1 - m) online.
"""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.config import build_config
from selfsup.core.errors import ConfigError
from selfsup.methods import METHODS, build_method
from selfsup.methods.momentum import MomentumEncoder
from selfsup.methods.queue import Queue

K = 100
SMALL = {
    "byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "base_momentum": 0.996},
    "dino": {"out_dim": 32, "hidden_dim": 16, "bottleneck_dim": 8, "base_momentum": 0.996},
    "mocov1": {"dim": 8, "queue_size": 16, "momentum": 0.999},
    "mocov2": {"dim": 8, "queue_size": 16, "momentum": 0.99},
    "mocov3": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16, "base_momentum": 0.99},
    "pixpro": {"proj_hidden": 16, "proj_dim": 8, "base_momentum": 0.99, "instance_weight": 1.0,
               "inst_hidden": 16, "inst_dim": 8},
    "pixcontrast": {"proj_hidden": 16, "proj_dim": 8, "base_momentum": 0.99},
}
BASE = {"byol": 0.996, "dino": 0.996, "mocov1": 0.999, "mocov2": 0.99, "mocov3": 0.99, "pixpro": 0.99,
        "pixcontrast": 0.99}
CONSTANT = {"mocov1", "mocov2"}


def paper_momentum(method: str, k: int) -> float:
    """The paper's momentum of the update after 0-based step k of K (written out, not imported)."""
    m0 = BASE[method]
    if method in CONSTANT:  # MoCo (He et al., 2020): a fixed m = 0.999
        return m0
    return 1 - (1 - m0) * (math.cos(math.pi * k / K) + 1) / 2  # BYOL (Grill et al., 2020), Eq. in Sec. 3.1


@pytest.mark.parametrize("method_name", list(SMALL))
def test_each_methods_momentum_update_at_steps_0_1_and_last_follows_the_paper(method_name):
    torch.manual_seed(0)
    cfg = build_config({"method": method_name, "backbone": {"name": "resnet18"}, method_name: SMALL[method_name]},
                       METHODS)
    method = build_method(cfg)
    encoders = [m for m in method.modules() if isinstance(m, MomentumEncoder)]
    assert len(encoders) == 1
    encoder = encoders[0]
    pairs = [(getattr(encoder, name), online) for name, online in encoder._online.items()]
    names = set(encoder._online)
    assert {"backbone"} <= names and len(names) >= 2  # the backbone and at least one head
    for copy_, online in pairs:
        assert all(not p.requires_grad for p in copy_.parameters())
        assert all(torch.equal(c, o) for c, o in zip(copy_.parameters(), online.parameters(), strict=True))
    for k in (0, 1, K - 1):
        with torch.no_grad():  # move the online weights away from the copies
            for _, online in pairs:
                for p in online.parameters():
                    p.add_(torch.randn_like(p))
        before = [[p.clone() for p in c.parameters()] for c, _ in pairs]
        method.on_step(k + 1, K)  # the trainer calls on_step with the count of completed steps
        m = paper_momentum(method_name, k)
        assert encoder.momentum == pytest.approx(m, rel=0, abs=1e-12)
        for (copy_, online), old in zip(pairs, before, strict=True):
            for c, b, o in zip(copy_.parameters(), old, online.parameters(), strict=True):
                torch.testing.assert_close(c, m * b + (1 - m) * o, rtol=0, atol=1e-6)
    if method_name not in CONSTANT:
        assert encoder.momentum < 1.0  # the last update uses m_{K-1}, not m_K = 1


def test_queue_is_a_fifo_ring_that_wraps_and_counts_its_entries():
    q = Queue(5, 2, name="test.queue_size")
    assert len(q) == 5 and not q.full and q.num_filled == 0
    q.push(torch.arange(6.0).view(3, 2))  # rows 0, 1, 2
    assert q.num_filled == 3 and not q.full and q.ptr.item() == 3
    q.push(torch.arange(6.0, 12.0).view(3, 2))  # rows 3, 4, then over the oldest (0)
    assert q.full and q.ptr.item() == 1 and q.filled.item() == 5
    expected = torch.tensor([[10.0, 11], [2, 3], [4, 5], [6, 7], [8, 9]])
    assert torch.equal(q.rows, expected)
    with pytest.raises(ConfigError, match=r"test.queue_size 5 must be >= the global batch size 6"):
        q.push(torch.zeros(6, 2))
    # a checkpoint restores the entries and the count (the Python mirror included)
    fresh = Queue(5, 2)
    fresh.load_state_dict(q.state_dict())
    assert fresh.full and torch.equal(fresh.rows, expected) and fresh.ptr.item() == 1
    # rows given at construction count as entries (MoCo's random queue)
    assert Queue(4, 2, init=torch.ones(4, 2)).full
