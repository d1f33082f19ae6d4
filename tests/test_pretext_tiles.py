"""The tile-based pretext tasks: the jigsaw permutation set against brute force, tile geometry
(gap, jitter and channel shifts inside the image), labels on synthetic images whose answer is
known, the counting and clustering losses by hand, Jigsaw Clustering's montages, and a short
run of every method on real CIFAR-10 images with a falling loss."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from test_pretext import TinyNet

from selfsup.config import build_config, find_config, load_yaml
from selfsup.core.errors import ConfigError
from selfsup.losses.tiles import cluster_contrastive, counting_loss
from selfsup.methods import METHODS, RunInfo
from selfsup.methods.context import NEIGHBOURS
from selfsup.methods.pretext import pretext_accuracy
from selfsup.views.tiles import (
    TileGrid,
    cut_tiles,
    drop_colors,
    hamming_permutations,
    montage,
    normalize_tiles,
    random_downsample,
    shuffle_across_images,
    split_tiles,
)
from selfsup.views.view import View


def view(images: torch.Tensor) -> list[View]:
    n = len(images)
    return [View(images, torch.zeros(n, 4), torch.zeros(n, dtype=torch.bool))]


def min_distance(perms) -> int:
    return min(sum(a != b for a, b in zip(p, q, strict=True)) for p, q in itertools.combinations(perms, 2))


# ---------------------------------------------------------------- permutation set


def test_permutation_set_reaches_the_brute_force_optimum_on_four_tiles():
    all_perms = list(itertools.permutations(range(4)))
    for count in (2, 3, 4):
        best = max(min_distance(s) for s in itertools.combinations(all_perms, count))
        perms = hamming_permutations(4, count)
        assert min_distance(perms.tolist()) == best == 4


def test_permutation_set_of_nine_tiles_meets_the_known_bounds():
    # 9 permutations of 9 that differ everywhere are the rows of a Latin square (distance 9);
    # a 10th must repeat some row's first element, so 8 is the best possible for 10
    perms = hamming_permutations(9, 10)
    assert min_distance(perms[:9].tolist()) == 9
    assert min_distance(perms.tolist()) == 8
    assert sorted(map(sorted, perms.tolist())) == [list(range(9))] * 10  # all are permutations
    big = hamming_permutations(9, 100, seed=3)
    assert len({tuple(p) for p in big.tolist()}) == 100
    assert torch.equal(big, hamming_permutations(9, 100, seed=3))
    assert not torch.equal(big[0], hamming_permutations(9, 100, seed=4)[0])
    with pytest.raises(ConfigError, match="1 to 24"):
        hamming_permutations(4, 25)


# ---------------------------------------------------------------- geometry


def test_cut_tiles_shift_channels_within_bounds_and_stay_inside():
    grid = TileGrid(size=32, grid=3, tile=8, gap=2, jitter=1, margin=1)  # the jigsaw preset: extent 32
    assert grid.extent == 32
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coords = (yy * w + xx).float()
    img = torch.stack([coords, coords + 10_000, coords + 20_000])[None].repeat(200, 1, 1, 1)
    tiles = cut_tiles(img, grid, torch.Generator().manual_seed(0))  # (200, 9, 3, 8, 8)
    base = grid.base()
    flat = tiles[..., 0, 0] - torch.tensor([0, 10_000, 20_000])  # top-left pixel of every channel
    y0, x0 = flat.div(w, rounding_mode="floor"), flat % w
    # each channel of each tile is a window of the image (no wrap-around, inside the image)
    assert torch.equal(tiles[..., 7, 7] - tiles[..., 0, 0], torch.full_like(flat, 7 * w + 7))
    dy, dx = y0 - base[None, :, None, 0], x0 - base[None, :, None, 1]
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # jitter 1 + channel shift 1
    shift = dy - dy.float().mean(dim=2, keepdim=True)
    assert shift.abs().max() > 0  # channels do move independently
    assert y0.min() == 0 and (y0 + 8).max() == 32 and x0.min() == 0 and (x0 + 8).max() == 32
    up = cut_tiles(img[:2], grid, torch.Generator().manual_seed(0), size=16)
    assert up.shape == (2, 9, 3, 16, 16)


def test_presets_build_and_a_grid_too_big_for_the_view_is_refused():
    for name in ("jigsaw", "context", "counting", "jigclu"):
        cfg = build_config(load_yaml(find_config(f"cifar10/{name}")), METHODS)
        assert cfg.method == name and cfg.views.size == 32
        if name in ("jigsaw", "context"):
            raw = {"method": name, "views": {"size": 32}, name: {"tile": 9}}
            with pytest.raises(ConfigError, match="more than the 32-pixel image"):
                build_config(raw, METHODS)


def test_per_tile_normalisation_and_colour_dropping():
    tiles = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 4 + 2
    norm = normalize_tiles(tiles)
    torch.testing.assert_close(norm.mean(dim=(-2, -1)), torch.zeros(5, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.std(dim=(-2, -1)), torch.ones(5, 3), atol=1e-4, rtol=0)
    dropped = drop_colors(tiles, torch.Generator().manual_seed(1))
    kept = (dropped == tiles).all(dim=(-2, -1))  # (5, 3)
    assert kept.sum(dim=1).tolist() == [1] * 5
    noise = dropped[~kept]
    assert noise.std() < 0.2 and noise.abs().max() < 1  # 1/100 of a std-4 channel


# ---------------------------------------------------------------- labels on synthetic images


def test_jigsaw_puzzle_slots_show_the_tiles_its_label_names():
    cls = METHODS["jigsaw"]
    cfg = cls.Config(permutations=10, jitter=0, channel_shift=0, tile_size=0)
    method = cls(TinyNet(), cfg, RunInfo())
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    seen = {}
    method.head.forward = lambda backbone, tiles: seen.setdefault("puzzles", tiles).new_zeros(len(tiles), 10)
    _, labels = method.pretext(view(images))
    corners = TileGrid(size=32, tile=8, gap=2, jitter=0).base()  # no jitter: fixed tile positions
    for b in range(6):
        perm = method.perms[labels[b]]
        for slot in range(9):
            y, x = corners[perm[slot]].tolist()
            expected = normalize_tiles(images[b, :, y:y + 8, x:x + 8])
            torch.testing.assert_close(seen["puzzles"][b, slot], expected)


def test_context_pairs_centre_with_the_neighbour_its_label_names():
    cls = METHODS["context"]
    method = cls(TinyNet(), cls.Config(jitter=0, colour="none", tile_size=0), RunInfo())
    cells = torch.tensor([0] * 11 + [1] * 11 + [2] * 10)  # tiles at 1..9, 12..20, 23..31
    image = (cells[:, None] * 3 + cells[None, :]).float()  # the grid cell's index, row by row
    images = image.expand(4, 3, 32, 32)
    method.head.embed = lambda backbone, tiles: tiles.mean(dim=(-2, -1))  # code = the cell index
    seen = {}
    method.head.classify = lambda pairs: seen.setdefault("pairs", pairs).new_zeros(len(pairs), 8)
    _, labels = method.pretext(view(images))
    pairs = seen["pairs"]  # (4 * 8, 2, 3)
    assert torch.all(pairs[:, 0] == 4)
    assert torch.equal(pairs[:, 1, 0], torch.tensor(NEIGHBOURS, dtype=torch.float)[labels])
    assert labels.tolist() == list(range(8)) * 4


def test_counting_tiles_and_downsampling():
    x = torch.arange(2 * 3 * 4 * 4.0).view(2, 3, 4, 4)
    tiles = split_tiles(x, 2)
    assert torch.equal(tiles[0, 1, 0], x[0, 0, :2, 2:])  # quadrants row by row
    assert torch.equal(montage(tiles, 2), x)
    const = torch.full((64, 3, 32, 32), 0.7)
    down = random_downsample(const, 16, torch.Generator().manual_seed(0))
    assert down.shape == (64, 3, 16, 16)
    torch.testing.assert_close(down, torch.full_like(down, 0.7))
    ramp = torch.linspace(0, 1, 32).expand(64, 3, 32, 32)
    down = random_downsample(ramp, 16, torch.Generator().manual_seed(0))
    area = F.interpolate(ramp[:1], size=16, mode="area")[0]
    uses_area = (down - area).abs().amax(dim=(1, 2, 3)) < 1e-6
    assert 0 < uses_area.sum() < 64  # area for some images, other filters for the rest


def test_counting_loss_by_hand():
    down = torch.tensor([[1.0, 0.0], [2.0, 2.0]])
    tiles_sum = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    other = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    # image 1: |(1, 0)|^2 = 1, other at distance^2 1 < M = 2 -> + 1; image 2: 1, other at 16 -> 0
    assert counting_loss(down, tiles_sum, other, margin=2.0).item() == pytest.approx((2 + 1) / 2)
    # phi = 0 is no solution: the margin term is M
    zero = torch.zeros(3, 4)
    assert counting_loss(zero, zero, zero, margin=10.0).item() == 10.0


def test_cluster_contrastive_by_hand():
    z = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    groups = torch.tensor([0, 0, 1])
    # anchors 0 and 1: positive at cosine 1, the other tile at cosine 0; anchor 2 has no positive
    expected = -math.log(math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 1))
    assert cluster_contrastive(z, groups, temperature=0.5).item() == pytest.approx(expected)


class PixelNet(torch.nn.Module):
    """A "backbone" whose feature map is its input: slot features are the montage's pixels."""

    out_dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.scale, x.mean(dim=(2, 3))


