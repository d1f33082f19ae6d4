"""Geometry of the classic pretext tasks: rotations, tile grids with a gap and jitter, the
jigsaw's permutation set, per-tile normalisation, the chromatic-aberration measures (channel
jitter, colour dropping), counting's downsampling and Jigsaw Clustering's montages.

Every function works on a whole batch at once; random parameters come from a CPU
``torch.Generator`` (as the view recipes: deterministic, independent of the device).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.core.errors import ConfigError


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RotNet's input (Gidaris et al., 2018): every image at 0, 90, 180 and 270 degrees
    (counter-clockwise), ``(4B, C, H, W)`` in that order (all B images at 0 degrees first),
    and the labels ``(4B,)``: 0, 1, 2, 3 = the number of quarter turns."""
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


@dataclass(frozen=True)
class TileGrid:
    """A ``grid`` x ``grid`` layout of square tiles of ``tile`` pixels in an image of ``size``.

    Tile centres are ``tile + gap`` apart (so neighbouring tiles are ``gap`` pixels apart before
    jitter) and the layout is centred in the image; each tile then moves by an independent
    integer offset in ``[-jitter, jitter]`` on each axis (Doersch et al.'s and Noroozi & Favaro's
    jitter against the shortcut of matching edges and lines across tiles). ``margin`` more pixels
    are kept free on every side of each tile for per-channel shifts (:func:`extract_tiles`).
    Tiles are numbered row by row.
    """

    size: int
    grid: int = 3
    tile: int = 64
    gap: int = 11
    jitter: int = 5
    margin: int = 0

    def __post_init__(self) -> None:
        if min(self.grid, self.tile) < 1 or min(self.gap, self.jitter, self.margin) < 0:
            raise ConfigError(f"tile grid needs grid, tile >= 1 and gap, jitter, margin >= 0, got {self}")
        if self.extent > self.size:
            raise ConfigError(
                f"a {self.grid}x{self.grid} grid of {self.tile}-pixel tiles with gap {self.gap}, jitter "
                f"{self.jitter} and channel shift {self.margin} spans {self.extent} pixels, more than the "
                f"{self.size}-pixel image"
            )

    @property
    def extent(self) -> int:
        """Pixels the layout needs on each axis, jitter and channel shifts included."""
        return self.grid * self.tile + (self.grid - 1) * self.gap + 2 * (self.jitter + self.margin)

    def base(self) -> torch.Tensor:
        """(grid * grid, 2) int64 top-left (y, x) of every tile before jitter."""
        start = (self.size - self.extent) // 2 + self.jitter + self.margin
        steps = start + torch.arange(self.grid) * (self.tile + self.gap)
        ys, xs = torch.meshgrid(steps, steps, indexing="ij")
        return torch.stack([ys.flatten(), xs.flatten()], dim=1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, grid * grid, 2) int64 jittered top-left (y, x) of every tile of n images."""
        offsets = torch.randint(-self.jitter, self.jitter + 1, (n, self.grid**2, 2), generator=generator)
        return self.base() + offsets


def extract_tiles(
    images: torch.Tensor, corners: torch.Tensor, tile: int, channel_shift: torch.Tensor | None = None
) -> torch.Tensor:
    """Cut tiles out of a batch: ``(B, T, C, tile, tile)``.

    images: (B, C, H, W). corners: (B, T, 2) int64 top-left (y, x) of each tile.
    channel_shift: optional (B, T, C, 2) int64 per-channel offsets (y, x) added to a tile's
        corner for that channel only (Noroozi & Favaro's colour-channel jitter against
        chromatic aberration); the caller keeps every shifted tile inside the image.
    """
    b, c = images.shape[:2]
    t = corners.shape[1]
    corners = corners.to(images.device)
    per_channel = corners[:, :, None, :].expand(b, t, c, 2)
    if channel_shift is not None:
        per_channel = per_channel + channel_shift.to(images.device)
    steps = torch.arange(tile, device=images.device)
    ys = (per_channel[..., 0, None] + steps)[..., :, None]  # (B, T, C, tile, 1)
    xs = (per_channel[..., 1, None] + steps)[..., None, :]  # (B, T, C, 1, tile)
    bi = torch.arange(b, device=images.device).view(b, 1, 1, 1, 1)
    ci = torch.arange(c, device=images.device).view(1, 1, c, 1, 1)
    return images[bi, ci, ys, xs]


def channel_shifts(n: int, tiles: int, channels: int, shift: int, generator: torch.Generator) -> torch.Tensor:
    """(n, tiles, channels, 2) int64 independent offsets in ``[-shift, shift]`` per colour channel."""
    return torch.randint(-shift, shift + 1, (n, tiles, channels, 2), generator=generator)


def normalize_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-tile, per-channel normalisation to zero mean and unit standard deviation over the
    tile's pixels (Noroozi & Favaro: so that the network cannot match tiles by low-level
    statistics such as mean brightness). tiles: (..., C, h, w)."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


def drop_colors(tiles: torch.Tensor, generator: torch.Generator, noise: float = 0.01) -> torch.Tensor:
    """Doersch et al.'s colour dropping against chromatic aberration: in every tile, keep one
    random colour channel and replace the other two by Gaussian noise with ``noise`` times the
    kept channel's standard deviation. tiles: (N, C, h, w)."""
    n, c = tiles.shape[:2]
    kept = torch.randint(0, c, (n,), generator=generator).to(tiles.device)
    keep = F.one_hot(kept, c).to(tiles.dtype)[:, :, None, None]  # (N, C, 1, 1)
    kept_std = (tiles * keep).sum(dim=1, keepdim=True).std(dim=(-2, -1), keepdim=True)
    z = torch.randn(tiles.shape, generator=generator).to(tiles.device, tiles.dtype)
    return tiles * keep + (1 - keep) * z * noise * kept_std


