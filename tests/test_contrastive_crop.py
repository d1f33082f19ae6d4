"""ContrastiveCrop: box localisation from heat maps, the Beta-placed crop sampler, its
schedule, and its boxes as checkpointed training state (CLI run, resume, preview picture)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.special import betainc

from selfsup.cli import main
from selfsup.config import ConfigError, build_config
from selfsup.core.errors import CheckpointError
from selfsup.data import open_dataset
from selfsup.methods import METHODS
from selfsup.models.backbones import BackboneConfig, build_backbone
from selfsup.train import trainer as trainer_mod
from selfsup.views import contrastive_crop as cc
from selfsup.views.boxes import flip_boxes, normalize_boxes
from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD
from selfsup.views.contrastive_crop import (
    ContrastiveCrop,
    heatmap_boxes,
    localise,
    sample_crops,
    update_due,
)
from selfsup.views.preview import BOX_COLOUR
from selfsup.views.recipes import RECIPES, eval_view, make_views
from selfsup.views.samplers import FixedCenterCrop

ROOT = Path(__file__).resolve().parents[1]
N = 20000  # draws for the sampling statistics


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- localisation ----------------------------------------------------------------------------


def test_box_is_extent_of_bright_rectangle_and_not_a_component():
    fmap = torch.zeros(3, 4, 16, 20)
    fmap[0, :, 3:7, 2:10] = 1.0  # rows 3..6, columns 2..9
    fmap[0, 0, 12, 15] = 0.3  # channel sum 0.3 of max 4: 0.075 < k = 0.1, ignored
    fmap[1, :, 1:3, 1:3] = 1.0  # two separate blobs: the box spans both
    fmap[1, :, 10:12, 15:19] = 1.0
    # image 2: constant map (min-max undefined): keeps the whole image
    boxes = heatmap_boxes(fmap, (16, 20), 0.1)  # same size: the upsampling is the identity
    expected = torch.tensor([[3 / 16, 2 / 20, 6 / 16, 9 / 20], [1 / 16, 1 / 20, 11 / 16, 18 / 20], [0, 0, 1, 1]])
    torch.testing.assert_close(boxes, expected)
    fmap[0, 0, 12, 15] = 0.5  # 0.125 > k: now it stretches the box to row 12, column 15
    torch.testing.assert_close(heatmap_boxes(fmap, (16, 20), 0.1)[0], torch.tensor([3 / 16, 2 / 20, 12 / 16, 15 / 20]))


def test_box_from_bilinearly_upsampled_heat_map():
    # One hot cell (row 1, column 2) of a 4x4 map, upsampled x2 (align_corners=False): output
    # row i samples source row i/2 - 1/4, so rows 1..4 get weights 1/4, 3/4, 3/4, 1/4 of the
    # hot row and columns 3..6 the same of the hot column; the peak is 3/4 * 3/4.
    fmap = torch.zeros(1, 8, 4, 4)
    fmap[0, :, 1, 2] = 2.0
    # k = 0.1: row maxima 0.25 * 0.75 = 0.1875 pass -> rows 1..4, columns 3..6
    torch.testing.assert_close(heatmap_boxes(fmap, (8, 8), 0.1), torch.tensor([[1 / 8, 3 / 8, 4 / 8, 6 / 8]]))
    # k = 0.5: only the 0.75 * 0.75 rows / columns pass -> rows 2..3, columns 4..5
    torch.testing.assert_close(heatmap_boxes(fmap, (8, 8), 0.5), torch.tensor([[2 / 8, 4 / 8, 3 / 8, 5 / 8]]))


def test_localise_real_images_in_batches_restores_train_mode(cifar_subset):
    data = open_dataset(cifar_subset(1, 0)).train  # 10 real CIFAR images
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig("resnet18"))
    backbone.train()
    boxes = localise(backbone, data, 64, CIFAR10_MEAN, CIFAR10_STD, 0.3, 4, torch.device("cpu"))
    assert backbone.training and boxes.shape == (10, 4)
    assert ((boxes * 64).round() == boxes * 64).all()  # whole heat-map rows / columns
    assert (boxes[:, :2] <= boxes[:, 2:]).all() and (boxes >= 0).all() and (boxes <= 1).all()
    # same result image by image (eval mode: no batch statistics), in dataset order
    backbone.eval()
    images = next(data.batches(10, shuffle=False)).images
    fmap = backbone(eval_view(images, 64, CIFAR10_MEAN, CIFAR10_STD))[0]
    torch.testing.assert_close(boxes, heatmap_boxes(fmap, (64, 64), 0.3))


# --- sampling --------------------------------------------------------------------------------


def _offsets_histogram(alpha: float) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Square 50x50 crops (scale 1/16, ratio 1) in a 200x200 image with box rows 0.4..0.9,
    columns 0.4..0.7: allowed tops r0 = 80 - 25 = 55 .. r1 = min(180 - 25, 150) = 150,
    lefts 55 .. 140 - 25 = 115."""
    sizes = torch.tensor([[200, 200]]).repeat(N, 1)
    boxes = torch.tensor([[0.4, 0.4, 0.9, 0.7]]).repeat(N, 1)
    crops = sample_crops(sizes, boxes, (1 / 16, 1 / 16), (1.0, 1.0), alpha, _gen(1))
    assert (crops[:, 2:] == 50).all()
    return crops[:, 1] - 55, crops[:, 0] - 55, 95, 60


