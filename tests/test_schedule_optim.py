"""LR schedule, momentum schedule, optimiser parameter groups and LARS by hand."""

import math

import torch
from torch import nn

from selfsup.config import OptimConfig
from selfsup.methods.base import ema_update, momentum_schedule
from selfsup.train.optim import LARS, build_optimizer, param_groups
from selfsup.train.schedule import warmup_cosine


def test_warmup_cosine_values():
    assert warmup_cosine(0, 100, 10, 1.0) == 0.0
    assert math.isclose(warmup_cosine(5, 100, 10, 1.0), 0.5)
    assert math.isclose(warmup_cosine(0, 100, 10, 1.0, start_factor=0.01), 0.01)
    assert math.isclose(warmup_cosine(10, 100, 10, 1.0), 1.0)
    assert math.isclose(warmup_cosine(55, 100, 10, 1.0), 0.5)  # half-way through the cosine
    assert math.isclose(warmup_cosine(100, 100, 10, 1.0, final=0.1), 0.1)


def test_momentum_schedule_rises_from_base_to_one():
    assert math.isclose(momentum_schedule(0.99, 0, 100), 0.99)
    assert math.isclose(momentum_schedule(0.99, 50, 100), 0.995)
    assert math.isclose(momentum_schedule(0.99, 100, 100), 1.0)


def test_ema_update_by_hand():
    online, target = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        online.weight.fill_(1.0)
        online.bias.fill_(2.0)
        target.weight.fill_(0.0)
        target.bias.fill_(0.0)
    ema_update(target, online, momentum=0.75)
    assert torch.allclose(target.weight, torch.full((1, 2), 0.25))
    assert torch.allclose(target.bias, torch.full((1,), 0.5))


def test_param_groups_exclude_norms_and_biases_from_decay():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 3, 5, 5))
    decay, no_decay = param_groups(model, 1e-4)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {p.ndim for p in decay["params"]} == {2, 4}
    assert len(no_decay["params"]) == 4  # BN weight + bias, linear bias, conv bias
    opt = build_optimizer(model, OptimConfig(name="adamw", weight_decay=0.05))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]


def test_lars_step_by_hand():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.0, "lars": True},
                {"params": [b], "weight_decay": 0.0, "lars": False}],
               lr=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([0.0, 10.0])  # ||g|| = 10 -> trust ratio 0.001 * 5 / 10
    b.grad = torch.tensor([2.0])
    opt.step()
    assert torch.allclose(w, torch.tensor([3.0, 4.0 - 0.1 * 10 * 0.0005]))
    assert torch.allclose(b, torch.tensor([1.0 - 0.1 * 2.0]))


def test_lars_clip_caps_the_step_at_the_trust_ratio():
    """LARC clipping: step = lr * g when lr * ||g|| <= eta * ||w||, else eta * ||w|| * g / ||g||."""
    small, large = nn.Parameter(torch.tensor([3.0, 4.0])), nn.Parameter(torch.tensor([3.0, 4.0]))
    opt = LARS([{"params": [small, large], "weight_decay": 0.0, "lars": True}],
               lr=0.1, momentum=0.9, trust_coefficient=0.02, clip=True)
    small.grad = torch.tensor([0.0, 0.5])  # lr * ||g|| = 0.05 < 0.02 * 5 = 0.1: plain SGD
    large.grad = torch.tensor([0.0, 10.0])  # lr * ||g|| = 1.0 > 0.1: the step is capped at 0.1
    opt.step()
    assert torch.allclose(small, torch.tensor([3.0, 4.0 - 0.1 * 0.5]))
    assert torch.allclose(large, torch.tensor([3.0, 4.0 - 0.1]))
    cfg = OptimConfig(name="lars", lars_clip=True, trust_coefficient=0.02)
    assert all(g["clip"] for g in build_optimizer(nn.Linear(2, 2), cfg).param_groups)
