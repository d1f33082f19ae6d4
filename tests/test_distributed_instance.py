"""Two CPU processes (gloo) against one process holding the whole global batch: InstDisc's
memory bank must end up identical on every rank and equal to the single-process bank, and the
gradients of InstDisc, InvaSpread (negatives from the other rank, gathered with gradient), PIC
(sampled negative classes drawn alike on every rank) and Exemplar-CNN (its classifier's loss
averaged over the global batch) must match."""

import torch

from selfsup.config import build_config
from selfsup.methods import METHODS, RunInfo, build_method
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.view import View

WORLD = 2
PER_RANK = 6
NUM_IMAGES = 40
OPTIONS = {"instdisc": {"num_negatives": 32}, "invaspread": {},
           "pic": {"proj_hidden": 64, "proj_dim": 32, "num_negatives": 16}, "exemplar": {}}


def _method(name: str):
    cfg = build_config({"method": name, "backbone": {"name": "resnet18"}, name: OPTIONS[name]}, METHODS)
    return build_method(cfg, RunInfo(NUM_IMAGES)).double()


def _views(images: torch.Tensor, index: torch.Tensor, sl: slice) -> list[View]:
    n = images.shape[1]
    return [View(images[i, sl], torch.zeros(n, 4)[sl], torch.zeros(n, dtype=torch.bool)[sl], index[sl])
            for i in range(2)]


def _step(method: torch.nn.Module, model: torch.nn.Module, views: list[View]) -> dict[str, torch.Tensor]:
    out = model(views)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    buffers = {k: b.detach().clone() for k, b in method.named_buffers() if k in ("bank", "log_z")}
    return {"loss": out.loss.detach(), "grads": grads, "buffers": buffers}


def _worker(rank: int, data: dict) -> dict:
    results = {}
    for name in OPTIONS:
        method = _method(name)
        method.load_state_dict(data[name])
        method, model = wrap_model(method, DistInfo(rank, WORLD, rank, torch.device("cpu")), sync_bn=True)
        sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        results[name] = _step(method, model, _views(data["images"], data["index"], sl))
    return results


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # float64: round-off only (in float32, batch norm over 6 images amplifies it to a few percent
    # of the first layer's gradient); a dropped cross-rank term or per-rank BN statistics are of order 1
    return bool((a - b).norm() < 1e-6 * b.norm() + 1e-9)


def test_instdisc_bank_and_invaspread_gradients_match_single_process(cifar_images, ddp_pool):
    torch.manual_seed(0)
    n = WORLD * PER_RANK
    x = cifar_images[:n].double()
    images = torch.stack([x, torch.roll(x.flip(3), shifts=2, dims=2)])
    index = torch.randperm(NUM_IMAGES)[:n]
    methods = {name: _method(name) for name in OPTIONS}
    initial = methods["instdisc"].bank.clone()  # before the step (the bank is updated in place)
    ranks = ddp_pool.run(_worker, {"images": images, "index": index, **{k: m.state_dict() for k, m in methods.items()}})
    reference = {name: _step(m, m, _views(images, index, slice(0, n))) for name, m in methods.items()}

    ref = reference["instdisc"]["buffers"]
    changed = (ref["bank"] != initial).any(dim=1)
    assert changed[index].all() and changed.sum() == n  # the step updated the batch's rows only
    for r in ranks:
        # every rank updated the rows of BOTH ranks' images, exactly as one process did
        assert torch.allclose(r["instdisc"]["buffers"]["bank"], ref["bank"], atol=1e-5)
        assert torch.allclose(r["instdisc"]["buffers"]["log_z"], ref["log_z"], rtol=1e-5)
    assert torch.equal(ranks[0]["instdisc"]["buffers"]["bank"], ranks[1]["instdisc"]["buffers"]["bank"])

    for name in OPTIONS:
        ref = reference[name]
        assert torch.allclose(torch.stack([r[name]["loss"] for r in ranks]).mean(), ref["loss"], rtol=1e-4)
        for r in ranks:
            assert r[name]["grads"].keys() == ref["grads"].keys()
            for k, g in ref["grads"].items():
                assert _close(r[name]["grads"][k], g), f"{name}: gradient of {k} differs under DDP"
