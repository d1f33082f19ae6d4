"""Mask proposals for MaskContrast with no labels: saliency estimators and ``selfsup saliency``.

Estimators (``ESTIMATORS``), each a per-pixel foreground probability in [0, 1]:

- ``spectral``: the spectral residual (Hou & Zhang, "Saliency Detection: A Spectral Residual
  Approach", CVPR 2007), OpenCV's ``cv2.saliency.StaticSaliencySpectralResidual``: the log
  amplitude spectrum minus its local average, back to the image domain, squared and blurred
  (computed on a 64 x 64 thumbnail by OpenCV), min-max normalised per image.
- ``fine-grained``: OpenCV's ``StaticSaliencyFineGrained`` (Montabone & Soto, 2010:
  centre-surround differences of intensity over several scales), min-max normalised.
- ``checkpoint``: self-bootstrapped from a selfsup run, so a better encoder gives better masks:
  a MaskContrast run's own saliency head (sigmoid), any other run's heat map (ContrastiveCrop's:
  the channel sum of the dense feature map, min-max normalised per image, bilinearly upsampled).
- ``external``: probability maps made elsewhere (``--masks``, any encoding of
  ``selfsup.data.masks``), only post-processed here.

Every map is resized (bilinear) to the image's original size and post-processed as in the paper
(``selfsup.data.masks.postprocess``: threshold 0.5, components under 1% dropped, images under 1%
salient skipped and counted). ``write_saliency`` writes one 0/255 PNG per kept image, named like
the image relative to its split folder (what ``data.masks`` expects), ``saliency.json`` (counts,
skipped files, settings) and ``preview.png`` (image | saliency | mask, one row per image).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from selfsup.data import DataError, ImageDataset, open_dataset
from selfsup.data.decode import open_image
from selfsup.data.masks import (
    MIN_COMPONENT,
    MIN_SALIENT,
    THRESHOLD,
    mask_probability,
    match_masks,
    postprocess,
    write_mask,
)
from selfsup.data.sources import cache_root, resolve
from selfsup.eval.dense.features import Encoder
from selfsup.methods.maskcontrast import MaskContrast
from selfsup.train.runs import load_run

Estimator = Callable[[torch.Tensor, ImageDataset, torch.Tensor], list[np.ndarray]]


def _minmax(x: np.ndarray) -> np.ndarray:
    low, high = float(x.min()), float(x.max())
    return ((x - low) / (high - low) if high > low else np.zeros_like(x)).astype(np.float32)


def opencv_saliency(images: torch.Tensor, kind: str = "spectral") -> list[np.ndarray]:
    """OpenCV's static saliency of uint8 RGB images (B, 3, H, W): float32 (H, W) maps in [0, 1]."""
    import cv2

    make = {"spectral": cv2.saliency.StaticSaliencySpectralResidual_create,
            "fine-grained": cv2.saliency.StaticSaliencyFineGrained_create}[kind]
    estimator = make()
    out = []
    for image in images.permute(0, 2, 3, 1).numpy():
        ok, sal = estimator.computeSaliency(np.ascontiguousarray(image[..., ::-1]))  # OpenCV wants BGR
        if not ok:
            raise DataError(f"OpenCV's {kind} saliency failed on an image of {image.shape[0]}x{image.shape[1]}")
        out.append(_minmax(np.asarray(sal, dtype=np.float32)))
    return out


