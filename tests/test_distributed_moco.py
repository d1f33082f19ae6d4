"""Two CPU processes (gloo) against one process holding the same global batch: MoCo's queue (after
a step and after ``queue_init: keys``) and shuffle across ranks, and the gradients of MoCo v2,
MoCo v3, Barlow Twins and VICReg.

One task of the session's 2-process pool (``ddp_pool``) runs every case.
"""

import pytest
import torch

from selfsup.config import build_config
from selfsup.data import ImageDataset
from selfsup.methods import METHODS, build_method
from selfsup.methods.moco import batch_shuffle, batch_unshuffle
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.view import View

WORLD = 2
PER_RANK = 4
SMALL = {
    # key-encoder BN over 2 sub-batches of the global batch of 8: one per rank under DDP
    "mocov2": {"dim": 16, "queue_size": 20, "bn_splits": 2},
    "mocov3": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32, "temperature": 0.2},
    "barlow": {"proj_hidden": 32, "proj_dim": 16},
    "vicreg": {"proj_hidden": 32, "proj_dim": 16},
}


def _build(name: str, **options):
    cfg = build_config({"method": name, "backbone": {"name": "resnet18"}, name: {**SMALL[name], **options}}, METHODS)
    return build_method(cfg)


def _initial_queue(method: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The queue after ``queue_init: keys`` over the 8 images of view 0 (20 rows: 2.5 passes)."""
    method.on_fit_start(ImageDataset.from_tensors(images[0]), build_config({"method": "mocov2"}, METHODS).views,
                        torch.device("cpu"))
    return method.queue.rows.clone()


def _views(images: torch.Tensor, sl: slice) -> list[View]:
    n = images.shape[1]
    return [View(images[i, sl], torch.zeros(n, 4)[sl], torch.zeros(n, dtype=torch.bool)[sl]) for i in range(2)]


def _grads(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}


def _step(method: torch.nn.Module, model: torch.nn.Module, views: list[View]) -> dict:
    out = model(views)
    out.loss.backward()
    result = {"grads": _grads(method), "loss": out.loss.detach()}
    if hasattr(method, "queue"):
        result.update(queue=method.queue.rows.clone(), queue_ptr=method.queue.ptr.clone())
    return result


def _worker(rank: int, data: dict) -> dict:
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for name in SMALL:
        method = _build(name)
        method.load_state_dict(data[name])
        method, model = wrap_model(method, DistInfo(rank, WORLD, rank, torch.device("cpu")), sync_bn=True)
        results[name] = _step(method, model, _views(data["images"], sl))
    keyed = _build("mocov2", queue_init="keys")
    keyed.load_state_dict(data["mocov2"])
    results["queue_init"] = _initial_queue(wrap_model(keyed, DistInfo(rank, WORLD, rank, torch.device("cpu")),
                                                      sync_bn=True)[0], data["images"])
    x = data["images"][0, sl]
    shuffled, inverse = batch_shuffle(x, torch.Generator().manual_seed(7))
    results["shuffle"] = {"shuffled": shuffled, "undone": batch_unshuffle(shuffled, inverse)}
    return results


@pytest.fixture(scope="module")
def runs(cifar_images, ddp_pool):
    """Single-process references and the two ranks' results for the same global batch."""
    torch.manual_seed(0)
    n = WORLD * PER_RANK
    x = cifar_images[:n]
    images = torch.stack([x, torch.roll(x.flip(3), shifts=2, dims=2)])  # two "views" of real images
    inputs, reference = {"images": images}, {}
    for name in SMALL:
        method = _build(name)
        # a copy before the step (state_dict tensors alias the live queue and statistics)
        inputs[name] = {k: v.clone() if torch.is_tensor(v) else v for k, v in method.state_dict().items()}
        reference[name] = _step(method, method, _views(images, slice(0, n)))
    keyed = _build("mocov2", queue_init="keys")
    keyed.load_state_dict(inputs["mocov2"])
    reference["queue_init"] = _initial_queue(keyed, images)
    reference["random_queue"] = inputs["mocov2"]["queue.rows"]
    ranks = ddp_pool.run(_worker, inputs)
    return images, reference, ranks


def test_moco_queue_after_a_step_equals_the_single_process_queue(runs):
    _, reference, ranks = runs
    ref = reference["mocov2"]
    # the reference enqueued the 8 keys at rows 0..7; every rank holds the same queue, with the
    # keys gathered in rank order and computed with the same BN sub-batches (same shuffle)
    assert ref["queue_ptr"].item() == WORLD * PER_RANK
    for r in ranks:
        assert r["mocov2"]["queue_ptr"].item() == WORLD * PER_RANK
        assert torch.allclose(r["mocov2"]["queue"], ref["queue"], atol=1e-5)
    assert torch.equal(ranks[0]["mocov2"]["queue"], ranks[1]["mocov2"]["queue"])


def test_moco_queue_init_from_keys_equals_the_single_process_queue(runs):
    _, reference, ranks = runs
    ref = reference["queue_init"]  # 8 + 8 + 4 keys of 3 seeded orders of the 8 images
    assert ((ref - reference["random_queue"]).norm(dim=1) > 1e-3).all()
    torch.testing.assert_close(ref.norm(dim=1), torch.ones(20), atol=1e-5, rtol=0)
    for r in ranks:
        assert torch.allclose(r["queue_init"], ref, atol=1e-5)


def test_shuffle_across_ranks_is_a_permutation_that_is_undone(runs):
    images, _, ranks = runs
    x = images[0]
    shuffled = torch.cat([r["shuffle"]["shuffled"] for r in ranks])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(7))
    assert torch.equal(shuffled, x[perm])  # the global permutation, each rank holding its slice
    assert not torch.equal(ranks[0]["shuffle"]["shuffled"], x[:PER_RANK])  # images moved across ranks
    for rank, r in enumerate(ranks):
        assert torch.equal(r["shuffle"]["undone"], x[rank * PER_RANK : (rank + 1) * PER_RANK])


@pytest.mark.parametrize("name", list(SMALL))
def test_ddp_gradients_equal_single_process(runs, name):
    _, reference, ranks = runs
    ref = reference[name]
    assert torch.allclose(torch.stack([r[name]["loss"] for r in ranks]).mean(), ref["loss"], rtol=1e-4)
    # float32 round-off only (a dropped cross-rank term or per-rank statistics give errors of order
    # 1); the absolute term, relative to the largest gradient, covers gradients that are zero in
    # exact arithmetic (e.g. the bias of the last projector layer before a standardisation)
    scale = max(g.norm() for g in ref["grads"].values())
    for r in ranks:
        assert r[name]["grads"].keys() == ref["grads"].keys()
        for k, g in ref["grads"].items():
            diff = (r[name]["grads"][k] - g).norm()
            assert diff < 1e-3 * g.norm() + 1e-5 * scale, f"{name}: gradient of {k} differs by {diff:.3g}"
