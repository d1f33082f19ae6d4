"""MaskContrast under two CPU processes (gloo) must match one process holding the same global batch:
the loss (mean over ranks), every parameter gradient (float64, cross-rank batch norm) and the
prototype queue, which must be the same on both ranks. The two ranks hold DIFFERENT numbers of
salient query pixels, so the class weights and the weighted mean must use the global batch."""

import torch

from selfsup.config import build_config
from selfsup.methods import METHODS, build_method
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.recipes import RECIPES, make_views
from selfsup.views.view import View

WORLD, PER_RANK, SIZE = 2, 3, 32
N = WORLD * PER_RANK


def _method() -> torch.nn.Module:
    cfg = build_config({"method": "maskcontrast", "backbone": {"name": "resnet18", "output_stride": 8},
                        "data": {"masks": "masks"}, "maskcontrast": {"embed_dim": 8, "queue_size": 12}}, METHODS)
    method = build_method(cfg).double()
    for m in method.modules():  # dropout draws differ between ranks and one process
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return method


def _views() -> list[View]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    maps = torch.zeros(N, SIZE, SIZE, dtype=torch.uint8)
    for i in range(N):
        maps[i, 4 : 8 + 3 * i, 6 : 10 + 2 * i] = 1  # objects of growing size: unequal counts per rank
    specs = RECIPES["maskcontrast"](SIZE, (0.5, 1.0), False, (0.5,) * 3, (0.25,) * 3)
    views = make_views(images, torch.tensor([SIZE, SIZE]).repeat(N, 1), specs, gen, None, None, maps)
    return [View(v.images.double(), v.boxes, v.flipped, maps=v.maps) for v in views]


def _step(method, model, views):
    out = model(views)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    return {"loss": out.loss.detach(), "grads": grads, "queue": method.queue.rows.clone()}


def _worker(rank: int, state: dict, views: list[View]) -> dict:
    method = _method()
    method.load_state_dict(state)
    method, model = wrap_model(method, DistInfo(rank, WORLD, rank, torch.device("cpu")), sync_bn=True)
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    return _step(method, model, [View(v.images[sl], v.boxes[sl], v.flipped[sl], maps=v.maps[sl]) for v in views])


def test_ddp_loss_gradients_and_queue_equal_single_process(ddp_pool):
    torch.manual_seed(0)
    method, views = _method(), _views()
    counts = views[0].maps.flatten(1).sum(1)
    assert counts[:PER_RANK].sum() != counts[PER_RANK:].sum() and (counts > 0).all()
    ranks = ddp_pool.run(_worker, method.state_dict(), views)
    ref = _step(method, method, views)
    loss = torch.stack([r["loss"] for r in ranks]).mean()
    assert (loss - ref["loss"]).abs() < 1e-6 * ref["loss"].abs(), (loss.item(), ref["loss"].item())
    for r in ranks:
        assert torch.equal(r["queue"], ranks[0]["queue"]) and torch.allclose(r["queue"], ref["queue"], atol=1e-9)
        assert r["grads"].keys() == ref["grads"].keys()
        for k, g in ref["grads"].items():
            diff = (r["grads"][k] - g).norm()
            assert diff < 1e-6 * g.norm() + 1e-9, f"gradient of {k} differs under DDP (|diff| {diff:.3g})"
