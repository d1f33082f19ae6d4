"""Pixel-level pre-training (PixPro, PixContrast, PixPro + instance): hand-computed geometry,
PPM and losses, the momentum schedule, short runs on real CamVid frames and the CLI preset."""

from __future__ import annotations

import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from selfsup.cli import main
from selfsup.config import ConfigError, build_config
from selfsup.data import open_dataset
from selfsup.losses.pixel import bin_centres, bin_diagonal, pixcontrast_loss, pixpro_loss, positive_pairs
from selfsup.methods import METHODS, build_method
from selfsup.models.backbones import BackboneConfig, build_backbone
from selfsup.models.ppm import PPM, propagate
from selfsup.train.optim import build_optimizer
from selfsup.views.boxes import flip_boxes, normalize_boxes
from selfsup.views.config import IMAGENET_MEAN, IMAGENET_STD
from selfsup.views.recipes import RECIPES, make_views

ROOT = Path(__file__).resolve().parents[1]
FULL = torch.tensor([[0.0, 0.0, 1.0, 1.0]])


def _mask(*rows: list[int]) -> torch.Tensor:
    return torch.tensor([rows], dtype=torch.bool)


# ---------------------------------------------------------------- geometry


def test_bin_centres_and_diagonal_follow_the_spec_formula():
    boxes = torch.tensor([[0.2, 0.1, 0.6, 0.9]])  # 2 x 2 bins of 0.2 x 0.4
    expected = torch.tensor([[[0.3, 0.3], [0.5, 0.3], [0.3, 0.7], [0.5, 0.7]]])  # (x, y), row-major
    assert torch.allclose(bin_centres(boxes, 2, 2), expected)
    assert torch.allclose(bin_diagonal(boxes, 2, 2), torch.tensor([math.sqrt(0.2**2 + 0.4**2)]))


def test_identical_boxes_2x2():
    # bins 0.5 x 0.5, diagonal sqrt(0.5) = 0.7071; centre distances / diagonal:
    # same cell 0, row or column neighbour 0.5 / 0.7071 = 0.7071, diagonal neighbour 1.0
    assert torch.equal(positive_pairs(FULL, FULL, (2, 2), (2, 2), 0.7), torch.eye(4, dtype=torch.bool)[None])
    assert torch.equal(
        positive_pairs(FULL, FULL, (2, 2), (2, 2), 0.75),
        _mask([1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]),
    )


def test_disjoint_boxes_have_no_positives():
    # bins 0.2 x 0.2 (diagonal 0.2828); the closest centres (0.3, 0.3) and (0.7, 0.7) are 2 diagonals apart
    a = torch.tensor([[0.0, 0.0, 0.4, 0.4]])
    b = torch.tensor([[0.6, 0.6, 1.0, 1.0]])
    assert not positive_pairs(a, b, (2, 2), (2, 2), 0.7).any()
    assert positive_pairs(a, b, (2, 2), (2, 2), 2.01).sum() == 1  # that one pair at 2.0


def test_flipped_view_pairs_mirror():
    flipped = flip_boxes(FULL, torch.tensor([True]))
    assert flipped.tolist() == [[1.0, 0.0, 0.0, 1.0]]  # x0 and x1 swapped
    h, w = 2, 3  # bins 1/3 x 1/2: same-row neighbours 0.55 diagonals apart, same-column ones 0.83
    mirror = torch.tensor([r * w + (w - 1 - c) for r in range(h) for c in range(w)])
    strict = positive_pairs(FULL, flipped, (h, w), (h, w), 0.3)
    assert torch.equal(strict[0], torch.eye(h * w, dtype=torch.bool)[:, mirror])  # (r, c) <-> (r, w-1-c)
    plain = positive_pairs(FULL, FULL, (h, w), (h, w), 0.7)
    assert torch.equal(positive_pairs(FULL, flipped, (h, w), (h, w), 0.7), plain[:, :, mirror])
    assert plain.sum() == 6 + 2 * 4  # each cell with itself and with its same-row neighbours


