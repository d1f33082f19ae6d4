"""Geometry of the classic pretext tasks: rotations, tile grids with a gap and jitter, per-tile
normalisation and the chromatic-aberration measures (channel jitter, colour dropping).

Every function works on a whole batch at once; random parameters come from a CPU
``torch.Generator`` (as the view recipes: deterministic, independent of the device).
"""

from __future__ import annotations

from dataclasses import dataclass

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