def test_alpha_one_is_uniform_inside_the_allowed_range():
    top, left, rows, cols = _offsets_histogram(1.0)
    assert top.min() == 0 and top.max() == rows - 1 and left.min() == 0 and left.max() == cols - 1
    for offsets, span in ((top, rows), (left, cols)):
        freq = torch.bincount(offsets * 5 // span, minlength=5).double() / N  # 5 equal bins
        assert (freq - 0.2).abs().max() < 0.012, freq
    # rows and columns use independent betas
    assert abs(np.corrcoef(top.numpy(), left.numpy())[0, 1]) < 0.03


@pytest.mark.parametrize("alpha", [0.1, 0.6, 1.0])
def test_crop_positions_follow_beta_alpha_alpha(alpha):
    top, left, rows, cols = _offsets_histogram(alpha)
    for offsets, span in ((top, rows), (left, cols)):
        assert offsets.min() >= 0 and offsets.max() <= span  # top in [r0, r1]
        # offset = int(span * beta) <= 9  <=>  beta < 10 / span; symmetric at the far edge
        edge = (offsets <= 9).double().mean() + (offsets >= span - 10).double().mean()
        expected = 2 * betainc(alpha, alpha, 10 / span)
        assert abs(edge - expected) < 0.015, (alpha, edge, expected)
    if alpha == 0.1:  # U-shaped: most crops sit at the ends of the allowed range
        assert expected > 0.75


def test_crops_never_leave_the_image():
    gen = _gen(2)
    n = 6000
    sizes = torch.stack((torch.randint(8, 300, (n,), generator=gen), torch.randint(8, 300, (n,), generator=gen)), 1)
    corners = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0.9, 0.1, 1], [0.95, 0, 1, 0.02], [0, 0, 1, 1.0]])
    low = torch.rand(n, 2, generator=gen)
    random_boxes = torch.cat((low, low + (1 - low) * torch.rand(n, 2, generator=gen)), 1)
    boxes = torch.where((torch.arange(n) % 2 == 0)[:, None], corners[torch.arange(n) % 5], random_boxes)
    for alpha in (0.1, 1.0):
        left, top, w, h = sample_crops(sizes, boxes, (0.08, 1.0), (3 / 4, 4 / 3), alpha, gen).unbind(1)
        assert (left >= 0).all() and (top >= 0).all() and (w >= 1).all() and (h >= 1).all()
        assert (left + w <= sizes[:, 1]).all() and (top + h <= sizes[:, 0]).all()
    # A box in the bottom-right corner pins every crop there, the top-left one likewise. (Here
    # every try fits: aspect H / W in [3/4, 4/3], area <= 1/2; the centre-crop fallback of
    # elongated images above ignores the box.)
    sizes = torch.tensor([[100, 120], [90, 90], [150, 113]]).repeat(2, 1)
    boxes = torch.tensor([[1.0, 1, 1, 1]] * 3 + [[0.0, 0, 0, 0]] * 3)
    for _ in range(20):
        left, top, w, h = sample_crops(sizes, boxes, (0.08, 0.5), (3 / 4, 4 / 3), 0.6, gen).unbind(1)
        assert (top[:3] == sizes[:3, 0] - h[:3]).all() and (left[:3] == sizes[:3, 1] - w[:3]).all()
        assert (top[3:] == 0).all() and (left[3:] == 0).all()


