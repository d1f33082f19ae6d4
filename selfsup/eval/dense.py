"""Dense evaluation: a per-pixel linear probe on frozen features, and tiny-budget fine-tuning.

Probe (the usual frozen-feature segmentation protocol, e.g. as in DenseCL / PixPro /
MaskContrast linear evaluations): the backbone stays frozen in eval mode; its last feature
map (B, C, h, w) (a ResNet's last stage at whatever output stride it has, dilated or not; a
ViT's patch tokens) is standardised per channel with the training split's statistics (fixed,
like a BatchNorm without affine parameters), a 1x1 convolution maps it to K class logits,
which are bilinearly upsampled to the label map's size; the loss is the per-pixel cross
entropy without the ignore index. Because the backbone is frozen, the training split's
feature maps are computed once (kept in fp16 when they fit ``feature_memory_gb``, else
recomputed per batch). SGD with momentum 0.9 and a per-step cosine schedule, no
augmentation. The probe is evaluated once, after its LAST step: mIoU, per-class IoU and
pixel accuracy on the validation split from one confusion matrix over all its pixels
(see ``selfsup.eval.segmentation_metrics``); the training split's scores are reported too.

Inputs: ResNets see the images at the load size. A ViT's position embeddings are built for
``backbone.img_size``, so its input is the whole image resized to that square; its logits
are still upsampled to the label size.

Fine-tuning (``finetune_steps`` > 0): starting from the trained probe (LP-FT, Kumar et al.,
2022), the whole network (backbone in train mode + 1x1 head) is trained for that many SGD
steps on random crops (area ``finetune_scale``, the images' aspect ratio) and horizontal
flips of the training pairs, resized back to the load size; then evaluated the same way.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from selfsup.core.errors import ConfigError
from selfsup.data.segmentation import SegmentationData, SegmentationSplit, crop_resize_pair, open_segmentation
from selfsup.eval.segmentation_metrics import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from selfsup.models.backbones import ViTBackbone
from selfsup.runs import load_run
from selfsup.views.boxes import sample_pixel_boxes
from selfsup.views.ops import normalize
from selfsup.views.recipes import eval_view


@dataclass
class DenseConfig:
    """Data, probe budget and fine-tuning budget of a dense evaluation.

    size: (H, W) load size of images and labels (None: the images' size times ``scale``).
    steps: probe optimiser steps; 0 means ``epochs`` passes over the training split.
    val_data: a separate folder / archive holding ``val_split`` (default: the training data's).
    classes / ignore_index / label_dir: see ``selfsup.data.segmentation.open_segmentation``.
    max_train / max_val: a fixed random subset of that many pairs (0: all).
    """

    size: tuple[int, int] | None = None
    scale: float = 1.0
    train_split: str = "train"
    val_split: str = "val"
    val_data: str | None = None
    label_dir: str = "{split}annot"
    classes: str | None = None
    ignore_index: int | None = None
    max_train: int = 0
    max_val: int = 0
    epochs: int = 20
    steps: int = 0
    lr: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 8
    eval_batch_size: int = 16
    finetune_steps: int = 0
    finetune_lr: float = 0.01
    finetune_weight_decay: float = 1e-4
    finetune_scale: tuple[float, float] = (0.5, 1.0)
    feature_memory_gb: float = 4.0
    figure_images: int = 4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.size is not None:
            self.size = tuple(int(v) for v in self.size)
        self.finetune_scale = tuple(float(v) for v in self.finetune_scale)

    def validate(self) -> None:
        """ConfigError naming the first bad value."""
        checks = [
            ("epochs", self.epochs >= 1), ("steps", self.steps >= 0), ("lr", self.lr > 0),
            ("batch_size", self.batch_size >= 1), ("eval_batch_size", self.eval_batch_size >= 1),
            ("finetune_steps", self.finetune_steps >= 0), ("finetune_lr", self.finetune_lr > 0),
            ("scale", self.scale > 0), ("max_train", self.max_train >= 0), ("max_val", self.max_val >= 0),
            ("size", self.size is None or (len(self.size) == 2 and min(self.size) >= 1)),
            ("finetune_scale", 0 < self.finetune_scale[0] <= self.finetune_scale[1] <= 1),
        ]
        for name, ok in checks:
            if not ok:
                raise ConfigError(f"dense evaluation: invalid {name} {getattr(self, name)!r}")


@dataclass
class Scores:
    """Scores of one split from its confusion matrix."""

    confusion: torch.Tensor

    def as_dict(self, classes: list[str]) -> dict[str, Any]:
        """mIoU, pixel accuracy and per-class IoU (None where undefined: class absent from
        both labels and predictions)."""
        iou = iou_per_class(self.confusion).tolist()
        return {
            "miou": _finite_or_none(mean_iou(self.confusion)),
            "pixel_accuracy": _finite_or_none(pixel_accuracy(self.confusion)),
            "per_class_iou": {name: _finite_or_none(v) for name, v in zip(classes, iou, strict=True)},
        }


@dataclass
class DenseFigure:
    """What the figure shows: a few validation pairs and each model's predictions."""

    images: torch.Tensor  # uint8 (n, 3, H, W)
    labels: torch.Tensor  # uint8 (n, H, W)
    predictions: dict[str, torch.Tensor] = field(default_factory=dict)  # title -> (n, H, W)
    classes: list[str] = field(default_factory=list)
    ignore_index: int = 255
    palette: tuple[tuple[int, int, int], ...] = ()


@dataclass
class DenseOutput:
    result: dict[str, Any]
    figure: DenseFigure


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    use = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use)


class PixelProbe(nn.Module):
    """Per-pixel linear classifier: fixed per-channel standardisation, then a 1x1 conv."""

    def __init__(self, channels: int, num_classes: int, mean: torch.Tensor, std: torch.Tensor,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.register_buffer("mean", mean.float().view(1, channels, 1, 1))
        self.register_buffer("std", std.float().view(1, channels, 1, 1))
        self.conv = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.conv.weight, std=0.01, generator=generator)
        nn.init.zeros_(self.conv.bias)

    def forward(self, fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Logits (B, K, H, W) at the label size ``size``."""
        logits = self.conv((fmap.float() - self.mean) / self.std)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class Encoder:
    """The backbone's last feature map for uint8 images, normalised with the run's mean and std
    (and, for a ViT, resized to its square input size)."""

    def __init__(self, backbone: nn.Module, mean: tuple, std: tuple, vit_size: int, device: torch.device) -> None:
        self.backbone = backbone.to(device)
        self.mean, self.std, self.device = mean, std, device
        self.input_size = vit_size if isinstance(backbone, ViTBackbone) else None

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float network input on the device."""
        images = images.to(self.device)
        if self.input_size is not None:
            return eval_view(images, self.input_size, self.mean, self.std)
        return normalize(images.float().div_(255.0), self.mean, self.std)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with _autocast(self.device):
            return self.backbone(self.inputs(images))[0].float()


class FrozenFeatures:
    """Feature maps of a frozen encoder for a split: computed once and kept (fp16, on the
    device) when they fit in ``memory_bytes``, else recomputed for every request."""

    def __init__(self, encoder: Encoder, images: torch.Tensor, batch_size: int, memory_bytes: float) -> None:
        self.encoder, self.images, self.batch_size = encoder, images, batch_size
        with torch.no_grad():
            first = encoder(images[:1])
        self.shape = tuple(first.shape[1:])
        self.bank: torch.Tensor | None = None
        if len(images) * math.prod(self.shape) * 2 <= memory_bytes:
            self.bank = torch.cat([self._compute(idx).half() for idx in self._chunks()])

    def _chunks(self) -> list[torch.Tensor]:
        return list(torch.arange(len(self.images)).split(self.batch_size))

    @torch.no_grad()
    def _compute(self, idx: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.images[idx])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        if self.bank is not None:
            return self.bank[idx.to(self.bank.device)].float()
        return self._compute(idx)

    def channel_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std over all positions of all images (float64 sums)."""
        c = self.shape[0]
        total = torch.zeros(c, dtype=torch.float64, device=self.encoder.device)
        squares = torch.zeros_like(total)
        count = 0
        for idx in self._chunks():
            f = self[idx].double().transpose(0, 1).reshape(c, -1)
            total += f.sum(1)
            squares += (f * f).sum(1)
            count += f.shape[1]
        mean = total / count
        std = (squares / count - mean * mean).clamp(min=0).sqrt() + 1e-6
        return mean.float(), std.float()


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Mean per-pixel cross entropy over the non-ignored pixels (0 when every pixel is ignored)."""
    total = F.cross_entropy(logits, labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


def _index_batches(n: int, batch_size: int, steps: int, generator: torch.Generator) -> list[torch.Tensor]:
    """``steps`` batches drawn epoch by epoch from fresh random permutations."""
    batches: list[torch.Tensor] = []
    while len(batches) < steps:
        batches += list(torch.randperm(n, generator=generator).split(batch_size))
    return batches[:steps]


def _cosine(opt: torch.optim.Optimizer, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


def train_probe(
    probe: PixelProbe, features: FrozenFeatures, labels: torch.Tensor, cfg: DenseConfig,
    ignore_index: int, generator: torch.Generator,
) -> int:
    """Train the probe on the frozen features; return the number of steps taken."""
    spe = math.ceil(len(labels) / cfg.batch_size)
    steps = cfg.steps or cfg.epochs * spe
    opt = torch.optim.SGD(probe.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    sched = _cosine(opt, steps)
    device = probe.mean.device
    probe.train()
    for idx in _index_batches(len(labels), cfg.batch_size, steps, generator):
        target = labels[idx].to(device)
        loss = masked_cross_entropy(probe(features[idx], target.shape[-2:]), target, ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return steps


@torch.no_grad()
def predict(
    features: FrozenFeatures | Encoder, probe: PixelProbe, images: torch.Tensor, size: tuple[int, int],
    batch_size: int,
) -> torch.Tensor:
    """Predicted class maps uint8 (N, H, W) on the CPU for every image (by index for
    FrozenFeatures, by pixels for an Encoder)."""
    probe.eval()
    out = []
    for idx in torch.arange(len(images)).split(batch_size):
        fmap = features[idx] if isinstance(features, FrozenFeatures) else features(images[idx])
        out.append(probe(fmap, size).argmax(1).to(torch.uint8).cpu())
    return torch.cat(out)


def score(pred: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int) -> Scores:
    return Scores(confusion_matrix(pred, labels, num_classes, ignore_index))


def finetune(
    encoder: Encoder, probe: PixelProbe, train: SegmentationSplit, cfg: DenseConfig, ignore_index: int,
    generator: torch.Generator,
) -> None:
    """Train backbone and head together for ``cfg.finetune_steps`` SGD steps (see module doc)."""
    backbone, device = encoder.backbone, encoder.device
    params = [*backbone.parameters(), *probe.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.SGD(params, lr=cfg.finetune_lr, momentum=0.9, weight_decay=cfg.finetune_weight_decay)
    sched = _cosine(opt, cfg.finetune_steps)
    h, w = train.image_size
    sizes = torch.tensor([[h, w]]).repeat(cfg.batch_size, 1)
    ratio = (0.75 * w / h, 4 / 3 * w / h)
    backbone.train()
    probe.train()
    for idx in _index_batches(len(train), cfg.batch_size, cfg.finetune_steps, generator):
        boxes = sample_pixel_boxes(sizes[: len(idx)], cfg.finetune_scale, ratio, generator)
        flipped = torch.rand(len(idx), generator=generator) < 0.5
        images, labels = crop_resize_pair(train.images[idx], train.labels[idx], boxes, flipped, (h, w))
        labels = labels.to(device)
        with _autocast(device):
            fmap = backbone(encoder.inputs(images))[0]
        loss = masked_cross_entropy(probe(fmap, (h, w)), labels, ignore_index)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    backbone.eval()
    for p in params:
        p.requires_grad_(False)


def _cap(split: SegmentationSplit, n: int, seed: int) -> SegmentationSplit:
    if n <= 0 or n >= len(split):
        return split
    perm = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    return split.subset(perm[:n].sort().values)


def _device(name: str) -> torch.device:
    return torch.device(name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def dense_eval(checkpoint: str | Path, data: str | Path, cfg: DenseConfig, random_init: bool = False) -> DenseOutput:
    """Probe (and optionally fine-tune) the backbone of a pre-training run on a segmentation
    dataset; the result dict is JSON-ready, the figure goes to :func:`save_figure`."""
    cfg.validate()
    start = time.perf_counter()
    torch.manual_seed(cfg.seed)  # the weights of --random-init
    run_cfg, method = load_run(checkpoint, random_init=random_init)
    ds: SegmentationData = open_segmentation(
        data, splits=(cfg.train_split, cfg.val_split), label_dir=cfg.label_dir, size=cfg.size, scale=cfg.scale,
        classes=cfg.classes, ignore_index=cfg.ignore_index, val_spec=cfg.val_data,
    )
    train, val = _cap(ds.train, cfg.max_train, cfg.seed), _cap(ds.val, cfg.max_val, cfg.seed)
    data_time = time.perf_counter() - start
    device = _device(cfg.device)
    generator = torch.Generator().manual_seed(cfg.seed)
    backbone = method.backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    encoder = Encoder(backbone, run_cfg.views.mean, run_cfg.views.std, run_cfg.backbone.img_size, device)
    k, ignore = ds.num_classes, ds.ignore_index

    start = time.perf_counter()
    features = FrozenFeatures(encoder, train.images, cfg.eval_batch_size, cfg.feature_memory_gb * 2**30)
    mean, std = features.channel_stats()
    probe = PixelProbe(features.shape[0], k, mean, std, generator).to(device)
    steps = train_probe(probe, features, train.labels, cfg, ignore, generator)
    train_scores = score(predict(features, probe, train.images, train.image_size, cfg.eval_batch_size),
                         train.labels, k, ignore)
    fmap_shape = features.shape
    del features
    val_pred = predict(encoder, probe, val.images, val.image_size, cfg.eval_batch_size)
    val_scores = score(val_pred, val.labels, k, ignore)
    probe_time = time.perf_counter() - start

    shown = torch.linspace(0, len(val) - 1, min(cfg.figure_images, len(val))).round().long().unique()
    figure = DenseFigure(val.images[shown], val.labels[shown], {"linear probe": val_pred[shown]}, ds.classes,
                         ignore, ds.palette)
    flat = train.labels.flatten()
    train_counts = torch.bincount(flat[flat != ignore].long(), minlength=k)[:k]
    majority = int(train_counts.argmax())
    majority_pred = torch.full_like(val.labels, majority)
    spe = math.ceil(len(train) / cfg.batch_size)
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "random_init": random_init, "method": run_cfg.method,
        "backbone": asdict(run_cfg.backbone), "data": str(data), "val_data": cfg.val_data,
        "splits": {"train": cfg.train_split, "val": cfg.val_split},
        "label_set": ds.label_set, "classes": ds.classes, "ignore_index": ignore,
        "image_size": list(train.image_size), "feature_map": list(fmap_shape),
        "train_images": len(train), "val_images": len(val),
        "skipped_images": {"train": ds.train.num_skipped, "val": ds.val.num_skipped},
        **val_scores.as_dict(ds.classes),
        "train_miou": _finite_or_none(mean_iou(train_scores.confusion)),
        "train_pixel_accuracy": _finite_or_none(pixel_accuracy(train_scores.confusion)),
        "majority_class": ds.classes[majority],
        "majority_pixel_accuracy": _finite_or_none(pixel_accuracy(score(majority_pred, val.labels, k, ignore)
                                                                  .confusion)),
        "train_majority_pixel_accuracy": _finite_or_none(float(train_counts[majority] / train_counts.sum())),
        "evaluated": "after the last probe step",
        "probe": {"steps": steps, "epochs": steps / spe, "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                  "batch_size": cfg.batch_size, "schedule": "sgd momentum 0.9, cosine"},
        "data_time_s": data_time, "wall_time_s": probe_time, "device": str(device),
        "finetune": None,
    }
    if cfg.finetune_steps:
        start = time.perf_counter()
        finetune(encoder, probe, train, cfg, ignore, generator)
        ft_pred = predict(encoder, probe, val.images, val.image_size, cfg.eval_batch_size)
        result["finetune"] = {
            **score(ft_pred, val.labels, k, ignore).as_dict(ds.classes),
            "steps": cfg.finetune_steps, "lr": cfg.finetune_lr, "weight_decay": cfg.finetune_weight_decay,
            "batch_size": cfg.batch_size, "crop_scale": list(cfg.finetune_scale),
            "init": "backbone + trained linear probe", "wall_time_s": time.perf_counter() - start,
        }
        figure.predictions["fine-tuned"] = ft_pred[shown]
    return DenseOutput(result, figure)


# --- figure ---------------------------------------------------------------------------------


def class_palette(num_classes: int, palette: tuple[tuple[int, int, int], ...] = ()) -> np.ndarray:
    """uint8 (256, 3) colours: the label set's own for its classes, else the fixed PASCAL VOC
    bit-interleaved palette shifted by one (so class 0 is not black); every other value,
    the ignore index included, is black."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for c in range(num_classes):
        if c < len(palette):
            colours[c] = palette[c]
            continue
        v, rgb = c + 1, [0, 0, 0]
        for bit in range(8):
            for ch in range(3):
                rgb[ch] |= ((v >> ch) & 1) << (7 - bit)
            v >>= 3
        colours[c] = rgb
    return colours


def save_figure(figure: DenseFigure, path: str | Path) -> Path:
    """A PNG with one row per image: the image, its ground truth and every prediction, plus a
    legend of class colours (ignored pixels black)."""
    colours = class_palette(len(figure.classes), figure.palette)
    colours[figure.ignore_index] = 0
    titles = ["image", "ground truth", *figure.predictions]
    n, h, w = figure.labels.shape
    gap, head, line = 4, 16, 14
    width = len(titles) * (w + gap) + gap
    per_row = max(1, width // 110)
    legend_rows = math.ceil(len(figure.classes) / per_row)
    canvas = Image.new("RGB", (width, head + n * (h + gap) + gap + legend_rows * line), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((gap + col * (w + gap), 2), title, fill="black")
    for row in range(n):
        panels = [figure.images[row].permute(1, 2, 0).numpy(), colours[figure.labels[row].numpy()],
                  *(colours[p[row].numpy()] for p in figure.predictions.values())]
        for col, panel in enumerate(panels):
            canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (gap + col * (w + gap), head + row * (h + gap)))
    top = head + n * (h + gap) + gap
    for c, name in enumerate(figure.classes):
        x, y = gap + (c % per_row) * 110, top + (c // per_row) * line
        draw.rectangle((x, y + 2, x + 10, y + 11), fill=tuple(int(v) for v in colours[c]))
        draw.text((x + 14, y), name, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
