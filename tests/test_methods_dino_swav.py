"""DINO and SwAV: Sinkhorn and DINO loss against hand computations, schedules, frozen layers,
the SwAV queue, a short run on real CIFAR-10 multi-crop views and a CLI run of each preset."""

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.config import ConfigError, build_config, find_config, load_yaml, merge
from selfsup.data import open_dataset
from selfsup.losses.clustering import sinkhorn_knopp, swapped_prediction
from selfsup.losses.distillation import dino_loss
from selfsup.methods import METHODS, RunInfo, build_method
from selfsup.methods.base import embedding_std
from selfsup.methods.dino import DINO, teacher_temperature
from selfsup.views.recipes import make_views, view_specs

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"dino": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16},
         "swav": {"proj_hidden": 64, "proj_dim": 16, "num_prototypes": 10}}
SCORES = [[0.9, 0.1, -0.3], [0.2, 0.8, 0.0], [-0.5, 0.4, 0.6], [0.7, -0.2, 0.3], [0.0, 0.0, 1.0], [0.3, 0.6, -0.9]]


def _config(method: str, **params):
    """The CIFAR-10 preset (2 global 32 px + 2 local 16 px crops) with small heads and backbone stem."""
    raw = merge(load_yaml(find_config(f"cifar10/{method}")),
                {"backbone": {"cifar_stem": False}, "views": {"local_crops": 2, "local_size": 16},
                 method: {**SMALL[method], **params}})
    return build_config(raw, METHODS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared CPU, extra threads of these tiny batches only spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cifar_batch(cifar_subset):
    """16 real CIFAR-10 training images (uint8) and their sizes."""
    train = open_dataset(cifar_subset(10, 0)).train
    return next(train.batches(16, shuffle=True, seed=0))


def _views(cfg, method, batch, seed=0):
    specs = view_specs(cfg.views, type(method).recipe)
    return make_views(batch.images, batch.sizes, specs, torch.Generator().manual_seed(seed))


def _train(method, views, steps, lr=0.05, first_step=0):
    """The trainer's step sequence on a fixed batch: forward, backward, after_backward, SGD, on_step."""
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    losses = []
    for step in range(first_step, first_step + steps):
        out = method(views)
        out.loss.backward()
        method.after_backward(step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_step(step + 1, 1000)
        losses.append(out.loss.item())
    return losses, out


# ------------------------------------------------------------------ Sinkhorn-Knopp
def _sinkhorn_loops(scores, epsilon, iterations):
    """Plain-Python Sinkhorn-Knopp on the (K x B) matrix exp(S^T / epsilon), as in the SwAV paper."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[j][i] / epsilon) for j in range(b)] for i in range(k)]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for i in range(k):  # prototypes: mass 1/K each
            s = sum(q[i])
            q[i] = [v / (s * k) for v in q[i]]
        for j in range(b):  # samples: mass 1/B each
            s = sum(q[i][j] for i in range(k))
            for i in range(k):
                q[i][j] /= s * b
    return [[q[i][j] * b for i in range(k)] for j in range(b)]


def test_sinkhorn_three_iterations_equal_loop_reimplementation():
    codes = sinkhorn_knopp(torch.tensor(SCORES), epsilon=0.5, iterations=3)
    expected = torch.tensor(_sinkhorn_loops(SCORES, 0.5, 3))
    assert torch.allclose(codes, expected, atol=1e-6)
    # one iteration is not the converged answer: the iteration count matters
    assert not torch.allclose(codes, sinkhorn_knopp(torch.tensor(SCORES), 0.5, 1), atol=1e-3)


def test_sinkhorn_marginals_after_enough_iterations():
    codes = sinkhorn_knopp(torch.tensor(SCORES), epsilon=0.5, iterations=300)
    b, k = codes.shape
    q = codes.T / b  # the transport plan (K x B)
    assert torch.allclose(q.sum(dim=1), torch.full((k,), 1 / k), atol=1e-6)  # every prototype used 1/K
    assert torch.allclose(q.sum(dim=0), torch.full((b,), 1 / b), atol=1e-6)  # every sample weighs 1/B
    # the codes still follow the scores: each sample's largest code is its best prototype here
    assert codes.argmax(dim=1).tolist() == torch.tensor(SCORES).argmax(dim=1).tolist()


def test_swapped_prediction_by_hand():
    # 3 views (2 assigned), 1 sample, 2 prototypes, temperature 1
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]]), torch.tensor([[0.5, 0.5]])]
    q = [torch.tensor([[0.75, 0.25]]), torch.tensor([[0.1, 0.9]])]

    def h(code, score):  # -sum_k q_k log softmax(score)_k
        lse = math.log(sum(math.exp(v) for v in score))
        return -sum(c * (v - lse) for c, v in zip(code, score, strict=True))

    qs, ss = [x[0].tolist() for x in q], [x[0].tolist() for x in s]
    expected = ((h(qs[0], ss[1]) + h(qs[0], ss[2])) / 2 + (h(qs[1], ss[0]) + h(qs[1], ss[2])) / 2) / 2
    assert math.isclose(swapped_prediction(s, q, temperature=1.0).item(), expected, rel_tol=1e-6)


# ------------------------------------------------------------------ DINO loss, centre, temperature
def test_dino_loss_hand_value():
    s1, s2 = [1.0, 0.0, -1.0], [0.5, 0.5, 0.0]
    t1, t2 = [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    c = [0.5, 0.0, -0.5]
    tau_s, tau_t = 0.5, 0.25

    def softmax(x):
        e = [math.exp(v) for v in x]
        return [v / sum(e) for v in e]

    def h(p, q):
        return -sum(a * math.log(b) for a, b in zip(p, q, strict=True))

    def teacher(t):
        return softmax([(a - b) / tau_t for a, b in zip(t, c, strict=True)])

    def student(s):
        return softmax([a / tau_s for a in s])

    # pairs of different views only: (teacher view 1, student view 2) and (teacher 2, student 1)
    expected = (h(teacher(t1), student(s2)) + h(teacher(t2), student(s1))) / 2
    loss = dino_loss([torch.tensor([s1]), torch.tensor([s2])], [torch.tensor([t1]), torch.tensor([t2])],
                     torch.tensor([c]), tau_s, tau_t)
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)


def test_dino_centre_is_ema_of_teacher_batch_mean(cifar_batch):
    torch.manual_seed(0)
    cfg = _config("dino")
    method = build_method(cfg)
    views = _views(cfg, method, cifar_batch)
    expected = torch.zeros(1, cfg.params.out_dim)
    for _ in range(2):
        with torch.no_grad():
            teacher = method.teacher.head(torch.cat(method.encode(views[:2], method.teacher.backbone)))
            out = method(views)
        # the collapse monitor: the teacher's entropy under the centre used by the loss, KL the rest
        p_t = torch.softmax((teacher - expected) / 0.04, dim=1)
        entropy = -(p_t * p_t.log()).sum(dim=1).mean()
        assert torch.allclose(out.logs["teacher_entropy"], entropy, atol=1e-4)
        assert torch.allclose(out.logs["kl"], out.loss - entropy, atol=1e-4) and out.logs["kl"] > 0
        expected = 0.9 * expected + 0.1 * teacher.mean(dim=0, keepdim=True)
        assert torch.allclose(method.center, expected, atol=1e-6)
    assert expected.abs().max() > 1e-3  # a real, non-zero centre was compared


def test_teacher_temperature_schedule_from_step():
    assert [teacher_temperature(e, 0.04, 0.07, 4) for e in range(6)] == pytest.approx(
        [0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    assert teacher_temperature(0, 0.04, 0.07, 1) == 0.04 and teacher_temperature(0, 0.04, 0.07, 0) == 0.07
    cfg = _config("dino", warmup_teacher_temp_epochs=4)
    method = build_method(cfg, RunInfo(100, steps_per_epoch=10, epochs=10))
    assert method.teacher_temp.item() == pytest.approx(0.04)
    for step, temp in [(9, 0.04), (10, 0.05), (25, 0.06), (30, 0.07), (100, 0.07), (20, 0.06)]:
        method.on_step(step, 100)
        assert method.teacher_temp.item() == pytest.approx(temp), step
    # a resumed run gets the temperature from the checkpoint
    fresh = build_method(cfg, RunInfo(100, steps_per_epoch=10, epochs=10))
    fresh.load_state_dict(method.state_dict())
    assert fresh.teacher_temp.item() == pytest.approx(0.06)


# ------------------------------------------------------------------ frozen layers, queue
@pytest.mark.parametrize(("name", "frozen"), [("dino", "head.last_layer.parametrizations.weight.original1"),
                                              ("swav", "prototypes.weight")])
def test_frozen_layer_not_updated_in_first_epoch(name, frozen, cifar_batch):
    torch.manual_seed(0)
    key = "freeze_last_layer_epochs" if name == "dino" else "freeze_prototypes_epochs"
    cfg = _config(name, **{key: 1})
    method = build_method(cfg, RunInfo(16, steps_per_epoch=2, epochs=2))
    views = _views(cfg, method, cifar_batch)
    weight = dict(method.named_parameters())[frozen]
    backbone = method.backbone.net.layer4[1].conv2.weight
    if name == "swav":
        with torch.no_grad():  # the prototypes are normalised before every forward: start normalised
            method(views)
    before, backbone_before = weight.detach().clone(), backbone.detach().clone()
    _train(method, views, steps=2)  # epoch 0
    # (SwAV's re-normalisation of unit rows may move the last float bit)
    assert torch.allclose(weight, before, rtol=0, atol=1e-6), "frozen during the first epoch"
    assert not torch.allclose(backbone, backbone_before, rtol=0, atol=1e-4)  # while the rest trains
    _train(method, views, steps=1, first_step=2)  # epoch 1
    assert not torch.allclose(weight, before, rtol=0, atol=1e-4), "trained after the first epoch"


def test_swav_queue_used_only_from_start_epoch_once_full(cifar_batch):
    torch.manual_seed(0)
    run = RunInfo(16, steps_per_epoch=2, epochs=4)
    cfg = _config("swav", queue_length=16, epoch_queue_starts=1)  # 16 rows = one batch of 16
    method = build_method(cfg, run)
    plain = build_method(_config("swav", queue_length=0), run)
    plain.load_state_dict({k: v for k, v in method.state_dict().items() if not k.startswith("queue.")}, strict=False)
    used, same = [], []
    with torch.no_grad():
        for step in range(4):  # new views every step (a queue of the same batch's rows changes no code)
            views = _views(cfg, method, cifar_batch, seed=step)
            out, ref = method(views), plain(views)
            used.append(out.logs["queue_used"].item())
            same.append(torch.allclose(out.loss, ref.loss))
            if step < 2:  # epoch 0: the queue is not even filled
                assert method.queue.num_filled == 0 and method.queue.rows.abs().sum() == 0
            method.on_step(step + 1, 8)
            plain.on_step(step + 1, 8)
    # epoch 1 starts at step 2: filled there, used from step 3 on
    assert used == [0, 0, 0, 1] and same == [True, True, True, False]
    assert torch.allclose(method.queue.rows[:, 0], out.embedding)  # the queue of one batch: the last batch's view 1
    # a resumed method reads its counters from the checkpoint and continues with the queue
    fresh = build_method(cfg, run)
    fresh.load_state_dict(method.state_dict())
    with torch.no_grad():
        a, b = method(views), fresh(views)
    assert b.logs["queue_used"].item() == 1 and torch.allclose(a.loss, b.loss)


def test_swav_code_entropy_is_ln_k_for_identical_samples_and_lower_otherwise(cifar_batch):
    """The SwAV collapse monitor: a batch of one image repeated (a collapsed network's output)
    can only get uniform codes, entropy ln K; real distinct images get peaked codes."""
    torch.manual_seed(0)
    cfg = _config("swav", num_prototypes=10)
    method = build_method(cfg, RunInfo(16, steps_per_epoch=2, epochs=4)).eval()
    views = _views(cfg, method, cifar_batch)
    same = [dataclasses.replace(v, images=v.images[:1].expand_as(v.images)) for v in views]
    with torch.no_grad():
        real, collapsed = method(views).logs, method(same).logs
    assert collapsed["code_entropy"].item() == pytest.approx(math.log(10), abs=1e-5)
    assert real["code_entropy"].item() < math.log(10) - 0.5
    assert real["score_std"].item() > 0 and collapsed["score_std"].item() > 0  # spread over prototypes


# ------------------------------------------------------------------ learning on real images
@pytest.mark.parametrize("name", ["dino", "swav"])
def test_short_run_on_real_cifar_multicrop_learns_without_collapse(name, cifar_batch):
    torch.manual_seed(0)
    key = "freeze_last_layer_epochs" if name == "dino" else "freeze_prototypes_epochs"
    cfg = _config(name, **{key: 0})
    method = build_method(cfg, RunInfo(16, steps_per_epoch=1, epochs=8))
    views = _views(cfg, method, cifar_batch)
    assert [v.images.shape[-1] for v in views] == [32, 32, 16, 16]  # 2 global + 2 local crops
    with torch.no_grad():
        std0 = embedding_std(method(views).embedding)
    # (DINO's loss rises again later on a fixed batch while its centre warms up: a moving target)
    losses, out = _train(method, views, steps=8, lr=0.01)
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses
    # collapse to one point drives the std of the normalised embeddings to 0
    std = embedding_std(out.embedding)
    assert std > 0.5 * std0, (std, std0)


@pytest.mark.parametrize(("name", "key", "value", "message"), [
    ("dino", "student_temp", 0.0, "dino.student_temp must be > 0, got 0.0"),
    ("swav", "epsilon", -0.05, "swav.epsilon must be > 0, got -0.05"),
    ("swav", "epsilon", 0.01, "swav.epsilon 0.01 is below 0.0114"),
    ("swav", "queue_length", -1, "swav.queue_length must be >= 0, got -1"),
])
def test_bad_method_values_name_the_key(name, key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_method(_config(name, **{key: value}))


# ------------------------------------------------------------------ CLI
@pytest.mark.parametrize("name", ["dino", "swav"])
def test_cli_pretrain_with_preset_and_local_crops(name, cifar_subset, tmp_path, capsys, monkeypatch):
    data = cifar_subset(10, 5)  # 100 train, 50 test real CIFAR-10 images
    batch_means = []  # DINO: the teacher's batch mean at every step, to check the centre's EMA
    update_center = DINO._update_center

    def recording(self, teacher):
        batch_means.append(teacher.float().mean(dim=0, keepdim=True))
        update_center(self, teacher)

    monkeypatch.setattr(DINO, "_update_center", recording)
    small = [f"{name}.{k}={v}" for k, v in SMALL[name].items()]
    extra = ["swav.queue_length=64", "swav.epoch_queue_starts=0"] if name == "swav" else []
    code = main(["pretrain", "--method", name, "--data", str(data),
                 "--config", f"cifar10/{name}", "--epochs", "1", "--batch-size", "32",
                 "--out", str(tmp_path), "--set", "backbone.cifar_stem=false", "train.knn_every=0",
                 "train.progress=false", "train.log_every=1", "optim.warmup_epochs=0", "views.local_crops=2",
                 "views.local_size=16", *small, *extra])
    assert code == 0
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "summary" not in r]
    assert len(steps) == 3 and all(math.isfinite(r["loss"]) for r in steps)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 3 and state["config"]["views"]["local_crops"] == 2
    if name == "dino":
        expected = torch.zeros_like(batch_means[0])
        for mean in batch_means:  # c <- 0.9 c + 0.1 mean, from c = 0
            expected = 0.9 * expected + 0.1 * mean
        assert len(batch_means) == 3
        torch.testing.assert_close(state["method"]["center"], expected, rtol=1e-5, atol=1e-7)
        assert [r["teacher_temp"] for r in steps] == pytest.approx([0.04] * 3)
    else:  # 32 rows per step: the 64-row queue is full after step 2 and used at step 3
        assert [r["queue_used"] for r in steps] == [0, 0, 1]
        assert state["method"]["steps"].item() == 3 and state["method"]["queue.filled"].item() == 64
    knn = json.loads((tmp_path / "knn.json").read_text())
    assert (knn["train_images"], knn["test_images"]) == (100, 50)
    assert knn["knn_top1"] * 50 == pytest.approx(round(knn["knn_top1"] * 50))  # a share of the 50 test images


def test_dino_multicrop_on_a_vit_takes_small_local_crops(cifar_batch):
    """16 px local crops through a ViT built for 32 px (its position embeddings interpolated)."""
    cfg = build_config({"method": "dino", "backbone": {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4,
                                                       "kwargs": {"embed_dim": 32, "depth": 2, "num_heads": 2}},
                        "views": {"size": 32, "local_crops": 2, "local_size": 16, "blur": False},
                        "dino": SMALL["dino"]}, METHODS)
    method = build_method(cfg, RunInfo(16, 2, 2))
    views = _views(cfg, method, cifar_batch)
    assert [v.images.shape[-1] for v in views] == [32, 32, 16, 16]
    out = method(views)
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.backbone.net.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
