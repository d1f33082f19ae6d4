"""PixPro (pixel loss + instance branch) and PixContrast under two CPU processes (gloo) must match
one process holding the same global batch: the loss (mean over ranks) and every parameter
gradient, in float64, with cross-rank batch norm (``train.sync_bn``) in the online AND the
momentum encoder.

The two views are real random-resized crops (the BYOL recipe, PixPro's) of real CIFAR-10
images at 32 px, through a ResNet-18 with a dilated last stage (2x2 maps): their boxes overlap
partially and some views are mirrored, so which pixel pairs are positive depends on the
geometry. One task of the session's 2-process pool (``ddp_pool``) runs both cases.
"""

import pytest
import torch
import torch.distributed as dist

from selfsup.config import build_config
from selfsup.data import open_dataset
from selfsup.losses.pixel import pixcontrast_loss, positive_pairs
from selfsup.methods import METHODS, build_method
from selfsup.train.distributed import DistInfo, wrap_model
from selfsup.views.recipes import IMAGENET_MEAN, IMAGENET_STD, RECIPES, make_views
from selfsup.views.view import View

WORLD = 2
PER_RANK = 6
N = WORLD * PER_RANK
MAP = (2, 2)  # 32 px, output stride 16
HEADS = {"proj_hidden": 32, "proj_dim": 16}
# view seeds: with BALANCED, both ranks hold the same number of pixels that have a positive (22
# of 24 per direction: not all); with UNBALANCED they differ (21 + 24 vs 22 + 16), so PixContrast
# must average over the global batch's pixels, not each rank's own
BALANCED, UNBALANCED = 11, 8
CASES = {  # PixPro's pixel loss + its instance branch, and PixContrast
    "pixpro-instance": ("pixpro", {**HEADS, "instance_weight": 1.0, "inst_hidden": 32, "inst_dim": 16}),
    "pixcontrast": ("pixcontrast", HEADS),
}


def _method(case: str) -> torch.nn.Module:
    name, params = CASES[case]
    cfg = build_config({"method": name, "backbone": {"name": "resnet18", "output_stride": 16}, name: params}, METHODS)
    return build_method(cfg).double()


def _slice(views: list[View], sl: slice) -> list[View]:
    return [View(v.images[sl], v.boxes[sl], v.flipped[sl]) for v in views]


def _step(method: torch.nn.Module, model: torch.nn.Module, views: list[View]) -> dict:
    out = model(views)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in method.named_parameters() if p.grad is not None}
    return {"loss": out.loss.detach(), "grads": grads, "logs": {k: v.detach() for k, v in out.logs.items()},
            "embedding": tuple(out.embedding.shape)}


def _worker(rank: int, states: dict, views: list[View]) -> dict:
    info = DistInfo(rank, WORLD, rank, torch.device("cpu"))
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    results = {}
    for case, state in states.items():
        method = _method(case)
        method.load_state_dict(state)
        method, model = wrap_model(method, info, sync_bn=True)
        results[case] = _step(method, model, _slice(views, sl))
    return results


@pytest.fixture(scope="module")
def views(cifar_subset) -> dict[int, list[View]]:
    """Per view seed, two BYOL-recipe views (float64 pixels) of 12 real CIFAR-10 images of 9
    classes (the first 10 train images per class, as ``cifar_images``; uint8 for the recipe)."""
    batch = next(open_dataset(cifar_subset(10, 0)).train.batches(100, shuffle=False))
    index = torch.arange(N) * 8
    specs = RECIPES["byol"](32, (0.08, 1.0), True, IMAGENET_MEAN, IMAGENET_STD)
    out = {}
    for seed in (BALANCED, UNBALANCED):
        made = make_views(batch.images[index], batch.sizes[index], specs, torch.Generator().manual_seed(seed))
        out[seed] = [View(v.images.double(), v.boxes, v.flipped) for v in made]
    return out


@pytest.fixture(scope="module")
def runs(views, ddp_pool):
    """Single-process references and the two ranks' results (one pool task for every case)."""
    torch.manual_seed(0)
    methods = {case: _method(case) for case in CASES}
    ranks = ddp_pool.run(_worker, {case: m.state_dict() for case, m in methods.items()}, views[UNBALANCED])
    reference = {case: _step(m, m, _slice(views[UNBALANCED], slice(0, N))) for case, m in methods.items()}
    return reference, ranks


def _has_positive(views: list[View]) -> list[tuple[int, int]]:
    """Per rank, the pixels of view 1 and of view 2 that have at least one positive."""
    pos = positive_pairs(views[0].boxes, views[1].boxes, MAP, MAP)
    sl = [slice(r * PER_RANK, (r + 1) * PER_RANK) for r in range(WORLD)]
    return [(int(pos[s].any(2).sum()), int(pos[s].any(1).sum())) for s in sl]


