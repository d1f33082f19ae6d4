"""A run's crop sampler, pictured: training images with the crops it samples, beside random crops.

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
from PIL import Image

from selfsup.config import build_config
from selfsup.core.errors import ConfigError
from selfsup.data import cap, open_dataset
from selfsup.methods import METHODS
from selfsup.train import checkpoint as ckpt
from selfsup.train.runs import checkpoint_file, load_run
from selfsup.views.config import ViewsConfig
from selfsup.views.contrastive_crop import ContrastiveCrop
from selfsup.views.preview import draw_grid
from selfsup.views.recipes import ViewSpec
from selfsup.views.samplers import CropSampler, FixedCenterCrop


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
    grid = preview_image(crop, checkpoint, data, n, crops, seed, device)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def preview_image(
    crop: str,
    checkpoint: str | Path | None = None,
    data: str | None = None,
    n: int = 8,
    crops: int = 4,
    seed: int = 0,
    device: str = "cpu",
) -> Image.Image:
    """The picture of :func:`write_preview`."""
    if crop == "contrastive" and checkpoint is None:
        raise ConfigError("views preview --crop contrastive needs --checkpoint (the encoder that localises objects)")
    state = ckpt.load(checkpoint_file(checkpoint)) if checkpoint else None
    if state is not None:
        cfg = build_config(state["config"], METHODS)
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
    return draw_grid(batch.images, batch.sizes, columns, views.scale, ViewSpec().ratio, crops, seed)