def test_non_square_image_is_normalised_per_axis():
    # a square 100 x 100 pixel box at the top-left of a 100 x 200 (H x W) image
    box = normalize_boxes(torch.tensor([[0, 0, 100, 100]]), torch.tensor([[100, 200]]))
    assert torch.allclose(box, torch.tensor([[0.0, 0.0, 99 / 199, 1.0]]))
    left = normalize_boxes(torch.tensor([[50, 0, 100, 100]]), torch.tensor([[100, 200]]))
    assert torch.allclose(left[0, [0, 2]], torch.tensor([50 / 199, 149 / 199]))
    # 2x2 bins of 0.2487 x 0.5, diagonal 0.5585: same-row neighbours 0.4454, same-column 0.8953,
    # so at T = 0.7 a cell pairs with its own row only (isotropic geometry would be symmetric)
    assert torch.equal(
        positive_pairs(box, box, (2, 2), (2, 2), 0.7),
        _mask([1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]),
    )


def test_different_scales_use_the_larger_bin_diagonal():
    small = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    # view 1: 0.5-bins (diagonal 0.7071), centres .25/.75; view 2: 0.25-bins (diagonal 0.3536),
    # centres .125/.375. Distances / 0.7071, e.g. cell 1 (.75, .25) to cell 3 (.375, .375): 0.559,
    # to cell 0 (.125, .125): 0.901; cell 3 (.75, .75) to cell 3: 0.75. Dividing by the smaller
    # diagonal (0.3536) would double them and leave row 1 without positives.
    expected = _mask([1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 1, 1], [0, 0, 0, 0])
    assert torch.equal(positive_pairs(FULL, small, (2, 2), (2, 2), 0.7), expected)
    assert torch.equal(positive_pairs(small, FULL, (2, 2), (2, 2), 0.7), expected.transpose(1, 2))


# ---------------------------------------------------------------- PPM


def test_ppm_formula_by_hand():
    # pixels x1 = (1, 0), x2 = (2, 2), x3 = (-3, 0): cos(x1, x2) = 1/sqrt2, cos(x1, x3) = -1,
    # cos(x2, x3) = -1/sqrt2. l = 0: g(x) / ||g(x)|| = (1, 0), (1, 1)/sqrt2, (-1, 0).
    x = torch.tensor([[[[1.0, 2.0, -3.0]], [[0.0, 2.0, 0.0]]]])  # (1, 2, 1, 3)
    r = 1 / math.sqrt(2)

    def unit(a, b):
        n = math.hypot(a, b)
        return [a / n, b / n]

    gamma1 = [unit(1 + r * r, r * r), unit(r + r, r), [-1.0, 0.0]]  # y1 = (1,0) + r (r, r), ...
    gamma2 = [unit(1 + 0.5 * r, 0.5 * r), unit(0.5 + r, r), [-1.0, 0.0]]
    for gamma, expected in ((1.0, gamma1), (2.0, gamma2)):
        y = PPM(2, layers=0, gamma=gamma)(x)
        assert torch.allclose(y[0, :, 0].T, torch.tensor(expected), atol=1e-6)
    # negative cosines contribute nothing: x3 only sees itself, whatever x1 and x2 are
    x_other = x.clone()
    x_other[0, :, 0, :2] = torch.tensor([[5.0, 0.3], [1.0, -4.0]])
    assert torch.allclose(propagate(x_other, x_other, 1.0)[0, :, 0, 2], torch.tensor([-1.0, 0.0]), atol=1e-7)


def test_ppm_transforms_and_gradient():
    assert sum(p.numel() for p in PPM(4, layers=1).parameters()) == 4 * 4 + 4
    assert len(PPM(4, layers=2).transform) == 4  # conv, BN, ReLU, conv
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: propagate(a, b, 2.0), (x, v))


# ---------------------------------------------------------------- losses