def montage(tiles: torch.Tensor, grid: int) -> torch.Tensor:
    """Tiles back into images: (B, grid * grid, C, h, w) row by row -> (B, C, grid * h, grid * w)."""
    b, _, c, h, w = tiles.shape
    x = tiles.view(b, grid, grid, c, h, w).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, grid * h, grid * w)


def split_tiles(images: torch.Tensor, grid: int) -> torch.Tensor:
    """The inverse of :func:`montage`: (B, C, H, W) -> (B, grid * grid, C, H / grid, W / grid)."""
    b, c, hh, ww = images.shape
    h, w = hh // grid, ww // grid
    x = images[:, :, : grid * h, : grid * w].reshape(b, c, grid, h, grid, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, grid * grid, c, h, w)


def cut_tiles(images: torch.Tensor, grid: TileGrid, generator: torch.Generator, size: int = 0) -> torch.Tensor:
    """Every image's ``grid`` tiles at independently jittered positions, with each colour
    channel shifted by up to ``grid.margin`` pixels (no shift when the margin is 0), resized to
    ``size`` pixels (bilinear; 0 keeps ``grid.tile``): (B, grid * grid, C, s, s)."""
    b, c = images.shape[:2]
    corners = grid.sample(b, generator)
    shift = channel_shifts(b, grid.grid**2, c, grid.margin, generator) if grid.margin else None
    tiles = extract_tiles(images, corners, grid.tile, shift)
    return resize_tiles(tiles, size) if size and size != grid.tile else tiles


def resize_tiles(tiles: torch.Tensor, size: int) -> torch.Tensor:
    """(B, T, C, h, w) -> (B, T, C, size, size), bilinear."""
    b, t = tiles.shape[:2]
    out = F.interpolate(tiles.flatten(0, 1), size=(size, size), mode="bilinear", align_corners=False)
    return out.view(b, t, *out.shape[1:])


def hamming_permutations(tiles: int, count: int, seed: int = 0) -> torch.Tensor:
    """A set of ``count`` permutations of ``tiles`` elements far apart in Hamming distance (the
    number of positions where two permutations differ), chosen greedily (Noroozi & Favaro,
    2016, Algorithm 1): start from a random permutation, then repeatedly add the permutation of
    all ``tiles!`` whose MINIMUM distance to the chosen ones is largest, ties broken by the
    largest total distance, then by the lowest index in lexicographic order. (The paper's
    Algorithm 1 ranks by the total distance alone; the minimum first makes the set's minimal
    distance, the quantity that separates the classes, as large as the greedy order allows.)
    Greedy is optimal for small sets (up to ``tiles`` permutations: the rows of a Latin square,
    distance ``tiles``) but not in general: for 5 permutations of 4 tiles it reaches 2, the
    best set 3.

    Returns (count, tiles) int64; row k is the k-th class: slot i of the puzzle shows tile
    ``row[i]``. ``seed`` picks the first permutation.
    """
    if count > math.factorial(tiles) or count < 1:
        raise ConfigError(f"a permutation set of {tiles} tiles has 1 to {math.factorial(tiles)} members, got {count}")
    pool = np.array(list(itertools.permutations(range(tiles))), dtype=np.uint8).T.copy()  # (tiles, tiles!)
    first = int(torch.randint(pool.shape[1], (1,), generator=torch.Generator().manual_seed(seed)))
    chosen = [first]
    dist = (pool != pool[:, first:first + 1]).sum(axis=0, dtype=np.int64)
    min_dist, total = dist.copy(), dist.copy()
    for _ in range(count - 1):
        k = int((min_dist * (tiles * count + 1) + total).argmax())
        chosen.append(k)
        dist = (pool != pool[:, k:k + 1]).sum(axis=0, dtype=np.int64)
        np.minimum(min_dist, dist, out=min_dist)
        total += dist
    return torch.from_numpy(pool[:, chosen].T.astype(np.int64))


def permute_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """Shuffle every image's tiles: ``out[b, i] = tiles[b, perms[b, i]]``. tiles: (B, T, ...);
    perms: (B, T) int64."""
    return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], perms.to(tiles.device)]


DOWNSAMPLING = ("bilinear", "bicubic", "area")


def random_downsample(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size), every image with one of :data:`DOWNSAMPLING` picked at
    random (antialiased bilinear and bicubic, area averaging): Noroozi et al.'s (2017) measure
    against a counting network that tells downsampled images from tiles by the artefacts of one
    resampling filter."""
    pick = torch.randint(len(DOWNSAMPLING), (images.shape[0],), generator=generator).to(images.device)
    out = torch.zeros(images.shape[0], images.shape[1], size, size, dtype=images.dtype, device=images.device)
    for k, mode in enumerate(DOWNSAMPLING):
        sel = pick == k
        if sel.any():
            x = images[sel]
            if mode == "area":
                out[sel] = F.interpolate(x, size=(size, size), mode="area")
            else:
                out[sel] = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=True)
    return out


def shuffle_across_images(tiles: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Jigsaw Clustering's shuffle (Chen et al., 2021): the B * T tiles of a batch (B, T, C, h, w)
    are put in one random order and dealt back into B puzzles of T slots, so that a puzzle mixes
    tiles of several images. Returns (shuffled (B, T, C, h, w), source (B, T): the image each
    slot's tile comes from, position (B, T): where that tile was in its image)."""
    b, t = tiles.shape[:2]
    order = torch.randperm(b * t, generator=generator).to(tiles.device)
    shuffled = tiles.flatten(0, 1)[order].view_as(tiles)
    return shuffled, (order // t).view(b, t), (order % t).view(b, t)