def test_ten_tries_then_centre_crop_fallback():
    # 60 x 100 image, square crops (ratio 1), area fraction s ~ U(0.3, 3): a try fits iff its
    # side round(sqrt(6000 s)) <= 60, i.e. s < 60.5^2 / 6000, p = (0.61004 - 0.3) / 2.7;
    # all 10 tries fail with probability (1 - p)^10 = 0.295 (9 tries: 0.334, 11: 0.262).
    sizes = torch.tensor([[60, 100]]).repeat(N, 1)
    boxes = torch.zeros(N, 4)  # top-left box: every fitting crop sits at (0, 0)
    crops = sample_crops(sizes, boxes, (0.3, 3.0), (1.0, 1.0), 0.6, _gen(3))
    fallback = (crops == torch.tensor([20, 0, 60, 60])).all(1)  # centred 60 x 60
    placed = crops[~fallback]
    assert (placed[:, :2] == 0).all() and (placed[:, 2] == placed[:, 3]).all() and (placed[:, 2] <= 60).all()
    p = (60.5**2 / 6000 - 0.3) / 2.7
    assert abs(fallback.double().mean() - (1 - p) ** 10) < 0.015
    # nothing ever fits: always torchvision's centre crop (13 x 10 in a 10 x 100 strip)
    strip = sample_crops(torch.tensor([[10, 100]]), torch.zeros(1, 4), (0.9, 1.0), (3 / 4, 4 / 3), 0.6, _gen())
    assert strip.tolist() == [[43, 0, 13, 10]]


def test_fixed_center_crop_is_deterministic_and_centred():
    gen = _gen(4)
    state = gen.get_state()
    crops = FixedCenterCrop().sample(torch.tensor([[32, 32], [30, 50]]), (0.2, 0.64), (3 / 4, 4 / 3), gen, None)
    # side 32 * 0.8 = 25.6 -> 26, corner (32 - 26) // 2 = 3; 30 x 50 -> 24 x 40 at (3, 5)
    assert crops.tolist() == [[3, 3, 26, 26], [5, 3, 40, 24]]
    assert torch.equal(gen.get_state(), state)


def test_make_views_boxes_come_from_the_sampler(cifar_images):
    images = (cifar_images[:6] * 40 + 120).clamp(0, 255).to(torch.uint8)
    sizes = torch.tensor([[32, 32]] * 6)
    index = torch.tensor([5, 0, 3, 1, 4, 2])
    crop = ContrastiveCrop(6, alpha=0.3)
    low, high = torch.rand(2, 6, 2, generator=_gen(5)).sort(0).values
    crop.boxes = torch.cat((low, high), 1)  # (y_min, x_min, y_max, x_max)
    specs = RECIPES["simclr"](32, (0.2, 1.0), False, CIFAR10_MEAN, CIFAR10_STD)
    views = make_views(images, sizes, specs, _gen(6), crop, index)
    gen = _gen(6)  # replay the first view's draws: the crop first, then the flip
    pixel = crop.sample(sizes, specs[0].scale, specs[0].ratio, gen, index)
    flipped = torch.rand(6, generator=gen) < specs[0].flip_p
    torch.testing.assert_close(views[0].boxes, flip_boxes(normalize_boxes(pixel, sizes), flipped))
    assert torch.equal(views[0].flipped, flipped)
    with pytest.raises(ValueError, match="index"):
        make_views(images, sizes, specs, _gen(6), crop)