def test_pixpro_loss_by_hand_and_images_without_positives_count_in_the_mean():
    r = 1 / math.sqrt(2)
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]] * 2)  # (B=2, C=2, N=2): y0 = (1, 0), y1 = (0, 1)
    t = torch.tensor([[[1.0, 3.0, 0.0], [0.0, 3.0, -2.0]]] * 2)  # x'0 = (1, 0), x'1 ~ (1, 1), x'2 ~ (0, -1)
    pos = torch.tensor([[[1, 0, 0], [0, 1, 1]], [[0, 0, 0], [0, 0, 0]]], dtype=torch.bool)
    alone = -2 * (1 + r - 1) / (3 + 1e-6)  # cos(y0, x'0) + cos(y1, x'1) + cos(y1, x'2)
    assert pixpro_loss(y[:1], t[:1], pos[:1]).item() == pytest.approx(alone, rel=1e-6)
    assert pixpro_loss(y, t, pos).item() == pytest.approx(alone / 2, rel=1e-6)
    assert pixpro_loss(y.view(2, 2, 1, 2), t.view(2, 2, 1, 3), pos).item() == pytest.approx(alone / 2, rel=1e-6)


def test_pixcontrast_loss_by_hand():
    tau, r = 0.3, 1 / math.sqrt(2)
    q = torch.tensor([[[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]])  # q0 = (1, 0), q1 = (0, 1), q2 = (1, 1)
    k = torch.tensor([[[1.0, 5.0, 0.0], [0.0, 5.0, 1.0]]])  # k0 = (1, 0), k1 ~ (1, 1), k2 = (0, 1)
    pos = _mask([1, 1, 0], [0, 0, 1], [0, 0, 0])  # q2 has no positive: left out of the mean
    e = [math.exp(c / tau) for c in (1.0, r, 0.0)]  # exp(cos / tau) for cos 1, 1/sqrt2, 0
    l0 = -math.log((e[0] + e[1]) / (e[0] + e[1] + e[2]))  # positives k0, k1; negative k2
    l1 = -math.log(e[0] / (e[2] + e[1] + e[0]))  # positive k2; negatives k0, k1
    assert pixcontrast_loss(q, k, pos, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    q_other = q.clone()
    q_other[0, :, 2] = torch.tensor([-3.0, 0.5])
    assert pixcontrast_loss(q_other, k, pos, tau).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert pixcontrast_loss(q, k, torch.zeros_like(pos), tau).item() == 0.0
    q64, k64 = q.double().requires_grad_(), k.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: pixcontrast_loss(a, b, pos, tau), (q64, k64))
    grads = torch.autograd.grad(pixcontrast_loss(q64, k64, pos, tau), q64)[0]
    assert torch.isfinite(grads).all() and grads[0, :, 2].abs().max() == 0


def test_pixpro_loss_gradient():
    y = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 5, dtype=torch.float64)
    pos = torch.rand(2, 4, 5) < 0.5
    assert torch.autograd.gradcheck(lambda a: pixpro_loss(a, t, pos), (y,))


# ---------------------------------------------------------------- momentum


def _tiny_config(method: str, backbone: dict | None = None, **params) -> object:
    return build_config({
        "method": method,
        "backbone": {"name": "resnet18", "zero_init_residual": True, **(backbone or {})},
        "optim": {"lr": 0.05, "weight_decay": 0.0},
        method: {"proj_hidden": 32, "proj_dim": 16, **params},
    }, METHODS)


# ---------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def mini_camvid(shared_data, tmp_path_factory) -> Path:
    """The CamVid layout (train/, trainannot/, val/) with 4 real train frames, their label maps
    and 2 val frames, streamed from ../shared/data/camvid-trainval.tar.gz."""
    root = tmp_path_factory.mktemp("camvid") / "camvid"
    want = {"train": 4, "trainannot": 4, "val": 2}
    with tarfile.open(shared_data / "camvid-trainval.tar.gz", "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")  # camvid/<folder>/<name>.png
            if len(parts) == 3 and member.isfile() and want.get(parts[1], 0) > 0:
                (root / parts[1]).mkdir(parents=True, exist_ok=True)
                (root / parts[1] / parts[2]).write_bytes(tar.extractfile(member).read())
                want[parts[1]] -= 1
                if not any(want.values()):
                    break
    return root


