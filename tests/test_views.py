"""Tests of the batched views: box geometry, resampling, colour ops against torchvision."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from selfsup.views import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    RECIPES,
    ViewSpec,
    eval_view,
    make_views,
    ops,
)
from selfsup.views.boxes import flip_boxes, normalize_boxes, sample_boxes, sample_pixel_boxes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- boxes ---------------------------------------------------------------------------------


def test_normalize_boxes_known_box():
    # A 10 (wide) x 20 (high) crop at left=3, top=5 in an image of height 32 and width 48.
    boxes = normalize_boxes(torch.tensor([[3, 5, 10, 20]]), torch.tensor([[32, 48]]))
    expected = torch.tensor([[3 / 47, 5 / 31, 12 / 47, 24 / 31]])
    torch.testing.assert_close(boxes, expected)


def test_flip_boxes_swaps_x0_x1():
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.3, 0.4, 0.5, 0.6]])
    out = flip_boxes(boxes, torch.tensor([True, False]))
    torch.testing.assert_close(out, torch.tensor([[0.7, 0.2, 0.1, 0.9], [0.3, 0.4, 0.5, 0.6]]))


def test_sampled_boxes_inside_and_in_range():
    n = 4000
    heights = torch.randint(60, 500, (n,), generator=_gen(1))
    widths = torch.randint(60, 500, (n,), generator=_gen(2))
    sizes = torch.stack((heights, widths), 1)
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    pix = sample_pixel_boxes(sizes, scale, ratio, _gen(3)).double()
    left, top, w, h = pix.unbind(1)
    H, W = heights.double(), widths.double()
    assert (left >= 0).all() and (top >= 0).all()
    assert (left + w <= W).all() and (top + h <= H).all() and (w >= 1).all() and (h >= 1).all()
    # Not a fallback: area and aspect within range up to the integer rounding of w and h.
    area = H * W
    sampled = ((w + 0.5) * (h + 0.5) >= scale[0] * area) & ((w - 0.5) * (h - 0.5) <= area)
    shaped = ((w + 0.5) / (h - 0.5) >= ratio[0]) & ((w - 0.5) / (h + 0.5) <= ratio[1])
    fallback = (w == W) | (h == H)  # torchvision's fallback keeps a whole side
    assert (sampled & shaped | fallback).all()
    assert (sampled & shaped).float().mean() > 0.95
    # The area fraction spreads over the whole range.
    frac = w * h / area
    assert frac.min() < 0.1 and frac.max() > 0.9
    boxes = sample_boxes(sizes, scale, ratio, _gen(3))
    torch.testing.assert_close(boxes, normalize_boxes(pix.long(), sizes))
    assert (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[:, 0] <= boxes[:, 2]).all() and (boxes[:, 1] <= boxes[:, 3]).all()


def test_fallback_is_torchvision_centre_crop():
    # A 20 x 400 strip cannot hold 90% of its area at ratio <= 4/3: centre crop 27 x 20.
    pix = sample_pixel_boxes(torch.tensor([[20, 400]]), (0.9, 1.0), (3 / 4, 4 / 3), _gen())
    assert pix.tolist() == [[(400 - 27) // 2, 0, 27, 20]]


# --- crop_resize ---------------------------------------------------------------------------


def _full(n: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[0.0, 0.0, 1.0, 1.0]] * n), torch.tensor([[h, w]] * n)


def test_crop_resize_full_box_is_plain_resize():
    x = torch.rand(3, 3, 16, 16, generator=_gen())
    boxes, sizes = _full(3, 16, 16)
    up = ops.crop_resize(x, boxes, sizes, 40)
    expected = F.interpolate(x, size=(40, 40), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected, atol=1e-5, rtol=0)
    down = ops.crop_resize(x, boxes, sizes, 8)  # factor 2: exact area average
    torch.testing.assert_close(down, F.avg_pool2d(x, 2), atol=1e-6, rtol=0)
    same = ops.crop_resize(x, boxes, sizes, 16)
    torch.testing.assert_close(same, x, atol=1e-6, rtol=0)


def test_crop_resize_uint8_matches_float():
    x = torch.randint(0, 256, (2, 3, 24, 30), dtype=torch.uint8, generator=_gen())
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9], [0.0, 0.5, 0.5, 1.0]])
    sizes = torch.tensor([[24, 30]] * 2)
    out8 = ops.crop_resize(x, boxes, sizes, 12)
    outf = ops.crop_resize(x.float() / 255, boxes, sizes, 12)
    torch.testing.assert_close(out8, outf, atol=1e-6, rtol=0)


def test_crop_resize_box_equals_cropped_pixels():
    x = torch.rand(1, 3, 32, 48, generator=_gen())
    sizes = torch.tensor([[32, 48]])
    box = normalize_boxes(torch.tensor([[5, 7, 12, 12]]), sizes)  # left 5, top 7, 12 x 12
    out = ops.crop_resize(x, box, sizes, 12)
    torch.testing.assert_close(out, x[:, :, 7:19, 5:17], atol=1e-6, rtol=0)


def test_crop_resize_2x_box_on_ramp():
    # v(x, y) = (x + 64 y) / 4096: a 2x downscale averages 2x2 blocks -> exact values.
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(48.0), indexing="ij")
    x = ((xs + 64 * ys) / 4096).expand(1, 3, 32, 48)
    sizes = torch.tensor([[32, 48]])
    for left, top in ((6, 4), (7, 3)):  # aligned and misaligned with the 2x2 pooling grid
        box = normalize_boxes(torch.tensor([[left, top, 16, 16]]), sizes)
        out = ops.crop_resize(x, box, sizes, 8)
        j = torch.arange(8.0)
        expected = ((left + 2 * j + 0.5)[None, :] + 64 * (top + 2 * j + 0.5)[:, None]) / 4096
        torch.testing.assert_close(out[0, 0], expected, atol=1e-6, rtol=0)


def test_crop_resize_maps_original_coordinates_to_stored_grid():
    # Original 40 x 60 stored anisotropically at 32 x 32; the stored image is a ramp in x.
    x = torch.arange(32.0).div(32).expand(1, 3, 32, 32)
    sizes = torch.tensor([[40, 60]])
    # Original box: left 15, width 30 -> [15, 45) -> stored [8, 24); top 10, height 20 -> [8, 24).
    box = normalize_boxes(torch.tensor([[15, 10, 30, 20]]), sizes)
    out = ops.crop_resize(x, box, sizes, 16)
    expected = (8 + torch.arange(16.0)) / 32
    torch.testing.assert_close(out[0, 1], expected.expand(16, 16), atol=1e-6, rtol=0)


def test_flipped_box_mirrors_the_output():
    x = torch.rand(4, 3, 30, 40, generator=_gen())
    sizes = torch.tensor([[60, 50]] * 4)
    boxes = sample_boxes(sizes, (0.1, 1.0), (3 / 4, 4 / 3), _gen(1))
    flipped = torch.tensor([True, False, True, True])
    out = ops.crop_resize(x, flip_boxes(boxes, flipped), sizes, 20)
    ref = ops.crop_resize(x, boxes, sizes, 20)
    expected = torch.where(flipped[:, None, None, None], ref.flip(-1), ref)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


# --- colour --------------------------------------------------------------------------------


def _colour_images(n: int = 6) -> torch.Tensor:
    """Random images with exact ties (uint8 levels, gray pixels) and saturated values."""
    x = torch.randint(0, 256, (n, 3, 9, 11), generator=_gen(5)).float() / 255
    x[:, :, 0] = x[:, :1, 0]  # a gray row
    x[:, :, 1, :4] = torch.tensor([1.0, 0.0, 1.0])[:, None]  # pure magenta
    return x


@pytest.mark.parametrize(
    ("op", "ref", "low", "high", "tol"),
    [
        (ops.adjust_brightness, TF.adjust_brightness, 0.2, 1.8, 1e-5),
        (ops.adjust_contrast, TF.adjust_contrast, 0.2, 1.8, 1e-5),
        (ops.adjust_saturation, TF.adjust_saturation, 0.0, 1.8, 1e-5),
        (ops.adjust_hue, TF.adjust_hue, -0.5, 0.5, 1e-3),
    ],
)
def test_colour_ops_match_torchvision(op, ref, low, high, tol):
    x = _colour_images()
    factors = low + (high - low) * torch.rand(len(x), generator=_gen(6))
    out = op(x, factors)
    expected = torch.stack([ref(img, float(f)) for img, f in zip(x, factors, strict=True)])
    torch.testing.assert_close(out, expected, atol=tol, rtol=0)


def test_color_jitter_is_torchvision_ops_in_per_sample_order():
    x = _colour_images(32)
    strengths, p = (0.4, 0.4, 0.2, 0.1), 0.8
    out = ops.color_jitter(x, strengths, p, _gen(7))
    # Replay the documented draws: apply mask, U(0,1) per op, per-sample permutation.
    g = _gen(7)
    apply = torch.rand(32, generator=g) < p
    u = torch.rand(32, 4, generator=g)
    order = torch.rand(32, 4, generator=g).argsort(dim=1)
    refs = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    low = torch.tensor([0.6, 0.6, 0.8, -0.1])
    factors = low + (torch.tensor([1.4, 1.4, 1.2, 0.1]) - low) * u
    for i in range(32):
        img = x[i]
        if apply[i]:
            for k in order[i].tolist():
                img = refs[k](img, float(factors[i, k]))
        torch.testing.assert_close(out[i], img, atol=1e-4, rtol=0)
    assert len({tuple(o) for o in order.tolist()}) > 5  # orders really differ per sample


def test_color_jitter_probability_rate():
    n = 4000
    x = torch.full((n, 3, 2, 2), 0.5)
    x = ops.color_jitter(x, (0.5, 0.0, 0.0, 0.0), 0.8, _gen(8))
    rate = (x[:, 0, 0, 0] != 0.5).float().mean().item()
    assert abs(rate - 0.8) < 4 * math.sqrt(0.8 * 0.2 / n)


def test_grayscale_weights_and_mask():
    x = torch.zeros(2, 3, 2, 2)
    x[:, 0] = 1.0  # pure red
    out = ops.grayscale(x.clone(), torch.tensor([True, False]))
    torch.testing.assert_close(out[0], torch.full((3, 2, 2), 0.2989))
    torch.testing.assert_close(out[1], x[1])
    y = torch.rand(1, 3, 4, 4, generator=_gen())
    gray = ops.grayscale(y.clone(), torch.tensor([True]))
    torch.testing.assert_close(gray[0], TF.rgb_to_grayscale(y[0], 3), atol=1e-6, rtol=0)


def test_solarize_threshold_and_mask():
    x = torch.tensor([0.2, 0.5, 0.7]).view(1, 3, 1, 1).repeat(2, 1, 1, 1)
    out = ops.solarize(x.clone(), torch.tensor([True, False]))
    torch.testing.assert_close(out[0].flatten(), torch.tensor([0.2, 0.5, 0.3]))
    torch.testing.assert_close(out[1], x[1])


# --- blur ----------------------------------------------------------------------------------


def test_blur_kernel_size():
    assert ops.blur_kernel_size(224) == 23
    assert ops.blur_kernel_size(32) == 3
    assert ops.blur_kernel_size(96) == 9


def test_blur_constant_and_delta():
    on = torch.tensor([True, True])
    const = ops.gaussian_blur(torch.full((2, 3, 40, 40), 0.3), torch.tensor([0.5, 2.0]), on, 23)
    torch.testing.assert_close(const, torch.full_like(const, 0.3))
    delta = torch.zeros(2, 3, 41, 41)
    delta[:, :, 20, 20] = 1.0
    sigmas = torch.tensor([1.0, 2.0])
    out = ops.gaussian_blur(delta, sigmas, on, 23)
    t = torch.arange(-11.0, 12.0)
    for i, sigma in enumerate(sigmas.tolist()):
        k = torch.exp(-(t**2) / (2 * sigma**2))
        k = k / k.sum()
        plane = out[i, 1, 9:32, 9:32]
        torch.testing.assert_close(plane, k[:, None] * k[None, :], atol=1e-6, rtol=0)
        assert abs(plane.sum().item() - 1.0) < 1e-5
        spread = (plane.sum(0) * t**2).sum().item()  # variance along x
        assert abs(spread - sigma**2) < 1e-3


def test_blur_matches_torchvision_and_mask():
    x = torch.rand(3, 3, 30, 36, generator=_gen())
    sigmas = torch.tensor([0.3, 1.1, 2.0])
    mask = torch.tensor([True, False, True])
    out = ops.gaussian_blur(x.clone(), sigmas, mask, 9)
    for i in range(3):
        expected = TF.gaussian_blur(x[i], [9, 9], [float(sigmas[i])] * 2) if mask[i] else x[i]
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


# --- recipes and views ---------------------------------------------------------------------


def test_recipes():
    simclr = RECIPES["simclr"](32, (0.2, 1.0), True, CIFAR10_MEAN, CIFAR10_STD)
    assert len(simclr) == 2 and simclr[0] == simclr[1]
    assert simclr[0].jitter == (0.8, 0.8, 0.8, 0.2) and simclr[0].blur_p == 0.5
    assert simclr[0].size == 32 and simclr[0].scale == (0.2, 1.0)
    byol = RECIPES["byol"](224, (0.08, 1.0), False, CIFAR10_MEAN, CIFAR10_STD)
    assert [v.blur_p for v in byol] == [0.0, 0.0] and [v.solarize_p for v in byol] == [0.0, 0.2]
    byol = RECIPES["byol"](224, (0.08, 1.0), True, CIFAR10_MEAN, CIFAR10_STD)
    assert [v.blur_p for v in byol] == [1.0, 0.1]


def test_view_probability_rates():
    n = 4000
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=_gen())
    sizes = torch.tensor([[8, 8]] * n)
    spec = ViewSpec(size=8, jitter_p=0.0, gray_p=0.2, mean=(0.0,) * 3, std=(1.0,) * 3)
    (view,) = make_views(images, sizes, [spec], _gen(9))
    gray = (view.images[:, 0] == view.images[:, 1]).flatten(1).all(1).float().mean().item()
    flips = view.flipped.float().mean().item()
    assert abs(gray - 0.2) < 4 * math.sqrt(0.2 * 0.8 / n)
    assert abs(flips - 0.5) < 4 * math.sqrt(0.25 / n)
    swapped = view.boxes[:, 2] < view.boxes[:, 0]
    assert (swapped <= view.flipped).all() and swapped.float().mean() > 0.45


def test_view_pixels_are_the_crop_of_its_boxes():
    images = torch.randint(0, 256, (12, 3, 24, 24), dtype=torch.uint8, generator=_gen())
    sizes = torch.tensor([[30, 60]] * 6 + [[50, 20]] * 6)  # anisotropically stored sources
    spec = ViewSpec(size=16, jitter_p=0.0, gray_p=0.0, mean=(0.0,) * 3, std=(1.0,) * 3)
    (view,) = make_views(images, sizes, [spec], _gen(2))
    assert view.flipped.any() and not view.flipped.all()
    torch.testing.assert_close(view.images, ops.crop_resize(images, view.boxes, sizes, 16))


def test_ops_leave_their_input_untouched():
    x = torch.rand(8, 3, 12, 12, generator=_gen())
    before = x.clone()
    mask = torch.arange(8) % 2 == 0
    ops.color_jitter(x, (0.8, 0.8, 0.8, 0.2), 1.0, _gen())
    ops.grayscale(x, mask)
    ops.gaussian_blur(x, torch.full((8,), 1.0), mask, 5)
    ops.solarize(x, mask)
    ops.normalize(x, (0.5,) * 3, (0.2,) * 3)
    ops.crop_resize(x, torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 8), torch.tensor([[12, 12]] * 8), 5)
    assert torch.equal(x, before)


def test_make_views_is_deterministic():
    images = torch.randint(0, 256, (6, 3, 20, 24), dtype=torch.uint8, generator=_gen())
    sizes = torch.tensor([[40, 30]] * 6)
    specs = RECIPES["byol"](16, (0.08, 1.0), True, CIFAR10_MEAN, CIFAR10_STD)
    a = make_views(images, sizes, specs, _gen(3))
    b = make_views(images, sizes, specs, _gen(3))
    c = make_views(images, sizes, specs, _gen(4))
    for va, vb in zip(a, b, strict=True):
        assert torch.equal(va.images, vb.images) and torch.equal(va.boxes, vb.boxes)
        assert torch.equal(va.flipped, vb.flipped)
    assert not torch.equal(a[0].boxes, c[0].boxes)


def _read_tar_images(archive: Path, prefix: str, count: int) -> list[Image.Image]:
    if not archive.exists():
        pytest.fail(f"{archive} not available (tests need ../shared/data)")
    images = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(prefix):
                data = tar.extractfile(member).read()
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                if len(images) == count:
                    break
    return images


def test_views_on_real_cifar_images():
    pil = _read_tar_images(DATA / "cifar10.tar.gz", "cifar10/test/", 16)
    images = torch.from_numpy(np.stack([np.asarray(im) for im in pil])).permute(0, 3, 1, 2)
    sizes = torch.tensor([[32, 32]] * len(pil))
    for name in RECIPES:
        specs = RECIPES[name](32, (0.2, 1.0), True, CIFAR10_MEAN, CIFAR10_STD)
        views = make_views(images, sizes, specs, _gen())
        assert len(views) == len(specs) >= 1
        for view in views:
            assert view.images.shape == (16, 3, 32, 32) and view.images.dtype == torch.float32
            assert torch.isfinite(view.images).all()
            assert view.boxes.shape == (16, 4) and view.flipped.dtype == torch.bool
            assert (view.boxes >= 0).all() and (view.boxes <= 1).all()
            assert -1.0 < view.images.mean() < 1.0 and 0.3 < view.images.std() < 2.0
    whole = eval_view(images, 32, CIFAR10_MEAN, CIFAR10_STD)
    mean, std = torch.tensor(CIFAR10_MEAN).view(3, 1, 1), torch.tensor(CIFAR10_STD).view(3, 1, 1)
    torch.testing.assert_close(whole, (images / 255 - mean) / std, atol=1e-5, rtol=0)


def test_eval_view_matches_pil_resize_on_real_camvid_image():
    (pil,) = _read_tar_images(DATA / "camvid-trainval.tar.gz", "camvid/train/", 1)
    assert pil.size == (480, 360)
    images = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None]
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    out = eval_view(images, 224, zero, one)
    ref = np.asarray(pil.resize((224, 224), Image.BILINEAR), dtype=np.float32) / 255
    diff = (out[0].permute(1, 2, 0) - torch.from_numpy(ref)).abs()
    assert diff.max() < 1.5 / 255 and diff.mean() < 0.5 / 255  # PIL rounds to uint8
