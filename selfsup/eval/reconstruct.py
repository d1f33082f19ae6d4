"""Reconstructions of a masked-image-modelling run (MAE, SimMIM, CAE): pictures and errors.

For held-out images (the evaluation view: whole image, resized, normalised) masked with the
run's own masking (kind and count; a fixed seed, not the run's stream):
- ``masked_mse``: the method's prediction of the masked patches against its own target
  space (per-patch normalised pixels with ``norm_pix_loss``, else the normalised pixels), mean
  squared error over the masked patches (MAE's loss; SimMIM trains with L1 but is scored the same
  way here). ``zero_prediction_mse`` is what predicting 0 scores (1 for normalised patches).
- CAE only, the seed's key check: ``decoder_on_encoder_mse``, ALL patches through the encoder
  (no mask), the regressor skipped and the decoder run on the encoder's own latents; the error
  over every patch. With the alignment loss the regressor's outputs live in the encoder's space
  and the decoder can read the encoder; without it (``cae.alignment_weight=0``) it cannot.

The picture has one row per image: the masked input (masked patches grey), the prediction (masked
patches predicted, visible ones copied), the original; for CAE also the decoder on the encoder's
latents (every patch predicted). Per-patch normalised predictions are shown with the true
patch's mean and variance, as MAE's visualisation does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from selfsup.core.errors import ConfigError
from selfsup.data import DataError, ImageDataset, cap, open_dataset
from selfsup.losses.mim import masked_patch_mse, patchify, pixel_targets, unpatchify
from selfsup.methods.cae import CAE
from selfsup.methods.masked import MaskedImageModel
from selfsup.train.runs import load_run
from selfsup.views.masking import mask_count
from selfsup.views.recipes import eval_view

GREY = 0.5  # masked patches in the "masked input" panel


@torch.no_grad()
def reconstruction_errors(method: MaskedImageModel, images: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Sums (not means) over the batch: masked-patch MSE of the prediction, of predicting 0, and
    for CAE of the decoder on the encoder's latents over all patches; and the batch size."""
    norm_pix = bool(getattr(method.cfg, "norm_pix_loss", False))
    target = pixel_targets(images, method.patch, norm_pix)
    n = images.shape[0]
    out = {"masked_mse": masked_patch_mse(method.predict_patches(images, mask), target, mask).item() * n,
           "zero_prediction_mse": masked_patch_mse(torch.zeros_like(target), target, mask).item() * n}
    if isinstance(method, CAE):
        every = torch.ones_like(mask)
        out["decoder_on_encoder_mse"] = masked_patch_mse(method.decode_encoder(images), target, every).item() * n
    return out