def test_camvid_layout_pretrains_on_the_train_images_only(mini_camvid):
    splits = open_dataset(mini_camvid)
    train = splits.train
    assert len(train) == 4 and not train.has_labels and train.image_size == (360, 480)
    assert splits.test is not None and len(splits.test) == 2  # val/ is the held-out split
    images = next(train.batches(4, shuffle=False)).images
    first = sorted((mini_camvid / "train").iterdir())[0]
    assert torch.equal(images[0], torch.from_numpy(np.array(Image.open(first).convert("RGB"))).permute(2, 0, 1))


def test_byol_recipe_is_pixpros_views(mini_camvid):
    v1, v2 = RECIPES["byol"](64, (0.08, 1.0), True, IMAGENET_MEAN, IMAGENET_STD)
    for v in (v1, v2):
        assert (v.scale, v.ratio, v.flip_p, v.jitter, v.jitter_p, v.gray_p) == (
            (0.08, 1.0), (3 / 4, 4 / 3), 0.5, (0.4, 0.4, 0.2, 0.1), 0.8, 0.2)
    assert (v1.blur_p, v1.solarize_p, v2.blur_p, v2.solarize_p) == (1.0, 0.0, 0.1, 0.2)
    batch = next(open_dataset(mini_camvid).train.batches(4, shuffle=False))
    views = make_views(batch.images, batch.sizes, [v1] * 8, torch.Generator().manual_seed(0))
    boxes = torch.cat([v.boxes for v in views])
    flipped = torch.cat([v.flipped for v in views])
    assert flipped.any() and not flipped.all()
    assert torch.equal(boxes[:, 2] < boxes[:, 0], flipped) and ((boxes >= 0) & (boxes <= 1)).all()
    area = ((boxes[:, 2] - boxes[:, 0]).abs() * 479 + 1) * ((boxes[:, 3] - boxes[:, 1]) * 359 + 1) / (360 * 480)
    assert (area > 0.075).all() and (area <= 1).all()


def _cell_centres(box: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, float]:
    """(h * w, 2) bin centres (x, y) of a view's feature cells in the source image, row-major,
    and the bin diagonal, from the view's normalised box (x1 < x0 when mirrored)."""
    x0, y0, x1, y1 = box.double().tolist()
    cells = [(x0 + (c + 0.5) * (x1 - x0) / w, y0 + (r + 0.5) * (y1 - y0) / h) for r in range(h) for c in range(w)]
    return torch.tensor(cells), math.hypot((x1 - x0) / w, (y1 - y0) / h)


def _brute_force_pixel_loss(method, views, threshold: float = 0.7, tau: float = 0.3) -> float:
    """The pixel loss of ``method`` on ``views`` by the spec's formulas, cell by cell: positives
    closer than ``threshold`` times the larger bin diagonal; PixPro -2 sum cos(y_i, x'_j) /
    (#pos + 1e-6) per image, averaged over images; PixContrast the multi-positive InfoNCE averaged
    over the cells that have a positive; both directions summed, levels averaged."""
    with torch.no_grad():
        images = torch.cat([views[0].images, views[1].images])
        online, _ = method.dense(images)
        targets, _ = method.dense(images, target=True)
    pixpro = hasattr(method, "ppm")
    total = 0.0
    for z, t in zip(online, targets, strict=True):
        z = method.ppm(z) if pixpro else z
        z, t = F.normalize(z.double(), dim=1), F.normalize(t.double(), dim=1)
        n, h, w = z.shape[0] // 2, z.shape[2], z.shape[3]
        for a, b in ((0, 1), (1, 0)):
            terms = []
            for i in range(n):
                (ca, da), (cb, db) = _cell_centres(views[a].boxes[i], h, w), _cell_centres(views[b].boxes[i], h, w)
                pos = torch.cdist(ca, cb) / max(da, db) < threshold
                cos = z[a * n + i].flatten(1).T @ t[b * n + i].flatten(1).T.T  # (cells of a, cells of b)
                if pixpro:
                    terms.append(-2 * cos[pos].sum() / (pos.sum() + 1e-6))
                else:
                    logits = cos / tau
                    terms += [torch.logsumexp(logits[r], 0) - torch.logsumexp(logits[r][pos[r]], 0)
                              for r in range(len(logits)) if pos[r].any()]
            total += torch.stack(terms).mean().item() if terms else 0.0
    return total / len(online)


