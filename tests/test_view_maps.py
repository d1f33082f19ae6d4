"""Per-pixel maps travel with the views (crop, resize by nearest neighbour, flip; no colour), and a
method's own crop condition composes with the run's crop sampler."""

from __future__ import annotations

import pytest
import torch

from selfsup.data import ImageDataset
from selfsup.views.contrastive_crop import ContrastiveCrop
from selfsup.views.recipes import RECIPES, local_views, make_views
from selfsup.views.resampled_crop import ResampledCrop
from selfsup.views.samplers import FixedCenterCrop


def _coordinate_maps(n: int, height: int, width: int) -> torch.Tensor:
    """map[y, x] = y * width + x: every pixel names its own position."""
    return (torch.arange(height)[:, None] * width + torch.arange(width)[None, :]).expand(n, -1, -1).clone()


def _expected_maps(view, sizes: torch.Tensor, stored: tuple[int, int], out: int) -> torch.Tensor:
    """The coordinate map of each view, from its boxes alone: output pixel (i, j) shows the stored
    pixel under the centre of the box's (i, j)-th cell, mirrored when x1 < x0."""
    c = (torch.arange(out, dtype=torch.float64) + 0.5) / out
    maps = []
    for box, (h0, w0) in zip(view.boxes.double(), sizes.double(), strict=True):
        coords = []
        for a, b, original, store in ((box[0], box[2], w0, stored[1]), (box[1], box[3], h0, stored[0])):
            i0, i1 = a * (original - 1), b * (original - 1)
            low, count = torch.minimum(i0, i1), (i1 - i0).abs() + 1  # the box covers pixels low .. low + count - 1
            position = low + count * (1 - c) if i1 < i0 else low + count * c  # mirrored: from the right edge
            coords.append((position * store / original).floor().clamp(0, store - 1).long())
        cols, rows = coords
        maps.append(rows[:, None] * stored[1] + cols[None, :])
    return torch.stack(maps)


@pytest.mark.parametrize(("original", "stored"), [((24, 40), (24, 40)), ((48, 80), (24, 40))])
def test_maps_come_out_of_every_view_as_the_function_of_its_box(original, stored):
    n, gen = 16, torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, *stored), dtype=torch.uint8, generator=gen)
    sizes = torch.tensor(original).repeat(n, 1)
    specs = RECIPES["byol"](16, (0.08, 1.0), True, (0.5,) * 3, (0.25,) * 3)
    specs += local_views(specs[-1], 2, 8, (0.05, 0.4))
    views = make_views(images, sizes, specs, gen, maps=_coordinate_maps(n, *stored))
    assert any(bool(v.flipped.any()) for v in views) and any(bool((~v.flipped).any()) for v in views)
    for view, spec in zip(views, specs, strict=True):
        assert view.maps.shape == (n, spec.size, spec.size) and view.maps.dtype == torch.int64
        assert torch.equal(view.maps, _expected_maps(view, sizes, stored, spec.size))


def test_photometric_ops_leave_the_maps_alone():
    n = 8
    images = torch.randint(0, 256, (n, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    sizes, maps = torch.tensor([20, 20]).repeat(n, 1), _coordinate_maps(n, 20, 20)
    plain = RECIPES["simclr"](12, (0.2, 1.0), False, (0.5,) * 3, (0.25,) * 3)[:1]
    coloured = [type(plain[0])(**{**plain[0].__dict__, "jitter_p": 1.0, "gray_p": 1.0, "solarize_p": 1.0})]
    a = make_views(images, sizes, plain, torch.Generator().manual_seed(3), maps=maps)[0]
    b = make_views(images, sizes, coloured, torch.Generator().manual_seed(3), maps=maps)[0]
    assert torch.equal(a.boxes, b.boxes) and not torch.allclose(a.images, b.images)
    assert torch.equal(a.maps, b.maps)


def test_datasets_hand_their_maps_to_every_batch():
    images = torch.zeros(6, 3, 4, 5, dtype=torch.uint8)
    maps = torch.arange(6)[:, None, None].expand(6, 4, 5).clone()
    data = ImageDataset.from_tensors(images, maps=maps).subset(torch.tensor([5, 1, 3]))
    batch = next(data.batches(3, shuffle=False))
    assert torch.equal(batch.maps[:, 0, 0], torch.tensor([5, 1, 3]))
    from selfsup.data import DataError

    with pytest.raises(DataError, match=r"per-pixel maps of shape \(6, 4, 4\) do not fit 6 images"):
        ImageDataset.from_tensors(images, maps=torch.zeros(6, 4, 4))


def _salient_fraction(boxes: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The salient share of every box (original grid = stored grid here)."""
    return torch.stack([maps[i, t : t + h, left : left + w].float().mean() for i, (left, t, w, h) in
                        enumerate(boxes.tolist())])


def test_a_methods_crop_condition_composes_with_contrastive_crop():
    n, size = 64, 40
    maps = torch.zeros(n, size, size, dtype=torch.uint8)
    maps[:, 2:12, 26:36] = 1  # a salient square near the top right corner: 6% of the image
    sizes = torch.tensor([size, size]).repeat(n, 1)
    contrastive = ContrastiveCrop(n, alpha=0.6)
    contrastive.boxes = torch.tensor([0.0, 0.0, 1.0, 0.5]).repeat(n, 1)  # objects in the left half

    def accept(boxes, sizes, maps):  # MaskContrast's rule
        share = _salient_fraction(boxes, maps)
        return (share > 0.01) & (share < 0.99)

    sampler = ResampledCrop(contrastive, accept, tries=50)
    gen = torch.Generator().manual_seed(0)
    boxes = sampler.sample(sizes, (0.08, 1.0), (3 / 4, 4 / 3), gen, torch.arange(n), maps)
    plain = contrastive.sample(sizes, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0),
                               torch.arange(n), maps)
    assert not bool(accept(plain, sizes, maps).all())  # without the condition some crops miss the square
    assert bool(accept(boxes, sizes, maps).all()) and sampler.rejected == 0
    left, width = boxes[:, 0], boxes[:, 2]
    assert bool((left <= (size * 0.5 - width // 2).clamp(min=0)).all())  # ContrastiveCrop's range still holds
    # a condition nothing meets: every sample keeps its last draw and is counted
    never = ResampledCrop(FixedCenterCrop(), lambda b, s, m: torch.zeros(len(b), dtype=torch.bool), tries=3)
    fixed = never.sample(sizes, (0.5, 0.5), (1.0, 1.0), gen, None, maps)
    assert torch.equal(fixed, FixedCenterCrop().sample(sizes, (0.5, 0.5), (1.0, 1.0), gen, None))
    assert never.rejected == n