def test_jigclu_montages_mix_images_and_targets_name_source_and_position():
    b, g = 6, 2
    # image i has value 10 * i + position in each of its 2 x 2 tiles (16 px each)
    codes = (10 * torch.arange(b)[:, None] + torch.arange(g * g)[None]).float()  # (b, 4)
    images = montage(codes[:, :, None, None, None].expand(b, 4, 3, 16, 16), g)
    shuffled, source, position = shuffle_across_images(split_tiles(images, g), torch.Generator().manual_seed(0))
    assert torch.equal(shuffled[..., 0, 0, 0], 10 * source.float() + position)
    assert sorted((10 * source + position).flatten().tolist()) == sorted(codes.flatten().long().tolist())
    assert (source != source[:, :1]).any()  # montages mix images
    cls = METHODS["jigclu"]
    method = cls(PixelNet(), cls.Config(), RunInfo())
    cells, src, pos = method.tiles(images)
    assert torch.equal(cells[:, 0], 10 * src.float() + pos)
    assert method(view(images)).loss.isfinite()
    small = cls(TinyNet(), cls.Config(grid=3), RunInfo())  # TinyNet: 8 x 8 map of 32 px, not 3 x 3
    with pytest.raises(ValueError, match=r"jigclu\.tile_size"):
        small.pretext(view(images))


