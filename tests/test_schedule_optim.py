"""LR schedule, momentum schedule, optimiser parameter groups and LARS by hand."""

import math

import torch
from torch import nn

from selfsup.config import OptimConfig, build_config
from selfsup.methods import METHODS, build_method
from selfsup.methods.momentum import ema_update, momentum_at
from selfsup.train.optim import LARS, build_optimizer, param_groups
from selfsup.train.schedule import cosine_value, learning_rate


def test_warmup_cosine_values():
    assert learning_rate(0, 100, 10, 1.0) == 0.0
    assert math.isclose(learning_rate(5, 100, 10, 1.0), 0.5)
    assert math.isclose(learning_rate(0, 100, 10, 1.0, start_factor=0.01), 0.01)
    assert math.isclose(learning_rate(10, 100, 10, 1.0), 1.0)
    assert math.isclose(learning_rate(55, 100, 10, 1.0), 0.5)  # half-way through the cosine
    assert math.isclose(learning_rate(100, 100, 10, 1.0, final=0.1), 0.1)


def test_momentum_schedule_rises_from_base_to_one():
    assert math.isclose(momentum_at(0.99, 0, 100), 0.99)
    assert math.isclose(momentum_at(0.99, 50, 100), 0.995)
    assert math.isclose(momentum_at(0.99, 100, 100), 1.0)


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


def test_poly_and_constant_schedules_and_the_weight_decay_cosine_by_hand():
    # DeepLab's poly: final + (peak - final)(1 - t)^0.9, t over the steps after warm-up
    assert learning_rate(0, 11, 1, 0.004, schedule="poly") == 0.0  # warm-up from 0
    assert math.isclose(learning_rate(6, 11, 1, 0.004, schedule="poly"), 0.004 * 0.5**0.9)
    assert math.isclose(learning_rate(11, 11, 1, 0.004, final=1e-4, schedule="poly", power=2.0), 1e-4)
    assert learning_rate(7, 11, 1, 0.004, schedule="constant") == 0.004
    # DINO's weight decay: 0.04 at the first step, 0.4 at the last, the midpoint half-way
    assert math.isclose(cosine_value(0, 101, 0.04, 0.4), 0.04)
    assert math.isclose(cosine_value(50, 101, 0.04, 0.4), 0.22)
    assert math.isclose(cosine_value(100, 101, 0.04, 0.4), 0.4)


def _vit_mocov3(**optim):
    cfg = build_config({"method": "mocov3", "backbone": {"name": "vit_tiny_patch16_224", "img_size": 32,
                                                         "patch_size": 8, "kwargs": {"embed_dim": 32, "depth": 2,
                                                                                     "num_heads": 2}},
                        "mocov3": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}, "optim": optim}, METHODS)
    return build_method(cfg), cfg


def test_vit_position_embedding_and_cls_token_get_no_weight_decay():
    method, cfg = _vit_mocov3(name="adamw", weight_decay=0.05)
    opt = build_optimizer(method, cfg.optim)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    net = method.backbone.net
    assert decay_of[id(net.pos_embed)] == 0.0 and decay_of[id(net.cls_token)] == 0.0
    assert decay_of[id(net.blocks[0].attn.qkv.weight)] == 0.05 and decay_of[id(net.blocks[0].norm1.weight)] == 0.0
    assert id(method.momentum_encoder.backbone.net.pos_embed) not in decay_of  # frozen copies stay out


def test_layer_wise_lr_decay_scales_by_depth():
    method, cfg = _vit_mocov3(name="adamw", layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in build_optimizer(method, cfg.optim).param_groups for p in g["params"]}
    net = method.backbone.net
    # 2 blocks: embeddings 0.5^3, block 0 0.5^2, block 1 and the final norm 0.5, heads 1
    assert scale_of[id(net.pos_embed)] == 0.125 and scale_of[id(net.patch_embed.proj.weight)] == 0.125
    assert scale_of[id(net.blocks[0].mlp.fc1.weight)] == 0.25 and scale_of[id(net.blocks[1].attn.proj.bias)] == 0.5
    assert scale_of[id(net.norm.weight)] == 0.5 and scale_of[id(method.predictor[0].weight)] == 1.0
    resnet = build_method(build_config({"method": "byol", "optim": {"layer_decay": 0.5},
                                        "byol": {"proj_hidden": 16, "proj_dim": 8, "pred_hidden": 16}}, METHODS))
    scales = {id(p): g["lr_scale"] for g in build_optimizer(resnet, OptimConfig(layer_decay=0.5)).param_groups
              for p in g["params"]}
    bb = resnet.backbone.net
    assert scales[id(bb.conv1.weight)] == 0.5**5 and scales[id(bb.layer1[0].conv1.weight)] == 0.5**4
    assert scales[id(bb.layer4[1].bn2.bias)] == 0.5 and scales[id(resnet.projector[0].weight)] == 1.0
