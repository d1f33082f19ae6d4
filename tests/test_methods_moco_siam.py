"""MoCo v1/v2/v3, SimSiam, Barlow Twins and VICReg: losses by hand, the MoCo queue, split-batch
BN, momentum schedules, short runs on real CIFAR-10 and a CLI run of a preset."""

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from selfsup.cli import main
from selfsup.config import ConfigError, OptimConfig, build_config, find_config, load_yaml
from selfsup.data import open_dataset
from selfsup.losses.redundancy import barlow_twins_loss, covariance_loss, variance_loss, vicreg_loss
from selfsup.losses.regression import negative_cosine
from selfsup.methods import METHODS
from selfsup.methods.base import RunInfo, embedding_std
from selfsup.methods.moco import MoCo, MoCoConfig, MoCoV2, MoCoV2Config, batch_shuffle, batch_unshuffle
from selfsup.methods.mocov3 import MoCoV3, MoCoV3Config
from selfsup.methods.simsiam import SimSiam, SimSiamConfig
from selfsup.models.backbones import BackboneConfig, build_backbone
from selfsup.models.split_bn import SplitBatchNorm, convert_split_bn
from selfsup.train.optim import build_optimizer
from selfsup.train.schedule import learning_rate
from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD
from selfsup.views.recipes import RECIPES, eval_view, make_views
from selfsup.views.view import View

ROOT = Path(__file__).resolve().parents[1]
NEW_METHODS = ("mocov1", "mocov2", "mocov3", "simsiam", "barlow", "vicreg")


