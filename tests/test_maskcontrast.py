"""MaskContrast: hand-computed losses and class weights, the masks' geometry and crop condition, the
mask folders, the paper's post-processing, and the k-means + Hungarian evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.config import build_config
from selfsup.data import DataError, ImageDataset, open_dataset
from selfsup.data.masks import postprocess
from selfsup.eval.cluster import hungarian_match, kmeans
from selfsup.losses.maskcontrast import balanced_bce, class_weights, mask_contrast_loss, saliency_prototypes
from selfsup.methods import METHODS, build_method
from selfsup.methods.maskcontrast import salient_share
from selfsup.views.recipes import RECIPES, make_views


def test_class_weights_and_the_contrastive_loss_by_hand():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    queue = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    w0, w1 = 1 / math.log(1.02 + 2 / 3), 1 / math.log(1.02 + 1 / 3)
    assert torch.allclose(class_weights(torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)),
                          torch.tensor([w0, w1], dtype=torch.float64))
    # logits / 0.5: pixel a, b: [2, 0, -2]; pixel c: [0, 2, 0]
    ce_a = -2 + math.log(math.exp(2) + 1 + math.exp(-2))
    ce_c = -2 + math.log(1 + math.exp(2) + 1)
    expected = (2 * w0 * ce_a + w1 * ce_c) / (2 * w0 + w1)
    loss = mask_contrast_loss(q, labels, prototypes, queue, temperature=0.5)
    assert abs(loss.item() - expected) < 1e-12
    # the official code's form: cross_entropy with per-class weights (queue columns never targeted)
    logits = torch.cat([q @ prototypes.T, q @ queue.T], 1) / 0.5
    weight = torch.tensor([w0, w1, 1 / math.log(1.02)], dtype=torch.float64)
    assert abs(F.cross_entropy(logits, labels, weight=weight).item() - expected) < 1e-12


def test_prototypes_are_normalised_sums_over_the_salient_key_pixels():
    keys = torch.zeros(2, 2, 1, 3)
    keys[0, :, 0] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # pixels (1,0), (0,1), (1,0)
    keys[1, 0] = 1.0
    masks = torch.tensor([[[True, True, True]], [[False, False, False]]])
    z = saliency_prototypes(keys, masks)
    assert torch.allclose(z[0], torch.tensor([2.0, 1.0]) / math.sqrt(5)) and torch.equal(z[1], torch.zeros(2))


def test_balanced_bce_by_hand():
    logits = torch.tensor([[[0.0, math.log(3), 0.0]]], dtype=torch.float64)
    target = torch.tensor([[[1, 0, 0]]])
    # beta = 2/3 negatives; BCE(0, 1) = ln 2, BCE(ln 3, 0) = -ln(1 - 3/4) = ln 4, BCE(0, 0) = ln 2
    expected = (2 / 3 * math.log(2) + 1 / 3 * (math.log(4) + math.log(2))) / 3
    assert abs(balanced_bce(logits, target).item() - expected) < 1e-12


def test_postprocessing_keeps_components_of_at_least_one_percent_exactly():
    prob = np.zeros((100, 100), dtype=np.float32)
    prob[0:10, 0:10] = 0.5  # 100 px = 1% of the image: kept (>= 0.5 is salient)
    prob[50:59, 0:11] = 0.9  # 99 px: dropped
    prob[20:28, 40:48] = 1.0  # two 64 px squares touching at a corner: one 8-connected 128 px component
    prob[28:36, 48:56] = 1.0
    prob[90:99, 90:99] = 0.49  # below the threshold
    out = postprocess(prob)
    assert out.mask.sum() == 100 + 128 and out.dropped_components == 1 and out.kept
    assert out.salient == pytest.approx(0.0228, abs=1e-12)
    only_small = np.zeros((100, 100), dtype=np.float32)
    only_small[50:59, 0:11] = 1.0
    assert not postprocess(only_small).kept and postprocess(only_small).mask.sum() == 0


def _cfg(**params):
    return build_config({"method": "maskcontrast", "backbone": {"name": "resnet18", "output_stride": 8},
                         "data": {"masks": "masks"}, "maskcontrast": params}, METHODS)


def test_the_mask_follows_crop_and_flip_exactly_and_both_views_are_accepted():
    n, height, width = 24, 40, 60
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8, generator=gen)
    maps = (torch.arange(width) >= 50).to(torch.uint8).expand(n, height, width).clone()  # right sixth salient
    method = build_method(_cfg())
    crop = method.crop_sampler(None)
    sizes = torch.tensor([height, width]).repeat(n, 1)
    specs = RECIPES["maskcontrast"](32, (0.2, 1.0), True, (0.5,) * 3, (0.25,) * 3)
    views = make_views(images, sizes, specs, gen, crop, torch.arange(n), maps)
    c = (torch.arange(32, dtype=torch.float64) + 0.5) / 32
    for view in views:
        assert view.flipped.any() and (~view.flipped).any()
        for box, flipped, got in zip(view.boxes.double(), view.flipped, view.maps, strict=True):
            i0, i1 = box[0] * (width - 1), box[2] * (width - 1)
            low, count = torch.minimum(i0, i1), (i1 - i0).abs() + 1
            position = low + count * (1 - c) if bool(flipped) else low + count * c
            expected = (position.floor() >= 50).to(torch.uint8)
            assert torch.equal(got, expected[None].expand(32, 32))
            share = got.double().mean()
            assert 0 < share < 1  # both views hold salient and background pixels
    assert crop.rejected == 0
    plain = make_views(images, sizes, specs, torch.Generator().manual_seed(0), None, None, maps)
    assert any(bool(((v.maps.double().mean((1, 2)) == 0) | (v.maps.double().mean((1, 2)) == 1)).any())
               for v in plain)  # without the condition some views miss the salient strip


def test_salient_share_of_a_box_on_a_smaller_stored_grid():
    maps = torch.zeros(1, 10, 10, dtype=torch.uint8)
    maps[0, :, 5:] = 1
    # original 20 x 20: the box (left 6, top 0, 8 x 20) covers stored columns 3..6 (centres 3.5 .. 6.5)
    share = salient_share(torch.tensor([[6, 0, 8, 20]]), torch.tensor([[20, 20]]), maps)
    assert share.item() == pytest.approx(0.5)


def test_the_method_loss_is_the_sum_of_its_two_losses_and_fills_the_queue():
    torch.manual_seed(0)
    method = build_method(_cfg(queue_size=8, embed_dim=8)).double()
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=gen)
    maps = torch.zeros(4, 32, 32, dtype=torch.uint8)
    maps[:, 8:24, 8:24] = 1
    specs = RECIPES["maskcontrast"](32, (0.2, 1.0), False, (0.5,) * 3, (0.25,) * 3)
    views = make_views(images, torch.tensor([32, 32]).repeat(4, 1), specs, gen, method.crop_sampler(None), None, maps)
    for v in views:
        v.images = v.images.double()
    queue_before = method.queue.rows.clone()
    out = method(views)
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.backbone.net.conv1.weight.grad.abs().sum() > 0
    assert out.loss.item() == pytest.approx((out.logs["contrastive_loss"] + out.logs["saliency_loss"]).item())
    assert torch.equal(method.queue.rows[4:], queue_before[4:]) and int(method.queue.ptr) == 4
    assert torch.allclose(method.queue.rows[:4].norm(dim=1), torch.ones(4, dtype=torch.float64))


def test_mask_folders_read_every_encoding_and_name_the_missing_file(tmp_path):
    images, masks = tmp_path / "data" / "train", tmp_path / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    rng = np.random.default_rng(0)
    half = np.zeros((8, 12), dtype=np.uint8)
    half[:, 6:] = 1
    encodings = {"a": half, "b": half * 255, "c": np.where(half == 1, 200, 100).astype(np.uint8)}  # 0/1, 0/255, prob
    for name, mask in encodings.items():
        Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(images / f"{name}.png")
        Image.fromarray(mask).save(masks / f"{name}.png")
    Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8)).save(images / "d.jpg")
    with pytest.raises(DataError, match=r"no mask for image .*d\.jpg.*expected d\.png.*1 image"):
        open_dataset(tmp_path / "data", masks=masks)
    train = open_dataset(tmp_path / "data", masks=masks, skip_missing=True).train
    assert len(train) == 3 and train.num_without_mask == 1 and train.files == ["a.png", "b.png", "c.png"]
    assert all(torch.equal(m, torch.from_numpy(half)) for m in train.maps)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(masks / "d.png")  # of another size
    with pytest.raises(DataError, match=r"mask .*d\.png is not 8x12 like its image"):
        open_dataset(tmp_path / "data", masks=masks)
    assert isinstance(open_dataset(tmp_path / "data", masks=masks, skip_missing=True).train, ImageDataset)


def test_hungarian_matching_of_a_permuted_perfect_labelling_gives_miou_one():
    target = torch.randint(0, 5, (3, 16, 16), generator=torch.Generator().manual_seed(0))
    target[0, 0, :4] = 255  # ignored pixels do not count
    perm = torch.tensor([3, 0, 4, 1, 2])
    match = hungarian_match(perm[target.clamp(max=4)], target, 5, 255)
    assert match.miou == 1.0 and np.array_equal(match.mapping[perm.numpy()], np.arange(5))
    noisy = perm[target.clamp(max=4)].clone()
    noisy[1] = 0
    assert hungarian_match(noisy, target, 5, 255).miou < 1.0


def test_kmeans_recovers_well_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 8, dtype=np.float32) * 10
    truth = rng.integers(0, 4, 400)
    x = centres[truth] + rng.normal(0, 0.1, (400, 8)).astype(np.float32)
    found = kmeans(x, 4, seed=0)
    assign = ((x[:, None] - found[None]) ** 2).sum(-1).argmin(1)
    match = hungarian_match(torch.from_numpy(assign), torch.from_numpy(truth), 4, 255)
    assert match.miou == 1.0
    assert np.abs(np.sort(found, 0) - np.sort(centres, 0)).max() < 0.1


def test_exif_orientation_turns_a_mask_upright_with_its_image(tmp_path):
    """A photo stored sideways with EXIF orientation 6 and its mask stored the same way: both are
    read upright (8 x 12), so the mask's salient half is the image's right half."""
    images, masks = tmp_path / "data" / "train", tmp_path / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: the upright picture is the stored one turned 90 degrees clockwise
    upright = np.zeros((8, 12), dtype=np.uint8)
    upright[:, 6:] = 255
    stored = np.rot90(upright, 1)  # what a camera writes for orientation 6 (12 x 8)
    Image.fromarray(np.repeat(stored[..., None], 3, axis=2)).save(images / "a.jpg", exif=exif, quality=95)
    Image.fromarray(stored).save(masks / "a.png", exif=exif)
    train = open_dataset(tmp_path / "data", masks=masks).train
    assert tuple(train.maps[0].shape) == (8, 12)
    assert torch.equal(train.maps[0], torch.from_numpy(upright // 255))