# --- schedule, config ------------------------------------------------------------------------


def test_schedule_warmup_interval_and_last_epoch():
    def due(epochs, warmup, interval):
        return [e for e in range(1, epochs + 1) if update_due(e, epochs, warmup, interval)]

    assert due(500, 100, 100) == [100, 200, 300, 400]  # not after the last epoch
    assert due(7, 2, 2) == [2, 4, 6]
    assert due(8, 3, 2) == [4, 6]  # 8 is the last epoch
    assert due(3, 0, 1) == [1, 2]
    assert due(3, 1, 1) == [1, 2]
    assert due(5, 5, 1) == []
    crop = ContrastiveCrop(4, warmup_epochs=2, interval=3)
    assert [crop.for_epoch(e) is crop for e in (1, 2, 3, 4)] == [False, False, True, True]
    assert crop.due(3, 10) and not crop.due(2, 10) and not crop.due(3, 3)


def test_config_selects_the_crop_and_rejects_bad_values():
    cfg = build_config({"views": {"crop": "contrastive", "crop_alpha": 0.1, "crop_warmup_epochs": 1}}, METHODS)
    crop = cc.build_crop(cfg.views, 10, 64)
    assert isinstance(crop, ContrastiveCrop) and crop.alpha == 0.1 and crop.warmup_epochs == 1
    assert crop.interval == 100 and crop.threshold == 0.1  # defaults
    assert torch.equal(crop.boxes, torch.tensor([[0.0, 0, 1, 1]]).repeat(10, 1))
    assert cc.build_crop(build_config({}, METHODS).views, 10, 64) is None
    fixed = build_config({"views": {"crop": "fixed-center"}}, METHODS).views
    assert isinstance(cc.build_crop(fixed, 10, 64), FixedCenterCrop)
    bad = [({"crop": "contrastiv"}, "views.crop: 'contrastiv' is not one of random, contrastive, fixed-center"),
           ({"crop_threshold": 1.0}, "views.crop_threshold must be in [0, 1)"),
           ({"crop_alpha": 0}, "views.crop_alpha must be > 0"),
           ({"crop_interval": 0}, "views.crop_interval must be >= 1, got 0")]
    for views, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config({"views": views}, METHODS)
    with pytest.raises(CheckpointError, match="do not fit a dataset of 10 images"):
        crop.load_state_dict({"boxes": torch.zeros(9, 4)})


# --- training state through the CLI ------------------------------------------------------------


# 32 px with a dilated last stage: 2x2 feature maps, so heat maps have structure
RUN = ["backbone.cifar_stem=false", "backbone.output_stride=16", "views.crop=contrastive",
       "views.crop_warmup_epochs=1", "views.crop_interval=1", "views.crop_threshold=0.5", "train.knn_every=0",
       "train.progress=false", "optim.warmup_epochs=1"]


def _pretrain(data: Path, out: Path, *extra: str) -> int:
    return main(["pretrain", "--method", "simclr", "--data", str(data), "--config",
                 "cifar10/simclr", "--epochs", "2", "--batch-size", "24",
                 "--out", str(out), "--set", *RUN, *extra])


