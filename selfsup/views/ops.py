"""Batched image operations with per-sample parameters.

Every function takes float images in [0, 1] shaped (B, 3, H, W) (``crop_resize`` also takes
uint8) and per-sample parameter tensors, runs on the images' device and never modifies its
inputs (it may return the input itself when no sample is touched). Colour operations follow
``torchvision.transforms.v2.functional`` (same formulas, same clamping), so the batched op on
one sample equals torchvision's op with that sample's factor. Operations that touch only some
samples (probability p) reorder the batch so that the subset is a contiguous slice, work on
that slice, and restore the order: two whole-image row gathers instead of a scatter, which is
slow on CPU. The code also avoids other CPU-slow kernels (``torch.where`` on images,
``aminmax``, element gathers, 2-D reflect padding) in favour of plain arithmetic, so the same
code is fast on CPU and GPU.

No host-device synchronisation: the per-sample parameters and index tensors are drawn and
computed on the CPU and copied to the images' device without blocking (``non_blocking``; from
pageable memory the copy is staged before the call returns, so the source may be freed), and
nothing is read back from the device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

# ITU-R BT.601-2 luma weights, as in PIL and torchvision.
LUMA = (0.2989, 0.587, 0.114)


def _per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(B,) factors -> (B, 1, 1, 1) on the images' device and dtype."""
    return values.to(images.device, images.dtype, non_blocking=True).view(-1, 1, 1, 1)