@pytest.mark.parametrize("seed", [BALANCED, UNBALANCED])
def test_views_overlap_partially_with_positive_pairs_on_every_rank(seed, views):
    v1, v2 = views[seed]
    assert torch.equal(v1.boxes[:, 2] < v1.boxes[:, 0], v1.flipped)  # mirrored boxes
    assert v1.flipped.any() and v2.flipped.any() and not torch.equal(v1.flipped, v2.flipped)
    pos = positive_pairs(v1.boxes, v2.boxes, MAP, MAP)  # (N, 4, 4)
    for rank in range(WORLD):
        # every image has positive pairs, but not every pair is one: the geometry matters
        sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        assert pos[sl].sum(dim=(1, 2)).min() > 0
        assert pos[sl].float().mean() < 0.75
    counts = _has_positive(views[seed])
    cells = PER_RANK * MAP[0] * MAP[1]
    if seed == BALANCED:  # some pixels without positives, as many on both ranks
        assert counts[0] == counts[1] and min(counts[0]) < cells
    else:
        assert counts[0] != counts[1]


@pytest.mark.parametrize("case", list(CASES))
def test_ddp_loss_and_gradients_equal_single_process(case, runs):
    reference, ranks = runs
    ref = reference[case]
    # the pixel loss saw positive pairs (mean per image, logged) on one process and on every rank
    assert ref["logs"]["positives"] > 0 and all(r[case]["logs"]["positives"] > 0 for r in ranks)
    assert ref["embedding"] == (N * MAP[0] * MAP[1], HEADS["proj_dim"])  # 2x2 maps of view 1
    if case == "pixpro-instance":
        assert ref["logs"]["instance_loss"] > 0 and ref["logs"]["pixel_loss"] != ref["loss"]
    loss = torch.stack([r[case]["loss"] for r in ranks]).mean()
    assert (loss - ref["loss"]).abs() < 1e-6 * ref["loss"].abs() + 1e-9, (
        f"{case}: loss under DDP {loss.item():.12g}, single process {ref['loss'].item():.12g}")
    for r in ranks:
        assert r[case]["grads"].keys() == ref["grads"].keys()
        for k, g in ref["grads"].items():
            # float64: only round-off remains; a dropped cross-rank term or per-rank BN statistics
            # give errors of order 1; the absolute term covers gradients zero in exact arithmetic
            diff = (r[case]["grads"][k] - g).norm()
            assert diff < 1e-6 * g.norm() + 1e-9, (
                f"{case}: gradient of {k} differs under DDP (|diff| {diff:.3g}, |g| {g.norm():.3g})")


def _pixcontrast(q: list[torch.Tensor], k: list[torch.Tensor], pos: torch.Tensor, global_mean: bool = False):
    """PixContrast's symmetric loss (as ``PixelMethod.pair_loss``) for given pixel features; with
    ``global_mean`` each direction divides by the ranks' mean count of pixels with a positive."""
    def count(p: torch.Tensor) -> torch.Tensor | None:
        if not global_mean:
            return None
        c = p.any(dim=2).sum().double()
        dist.all_reduce(c)
        return c / WORLD

    pos_t = pos.transpose(1, 2)
    return pixcontrast_loss(q[0], k[1], pos, count=count(pos)) + pixcontrast_loss(q[1], k[0], pos_t, count=count(pos_t))


def _pixcontrast_mean_over_ranks(rank: int, q: list[torch.Tensor], k: list[torch.Tensor], pos: torch.Tensor):
    """What DDP optimises (it averages the gradients): the mean over ranks of each rank's loss on
    its shard, each rank's own average (the library's former bug) and the global one."""
    sl = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    shard = ([x[sl] for x in q], [x[sl] for x in k], pos[sl])
    losses = torch.stack([_pixcontrast(*shard), _pixcontrast(*shard, global_mean=True)])
    dist.all_reduce(losses)
    return losses / WORLD


def test_pixcontrast_with_unequal_positive_pixels_per_rank_equals_single_process(views, ddp_pool):
    v1, v2 = views[UNBALANCED]
    counts = _has_positive(views[UNBALANCED])
    assert counts[0][0] != counts[1][0] and counts[0][1] != counts[1][1]  # in both directions
    pos = positive_pairs(v1.boxes, v2.boxes, MAP, MAP)
    g = torch.Generator().manual_seed(0)
    q, k = ([torch.randn(N, HEADS["proj_dim"], *MAP, dtype=torch.float64, generator=g) for _ in range(2)]
            for _ in range(2))
    single = _pixcontrast(q, k, pos)
    for per_rank, global_mean in ddp_pool.run(_pixcontrast_mean_over_ranks, q, k, pos):
        # each rank's own average is not the global one (1% off here); the ranks' mean count is
        assert (per_rank - single).abs() > 1e-3 * single.abs()
        assert (global_mean - single).abs() < 1e-9 * single.abs(), f"DDP {global_mean.item()}, single {single.item()}"
