"""The InfoNCE family, alignment / uniformity, SimCLR's loss and v2-head options, and
``selfsup eval align``: hand-computed values, invariances, gradients, relations between the
losses, a 2-process DDP gradient check and end-to-end CLI runs on real CIFAR-10."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from selfsup.cli import main
from selfsup.config import ConfigError, build_config
from selfsup.data import open_dataset
from selfsup.eval.alignment import alignment_uniformity
from selfsup.losses.alignment import alignment, uniformity
from selfsup.losses.contrastive import (
    PAIR_LOSSES,
    debiased_contrastive,
    decoupled_contrastive,
    flat_nce,
    hard_negative_contrastive,
    info_nce,
    nt_xent,
    pair_loss,
    simclr_pairs,
)
from selfsup.methods import METHODS, build_method
from selfsup.methods.simclr import ProjectedBackbone
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD
from selfsup.views.recipes import RECIPES
from selfsup.views.view import View

ROOT = Path(__file__).resolve().parents[1]

# two anchors, three negatives each, t = 0.5
POS = [0.5, -0.2]
NEG = [[0.1, -0.3, 0.4], [0.2, 0.0, -0.5]]
T = 0.5


def _tensors(dtype=torch.float32, requires_grad=False):
    return (torch.tensor(POS, dtype=dtype, requires_grad=requires_grad),
            torch.tensor(NEG, dtype=dtype, requires_grad=requires_grad))


def _random_pairs(seed, n=5, m=7):
    """Cosine-like similarities in (-1, 1), float64, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    pos = (torch.rand(n, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    neg = (torch.rand(n, m, generator=g, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    return pos, neg


# ----------------------------------------------------------------------------- hand values
def _by_hand(neg_term):
    """mean_i -log(e^{p_i/t} / (e^{p_i/t} + neg_term(i))), written out with math."""
    return sum(-math.log(math.exp(p / T) / (math.exp(p / T) + neg_term(i, p))) for i, p in enumerate(POS)) / 2


def test_infonce_by_hand():
    expected = _by_hand(lambda i, p: sum(math.exp(s / T) for s in NEG[i]))
    assert math.isclose(info_nce(*_tensors(), T).item(), expected, rel_tol=1e-6)


def test_debiased_by_hand():
    tau = 0.1

    def ng(i, p):
        estimate = (sum(math.exp(s / T) for s in NEG[i]) - tau * 3 * math.exp(p / T)) / (1 - tau)
        return max(estimate, 3 * math.exp(-1 / T))

    assert math.isclose(debiased_contrastive(*_tensors(), T, tau_plus=tau).item(), _by_hand(ng), rel_tol=1e-6)


def test_debiased_clamp_by_hand():
    # a confident positive and far negatives: the debiased estimate goes negative and the
    # clamp at M e^{-1/t} binds: l = -log(e^{p/t} / (e^{p/t} + 3 e^{-1/t}))
    pos, neg = torch.tensor([0.9]), torch.tensor([[-0.8, -0.9, -0.7]])
    assert (neg / T).exp().sum() - 0.5 * 3 * math.exp(0.9 / T) < 0
    expected = -math.log(math.exp(0.9 / T) / (math.exp(0.9 / T) + 3 * math.exp(-1 / T)))
    assert math.isclose(debiased_contrastive(pos, neg, T, tau_plus=0.5).item(), expected, rel_tol=1e-6)


def test_hard_negative_by_hand():
    tau, beta = 0.1, 1.0

    def ng(i, p):
        w = [math.exp(beta * s / T) for s in NEG[i]]
        e_q = sum(wj * math.exp(s / T) for wj, s in zip(w, NEG[i], strict=True)) / sum(w)
        return max((3 * e_q - tau * 3 * math.exp(p / T)) / (1 - tau), 3 * math.exp(-1 / T))

    loss = hard_negative_contrastive(*_tensors(), T, beta=beta, tau_plus=tau)
    assert math.isclose(loss.item(), _by_hand(ng), rel_tol=1e-6)


def test_dcl_by_hand():
    expected = sum(-p / T + math.log(sum(math.exp(s / T) for s in NEG[i])) for i, p in enumerate(POS)) / 2
    assert math.isclose(decoupled_contrastive(*_tensors(), T).item(), expected, rel_tol=1e-6)


def test_flatnce_reports_infonce_value():
    assert math.isclose(flat_nce(*_tensors(), T).item(), info_nce(*_tensors(), T).item(), rel_tol=1e-6)


def test_alignment_by_hand():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    y = torch.tensor([[0.0, 1.0], [0.0, 1.0], [-1.0, 0.0]])
    # squared distances 2, 0, 0
    assert math.isclose(alignment(x, y).item(), 2 / 3, rel_tol=1e-6)
    assert math.isclose(alignment(x, y, alpha=1).item(), math.sqrt(2) / 3, rel_tol=1e-6)


def test_uniformity_by_hand_and_chunking():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # pairwise squared distances 2, 4, 2 -> log mean exp(-2 d^2)
    expected = math.log((math.exp(-4) + math.exp(-8) + math.exp(-4)) / 3)
    for chunk in (1, 2, 1024):
        assert math.isclose(uniformity(x, t=2.0, chunk=chunk).item(), expected, rel_tol=1e-5)
    assert uniformity(torch.ones(4, 3) / math.sqrt(3)).abs().item() < 1e-6  # collapsed: log 1
    with pytest.raises(ValueError, match="at least 2"):
        uniformity(x[:1])


# ----------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("name", list(PAIR_LOSSES))
def test_pair_losses_invariant_to_batch_and_negative_order(name):
    pos, neg = (v.detach().float() for v in _random_pairs(0, n=6, m=9))
    g = torch.Generator().manual_seed(1)
    rows = torch.randperm(6, generator=g)
    cols = torch.stack([torch.randperm(9, generator=g) for _ in range(6)])
    ref = pair_loss(name, pos, neg, 0.2)
    assert torch.allclose(pair_loss(name, pos[rows], neg[rows], 0.2), ref, atol=1e-6)
    assert torch.allclose(pair_loss(name, pos, neg.gather(1, cols), 0.2), ref, atol=1e-6)


# ----------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name", ["infonce", "debiased", "hard_negative", "dcl"])
def test_pair_losses_gradcheck(name):
    pos, neg = _random_pairs(2)
    assert torch.autograd.gradcheck(lambda p, n: pair_loss(name, p, n, 0.3, tau_plus=0.1, beta=0.7), (pos, neg))


def test_alignment_uniformity_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    y = F.normalize(torch.randn(5, 3, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: alignment(a, b), (x, y))
    assert torch.autograd.gradcheck(lambda a: uniformity(a, chunk=2), (x,))


def _grads(fn, pos, neg):
    return torch.autograd.grad(fn(pos, neg, T), (pos, neg))


def test_flatnce_gradient_is_logsumexp_gradient_and_dcl():
    # FlatNCE = mean_i exp(v_i - sg(v_i)), v_i = logsumexp_j((n_ij - p_i) / t): its gradient is
    # that of mean_i v_i. Check against central differences of that objective, written with math.
    pos, neg = _random_pairs(4, n=3, m=4)
    g_pos, g_neg = _grads(flat_nce, pos, neg)

    def objective(p, n):
        return sum(math.log(sum(math.exp((s - p[i]) / T) for s in n[i])) for i in range(len(p))) / len(p)

    p0, n0, h = pos.tolist(), neg.tolist(), 1e-6
    for i in range(3):
        up, down = list(p0), list(p0)
        up[i] += h
        down[i] -= h
        assert math.isclose((objective(up, n0) - objective(down, n0)) / (2 * h), g_pos[i].item(), rel_tol=1e-6)
        for j in range(4):
            up_n, down_n = [list(r) for r in n0], [list(r) for r in n0]
            up_n[i][j] += h
            down_n[i][j] -= h
            numeric = (objective(p0, up_n) - objective(p0, down_n)) / (2 * h)
            assert math.isclose(numeric, g_neg[i, j].item(), rel_tol=1e-6)
    # ... which is exactly DCL's gradient (same similarities)
    for a, b in zip(_grads(decoupled_contrastive, pos, neg), (g_pos, g_neg), strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_flatnce_gradient_is_infonce_gradient_rescaled_per_anchor():
    # the paper's claim: per anchor, grad FlatNCE = grad InfoNCE / (1 - softmax(positive)),
    # with 1 - softmax(positive) = S / (1 + S), S = sum_j exp((n_j - p) / t)
    pos, neg = _random_pairs(5)
    f_pos, f_neg = _grads(flat_nce, pos, neg)
    i_pos, i_neg = _grads(info_nce, pos, neg)
    s = torch.exp((neg - pos[:, None]) / T).sum(dim=1).detach()
    scale = (1 + s) / s
    assert torch.allclose(f_pos, i_pos * scale, rtol=1e-9)
    assert torch.allclose(f_neg, i_neg * scale[:, None], rtol=1e-9)


# ----------------------------------------------------------------------------- relations
def test_dcl_below_infonce_per_anchor():
    pos, neg = (v.detach() for v in _random_pairs(6, n=8))
    for i in range(8):
        assert decoupled_contrastive(pos[i : i + 1], neg[i : i + 1], T) < info_nce(pos[i : i + 1], neg[i : i + 1], T)


def test_debiased_with_zero_prior_is_infonce_for_cosines_only():
    pos, neg = (v.detach() for v in _random_pairs(7))
    assert torch.allclose(debiased_contrastive(pos, neg, T, tau_plus=0.0), info_nce(pos, neg, T), atol=1e-12)
    # similarities below -1 (not cosines): the clamp binds and the loss is larger
    far = torch.full_like(neg, -3.0)
    assert debiased_contrastive(pos, far, T, tau_plus=0.0) > info_nce(pos, far, T) + 1e-3


def test_hard_negative_beta_zero_is_debiased_and_beta_makes_it_harder():
    pos, neg = (v.detach() for v in _random_pairs(8))
    d = debiased_contrastive(pos, neg, T, tau_plus=0.05)
    assert torch.allclose(hard_negative_contrastive(pos, neg, T, beta=0.0, tau_plus=0.05), d, atol=1e-12)
    # weights growing with the similarity put more mass on large exp(s / t): a larger loss
    assert hard_negative_contrastive(pos, neg, T, beta=1.0, tau_plus=0.05) > d


def test_losses_are_finite_at_small_temperature_in_half_precision_inputs():
    pos, neg = (v.detach().half() for v in _random_pairs(9))
    for name in PAIR_LOSSES:
        loss = pair_loss(name, pos, neg, 0.01)
        assert loss.dtype == torch.float32 and torch.isfinite(loss), name


def test_pair_loss_unknown_name():
    with pytest.raises(ConfigError, match="unknown contrastive loss 'bogus'; choices: infonce, debiased"):
        pair_loss("bogus", *_tensors(), T)


# ----------------------------------------------------------------------------- SimCLR pairs
def test_simclr_pairs_match_the_similarity_matrix():
    g = torch.Generator().manual_seed(10)
    z1, z2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    pos, neg = simclr_pairs(z1, z2)
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    assert pos.shape == (6,) and neg.shape == (6, 4)
    for i in range(6):
        p = (i + 3) % 6
        assert math.isclose(pos[i].item(), float(u[i] @ u[p]), rel_tol=1e-6)
        expected = [float(u[i] @ u[k]) for k in range(6) if k not in (i, p)]  # gathered order
        assert torch.allclose(neg[i], torch.tensor(expected), atol=1e-6)
    # NT-Xent is InfoNCE on these pairs: check against the loss written out by hand
    t = 0.3
    by_hand = 0.0
    for i in range(6):
        sims = [float(u[i] @ u[k]) / t for k in range(6) if k != i]
        by_hand += -(float(u[i] @ u[(i + 3) % 6]) / t - math.log(sum(math.exp(s) for s in sims)))
    assert math.isclose(nt_xent(z1, z2, t).item(), by_hand / 6, rel_tol=1e-5)


def test_simclr_pairs_rank_slices_are_rows_of_the_full_batch():
    g = torch.Generator().manual_seed(11)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    full_pos, full_neg = simclr_pairs(z1, z2)
    for r in range(2):
        sl = slice(r * 4, (r + 1) * 4)
        pos, neg = simclr_pairs(z1[sl], z2[sl], z1, z2, offset=r * 4)
        rows = torch.cat([torch.arange(8)[sl], torch.arange(8)[sl] + 8])
        assert torch.equal(pos, full_pos[rows]) and torch.equal(neg, full_neg[rows])


# ----------------------------------------------------------------------------- SimCLR method
def _simclr(cifar_stem=False, **params):
    base = {"proj_hidden": 32, "proj_dim": 16}
    return build_config({"method": "simclr", "backbone": {"name": "resnet18", "cifar_stem": cifar_stem},
                         "simclr": {**base, **params}}, METHODS)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"loss": "bogus"}, "simclr.loss: 'bogus' is not one of infonce, debiased, hard_negative, flatnce, dcl, "
                            "align_uniform"),
        ({"tau_plus": 1.0}, "simclr.tau_plus must be in [0, 1), got 1.0"),
        ({"beta": -1}, "simclr.beta must be >= 0, got -1.0"),
        ({"finetune_from_layer": 2}, "simclr.finetune_from_layer must be in 0..1 (proj_layers - 1), got 2"),
    ],
)
def test_simclr_config_errors(params, message):
    with pytest.raises(ConfigError) as e:
        _simclr(**params)
    assert str(e.value) == message


def test_simclr_loss_option_uses_the_named_loss(cifar_images):
    torch.manual_seed(0)
    x = cifar_images[:8]
    views = [View(x, torch.zeros(8, 4), torch.zeros(8, dtype=torch.bool)),
             View(x.flip(3), torch.zeros(8, 4), torch.zeros(8, dtype=torch.bool))]
    method = build_method(_simclr(loss="hard_negative", tau_plus=0.2, beta=0.5))
    out = method(views)
    h1, h2 = method.encode(views)
    pos, neg = simclr_pairs(method.projector(h1), method.projector(h2))
    assert torch.allclose(out.loss, hard_negative_contrastive(pos, neg, 0.1, beta=0.5, tau_plus=0.2), atol=1e-5)
    assert set(out.logs) == {"align", "uniform"} and not out.logs["uniform"].requires_grad
    method = build_method(_simclr(loss="align_uniform", align_weight=2.0, uniform_weight=0.5))
    out = method(views)
    assert torch.allclose(out.loss, 2.0 * out.logs["align"] + 0.5 * out.logs["uniform"], atol=1e-6)


def test_simclr_v2_head_keeps_the_first_projector_layer_in_the_encoder(cifar_images):
    torch.manual_seed(0)
    method = build_method(_simclr(proj_layers=3, proj_last_bn=True, finetune_from_layer=1))
    backbone = method.backbone
    assert isinstance(backbone, ProjectedBackbone) and backbone.out_dim == 32
    assert [type(m) for m in backbone.head] == [torch.nn.Linear, torch.nn.BatchNorm1d, torch.nn.ReLU]
    # the rest of the projector: one hidden layer, then Linear -> affine-free BN (v2)
    assert [type(m).__name__ for m in method.projector] == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert not method.projector[-1].affine
    x = cifar_images[:6]
    method.eval()
    fmap, feats = backbone(x)
    assert feats.shape == (6, 32) and fmap.shape[1] == 512 and (feats >= 0).all()
    # export: torchvision weights + the head under ``projector.``, which rebuild the same features
    weights = backbone.export_state_dict()
    net = torchvision.models.resnet18()
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"}
    assert set(unexpected) == {k for k in weights if k.startswith("projector.")} != set()
    net.fc = torch.nn.Sequential(torch.nn.Linear(512, 32, bias=False), torch.nn.BatchNorm1d(32), torch.nn.ReLU())
    net.fc.load_state_dict({k.removeprefix("projector."): v for k, v in weights.items() if k.startswith("projector.")})
    assert torch.allclose(net.eval()(x), feats, atol=1e-5)


# ----------------------------------------------------------------------------- DDP
WORLD, PER_RANK = 2, 4
DDP_LOSSES = ({"loss": "hard_negative", "tau_plus": 0.1}, {"loss": "align_uniform", "uniform_weight": 2.0})


def _views(images, sl):
    n = images.shape[1]
    return [View(images[i, sl], torch.zeros(n, 4)[sl], torch.zeros(n, dtype=torch.bool)[sl]) for i in range(2)]


def _param_grads(method):
    return {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}


def _ddp_worker(rank, data):
    out = []
    for params, state in zip(DDP_LOSSES, data["states"], strict=True):
        method = build_method(_simclr(**params)).double()
        method.load_state_dict(state)
        method, model = wrap_model(method, DistInfo(rank, WORLD, rank, torch.device("cpu")), sync_bn=True)
        model(_views(data["images"], slice(rank * PER_RANK, (rank + 1) * PER_RANK))).loss.backward()
        out.append(_param_grads(method))
    return out


def test_ddp_gradients_equal_single_process_for_new_losses(cifar_images, ddp_pool):

    # float64: in float32, round-off can flip near-ties of the stem's max-pool between the two
    # computations and move whole gradient entries (seen as ~1% differences, any loss)
    torch.manual_seed(0)
    x = cifar_images[torch.arange(WORLD * PER_RANK) * 12].double()  # images of 8 different classes
    images = torch.stack([x, torch.roll(x.flip(3), shifts=2, dims=2)])
    methods = [build_method(_simclr(**p)).double() for p in DDP_LOSSES]
    results = ddp_pool.run(_ddp_worker, {"states": [m.state_dict() for m in methods], "images": images})
    reference = []
    for m in methods:
        m(_views(images, slice(None))).loss.backward()
        reference.append(_param_grads(m))
    assert len(results) == WORLD
    for ranks in results:
        for params, grads, ref in zip(DDP_LOSSES, ranks, reference, strict=True):
            for k, g in ref.items():
                diff = (grads[k] - g).norm()
                assert diff < 1e-3 * g.norm() + 1e-6, f"{params['loss']}: {k} differs under DDP ({diff:.3g})"


# ----------------------------------------------------------------------------- end to end
def test_alignment_uniformity_of_a_constant_encoder_is_zero(cifar_subset):
    class Constant(torch.nn.Module):
        def forward(self, x):
            return x, torch.ones(x.shape[0], 4)

    dataset = open_dataset(cifar_subset(2, 0)).train
    specs = RECIPES["simclr"](32, (0.2, 1.0), False, CIFAR10_MEAN, CIFAR10_STD)
    res = alignment_uniformity(Constant(), dataset, specs, 32, CIFAR10_MEAN, CIFAR10_STD, batch_size=8)
    assert res["alignment"] == 0 and abs(res["uniformity"]) < 1e-6 and res["images"] == 20


def test_debiased_v2_run_then_eval_align_and_export(cifar_subset, tmp_path, capsys):
    # 32 images, one step per epoch; full-image crops (scale 1) and Adam make the loss fall
    # clearly within 8 steps (measured: first half mean 3.89, second half 3.47)
    data, run = cifar_subset(10, 5), tmp_path / "run"
    args = ["pretrain", "--method", "simclr", "--data", str(data),
            "--config", "cifar10/simclr",
            "--epochs", "8", "--batch-size", "32", "--out", str(run),
            "--set", "backbone.cifar_stem=false", "data.max_images=32", "views.scale=[1.0,1.0]",
            "train.knn_every=0", "train.progress=false", "train.log_every=1", "train.channels_last=false",
            "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.0", "optim.warmup_epochs=0",
            "simclr.temperature=0.2", "simclr.loss=debiased", "simclr.proj_layers=3", "simclr.proj_last_bn=true",
            "simclr.finetune_from_layer=1", "simclr.proj_hidden=256"]
    assert main(args) == 0
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "summary" not in r]
    losses = [r["loss"] for r in steps]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[4:]) < sum(losses[:4]) and losses[-1] < losses[0], losses
    assert all(r["uniform"] < 0 < r["align"] for r in steps)
    capsys.readouterr()

    assert main(["eval", "align", "--checkpoint", str(run), "--data", str(data)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    res = json.loads((run / "align.json").read_text())
    # the evaluated encoder is backbone + first projector layer: 256-d features (v2 style)
    assert printed == res and res["split"] == "test" and res["images"] == 50 and res["feature_dim"] == 256
    assert 0 < res["alignment"] < 4 and -4 < res["uniformity"] < 0
    assert main(["eval", "align", "--checkpoint", str(run), "--data", str(data), "--random-init",
                 "--split", "train", "--max-train", "20"]) == 0
    base = json.loads((run / "align_random_init.json").read_text())
    assert base["random_init"] is True and base["images"] == 20 and base["split"] == "train"
    assert base["alignment"] != res["alignment"]
    weights = torch.load(run / "backbone.pth", weights_only=True)
    assert {k for k in weights if k.startswith("projector.")} == {
        "projector.0.weight", "projector.1.weight", "projector.1.bias", "projector.1.running_mean",
        "projector.1.running_var", "projector.1.num_batches_tracked"}


def test_bad_loss_name_fails_before_reading_data(tmp_path, capsys):
    assert main(["pretrain", "--method", "simclr", "--data", str(tmp_path / "missing"),
                 "--set", "simclr.loss=bogus"]) == 2
    assert "error: simclr.loss: 'bogus' is not one of infonce" in capsys.readouterr().err