@pytest.fixture(scope="module")
def runs(cifar_subset, tmp_path_factory):
    """A straight 2-epoch ContrastiveCrop run on 50 real images (random crops in epoch 1,
    boxes localised after it, ContrastiveCrop in epoch 2) and the same run interrupted by
    Ctrl-C in epoch 2, then resumed."""
    data = cifar_subset(5, 2)
    # decode once into the session cache first: the first decode's DataLoader draws from the
    # global torch RNG, which would give the first run different initial weights
    open_dataset(data)
    root = tmp_path_factory.mktemp("ccrop")
    calls: list[int] = []
    real_update = ContrastiveCrop.update
    real_step = trainer_mod.Trainer.train_step
    steps = {"n": 0}

    def counted(self, *args):
        calls.append(len(calls) + 1)
        return real_update(self, *args)

    def interrupted(self, batches, **kwargs):
        steps["n"] += 1
        if steps["n"] == 3:  # the first step of epoch 2 (2 steps per epoch)
            raise KeyboardInterrupt
        return real_step(self, batches, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ContrastiveCrop, "update", counted)
        assert _pretrain(data, root / "straight") == 0
        updates = len(calls)
        mp.setattr(trainer_mod.Trainer, "train_step", interrupted)
        assert _pretrain(data, root / "split") == 130
    interrupted_state = torch.load(root / "split/last.pt", weights_only=True)
    assert _pretrain(data, root / "split", "--resume") == 0
    return {"data": data, "root": root, "updates": updates, "interrupted": interrupted_state}


def test_boxes_are_checkpointed_and_restored_on_resume(runs):
    root = runs["root"]
    assert runs["updates"] == 1  # after epoch 1, not after the last one
    mid = runs["interrupted"]
    assert mid["epoch"] == 1 and mid["crop"]["boxes"].shape == (50, 4)
    whole = torch.tensor([0.0, 0, 1, 1])
    assert (mid["crop"]["boxes"] != whole).any(1).sum() > 0  # localisation shrank some boxes
    a = torch.load(root / "straight/last.pt", weights_only=True)
    b = torch.load(root / "split/last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 4
    assert torch.equal(a["crop"]["boxes"], b["crop"]["boxes"])
    assert torch.equal(b["crop"]["boxes"], mid["crop"]["boxes"])  # no update after the last epoch
    # epoch 2 of the resumed run cropped with the restored boxes: the same weights
    for k, v in a["method"].items():
        assert torch.allclose(v.float(), b["method"][k].float(), atol=1e-6), k


def _red(png: Path) -> np.ndarray:
    """Per picture column: how many pixels have the localisation box's exact colour."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    colour = np.array([int(BOX_COLOUR[i : i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(pixels - colour).sum(-1) == 0).sum(0)


def test_views_preview_writes_png(runs, cifar_subset, tmp_path, capsys):
    run = runs["root"] / "straight"
    png = tmp_path / "cc.png"
    assert main(["views", "preview", "--crop", "contrastive", "--checkpoint", str(run), "--n", "3",
                 "--out", str(png)]) == 0
    width, height = Image.open(png).size
    assert (width, height) == (2 * 206 + 6, 18 + 3 * 206 + 6)  # two columns of 200 px cells
    red = _red(png)
    assert red[:207].sum() > 100 and red[212:].sum() < 5  # boxes in the ContrastiveCrop column only
    # other data than the run's: boxes are localised now with the checkpoint's encoder
    png2 = tmp_path / "cc_now.png"
    assert main(["views", "preview", "--checkpoint", str(run), "--data", str(cifar_subset(1, 0)),
                 "--n", "2", "--out", str(png2)]) == 0
    assert _red(png2)[:207].sum() > 100
    # random crops need no checkpoint
    png3 = tmp_path / "random.png"
    assert main(["views", "preview", "--crop", "random", "--data", str(runs["data"]), "--n", "2",
                 "--out", str(png3)]) == 0
    assert Image.open(png3).size == (212, 18 + 2 * 206 + 6) and _red(png3).sum() < 5
    capsys.readouterr()
    assert main(["views", "preview", "--crop", "contrastive", "--data", str(runs["data"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs --checkpoint" in err and len(err.splitlines()) == 1
