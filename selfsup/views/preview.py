"""Pictures of a crop sampler: training images with the crops it samples, beside random crops.

``selfsup views preview --crop contrastive --checkpoint RUN`` draws, for ``n`` training
images, the ContrastiveCrop object box (thick red) and several sampled crops (thin,
coloured) in one column and random-resized crops of the same images in the next. The boxes
are the run's stored ones (its training state) when it trained with ContrastiveCrop on the
same data, else they are localised now with the checkpoint's encoder (``views.crop_threshold``
of the run). ``--crop random`` needs no checkpoint; ``--crop fixed-center`` shows the
deterministic centre crop. Crop scale, alpha, size and normalisation come from the run's
config (library defaults without a checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from selfsup.config import ConfigError, ViewsConfig, build_config
from selfsup.data import open_dataset
from selfsup.runs import checkpoint_file, load_run
from selfsup.train import checkpoint as ckpt
from selfsup.train.trainer import cap
from selfsup.views.boxes import sample_pixel_boxes
from selfsup.views.contrastive_crop import ContrastiveCrop, CropSampler, FixedCenterCrop
from selfsup.views.recipes import ViewSpec

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


def write_preview(
    crop: str,
    out: str | Path,
    checkpoint: str | None = None,
    data: str | None = None,
    n: int = 8,
    crops: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> Path:
    """Draw ``n`` training images (a random choice, fixed by ``seed``) and write a PNG."""
    if crop == "contrastive" and checkpoint is None:
        raise ConfigError("views preview --crop contrastive needs --checkpoint (the encoder that localises objects)")
    state = ckpt.load(checkpoint_file(checkpoint)) if checkpoint else None
    if state is not None:
        cfg = build_config(state["config"])
        views, path = cfg.views, data or cfg.data.path
        train = cap(open_dataset(path, load_size=cfg.data.load_size).train, cfg.data.max_images, cfg.train.seed)
    elif data:
        views, path = ViewsConfig(), data
        train = open_dataset(path).train
    else:
        raise ConfigError("views preview needs --data (or a --checkpoint whose run names its data)")
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[: max(n, 1)].sort().values
    images = train.subset(chosen)
    batch = next(images.batches(len(images), shuffle=False, drop_last=False))
    columns: list[tuple[str, CropSampler | None]] = [("random", None)]
    if crop == "fixed-center":
        columns.insert(0, ("fixed-center", FixedCenterCrop()))
    elif crop == "contrastive":
        sampler = ContrastiveCrop(len(images), views.crop_alpha, views.crop_threshold, size=views.size,
                                  mean=views.mean, std=views.std)
        stored = state.get("crop", {}).get("boxes")
        if stored is not None and len(stored) == len(train) and path == cfg.data.path:
            sampler.boxes, source = stored[chosen].float(), "stored boxes"
        else:
            backbone = load_run(checkpoint)[1].backbone.to(device)
            sampler.update(backbone, images, torch.device(device))
            source = f"boxes now, k={views.crop_threshold}"
        columns.insert(0, (f"contrastive a={views.crop_alpha}, {source}", sampler))
    grid = draw_grid(batch.images, batch.sizes, columns, views.scale, ViewSpec().ratio, crops, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out
