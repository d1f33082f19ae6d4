"""Instance-discrimination methods (InstDisc, InvaSpread, PIC, Exemplar-CNN): their pieces
against hand-computed values, short learning runs on real CIFAR-10 images, and a CLI run
whose memory bank survives Ctrl-C + --resume."""

import math
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.config import ConfigError, OptimConfig, build_config
from selfsup.data import DataError, ImageDataset, open_dataset
from selfsup.data.order import epoch_order, sliding_window_order
from selfsup.losses.contrastive import nce
from selfsup.losses.instance import invariant_spreading
from selfsup.methods import METHODS, RunInfo, build_method
from selfsup.methods.base import embedding_std
from selfsup.methods.exemplar import surrogate_classes
from selfsup.methods.instdisc import init_bank, update_bank
from selfsup.methods.pic import cosine_logits, sample_classes
from selfsup.train import trainer as trainer_mod
from selfsup.train.optim import build_optimizer
from selfsup.views.view import View

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- InstDisc
def test_memory_bank_momentum_update_by_hand():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    update_bank(bank, torch.tensor([2, 0]), torch.tensor([[0.0, 1.0], [0.6, 0.8]]), momentum=0.5)
    # row 2: 0.5 (0.6, 0.8) + 0.5 (0, 1) = (0.3, 0.9), norm sqrt(0.9); row 0: (0.8, 0.4), norm sqrt(0.8)
    expected = torch.tensor([
        [0.8 / math.sqrt(0.8), 0.4 / math.sqrt(0.8)],
        [0.0, 1.0],
        [0.3 / math.sqrt(0.9), 0.9 / math.sqrt(0.9)],
    ])
    torch.testing.assert_close(bank, expected, atol=1e-6, rtol=0)


def test_initial_bank_rows_are_unit_vectors_in_all_directions():
    bank = init_bank(2000, 16, torch.Generator().manual_seed(0))
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(2000), atol=1e-5, rtol=0)
    assert bank.mean(dim=0).abs().max() < 0.05  # uniform init: no preferred direction
    assert embedding_std(bank) > 0.9 / math.sqrt(16)


def test_nce_loss_by_hand():
    # posterior form h = P / (P + m Pn), P = exp(s / t) / Z, Pn = 1 / n
    pos = torch.tensor([0.5, -0.2])
    neg = torch.tensor([[0.1, 0.3], [-0.4, 0.9]])
    t, n, z = 0.5, 10, 3.0
    m = 2

    def h(s):
        p = math.exp(s / t) / z
        return p / (p + m / n)

    total = 0.0
    for i in range(2):
        total += math.log(h(pos[i].item())) + sum(math.log(1 - h(s.item())) for s in neg[i])
    loss = nce(pos, neg, t, n, math.log(z))
    assert math.isclose(loss.item(), -total / 2, rel_tol=1e-6)


def test_nce_gradcheck():
    g = torch.Generator().manual_seed(0)
    pos = torch.rand(3, generator=g, dtype=torch.float64).requires_grad_()
    neg = torch.rand(3, 5, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda p, q: nce(p, q, 0.2, 50, 1.7), (pos, neg))


@pytest.mark.parametrize("z_momentum", [1.0, 0.5, 0.0])
def test_instdisc_normalising_constant_first_batch_then_running(z_momentum, cifar_images):
    torch.manual_seed(0)
    method = build_method(_cfg("instdisc", z_momentum=z_momentum), RunInfo(200))
    index = torch.arange(6)

    estimates = []
    for step in range(2):
        views = _views(cifar_images[index + 6 * step], index + 6 * step)
        with torch.no_grad():  # Z_batch = n mean exp(s / t) over positives and noise, by hand
            v = torch.nn.functional.normalize(method.head(method.encode(views[:1])[0]), dim=1)
            noise = torch.randint(200, (6, 64), generator=torch.Generator().manual_seed(step))
            sims = torch.cat([(method.bank[index + 6 * step] * v).sum(1, keepdim=True),
                              torch.einsum("nd,nkd->nk", v, method.bank[noise])], dim=1)
        estimates.append(200 * sims.div(0.07).exp().mean().item())
        method(views)
    z = math.exp(method.log_z.item())
    assert math.isclose(z, z_momentum * estimates[0] + (1 - z_momentum) * estimates[1], rel_tol=1e-4)
    with pytest.raises(ConfigError, match="z_momentum"):
        _cfg("instdisc", z_momentum=1.5)