@pytest.mark.parametrize(
    ("method", "backbone", "params", "cells"),
    [
        ("pixpro", {"output_stride": 16}, {}, 16),
        ("pixcontrast", {"output_stride": 16}, {}, 16),
        ("pixpro", {"output_stride": 16}, {"instance_weight": 1.0, "inst_hidden": 32, "inst_dim": 16}, 16),
        ("pixpro", {}, {"neck": "fpn", "fpn_dim": 16}, 64),  # loss on P3 (8x8), P4, P5
    ],
    ids=["pixpro-dilated", "pixcontrast-dilated", "pixpro-instance", "pixpro-fpn"],
)
def test_short_runs_on_camvid_decrease_the_loss(method, backbone, params, cells, mini_camvid):
    torch.manual_seed(0)
    cfg = _tiny_config(method, backbone, **params)
    m = build_method(cfg)
    opt = build_optimizer(m, cfg.optim)
    batch = next(open_dataset(mini_camvid).train.batches(4, shuffle=False))
    specs = RECIPES["byol"](64, (0.08, 1.0), True, IMAGENET_MEAN, IMAGENET_STD)
    views = make_views(batch.images, batch.sizes, specs, torch.Generator().manual_seed(0))
    # the loss the method computes is the spec's, pair by pair (a wrong pair rule or a mixed-up
    # direction would still lower the loss below, but not match this)
    with torch.no_grad():
        first = m(views)
    reported = first.logs.get("pixel_loss", first.loss)
    assert reported.item() == pytest.approx(_brute_force_pixel_loss(m, views), rel=1e-4, abs=1e-5)
    losses = []
    for step in range(1, 5):
        out = m(views)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        m.on_step(step, 4)
        losses.append(out.loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert out.embedding.shape == (4 * cells, 16)  # per-pixel projections of view 1
    assert out.logs["positives"] > 0
    if params.get("instance_weight"):
        assert out.loss.item() == pytest.approx((out.logs["pixel_loss"] + out.logs["instance_loss"]).item(), rel=1e-5)


def test_dilated_last_stage_doubles_the_map():
    x = torch.zeros(1, 3, 64, 64)
    plain = build_backbone(BackboneConfig("resnet18"))
    dilated = build_backbone(BackboneConfig("resnet18", output_stride=16))
    assert plain(x)[0].shape[-2:] == (2, 2) and dilated(x)[0].shape[-2:] == (4, 4)
    assert [s.shape[-1] for s in dilated.stages(x)] == [16, 8, 4, 4] and dilated.stage_dims == [64, 128, 256, 512]


def test_bad_pixel_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"pixpro\.neck: 'fpm' is not one of none, fpn"):
        build_method(_tiny_config("pixpro", neck="fpm"))
    with pytest.raises(ConfigError, match=r"pixcontrast\.fpn_min_level"):
        build_method(_tiny_config("pixcontrast", neck="fpn", fpn_min_level=6))
    with pytest.raises(ConfigError, match=r"pixpro\.ppm_layers"):
        build_method(_tiny_config("pixpro", ppm_layers=3))


def test_cli_pretrain_pixpro_with_the_camvid_preset(mini_camvid, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--method", "pixpro", "--data", str(mini_camvid), "--config",
            "camvid/pixpro", "--epochs", "2", "--batch-size", "4", "--out", str(out),
            "--set", "views.size=64", "pixpro.proj_hidden=32", "pixpro.proj_dim=16", "train.progress=false",
            "train.log_every=1"]
    assert main(args) == 0
    assert "pixpro on 4 images" in capsys.readouterr().err  # the train frames, not the label maps
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in steps if "summary" not in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    assert not (out / "knn.json").exists()  # CamVid folders have no class labels
    weights = torch.load(out / "backbone.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(weights, strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