@torch.no_grad()
def heat_maps(fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ContrastiveCrop's heat map as a probability: channel sum of (B, C, h, w), min-max normalised
    per image, bilinearly upsampled to ``size``: float (B, H, W) in [0, 1]."""
    heat = fmap.float().sum(dim=1, keepdim=True)
    flat = heat.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp(min=torch.finfo(torch.float32).tiny)
    return F.interpolate((heat - low) / span, size=size, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1)


class CheckpointSaliency:
    """A run's saliency: MaskContrast's saliency head, else the heat map of its dense features."""

    def __init__(self, checkpoint: str | os.PathLike, device: torch.device) -> None:
        cfg, method = load_run(checkpoint)
        self.method = method.to(device).eval()
        self.head = isinstance(method, MaskContrast)
        self.encoder = Encoder(method.dense_network(), cfg.views.mean, cfg.views.std, cfg.backbone.img_size, device)
        self.kind = "maskcontrast saliency head" if self.head else "heat map of the dense features"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[np.ndarray]:
        size = tuple(images.shape[-2:])
        if self.head:
            _, logits = self.method.segment(self.encoder.inputs(images))
            prob = torch.sigmoid(F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False))[:, 0]
        else:
            prob = heat_maps(self.encoder(images), size)
        return list(prob.cpu().numpy().astype(np.float32))


class ExternalMaps:
    """Probability maps from a folder, matched to the images by name (``selfsup.data.masks``)."""

    def __init__(self, masks: str | os.PathLike, dataset: ImageDataset) -> None:
        root = resolve(os.fspath(masks), cache_root())
        if not isinstance(root, Path):
            raise DataError(f"masks {masks!r}: a named dataset, not a folder of masks")
        self.root = root
        self.files = dict(zip(dataset.files or [], match_masks(dataset.files or [], root), strict=True))

    def __call__(self, names: list[str], sizes: torch.Tensor) -> list[np.ndarray | None]:
        out: list[np.ndarray | None] = []
        for name, (h, w) in zip(names, sizes.tolist(), strict=True):
            rel = self.files.get(name)
            if rel is None:
                out.append(None)
                continue
            with open_image(self.root / rel) as im:
                if (im.height, im.width) != (h, w):
                    raise DataError(f"mask {self.root / rel} is {im.height}x{im.width} but its image {name} is {h}x{w}")
                prob = mask_probability(im)
            if prob is None:
                raise DataError(f"mask {self.root / rel} is a colour image, not a single-channel map")
            out.append(prob)
        return out


ESTIMATORS = ("spectral", "fine-grained", "checkpoint", "external")


@dataclass
class SaliencyConfig:
    """Options of ``selfsup saliency`` (see the module doc)."""

    method: str = "spectral"
    checkpoint: str | None = None
    masks: str | None = None
    split: str = "train"
    load_size: tuple[int, int] | None = None
    threshold: float = THRESHOLD
    min_component: float = MIN_COMPONENT
    min_salient: float = MIN_SALIENT
    batch_size: int = 16
    preview_images: int = 8
    device: str = "cpu"


def _original_size(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if prob.shape == tuple(size):
        return prob
    t = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()


def _preview(rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]], path: Path, height: int = 120) -> None:
    """image | saliency | mask per row, scaled to ``height`` pixels, with the file name."""
    gap, head = 4, 14
    scaled = []
    for image, prob, mask, name in rows:
        h, w = image.shape[:2]
        width = max(1, round(w * height / h))
        panels = [Image.fromarray(image), Image.fromarray((prob * 255).round().astype(np.uint8)).convert("RGB"),
                  Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).convert("RGB")]
        scaled.append(([p.resize((width, height), Image.Resampling.BILINEAR) for p in panels], name))
    width = max(3 * (panels[0].width + gap) for panels, _ in scaled) + gap
    canvas = Image.new("RGB", (width, head + len(scaled) * (height + gap + head) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(("image", "saliency", "mask")):
        draw.text((gap + col * (scaled[0][0][0].width + gap), 1), title, fill="black")
    y = head
    for panels, name in scaled:
        draw.text((gap, y), name, fill="black")
        y += head
        for col, panel in enumerate(panels):
            canvas.paste(panel, (gap + col * (panel.width + gap), y))
        y += height + gap
    canvas.save(path)


def write_saliency(data: str | os.PathLike, out: str | os.PathLike, cfg: SaliencyConfig) -> dict[str, Any]:
    """Estimate, post-process and write the masks of ``data``'s ``cfg.split`` split into ``out``
    (see the module doc); returns the report written to ``out/saliency.json``."""
    if cfg.method not in ESTIMATORS:
        raise DataError(f"unknown saliency method {cfg.method!r}; available: {', '.join(ESTIMATORS)}")
    if cfg.method == "checkpoint" and not cfg.checkpoint:
        raise DataError("saliency --method checkpoint needs --checkpoint <run folder or last.pt>")
    if cfg.method == "external" and not cfg.masks:
        raise DataError("saliency --method external needs --masks <folder of probability maps>")
    start = time.perf_counter()
    splits = open_dataset(data, load_size=cfg.load_size)
    dataset = splits.train if cfg.split == "train" else splits.test
    if dataset is None:
        raise DataError(f"{data}: no {cfg.split} split (a test/ or val/ folder)")
    if dataset.files is None:
        raise DataError(f"{data}: saliency masks need an image folder or archive (file names)")
    from selfsup.core.device import resolve_device

    device = resolve_device(cfg.device)
    model = CheckpointSaliency(cfg.checkpoint, device) if cfg.method == "checkpoint" else None
    external = ExternalMaps(cfg.masks, dataset) if cfg.method == "external" else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kept, skipped, missing, shares, dropped = [], [], [], [], 0
    shown: list[tuple[np.ndarray, np.ndarray, np.ndarray, str]] = []
    for batch in dataset.batches(cfg.batch_size, shuffle=False, drop_last=False):
        names = [dataset.files[i] for i in batch.index.tolist()]
        if model is not None:
            probs: list[np.ndarray | None] = list(model(batch.images))
        elif external is not None:
            probs = external(names, batch.sizes)
        else:
            probs = list(opencv_saliency(batch.images, cfg.method))
        for image, prob, name, size in zip(batch.images, probs, names, batch.sizes.tolist(), strict=True):
            if prob is None:
                missing.append(name)
                continue
            full = _original_size(prob, tuple(size))
            result = postprocess(full, cfg.threshold, cfg.min_component, cfg.min_salient)
            dropped += result.dropped_components
            if not result.kept:
                skipped.append(name)
                continue
            kept.append(name)
            shares.append(result.salient)
            write_mask(out / (os.path.splitext(name)[0] + ".png"), result.mask)
            if len(shown) < cfg.preview_images:
                small = image.permute(1, 2, 0).numpy()
                mask_small = _original_size(result.mask.astype(np.float32), small.shape[:2]) >= 0.5
                shown.append((small, _original_size(full, small.shape[:2]), mask_small, name))
    if shown:
        _preview(shown, out / "preview.png")
    report = {
        "data": str(data), "split": cfg.split, "method": cfg.method,
        "estimator": model.kind if model is not None else cfg.method, "checkpoint": cfg.checkpoint,
        "external_masks": cfg.masks, "images": len(dataset), "written": len(kept),
        "skipped_under_min_salient": len(skipped), "skipped_files": skipped,
        "without_external_map": len(missing), "missing_files": missing,
        "dropped_components": dropped,
        "mean_salient_share": float(np.mean(shares)) if shares else None,
        "threshold": cfg.threshold, "min_component": cfg.min_component, "min_salient": cfg.min_salient,
        "load_size": list(dataset.image_size), "wall_time_s": time.perf_counter() - start,
        "preview": str(out / "preview.png") if shown else None,
    }
    (out / "saliency.json").write_text(json.dumps(report, indent=2))
    return report