@pytest.mark.parametrize("name, options", [
    ("jigsaw", {"permutations": 100, "tile_dim": 64, "hidden": 128}),
    ("context", {"tile_dim": 64, "hidden": 128}),
])
def test_a_puzzle_whose_only_variation_is_the_label_is_learned(name, options):
    """End-to-end wiring: every image is the same fixed texture plus a little noise, so the tiles'
    arrangement (jigsaw) or the neighbour's position (context) is all that varies, and a correctly
    wired task (tiles, labels, head, loss) solves it (chance: 1/100 and 1/8; measured 1.00 and
    1.00 by step 150). Each step's accuracy is on fresh images, before the step trains on them
    (train-mode BN: with Adam at this rate the running statistics lag the weights). A label that
    did not name the arrangement would stay at chance."""
    torch.manual_seed(0)
    texture = torch.randn(1, 3, 32, 32)
    cls = METHODS[name]
    method = cls(TinyNet(), cls.Config(**options), RunInfo())
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    accuracies = []
    for _ in range(150):
        out = method(view(texture + 0.3 * torch.randn(32, 3, 32, 32)))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        accuracies.append(float(out.logs["pretext_acc"]))
    assert accuracies[0] < 0.3
    assert sum(accuracies[-5:]) / 5 > 0.9, accuracies[-5:]


# ---------------------------------------------------------------- learning on real CIFAR-10


@pytest.mark.parametrize("name, options", [
    ("jigsaw", {"permutations": 8, "tile_dim": 64, "hidden": 128}),
    ("context", {"tile_dim": 64, "hidden": 128}),
    ("counting", {"counts": 64, "hidden": 128}),
    ("jigclu", {"hidden": 64, "proj_dim": 32}),
])
def test_short_cifar_run_lowers_the_loss(cifar_images, name, options):
    torch.manual_seed(0)
    cls = METHODS[name]
    method = cls(TinyNet(), cls.Config(**options), RunInfo())
    opt = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    train = view(cifar_images[:64])
    losses = []
    for _ in range(20):
        out = method(train)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert sum(losses[-4:]) / 4 < 0.98 * sum(losses[:4]) / 4, losses
    assert 0.0 <= pretext_accuracy(method, view(cifar_images[64:])) <= 1.0