def test_instdisc_bank_from_the_networks_own_features(cifar_subset):
    train = open_dataset(cifar_subset(10, 0)).train  # 100 real images, uint8
    cfg = build_config({"method": "instdisc", "backbone": {"name": "resnet18"},
                        "views": {"size": 32, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]},
                        "instdisc": {"num_negatives": 64, "bank_init": "features"}}, METHODS)
    torch.manual_seed(0)
    method = build_method(cfg, RunInfo(100))
    random_bank = method.bank.clone()
    method.on_fit_start(train, cfg.views, torch.device("cpu"))
    assert method.training and method.backbone.training  # eval mode only while embedding
    method.eval()
    with torch.no_grad():  # row i = normalise(head(backbone(image i))), pixels normalised by hand
        pixels = next(train.batches(100, shuffle=False)).images.float() / 255
        x = (pixels - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)
        expected = torch.nn.functional.normalize(method.head(method.backbone(x)[1]), dim=1)
    torch.testing.assert_close(method.bank, expected, atol=1e-5, rtol=0)
    assert (method.bank * random_bank).sum(1).abs().mean() < 0.3  # no longer the random rows
    paper = build_method(_cfg("instdisc"), RunInfo(100))
    before = paper.bank.clone()
    paper.on_fit_start(train, cfg.views, torch.device("cpu"))
    assert torch.equal(paper.bank, before)  # the default keeps the paper's random bank
    with pytest.raises(ConfigError, match="bank_init"):
        _cfg("instdisc", bank_init="zeros")


# ----------------------------------------------------------------------------- InvaSpread
def test_invariant_spreading_by_hand():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_hat = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    t = 0.5

    def p(i, x):  # P(i | x) = exp(f_i . x / t) / sum_k exp(f_k . x / t)
        e = [math.exp(float(f[k] @ x) / t) for k in range(2)]
        return e[i] / sum(e)

    total = 0.0
    for i in range(2):
        total += math.log(p(i, f_hat[i])) + math.log(1 - p(1 - i, f[i]))
    loss = invariant_spreading(f, f_hat, t)
    assert math.isclose(loss.item(), -total / 2, rel_tol=1e-6)


def test_invariant_spreading_three_embeddings_scale_free_by_hand():
    f = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.5]])  # normalised inside
    f_hat = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    u = torch.eye(3)
    v = torch.nn.functional.normalize(f_hat, dim=1)
    t = 1.0

    def p(i, x):
        e = [math.exp(float(u[k] @ x) / t) for k in range(3)]
        return e[i] / sum(e)

    total = 0.0
    for i in range(3):
        total += math.log(p(i, v[i])) + sum(math.log(1 - p(k, u[i])) for k in range(3) if k != i)
    assert math.isclose(invariant_spreading(f, f_hat, t).item(), -total / 3, rel_tol=1e-6)


def test_invariant_spreading_permutation_invariant_rank_slices_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    f, f_hat = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    perm = torch.randperm(8, generator=g)
    full = invariant_spreading(f, f_hat, 0.1)
    assert torch.allclose(full, invariant_spreading(f[perm], f_hat[perm], 0.1), atol=1e-5)
    # each rank's anchors against the gathered batch average to the full-batch loss
    parts = [invariant_spreading(f[r * 4 : (r + 1) * 4], f_hat[r * 4 : (r + 1) * 4], 0.1, f, offset=r * 4)
             for r in range(2)]
    assert torch.allclose(torch.stack(parts).mean(), full, atol=1e-5)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: invariant_spreading(x, y, 0.5), (a, b))