class TinyNet(nn.Module):
    """Two strided conv + BN + ReLU layers: a backbone (fmap, pooled) fast enough for CPU runs."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        )
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.body(x)
        return fmap, fmap.mean(dim=(2, 3))


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these small models run faster so on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- losses by hand
def test_barlow_twins_loss_by_hand():
    # columns standardised over N = 2 (biased variance, eps 0): z1 -> [[-1, 1], [1, -1]],
    # z2 -> [[-1, -1], [1, 1]]; C = z1^T z2 / 2 = [[1, 1], [-1, -1]]
    # on-diagonal (1 - 1)^2 + (1 + 1)^2 = 4, off-diagonal 1 + 1 = 2
    z1 = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    z2 = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    loss, terms = barlow_twins_loss(z1, z2, lambd=0.5, eps=0.0)
    assert math.isclose(terms["on_diag"].item(), 4.0, rel_tol=1e-6)
    assert math.isclose(terms["off_diag"].item(), 2.0, rel_tol=1e-6)
    assert math.isclose(loss.item(), 4.0 + 0.5 * 2.0, rel_tol=1e-6)


def test_barlow_twins_loss_matches_batch_norm_cross_correlation():
    # the official formulation: affine-free BatchNorm1d (train mode) of each view, C = bn1^T bn2 / N
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 6, generator=g), torch.randn(16, 6, generator=g) + 3
    bn = nn.BatchNorm1d(6, affine=False)
    c = bn(z1).T @ bn(z2) / 16
    expected = (torch.diagonal(c) - 1).pow(2).sum() + 0.0051 * (c - torch.diag(torch.diagonal(c))).pow(2).sum()
    assert torch.allclose(barlow_twins_loss(z1, z2)[0], expected, rtol=1e-5)
    # a perfect, decorrelated pair: identical standardised views with orthogonal columns -> 0
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
    assert barlow_twins_loss(z, 5 * z + 2, eps=0.0)[0].item() == pytest.approx(0.0, abs=1e-10)


def test_vicreg_loss_by_hand():
    z1 = torch.tensor([[1.0, 0.2], [1.5, 0.0]])
    z2 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    inv = ((0.0) ** 2 + 0.2**2 + 1.5**2 + 1.0**2) / 4
    # unbiased variances over N = 2: z1 (0.125, 0.02), z2 (0.5, 0.5)
    v1 = (max(0.0, 1 - math.sqrt(0.125 + 1e-4)) + max(0.0, 1 - math.sqrt(0.02 + 1e-4))) / 2
    v2 = 2 * max(0.0, 1 - math.sqrt(0.5 + 1e-4)) / 2
    # covariances (centred rows / (N - 1)): z1 (-0.25)(0.1) + (0.25)(-0.1) = -0.05; z2 -0.5
    c1 = 2 * 0.05**2 / 2
    c2 = 2 * 0.5**2 / 2
    assert math.isclose(variance_loss(z1).item(), v1, rel_tol=1e-5)
    assert math.isclose(covariance_loss(z2).item(), c2, rel_tol=1e-5)
    loss, terms = vicreg_loss(z1, z2)
    assert math.isclose(terms["invariance"].item(), inv, rel_tol=1e-5)
    assert math.isclose(terms["variance"].item(), (v1 + v2) / 2, rel_tol=1e-5)
    assert math.isclose(terms["covariance"].item(), c1 + c2, rel_tol=1e-5)
    assert math.isclose(loss.item(), 25 * inv + 25 * (v1 + v2) / 2 + (c1 + c2), rel_tol=1e-5)
    # the hinge is off once every dimension's std reaches gamma
    wide = torch.tensor([[3.0, -3.0], [-3.0, 3.0], [0.0, 0.0]])
    assert variance_loss(wide).item() == 0.0


def test_negative_cosine_by_hand():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    assert math.isclose(negative_cosine(p, z).item(), -(1 / math.sqrt(2) - 1) / 2, rel_tol=1e-6)


def test_redundancy_losses_gradcheck():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: barlow_twins_loss(a, b)[0], (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: vicreg_loss(a, b)[0], (z1, z2))
    assert torch.autograd.gradcheck(negative_cosine, (z1, z2))


# ---------------------------------------------------------------- MoCo machinery
def test_queue_is_fifo_and_wraps_around():
    moco = MoCo(TinyNet(), MoCoConfig(dim=2, queue_size=5), RunInfo())
    keys = torch.arange(16, dtype=torch.float32).view(8, 2)
    moco.queue.push(keys[:3])
    assert moco.queue.ptr.item() == 3 and torch.equal(moco.queue.rows[:3], keys[:3])
    moco.queue.push(keys[3:6])  # rows 3, 4, then wraps to row 0
    assert moco.queue.ptr.item() == 1
    assert torch.equal(moco.queue.rows, torch.stack([keys[5], keys[1], keys[2], keys[3], keys[4]]))
    moco.queue.push(keys[6:8])
    assert moco.queue.ptr.item() == 3 and torch.equal(moco.queue.rows[1:3], keys[6:8])
    with pytest.raises(ConfigError, match=r"mocov1\.queue_size"):
        moco.queue.push(torch.zeros(6, 2))


def test_queue_init_keys_fills_the_queue_with_the_key_encoders_keys(cifar_subset):
    train = open_dataset(cifar_subset(4, 0)).train  # 40 real images: one batch of 40 per pass
    views = build_config({"method": "mocov2"}, METHODS).views
    cfg = MoCoV2Config(dim=16, queue_size=48, bn_splits=1, queue_init="keys")
    torch.manual_seed(0)
    moco = MoCoV2(TinyNet(), cfg, RunInfo())
    random_queue = moco.queue.rows.clone()
    moco.on_fit_start(train, views, torch.device("cpu"))
    # by hand: pass 0 fills rows 0..39, pass 1 (another order) rows 40..47; one BN over the whole
    # batch (bn_splits 1), so the shuffle does not change any key
    expected = []
    for epoch in (0, 1):
        batch = next(train.batches(40, shuffle=True, epoch=epoch))
        x = eval_view(batch.images, views.size, views.mean, views.std)
        with torch.no_grad():
            keys = moco.key_encoder.head(moco.key_encoder.backbone(x)[1])
            expected.append(torch.nn.functional.normalize(keys, dim=1))
    assert torch.allclose(moco.queue.rows[:40], expected[0], atol=1e-5)
    assert torch.allclose(moco.queue.rows[40:], expected[1][:8], atol=1e-5)
    assert not torch.allclose(expected[0][:8], expected[1][:8], atol=1e-3)  # a different order
    assert moco.queue.ptr.item() == 0 and moco.queue.full  # exactly full
    # the default keeps the official random queue
    torch.manual_seed(0)
    plain = MoCoV2(TinyNet(), MoCoV2Config(dim=16, queue_size=48, bn_splits=1), RunInfo())
    assert torch.equal(plain.queue.rows, random_queue)
    plain.on_fit_start(train, views, torch.device("cpu"))
    assert torch.equal(plain.queue.rows, random_queue)
    with pytest.raises(ConfigError, match=r"mocov2\.queue_init: 'zeros' is not one of random, keys"):
        MoCoV2Config(queue_init="zeros")


def test_split_batch_norm_equals_per_split_batch_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=g) * 2 + 1
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        bn.running_mean.fill_(0.5)
    split = SplitBatchNorm.from_batch_norm(bn, num_splits=4)
    copies = []
    for chunk in x.chunk(4):
        c = nn.BatchNorm2d(3)
        c.load_state_dict(bn.state_dict())
        copies.append((c, c(chunk)))
    y = split(x.contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(y, torch.cat([out for _, out in copies]), atol=1e-5)
    for name in ("running_mean", "running_var"):
        expected = torch.stack([getattr(c, name) for c, _ in copies]).mean(0)
        assert torch.allclose(getattr(split, name), expected, atol=1e-6), name
    # sub-batches are normalised separately: different from one batch norm over all 8
    whole = nn.BatchNorm2d(3)
    whole.load_state_dict(bn.state_dict())
    assert not torch.allclose(y, whole(x), atol=1e-2)
    # eval mode: a plain batch norm on the running statistics
    split.eval()
    ref = copies[0][0].eval()
    ref.load_state_dict(split.state_dict())
    assert torch.allclose(split(x), ref(x), atol=1e-6)
    # 1-D inputs (projector batch norms) and the parameter / buffer layout of nn.BatchNorm*
    split1d = SplitBatchNorm(3, 2).train()
    z = torch.randn(6, 3, generator=g)
    ref1d = torch.cat([nn.BatchNorm1d(3).train()(c) for c in z.chunk(2)])
    assert torch.allclose(split1d(z), ref1d, atol=1e-5)
    assert list(split.state_dict()) == list(bn.state_dict())
    with pytest.raises(ValueError, match="equal sub-batches"):
        SplitBatchNorm(3, 4).train()(torch.randn(6, 3))


def test_key_encoder_uses_split_bn_and_mirrors_the_query_encoder():
    backbone = build_backbone(BackboneConfig("resnet18"))
    moco = MoCoV2(backbone, MoCoV2Config(queue_size=64, bn_splits=4), RunInfo())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in moco.key_encoder.backbone.modules())
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in moco.backbone.modules())
    key_bns = [m for m in moco.key_encoder.backbone.modules() if isinstance(m, SplitBatchNorm)]
    assert n_bn == len(key_bns) and all(m.num_splits == 4 for m in key_bns)
    assert list(moco.key_encoder.backbone.state_dict()) == list(moco.backbone.state_dict())
    assert not any(p.requires_grad for p in moco.key_encoder.parameters())
    # v2's head is an MLP without BN, v1's a linear layer
    assert [type(m) for m in moco.head] == [nn.Linear, nn.ReLU, nn.Linear]
    assert isinstance(MoCo(TinyNet(), MoCoConfig(queue_size=64), RunInfo()).head, nn.Linear)
    # convert_split_bn leaves non-BN modules alone
    assert isinstance(convert_split_bn(nn.Linear(2, 2), 2), nn.Linear)


def test_batch_shuffle_is_a_permutation_that_unshuffle_undoes():
    x = torch.arange(12.0).view(6, 2)
    shuffled, inverse = batch_shuffle(x, torch.Generator().manual_seed(3))
    assert not torch.equal(shuffled, x)
    assert torch.equal(shuffled.sort(dim=0).values, x)
    assert torch.equal(batch_unshuffle(shuffled * 10, inverse), x * 10)


def test_simsiam_predictor_gets_a_fixed_lr_group():
    method = SimSiam(TinyNet(), SimSiamConfig(proj_hidden=16, proj_dim=16, pred_hidden=8), RunInfo())
    opt = build_optimizer(method, OptimConfig(name="sgd", lr=0.5, weight_decay=1e-4))
    predictor = {id(p) for p in method.predictor.parameters()}
    seen = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for p in method.parameters())  # every parameter exactly once
    for g in opt.param_groups:
        assert all((id(p) in predictor) == g.get("fixed_lr", False) for p in g["params"])
        assert g["weight_decay"] == (1e-4 if all(p.ndim > 1 for p in g["params"]) else 0.0)
    method.cfg.fix_pred_lr = False
    assert not any(g.get("fixed_lr") for g in build_optimizer(method, OptimConfig()).param_groups)


def test_simsiam_gradient_stops_at_its_targets():
    # L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2: the gradients equal those of that formula with
    # the targets detached by hand, and differ from the formula without the stop-gradient
    torch.manual_seed(0)
    method = SimSiam(TinyNet(), SimSiamConfig(proj_hidden=16, proj_dim=16, pred_hidden=8), RunInfo())
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    views = [View(x, torch.zeros(8, 4), torch.zeros(8, dtype=torch.bool)) for x in (x1, x2)]

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        return torch.autograd.grad(loss, list(method.parameters()), allow_unused=True)

    def by_hand(stop: bool) -> torch.Tensor:
        _, pooled = method.backbone(torch.cat([x1, x2]))  # one backbone batch, as encode()
        z1, z2 = method.projector(pooled[:8]), method.projector(pooled[8:])
        p1, p2 = method.predictor(z1), method.predictor(z2)
        t1, t2 = (z1.detach(), z2.detach()) if stop else (z1, z2)
        return -(F.cosine_similarity(p1, t2).mean() + F.cosine_similarity(p2, t1).mean()) / 2

    ours, stopped, through = grads(method(views).loss), grads(by_hand(True)), grads(by_hand(False))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(ours, stopped, strict=True))
    assert any(not torch.allclose(a, b, atol=1e-4) for a, b in zip(ours, through, strict=True))


def test_bad_options_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"mocov2\.loss"):
        build_config({"method": "mocov2", "mocov2": {"loss": "nope"}}, METHODS)
    with pytest.raises(ConfigError, match=r"mocov1\.bn_splits"):
        build_config({"method": "mocov1", "mocov1": {"bn_splits": 0}}, METHODS)
    moco = MoCo(TinyNet(), MoCoConfig(queue_size=64, bn_splits=4), RunInfo())
    images = torch.zeros(6, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"mocov1\.bn_splits 4: the per-process batch of 6"):
        moco([View(images, torch.zeros(6, 4), torch.zeros(6, dtype=torch.bool))] * 2)
    with pytest.raises(ConfigError, match=r"vicreg\.eps"):
        build_config({"method": "vicreg", "vicreg": {"eps": 0.0}}, METHODS)
    with pytest.raises(ConfigError, match=r"barlow\.lambd"):
        build_config({"method": "barlow", "barlow": {"lambd": -1.0}}, METHODS)
    with pytest.raises(ConfigError, match=r"mocov3\.freeze_patch_embed needs a ViT backbone, got 'resnet18'"):
        build_config({"method": "mocov3", "mocov3": {"freeze_patch_embed": True}}, METHODS)


# ---------------------------------------------------------------- learning on real CIFAR-10
@pytest.fixture(scope="module")
def cifar_256(cifar_subset):
    """256 real CIFAR-10 training images (uint8) and their sizes, in a fixed random order."""
    train = open_dataset(cifar_subset(26, 0)).train
    batch = next(train.batches(256, shuffle=True, seed=0))
    return batch.images, batch.sizes


SMALL = {  # small heads and per-method learning rates for a tiny backbone
    "mocov1": ({"dim": 32, "queue_size": 128, "bn_splits": 4, "momentum": 0.99, "temperature": 0.1}, 0.03),
    "mocov2": ({"dim": 32, "queue_size": 128, "bn_splits": 4}, 0.1),
    "mocov3": ({"proj_hidden": 128, "proj_dim": 64, "pred_hidden": 128, "temperature": 0.2}, 0.1),
    "simsiam": ({"proj_hidden": 64, "proj_dim": 64, "pred_hidden": 32}, 0.1),
    "barlow": ({"proj_hidden": 128, "proj_dim": 64, "scale_loss": 0.1}, 0.1),
    "vicreg": ({"proj_hidden": 128, "proj_dim": 64}, 0.03),
}


def _train(method, images, sizes, lr: float, steps: int, batch: int = 64) -> tuple[list[float], torch.Tensor]:
    """SGD on 4 fixed batches of real images (views drawn once with the method's recipe),
    cycled; two no-grad passes first fill MoCo's queue with real keys (queue = 2 batches, so
    it never holds a stale key of the image being contrasted)."""
    torch.manual_seed(0)
    specs = RECIPES[method.recipe](32, (0.2, 1.0), False, CIFAR10_MEAN, CIFAR10_STD)
    gen = torch.Generator().manual_seed(0)
    batches = [make_views(images[i : i + batch], sizes[i : i + batch], specs, gen) for i in range(0, 4 * batch, batch)]
    opt = build_optimizer(method, OptimConfig(name="sgd", lr=lr, weight_decay=0.0))
    with torch.no_grad():
        method(batches[0])
        method(batches[1])
    losses = []
    for step in range(steps):
        out = method(batches[(step + 2) % 4])
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        method.on_step(step + 1, steps)
        losses.append(out.loss.item())
    return losses, out.embedding


@pytest.mark.parametrize("name", NEW_METHODS)
def test_short_run_on_real_cifar_lowers_the_loss_without_collapse(name, cifar_256):
    torch.manual_seed(0)
    cls = METHODS[name]
    options, lr = SMALL[name]
    losses, z = _train(cls(TinyNet(), cls.Config(**options), RunInfo()), *cifar_256, lr=lr, steps=12)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"{name}: loss did not decrease: {losses}"
    assert embedding_std(z) > 0.3 / math.sqrt(z.shape[1]), f"{name}: embeddings collapsed"


def test_mocov3_trains_a_vit(cifar_256):
    torch.manual_seed(0)
    vit = build_backbone(BackboneConfig("vit_tiny_patch16_224", img_size=32))  # 2 x 2 patches of 16 px
    cfg = MoCoV3Config(proj_hidden=64, proj_dim=32, pred_hidden=64, temperature=0.2, freeze_patch_embed=True)
    method = MoCoV3(vit, cfg, RunInfo())
    assert sum(isinstance(m, nn.Linear) for m in method.projector) == 3  # ViTs get the 3-layer projector
    patch, qkv = vit.net.patch_embed.proj.weight, vit.net.blocks[0].attn.qkv.weight
    patch_before, qkv_before = patch.detach().clone(), qkv.detach().clone()
    losses, _ = _train(method, *cifar_256, lr=0.05, steps=6, batch=16)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-2:]) < sum(losses[:2]), losses
    assert not patch.requires_grad and torch.equal(patch, patch_before)  # frozen random patch projection
    assert not torch.equal(qkv, qkv_before)  # the transformer blocks are trained


# ---------------------------------------------------------------- presets and the CLI
@pytest.mark.parametrize("name", NEW_METHODS)
def test_cifar_presets_load(name):
    cfg = build_config(load_yaml(find_config(f"cifar10/{name}")), METHODS)
    assert cfg.method == name and cfg.backbone.cifar_stem and cfg.views.size == 32
    assert cfg.views.scale == (0.2, 1.0) and not cfg.views.blur and cfg.views.mean == CIFAR10_MEAN


def test_simsiam_cli_run_keeps_the_predictor_lr_fixed(cifar_subset, tmp_path, capsys):
    data = cifar_subset(10, 5)
    args = ["pretrain", "--method", "simsiam", "--data", str(data),
            "--config", "cifar10/simsiam", "--epochs", "1", "--batch-size", "16",
            "--out", str(tmp_path), "--set", "backbone.cifar_stem=false", "train.progress=false",
            "train.knn_every=0", "train.log_every=1", "data.max_images=48"]
    assert main(args) == 0
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3
    groups = state["optimizer"]["param_groups"]
    scheduled = learning_rate(2, 3, 0, 0.5, 0.05)  # the lr of the last of 3 steps (cosine to 0.05)
    assert {g["lr"] for g in groups if g.get("fixed_lr")} == {0.5}
    assert all(g["lr"] == pytest.approx(scheduled) for g in groups if not g.get("fixed_lr"))
    assert any(g.get("fixed_lr") for g in groups) and scheduled < 0.4
    assert (tmp_path / "backbone.pth").is_file()