def _shown(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (images.float().cpu() * std + mean).clamp(0, 1)


def reconstruction_figure(panels: dict[str, torch.Tensor]) -> Figure:
    """One row per image, one column per panel (float (N, 3, H, W) in [0, 1])."""
    titles = list(panels)
    n = next(iter(panels.values())).shape[0]
    fig = Figure(figsize=(1.3 * len(titles) + 0.2, 1.3 * n + 0.3), layout="constrained")
    axes = fig.subplots(n, len(titles), squeeze=False)
    for j, title in enumerate(titles):
        axes[0, j].set_title(title, fontsize=7)
        for i in range(n):
            axes[i, j].imshow(panels[title][i].permute(1, 2, 0).numpy(), interpolation="nearest")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


@torch.no_grad()
def reconstruction_panels(method: MaskedImageModel, images: torch.Tensor, mask: torch.Tensor,
                          mean: tuple[float, float, float], std: tuple[float, float, float]) -> dict[str, torch.Tensor]:
    """The picture's columns for normalised ``images`` (B, 3, H, W) masked by ``mask`` (B, h * w)."""
    m, s = (torch.tensor(v).view(1, 3, 1, 1) for v in (mean, std))
    p = method.patch
    grey = (GREY - m) / s  # the grey of the masked patches, in the normalised space
    patches = patchify(images.float(), p)
    grey_patches = patchify(grey.to(images).expand_as(images).float(), p)
    masked_input = unpatchify(torch.where(mask[..., None], grey_patches, patches), p, images.shape[-2:])
    panels = {"masked input": _shown(masked_input, m, s),
              "prediction (visible copied)": _shown(method.reconstruct(images, mask), m, s),
              "original": _shown(images, m, s)}
    if isinstance(method, CAE):
        every = torch.ones_like(mask)
        panels["decoder on encoder"] = _shown(
            method.reconstruct(images, every, method.decode_encoder(images)), m, s)
    return panels


def reconstruction_report(
    method: MaskedImageModel,
    dataset: ImageDataset,
    size: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    picture_images: int = 8,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[dict[str, Any], Figure]:
    """Errors averaged over ``dataset`` (see the module docstring) and the picture of
    ``picture_images`` of its images, evenly spaced (folders are class-sorted: several classes)."""
    if getattr(method, "tokenizer", None) is not None:
        raise ConfigError("reconstruct: the method predicts tokenizer ids; there are no pixels to compare")
    was_training = method.training
    method.to(device).eval()
    gen = torch.Generator().manual_seed(seed)
    sums: dict[str, float] = {}
    for batch in dataset.batches(batch_size, shuffle=False, drop_last=False):
        x = eval_view(batch.images.to(device), size, mean, std)
        for k, value in reconstruction_errors(method, x, method.draw_masks(x, gen)).items():
            sums[k] = sums.get(k, 0.0) + value
    spaced = torch.linspace(0, len(dataset) - 1, min(picture_images, len(dataset))).round().long().unique()
    shown = dataset.subset(spaced)
    x = eval_view(next(shown.batches(len(shown), shuffle=False, drop_last=False)).images.to(device), size, mean, std)
    figure = reconstruction_figure(reconstruction_panels(method, x, method.draw_masks(x, gen), mean, std))
    method.train(was_training)
    grid, c = method.grid(x), method.cfg
    result: dict[str, Any] = {
        "images": len(dataset), "size": size,
        "masking": {"kind": c.masking, "masked": mask_count(grid[0] * grid[1], c.mask_ratio, c.mask_count),
                    "patches": grid[0] * grid[1]},
        "target": "per-patch normalised pixels" if getattr(c, "norm_pix_loss", False) else "normalised pixels",
        **{k: total / len(dataset) for k, total in sums.items()},
    }
    if isinstance(method, CAE):
        result["alignment_weight"] = c.alignment_weight
    return result, figure


def reconstruct_eval(
    checkpoint: str | Path,
    data: str | None = None,
    split: str = "test",
    max_images: int = 512,
    picture_images: int = 8,
    size: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    random_init: bool = False,
) -> tuple[dict[str, Any], Figure]:
    """:func:`reconstruction_report` of a MIM run on ``max_images`` images of ``split`` (0 = all;
    ``data``: default the run's own)."""
    cfg, method = load_run(checkpoint, random_init=random_init)
    if not isinstance(method, MaskedImageModel):
        raise ConfigError(f"reconstruct: {checkpoint} is a {cfg.method} run; reconstructions need a masked image "
                          "model (mae, simmim, cae)")
    path = data or cfg.data.path
    splits = open_dataset(path, load_size=cfg.data.load_size)
    dataset = splits.test if split == "test" else splits.train
    if dataset is None:
        raise DataError(f"{path}: no held-out split (a test/ or val/ folder); use --split train")
    v = cfg.views
    result, figure = reconstruction_report(method, cap(dataset, max_images, seed), size or v.size, v.mean, v.std,
                                           picture_images, batch_size, device, seed)
    return {"checkpoint": str(checkpoint), "random_init": random_init, "method": cfg.method, "split": split,
            **result}, figure