def test_invariant_spreading_finite_when_an_instance_is_certain():
    # a very low temperature makes P(i | f_i) round to 1: the loss and gradient stay finite
    f = torch.eye(3, requires_grad=True)
    loss = invariant_spreading(f, f.detach().clone(), 1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(f.grad).all()


# ----------------------------------------------------------------------------- PIC
def test_pic_negative_sampling_contains_the_batch_and_k_distinct_others():
    batch = torch.tensor([7, 3, 42, 0])
    classes = sample_classes(batch, 100, 20, torch.Generator().manual_seed(0))
    assert classes.shape == (24,) and torch.equal(classes[:4], batch)
    assert len(set(classes.tolist())) == 24 and classes.min() >= 0 and classes.max() < 100
    assert not set(classes[4:].tolist()) & set(batch.tolist())
    # all the other classes when K = num_classes - batch
    everything = sample_classes(batch, 50, 46, torch.Generator().manual_seed(1))
    assert sorted(everything.tolist()) == list(range(50))
    # uniform over the non-batch classes: over many draws every one is picked about equally
    counts = torch.zeros(100)
    for s in range(300):
        counts[sample_classes(batch, 100, 20, torch.Generator().manual_seed(s))[4:]] += 1
    assert counts[batch].sum() == 0
    others = counts[[c for c in range(100) if c not in batch.tolist()]]
    assert others.min() > 30 and others.max() < 100  # expected 300 * 20 / 96 = 62.5


def test_cosine_logits_by_hand():
    z = torch.tensor([[3.0, 4.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    expected = torch.tensor([[0.6, 0.8, -7 / (5 * math.sqrt(2))]]) / 0.5
    torch.testing.assert_close(cosine_logits(z, w, 0.5), expected, atol=1e-6, rtol=0)


def _cfg(method: str, **params):
    small = {"instdisc": {"num_negatives": 64}, "invaspread": {},
             "pic": {"proj_hidden": 64, "num_negatives": 16}, "exemplar": {}}
    return build_config({"method": method, "backbone": {"name": "resnet18"},
                         method: {**small[method], **params}}, METHODS)


def _views(x: torch.Tensor, index: torch.Tensor) -> list[View]:
    """Two fixed "views" of real images: the images, and mirrored + shifted by 2 pixels."""
    n = x.shape[0]
    return [View(v, torch.zeros(n, 4), torch.zeros(n, dtype=torch.bool), index)
            for v in (x, torch.roll(x.flip(3), shifts=2, dims=2))]


@pytest.mark.parametrize("correction", [True, False])
def test_pic_weight_correction_holds_unsampled_classes(correction, cifar_images):
    torch.manual_seed(0)
    method = build_method(_cfg("pic", weight_correction=correction), RunInfo(100))
    opt = build_optimizer(method, OptimConfig(lr=0.5, weight_decay=0.1))
    initial = method.class_weights.detach().clone()
    sampled = torch.zeros(100, dtype=torch.bool)
    for step in range(2):
        index = torch.arange(8) + 8 * step
        method(_views(cifar_images[index], index)).loss.backward()
        assert method.sampled.sum() == 8 + 16 and method.sampled[index].all()  # the batch + 16 negatives
        sampled |= method.sampled
        method.after_backward(step)
        opt.step()
        opt.zero_grad()
        method.on_step(step + 1, 2)
    moved = (method.class_weights.detach() != initial).any(dim=1)
    assert moved[sampled].all()  # sampled classes learn
    # unsampled rows get no gradient; without the correction weight decay and momentum move them
    assert moved[~sampled].any() != correction


# ----------------------------------------------------------------------------- Exemplar
def test_exemplar_surrogate_classes():
    torch.testing.assert_close(surrogate_classes(6, 0), torch.arange(6))
    torch.testing.assert_close(surrogate_classes(6, 6), torch.arange(6))
    mapping = surrogate_classes(50, 8)
    chosen = (mapping >= 0).nonzero().flatten()
    assert len(chosen) == 8 and torch.equal(mapping[chosen], torch.arange(8))  # classes in dataset order
    assert (mapping == -1).sum() == 42
    assert torch.equal(mapping, surrogate_classes(50, 8))  # a fixed subset
    assert chosen.max() > 8  # a random subset, not the (class-sorted) first images
    with pytest.raises(ValueError, match="num_classes"):
        surrogate_classes(5, 6)


def test_exemplar_ignores_images_outside_the_surrogate_set(cifar_images):
    torch.manual_seed(0)
    method = build_method(_cfg("exemplar", num_classes=10), RunInfo(100))
    outside = (method.class_of == -1).nonzero().flatten()[:6]
    out = method(_views(cifar_images[outside], outside))
    assert out.loss.item() == 0.0  # nothing to classify, and no nan
    inside = (method.class_of >= 0).nonzero().flatten()[:3]
    mixed = torch.cat([inside, outside[:3]])
    logits = method.classifier(torch.cat(method.encode(_views(cifar_images[mixed], mixed))))
    target = method.class_of[mixed].repeat(2)
    expected = torch.nn.functional.cross_entropy(logits[target >= 0], target[target >= 0])
    assert torch.allclose(method(_views(cifar_images[mixed], mixed)).loss, expected, atol=1e-5)


# ----------------------------------------------------------------------------- learning
@pytest.mark.parametrize("method_name", ["instdisc", "invaspread", "pic", "exemplar"])
def test_loss_decreases_on_real_images_without_collapse(method_name, cifar_images):
    torch.manual_seed(0)
    # a dataset-sized bank / classifier (4096 rows): noise and negatives are mostly other images
    method = build_method(_cfg(method_name), RunInfo(4096))
    opt = build_optimizer(method, OptimConfig(lr=0.01, weight_decay=0.0))
    images = cifar_images[torch.arange(0, 100, 8)]  # 13 real images, every class
    views = _views(images, torch.arange(13) * 315)
    losses = []
    for step in range(8):
        out = method(views)
        out.loss.backward()
        method.after_backward(step)
        opt.step()
        opt.zero_grad()
        method.on_step(step + 1, 8)
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    z = out.embedding
    assert embedding_std(z) > 0.3 / math.sqrt(z.shape[1])


# ----------------------------------------------------------------------------- data order
def test_sliding_window_order():
    n, window, stride = 50, 20, 5
    epochs = [sliding_window_order(n, window, stride, seed=3, epoch=e) for e in range(4)]
    stream = torch.cat(epochs)
    base = torch.randperm(n, generator=torch.Generator().manual_seed(3))
    for w in range(len(stream) // window):  # window w: positions w*stride .. +window of base, shuffled
        chunk = stream[w * window : (w + 1) * window]
        expected = base[(w * stride + torch.arange(window)) % n]
        assert sorted(chunk.tolist()) == sorted(expected.tolist()) and len(set(chunk.tolist())) == window
    assert all(len(e) == n for e in epochs)
    assert torch.equal(epoch_order(n, True, 3, 2, window=(window, stride)), epochs[2])
    # the dataset's batches follow it (rank 1 of 2 takes the second 5 of every 10)
    dataset = ImageDataset.from_tensors(torch.zeros(n, 3, 4, 4, dtype=torch.uint8))
    batches = dataset.batches(5, shuffle=True, seed=3, epoch=2, rank=1, world_size=2, window=(window, stride))
    assert torch.equal(torch.cat([b.index for b in batches]), epochs[2].view(5, 2, 5)[:, 1].flatten())
    with pytest.raises(DataError, match="sliding_window"):
        sliding_window_order(n, 60, 5, seed=0, epoch=0)
    with pytest.raises(ConfigError, match=r"data\.sliding_window"):
        build_config({"method": "pic", "data": {"sliding_window": [10, 20]}}, METHODS)
    assert build_config({"data": {"sliding_window": [20, 5]}}, METHODS).data.sliding_window == (20, 5)


# ----------------------------------------------------------------------------- CLI
def _interrupt_at(monkeypatch, call: int) -> None:
    """Make the trainer's ``call``-th optimiser step raise KeyboardInterrupt (Ctrl-C)."""
    real_step = trainer_mod.Trainer.train_step
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", interrupted)


@pytest.mark.parametrize("bank_init", ["random", "features"])
def test_instdisc_cli_checkpoints_and_resumes_the_memory_bank(bank_init, cifar_subset, tmp_path, monkeypatch, capsys):
    data = cifar_subset(10, 0)  # 100 real images, no test split (no kNN)

    def pretrain(out, *extra):  # a resumed run that re-initialised the bank would differ below
        return main(["pretrain", "--method", "instdisc", "--data", str(data),
                     "--config", "cifar10/instdisc", "--epochs", "2",
                     "--batch-size", "32", "--out", str(tmp_path / out), *extra, "--set",
                     "backbone.cifar_stem=false", "train.progress=false", "instdisc.num_negatives=64",
                     f"instdisc.bank_init={bank_init}"])

    assert pretrain("straight") == 0
    with monkeypatch.context() as m:
        _interrupt_at(m, 5)  # during epoch 2 (3 steps per epoch)
        assert pretrain("split") == 130
    first = torch.load(tmp_path / "split/last.pt", weights_only=True)
    assert first["epoch"] == 1 and first["config"]["instdisc"]["temperature"] == 0.1  # preset loaded
    assert pretrain("split", "--resume") == 0
    a = torch.load(tmp_path / "straight/last.pt", weights_only=True)
    b = torch.load(tmp_path / "split/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    bank = a["method"]["bank"]
    assert bank.shape == (100, 128)
    torch.testing.assert_close(bank.norm(dim=1), torch.ones(100), atol=1e-5, rtol=0)
    assert not torch.equal(bank, first["method"]["bank"])  # epoch 2 moved it
    assert math.isfinite(a["method"]["log_z"].item())
    assert a["method"]["noise._extra_state"] == b["method"]["noise._extra_state"] == {"draws": 6}
    for k, v in a["method"].items():
        if isinstance(v, torch.Tensor):
            assert torch.allclose(v.float(), b["method"][k].float(), atol=1e-6), k