def _constant(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """A small constant on ``like``'s device and dtype, copied there without a blocking copy."""
    return torch.tensor(values, dtype=like.dtype).to(like.device, non_blocking=True)


def _take(images: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """images[order] as one gather of whole-image rows (a fast memcpy path on CPU)."""
    order = order.to(images.device, non_blocking=True)
    return images.reshape(images.shape[0], -1).index_select(0, order).view(-1, *images.shape[1:])


def _on_subset(
    images: torch.Tensor, mask: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``images`` with images[mask] replaced by op(images[mask]) (a new tensor if any)."""
    mask = mask.cpu()
    chosen = mask.nonzero().squeeze(1)
    if chosen.numel() == 0:
        return images
    if chosen.numel() == images.shape[0]:
        return op(images).contiguous()
    order = torch.cat((chosen, (~mask).nonzero().squeeze(1)))
    x = _take(images, order)
    x[: chosen.numel()] = op(x[: chosen.numel()])
    return _take(x, order.argsort())


# --- geometry ------------------------------------------------------------------------------


def _edges(
    c0: torch.Tensor, c1: torch.Tensor, original: torch.Tensor, stored: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised pixel-centre coordinates -> continuous edges in the stored grid.

    The box covers original pixel centres i0..i1 (i = c (N - 1)), i.e. the extent [i0, i1 + 1)
    where pixel i spans [i, i + 1); when i1 < i0 (a mirrored box) the extent runs backwards
    from i0 + 1 to i1. Both edges are then scaled by stored / original.
    """
    i0, i1 = c0 * (original - 1), c1 * (original - 1)
    half = torch.where(i1 >= i0, 0.5, -0.5)
    ratio = stored / original
    return (i0 + 0.5 - half) * ratio, (i1 + 0.5 + half) * ratio


def _mip_level(extent: torch.Tensor, out_size: int, stored: int) -> torch.Tensor:
    """Pooling level per sample: 2**level stored pixels per output pixel, rounded in log2."""
    step = extent.abs() / out_size
    level = torch.floor(torch.log2(step.clamp(min=1e-6)) + 0.5)
    return level.clamp(0, math.floor(math.log2(stored))).to(torch.int64)


def crop_resize(
    images: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor, out_size: int
) -> torch.Tensor:
    """Crop each image's box and resize it to ``out_size`` x ``out_size``.

    images: uint8 (B, 3, H, W) or float in [0, 1], every image stored at a common H x W.
    boxes: float (B, 4) normalised (x0, y0, x1, y1) in pixel-centre units of each image's
        ORIGINAL grid (see ``View``): the box covers original pixels left..left+w-1, the
        continuous extent [left, left + w), rescaled to the stored H x W. A box with x1 < x0
        (a flipped view) gives the mirrored crop, i.e. the output flipped along the width.
    sizes: int (B, 2) original (height, width).
    Resampling: bilinear (``grid_sample``, pixel centres, border clamp) from a box-filtered
    pyramid level: for a footprint of s stored pixels per output pixel along an axis, that
    axis is first averaged over 2**round(log2 s) pixels (area averaging; exact for
    power-of-two factors), so downscaling does not alias. Per-axis levels, so anisotropic
    scalings are filtered per axis. Geometry is computed on the CPU (boxes come from there).
    Returns float (B, 3, out_size, out_size) in [0, 1].
    """
    n, _, height, width = images.shape
    boxes = boxes.detach().to("cpu", torch.float64)
    sizes = sizes.to("cpu", torch.float64)
    x_start, x_end = _edges(boxes[:, 0], boxes[:, 2], sizes[:, 1], width)
    y_start, y_end = _edges(boxes[:, 1], boxes[:, 3], sizes[:, 0], height)
    level_x = _mip_level(x_end - x_start, out_size, width)
    level_y = _mip_level(y_end - y_start, out_size, height)
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) / out_size
    # grid_sample (align_corners=False) maps a continuous coordinate u in [0, N] to 2u/N - 1.
    grid_x = _grid_axis(x_start, x_end, level_x, width, centres)
    grid_y = _grid_axis(y_start, y_end, level_y, height, centres)
    keys = level_y * 64 + level_x
    order = keys.argsort(stable=True)
    parts = []
    for key in keys.unique().tolist():
        chosen = (keys == key).nonzero().squeeze(1)
        source = images if chosen.numel() == n else _take(images, chosen)
        source = _box_pool(source, *divmod(key, 64))
        gx = grid_x[chosen].to(images.device, torch.float32, non_blocking=True)
        gy = grid_y[chosen].to(images.device, torch.float32, non_blocking=True)
        shape = (chosen.numel(), out_size, out_size)
        grid = torch.stack((gx[:, None, :].expand(shape), gy[:, :, None].expand(shape)), dim=-1)
        parts.append(F.grid_sample(source, grid, "bilinear", "border", align_corners=False))
    out = parts[0] if len(parts) == 1 else _take(torch.cat(parts), order.argsort())
    return out.mul_(1.0 / 255.0) if images.dtype == torch.uint8 else out


def crop_resize_nearest(
    maps: torch.Tensor, boxes: torch.Tensor, sizes: torch.Tensor, out_size: int
) -> torch.Tensor:
    """Per-pixel maps under the same crop, resize and flip as :func:`crop_resize`, without blending.

    maps: (B, H, W) of any dtype (masks, label maps), stored at the images' common H x W.
    Every output pixel takes the value of the stored pixel that contains its centre's position
    in the box (the geometry of ``crop_resize``: the same edges, the same mirroring where
    x1 < x0). Returns (B, out_size, out_size) of the maps' dtype, on their device.
    """
    _, height, width = maps.shape
    boxes = boxes.detach().to("cpu", torch.float64)
    sizes = sizes.to("cpu", torch.float64)
    centres = (torch.arange(out_size, dtype=torch.float64) + 0.5) / out_size
    index = []
    for c0, c1, original, stored in ((boxes[:, 0], boxes[:, 2], sizes[:, 1], width),
                                     (boxes[:, 1], boxes[:, 3], sizes[:, 0], height)):
        start, end = _edges(c0, c1, original, stored)
        position = start[:, None] + (end - start)[:, None] * centres
        index.append(position.floor().clamp(0, stored - 1).to(torch.int64).to(maps.device, non_blocking=True))
    cols, rows = index
    batch = torch.arange(maps.shape[0], device=maps.device)[:, None, None]
    return maps[batch, rows[:, :, None], cols[:, None, :]]


def _box_pool(images: torch.Tensor, level_y: int, level_x: int) -> torch.Tensor:
    """Float mean over 2**level_y x 2**level_x pixel blocks (trailing odd pixels dropped).

    Built from strided half-size slices, converting uint8 on the fly: much faster on CPU than
    ``avg_pool2d`` and without a full-size float copy of the source.
    """
    if not (level_y or level_x):
        return images.float()
    x = images
    for _ in range(level_y):
        even = x.shape[-2] // 2 * 2
        x = x[..., 0:even:2, :].to(torch.float32, copy=True).add_(x[..., 1:even:2, :])
    for _ in range(level_x):
        even = x.shape[-1] // 2 * 2
        x = x[..., 0:even:2].to(torch.float32, copy=True).add_(x[..., 1:even:2])
    return x.mul_(0.5 ** (level_y + level_x))


def _grid_axis(
    start: torch.Tensor, end: torch.Tensor, level: torch.Tensor, stored: int, centres: torch.Tensor
) -> torch.Tensor:
    """(B, out_size) grid_sample coordinates of the output pixel centres at each sample's level."""
    pooled = stored // 2**level
    u = (start[:, None] + (end - start)[:, None] * centres) / 2.0 ** level[:, None]
    return 2.0 * u / pooled[:, None] - 1.0


# --- colour --------------------------------------------------------------------------------


def _luma(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) grayscale with the ITU-R 601-2 weights."""
    r, g, b = images.unbind(1)
    return r.mul(LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def _blend(images: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """f x + (1 - f) other, clamped to [0, 1] (torchvision's ``_blend``)."""
    return images.mul(f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """f x, clamped to [0, 1]."""
    return images.mul(_per_sample(factors, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the per-image mean of the grayscale image (a weighted mean of channel means)."""
    luma = _constant(LUMA, images)
    mean = (images.mean(dim=(2, 3)) @ luma).view(-1, 1, 1, 1)
    return _blend(images, mean, _per_sample(factors, images))


def adjust_saturation(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image."""
    return _blend(images, _luma(images), _per_sample(factors, images))


def adjust_hue(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by ``factors`` (turns, in [-0.5, 0.5]) in HSV space.

    RGB -> HSV as PIL/torchvision, hue H in sextants: (g - b)/d if max = r, (b - r)/d + 2 if
    max = g, else (r - g)/d + 4, with d = max - min. HSV -> RGB via
    c_n = V - V S clamp(min(k, 4 - k), 0, 1), k = (n + H') mod 6, n = 5, 3, 1 for r, g, b,
    where V = max and V S = d (no division by V). The trapezoid is evaluated periodically as
    clamp(2 - |u - 6 round(u / 6)|, 0, 1) with u = k - 2, so no ``remainder`` is needed.
    """
    r, g, b = images.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    delta = torch.minimum(r, g)
    torch.minimum(delta, b, out=delta)
    torch.sub(maxc, delta, out=delta)
    inv = delta.clamp(min=1e-12).reciprocal_()
    is_r = torch.eq(maxc, r, out=torch.empty_like(maxc))
    is_g = torch.eq(maxc, g, out=torch.empty_like(maxc))
    is_g.addcmul_(is_g, is_r, value=-1.0)  # max = g and max != r
    hue_b = torch.sub(r, g).mul_(inv).add_(4.0)
    hue = torch.sub(g, b).mul_(inv).sub_(hue_b).mul_(is_r).add_(hue_b)
    hue_g = torch.sub(b, r, out=is_r).mul_(inv).add_(2.0).sub_(hue_b).mul_(is_g)
    hue.add_(hue_g)
    offsets = _constant((3.0, 1.0, -1.0), images)
    shift = _per_sample(factors, images) * 6.0 + offsets.view(1, 3, 1, 1)
    u = hue.unsqueeze(1) + shift  # k - 2, (B, 3, H, W)
    turns = torch.mul(u, 1.0 / 6.0).round_()
    u.sub_(turns, alpha=6.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)
    return torch.sub(maxc.unsqueeze(1), u.mul_(delta.unsqueeze(1)), out=u)


JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(
    images: torch.Tensor,
    strengths: tuple[float, float, float, float],
    p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """torchvision's ``RandomApply([ColorJitter(b, c, s, h)], p)`` with per-sample parameters.

    Per sample: applied with probability p; brightness/contrast/saturation factors
    ~ U[max(0, 1 - x), 1 + x], hue shift ~ U[-h, h]; a random order of the four ops (a zero
    strength skips its op). Position by position, each op runs on the subset of samples whose
    permutation puts it there (the batch is re-sorted by that op at each position, so each
    subset is a slice). Random numbers come from ``generator`` (CPU).
    """
    n = images.shape[0]
    apply = torch.rand(n, generator=generator) < p
    uniform = torch.rand(n, 4, generator=generator)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)
    strength = torch.tensor(strengths, dtype=torch.float32)
    low = torch.cat(((1.0 - strength[:3]).clamp(min=0.0), -strength[3:]))
    high = torch.cat((1.0 + strength[:3], strength[3:]))
    factors = low + (high - low) * uniform
    enabled = strength != 0
    todo = torch.where(apply[:, None] & enabled[order], order, len(JITTER_OPS))  # op per position
    if (todo == len(JITTER_OPS)).all():
        return images
    rows = torch.arange(n)  # original sample of each row of x
    x = images
    for position in range(4):
        sort = todo[rows, position].argsort(stable=True)
        x, rows = _take(x, sort), rows[sort]
        counts = torch.bincount(todo[rows, position], minlength=len(JITTER_OPS) + 1).tolist()
        start = 0
        for k, op in enumerate(JITTER_OPS):
            part = slice(start, start + counts[k])
            if counts[k]:
                x[part] = op(x[part], factors[rows[part], k])
            start += counts[k]
    return _take(x, rows.argsort())


def grayscale(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The images where ``mask`` replaced by their 3-channel ITU-R 601-2 luma."""
    return _on_subset(images, mask, lambda x: _luma(x).expand(-1, 3, -1, -1))


def solarize(images: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """x >= threshold -> 1 - x on the images where ``mask``."""
    return _on_subset(images, mask, lambda x: torch.where(x >= threshold, 1.0 - x, x))


# --- blur ----------------------------------------------------------------------------------


def blur_kernel_size(size: int) -> int:
    """Odd kernel of about 10% of the image side (SimCLR, Chen et al., 2020): 23 at 224 px."""
    return int(0.1 * size) // 2 * 2 + 1


def gaussian_kernels(sigmas: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-D Gaussians exp(-t^2 / (2 sigma^2)), t = -k//2..k//2: (B, kernel_size)."""
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, dtype=sigmas.dtype, device=sigmas.device)
    return torch.softmax(-(t[None] ** 2) / (2.0 * sigmas[:, None] ** 2), dim=1)


def _blur(images: torch.Tensor, sigmas: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Separable blur: reflect-pad H, grouped conv along H, reflect-pad W, grouped conv along W."""
    n, c, h, w = images.shape
    kernels = gaussian_kernels(sigmas.to(images.device, images.dtype, non_blocking=True), kernel_size)
    weight = kernels.repeat_interleave(c, dim=0)[:, None, :]  # (n c, 1, k)
    half = kernel_size // 2
    x = F.pad(images.view(1, n * c, h, w), (0, 0, half, half), mode="reflect")
    x = F.conv2d(x, weight[..., None], groups=n * c)
    x = F.pad(x, (half, half, 0, 0), mode="reflect")
    return F.conv2d(x, weight[:, :, None, :], groups=n * c).view(n, c, h, w)


def gaussian_blur(
    images: torch.Tensor, sigmas: torch.Tensor, mask: torch.Tensor, kernel_size: int
) -> torch.Tensor:
    """Blur the images where ``mask`` with their own sigma (B,).

    Same result as torchvision's ``gaussian_blur`` (reflect padding, kernel normalised over
    ``kernel_size`` taps), computed as two grouped 1-D convolutions.
    """
    if kernel_size < 3:
        return images
    mask = mask.cpu()
    return _on_subset(images, mask, lambda x: _blur(x, sigmas.cpu()[mask], kernel_size))


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """(x - mean) / std per channel."""
    m = _constant(tuple(mean), images).view(1, -1, 1, 1)
    s = _constant(tuple(std), images).view(1, -1, 1, 1)
    return images.sub(m).div_(s)
