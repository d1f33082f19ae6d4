"""Pictures of crop samplers: images with the crops each sampler draws, one column per sampler.

``selfsup.eval.preview.write_preview`` (``selfsup views preview``) draws a run's training
images with it.
"""

from __future__ import annotations

import torch
from PIL import Image, ImageDraw

from selfsup.views.boxes import sample_pixel_boxes
from selfsup.views.contrastive_crop import ContrastiveCrop
from selfsup.views.samplers import CropSampler

CROP_COLOURS = ("#00d0ff", "#ffd000", "#40ff40", "#ff40ff", "#ffffff", "#ff8000")
BOX_COLOUR = "#ff2020"
HEADER = 18


def draw_grid(
    images: torch.Tensor,
    sizes: torch.Tensor,
    columns: list[tuple[str, CropSampler | None]],
    scale: tuple[float, float],
    ratio: tuple[float, float],
    crops: int,
    seed: int = 0,
    cell: int = 200,
) -> Image.Image:
    """One row per image, one column per sampler (None: random-resized crop).

    images: uint8 (N, 3, H, W) as loaded; sizes: (N, 2) original (height, width), where
    crops are sampled (then scaled to the picture). A ContrastiveCrop column also shows its
    box table (row i = image i) in red. ``crops`` crops per image, from a generator seeded
    with ``seed`` per column.
    """
    n, _, height, width = images.shape
    ratio_hw = height / width
    cw, ch = (cell, round(cell * ratio_hw)) if ratio_hw <= 1 else (round(cell / ratio_hw), cell)
    pad = 6
    grid = Image.new("RGB", (len(columns) * (cw + pad) + pad, HEADER + n * (ch + pad) + pad), "#202020")
    draw = ImageDraw.Draw(grid)
    index = torch.arange(n)
    for c, (title, sampler) in enumerate(columns):
        x_off = pad + c * (cw + pad)
        draw.text((x_off, 3), title, fill="#ffffff")
        gen = torch.Generator().manual_seed(seed)
        boxes = [sample_pixel_boxes(sizes, scale, ratio, gen) if sampler is None
                 else sampler.sample(sizes, scale, ratio, gen, index) for _ in range(crops)]
        for i in range(n):
            y_off = HEADER + pad + i * (ch + pad)
            pixels = images[i].permute(1, 2, 0).contiguous().numpy()
            grid.paste(Image.fromarray(pixels).resize((cw, ch), Image.Resampling.BICUBIC), (x_off, y_off))
            sy, sx = ch / float(sizes[i, 0]), cw / float(sizes[i, 1])
            for k, crop in enumerate(boxes):
                left, top, w, h = crop[i].tolist()
                draw.rectangle((x_off + left * sx, y_off + top * sy, x_off + (left + w) * sx - 1,
                                y_off + (top + h) * sy - 1), outline=CROP_COLOURS[k % len(CROP_COLOURS)])
            if isinstance(sampler, ContrastiveCrop):  # y1, x1 = last row / column: draw to its far edge
                y0, x0, y1, x1 = sampler.boxes[i].tolist()
                y1, x1 = min(y1 + 1 / sampler.size, 1.0), min(x1 + 1 / sampler.size, 1.0)
                draw.rectangle((x_off + x0 * cw, y_off + y0 * ch, x_off + x1 * cw, y_off + y1 * ch),
                               outline=BOX_COLOUR, width=3)
    return grid
