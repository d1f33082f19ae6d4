"""DINO and SwAV under two CPU processes (gloo) must match one process holding the global batch:
Sinkhorn codes (sums all-reduced), DINO's centre (batch mean all-reduced), SwAV's queue and the
gradients of both methods on multi-crop views (cross-rank batch norm via ``train.sync_bn``)."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import build_config
from selfsup.losses.clustering import sinkhorn_knopp
from selfsup.methods import METHODS, build_method
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.view import View

WORLD = 2
PER_RANK = 6
N = WORLD * PER_RANK
# DINO's sharp teacher (tau_t = 0.04 at step 0) multiplies float32 round-off by 1 / tau_t in
# the gradients; tau_t = 0.2 keeps the comparison tight (round-off ~1e-4 relative)
PARAMS = {"dino": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 16, "warmup_teacher_temp": 0.2},
          # a queue of one global batch, used from the second forward on
          "swav": {"proj_hidden": 64, "proj_dim": 16, "num_prototypes": 10, "queue_length": N,
                   "epoch_queue_starts": 0}}


def _method(name: str):
    return build_method(build_config({"method": name, "backbone": {"name": "resnet18"}, name: PARAMS[name]}, METHODS))


def _views(crops: list[torch.Tensor], sl: slice) -> list[View]:
    n = crops[0].shape[0]
    return [View(c[sl], torch.zeros(n, 4)[sl], torch.zeros(n, dtype=torch.bool)[sl]) for c in crops]


def _step(model, method, crops: list[torch.Tensor], sl: slice) -> dict:
    """SwAV fills its queue in a first gradient-free forward; then forward + backward."""
    if hasattr(method, "queue"):
        with torch.no_grad():
            model(_views([c.flip(3) for c in crops], sl))
    out = model(_views(crops, sl))
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    buffers = {k: v.detach().clone() for k, v in method.named_buffers() if k in ("center", "queue.rows")}
    return {"loss": out.loss.detach(), "grads": grads, "buffers": buffers, "logs": out.logs}


def _worker(rank: int, data: dict) -> dict:
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    result = {"codes": sinkhorn_knopp(data["scores"][sl], 0.05, 3)}
    info = DistInfo(rank, WORLD, rank, torch.device("cpu"))
    for name in PARAMS:
        method = _method(name)
        method.load_state_dict(data[name])
        method, model = wrap_model(method, info, sync_bn=True)
        result[name] = _step(model, method, data["crops"], sl)
    return result


@pytest.fixture(scope="module")
def runs(cifar_images, ddp_pool):
    """The single-process reference and the two ranks' results, from one task of the 2-process pool."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = cifar_images[:N]
    # two global 32 px "crops" (identity; flipped and shifted) and two local 16 px crops (corners)
    crops = [x, torch.roll(x.flip(3), shifts=2, dims=2),
             F.interpolate(x[..., :20, :20], size=16, mode="bilinear", align_corners=False),
             F.interpolate(x[..., 12:, 12:], size=16, mode="bilinear", align_corners=False)]
    # cosine-like scores of 12 samples against 5 prototypes
    scores = F.normalize(torch.randn(N, 8), dim=1) @ F.normalize(torch.randn(5, 8), dim=1).T
    inputs = {"crops": crops, "scores": scores}
    reference = {"scores": scores, "codes": sinkhorn_knopp(scores, 0.05, 3)}
    for name in PARAMS:
        method = _method(name)
        inputs[name] = {k: v.clone() for k, v in method.state_dict().items()}
        reference[name] = _step(method, method, crops, slice(0, N))
    ranks = ddp_pool.run(_worker, inputs)
    torch.set_num_threads(threads)
    return reference, ranks


def test_sinkhorn_codes_with_split_batch_equal_single_process(runs):
    reference, ranks = runs
    codes = torch.cat([r["codes"] for r in ranks])
    assert torch.allclose(codes, reference["codes"], atol=1e-6)
    # the per-rank problem alone (no all-reduce) gives different codes: the sums matter
    alone = torch.cat([sinkhorn_knopp(s, 0.05, 3) for s in reference["scores"].chunk(WORLD)])
    assert not torch.allclose(alone, reference["codes"], atol=1e-3)


def test_dino_centre_after_a_step_equals_single_process(runs):
    reference, ranks = runs
    centre = reference["dino"]["buffers"]["center"]
    assert centre.abs().max() > 1e-3
    for r in ranks:
        assert torch.allclose(r["dino"]["buffers"]["center"], centre, atol=1e-6)


def test_swav_queue_holds_the_global_batch_on_every_rank(runs):
    reference, ranks = runs
    for r in ranks:
        assert r["swav"]["logs"]["queue_used"] == 1 and reference["swav"]["logs"]["queue_used"] == 1
        assert torch.allclose(r["swav"]["buffers"]["queue.rows"], reference["swav"]["buffers"]["queue.rows"],
                              atol=1e-5)


@pytest.mark.parametrize("name", ["dino", "swav"])
def test_gradients_with_two_ranks_equal_single_process(name, runs):
    reference, ranks = runs
    ref = reference[name]
    assert torch.allclose(torch.stack([r[name]["loss"] for r in ranks]).mean(), ref["loss"], rtol=1e-4)
    for r in ranks:
        assert r[name]["grads"].keys() == ref["grads"].keys()
        for k, g in ref["grads"].items():
            # float32 round-off only; a missing all-reduce or per-rank BN statistics give O(1) errors
            diff = (r[name]["grads"][k] - g).norm()
            assert diff < 1e-3 * g.norm() + 1e-6, (
                f"{name}: gradient of {k} differs (|diff| {diff:.3g}, |g| {g.norm():.3g})")
