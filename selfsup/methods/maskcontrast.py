"""MaskContrast (Van Gansbeke, Vandenhende, Georgoulis, Van Gool: "Unsupervised Semantic
Segmentation by Contrasting Object Mask Proposals", ICCV 2021).

- Mask proposals: one binary saliency mask per training image (``data.masks``; made by
  ``selfsup saliency`` with no labels, or given), carried as per-pixel maps (``View.maps``).
- Views: two independent views per image (the ``maskcontrast`` recipe: random-resized crop,
  scale (0.2, 1) in the preset, flip 0.5, colour jitter (0.4, 0.4, 0.4, 0.1) p = 0.8, grayscale
  0.2, no blur); each view's mask is cropped, resized (nearest) and flipped with it. A view whose
  crop holds a salient share outside (``min_salient``, ``max_salient``) = (1%, 99%) is drawn
  again (:class:`~selfsup.views.resampled_crop.ResampledCrop` over ``views.crop``, up to
  ``crop_tries`` draws): the two views are independent, so redrawing each until it is accepted
  gives exactly the pairs in which BOTH are.
- Networks: DeepLab-v3 (``selfsup.models.deeplab``, torchvision's ASPP / DeepLabHead) on the
  dilated ResNet (``backbone.output_stride: 8``): 256-d decoder features -> 1x1 conv to a
  ``embed_dim`` = 32-d pixel embedding, and a saliency head (1x1 conv 256 -> 1, no bias); both
  upsampled (bilinear) to the input size. Keys come from a momentum copy of backbone + decoder
  + embedding (constant m = 0.999, ``selfsup.methods.momentum``).
- Loss (``selfsup.losses.maskcontrast``): query pixels = the L2-normalised embeddings at the
  salient pixels of the query view, each labelled with its image; prototypes = L2-normalised
  sums of the key view's normalised embeddings over its salient pixels; logits against the
  global batch's prototypes and a queue of ``queue_size`` past prototypes
  (``selfsup.methods.queue``: the global batch is enqueued, identical on every rank), /
  temperature 0.5; cross-entropy with class weights 1 / ln(1.02 + p_c), p_c image c's share of
  the global batch's salient query pixels; plus ``saliency_weight`` x the balanced BCE of the
  saliency head against the query mask.
- Schedule: the paper's SGD, lr 0.004, momentum 0.9, wd 1e-4, poly (power 0.9) per step
  (the preset ``camvid/maskcontrast``).
- DDP: prototypes and per-image salient counts are gathered, labels are offset by rank, and the
  weighted mean divides by the global weight sum over the number of ranks, so the ranks' mean
  loss (what DDP's gradient averages) is that of one process holding the global batch.
- Differences from the official code: its prototypes take part only from the local batch
  (each GPU contrasts against its own images and the queue); here every rank contrasts against
  the GLOBAL batch's prototypes, which is what one process with the same batch does. The key
  encoder is updated after the optimiser step (the official code updates it at the start of the
  next forward: the same sequence). The crop condition is tested on the stored mask inside the
  crop box (the share of mask pixels whose centres lie in the box) rather than on the resized
  view mask; the two differ by the nearest-neighbour resampling only. The official queue starts
  as random unit vectors; so does this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, Positive, PositiveInt, Range, UnitInterval
from selfsup.core.comm import gather, rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.core.tensors import upcast
from selfsup.losses.maskcontrast import balanced_bce, class_weights, mask_contrast_loss, saliency_prototypes
from selfsup.methods.base import Method, RunInfo, StepOutput
from selfsup.methods.momentum import MomentumEncoder
from selfsup.methods.queue import Queue
from selfsup.models.deeplab import DECODER_DIM, DecoderFeatures, deeplab_decoder
from selfsup.views.resampled_crop import ResampledCrop
from selfsup.views.samplers import CropSampler
from selfsup.views.view import View

Share = Annotated[float, Range(ge=0, lt=1)]
MONITORED_PIXELS = 4096  # query pixels handed to the collapse monitor


@dataclass
class MaskContrastConfig(Checked):
    """MaskContrast's defaults (the paper's, PASCAL VOC with batch 64).

    embed_dim: pixel embedding size; atrous_rates: ASPP dilations; queue_size: past prototypes
    (K); momentum: of the key encoder (constant); saliency_weight: lambda of the BCE;
    min_salient / max_salient: the open interval a view's salient share must lie in;
    crop_tries: draws per view before a crop is kept anyway (counted, logged as
    ``crops_rejected``).
    """

    section: ClassVar[str] = "maskcontrast"

    embed_dim: PositiveInt = 32
    atrous_rates: tuple[PositiveInt, PositiveInt, PositiveInt] = (12, 24, 36)
    queue_size: PositiveInt = 128
    momentum: UnitInterval = 0.999
    temperature: Positive = 0.5
    saliency_weight: NonNegative = 1.0
    min_salient: Share = 0.01
    max_salient: Annotated[float, Range(gt=0, le=1)] = 0.99
    crop_tries: PositiveInt = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.min_salient < self.max_salient:
            raise ConfigError(f"maskcontrast.min_salient {self.min_salient} must be below maskcontrast.max_salient "
                              f"{self.max_salient}")


def salient_share(boxes: torch.Tensor, sizes: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """The salient share of every crop box: float64 (B,).

    boxes: int (B, 4) (left, top, width, height) in ORIGINAL pixels; sizes: (B, 2) original
    (height, width); maps: (B, H, W) masks at the stored size (> 0 is salient). The share is that
    of the stored mask pixels whose centres lie in the box (rescaled to the stored grid), from
    an integral image; a box thinner than one stored pixel counts the pixel it lies on.
    """
    device = maps.device
    b, height, width = maps.shape
    salient = (maps > 0).to(torch.float64)
    integral = F.pad(salient.cumsum(1).cumsum(2), (1, 0, 1, 0))  # (B, H + 1, W + 1)
    boxes = boxes.to(device, torch.float64)
    sizes = sizes.to(device, torch.float64)
    left, top, w, h = boxes.unbind(1)

    def span(start: torch.Tensor, extent: torch.Tensor, original: torch.Tensor, stored: int):
        scale = stored / original
        lo = torch.ceil(start * scale - 0.5).clamp(0, stored - 1)
        hi = torch.maximum(torch.ceil((start + extent) * scale - 0.5).clamp(0, stored), lo + 1)
        return lo.long(), hi.long()

    r0, r1 = span(top, h, sizes[:, 0], height)
    c0, c1 = span(left, w, sizes[:, 1], width)
    i = torch.arange(b, device=device)
    inside = integral[i, r1, c1] - integral[i, r0, c1] - integral[i, r1, c0] + integral[i, r0, c0]
    return inside / ((r1 - r0) * (c1 - c0)).to(torch.float64)


class MaskContrast(Method):
    Config = MaskContrastConfig
    recipe = "maskcontrast"
    description = "MaskContrast: pixel embeddings contrasted against saliency-mask prototypes (DeepLab-v3, queue)"

    def __init__(self, backbone: nn.Module, cfg: MaskContrastConfig, run: RunInfo) -> None:
        super().__init__(backbone, run)
        self.cfg = cfg
        self.decoder, self.embed = deeplab_decoder(backbone.out_dim, cfg.embed_dim, cfg.atrous_rates)
        self.saliency_head = nn.Conv2d(DECODER_DIM, 1, kernel_size=1, bias=False)
        self.key_encoder = MomentumEncoder(cfg.momentum, "constant", backbone=backbone, decoder=self.decoder,
                                           embed=self.embed)
        self.queue = Queue(cfg.queue_size, cfg.embed_dim,
                           init=F.normalize(torch.randn(cfg.queue_size, cfg.embed_dim), dim=1),
                           name="maskcontrast.queue_size")
        self._crop: ResampledCrop | None = None

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if not cfg.backbone.is_resnet:
            raise ConfigError(f"maskcontrast needs a ResNet backbone (DeepLab-v3 on a dilated ResNet), got "
                              f"{cfg.backbone.name!r}")
        if not cfg.data.masks:
            raise ConfigError("maskcontrast needs saliency masks: data.masks=<folder of PNGs named like the "
                              "images> (or --masks; make them with `selfsup saliency`)")

    # ---------------------------------------------------------------- networks
    def dense_network(self) -> nn.Module:
        """backbone -> 256-d decoder (what the linear probe and the pixel k-means read)."""
        return DecoderFeatures(self.backbone, self.decoder)

    def segment(self, images: torch.Tensor, target: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """L2-normalised pixel embeddings (B, D, H, W) and saliency logits (B, H, W) (None for the
        momentum encoder, ``target``), upsampled to the input's H x W."""
        source = self.key_encoder if target else self
        size = images.shape[-2:]
        features = source.decoder(source.backbone(images)[0])
        embedding = F.interpolate(source.embed(features), size=size, mode="bilinear", align_corners=False)
        embedding = F.normalize(upcast(embedding), dim=1)
        if target:
            return embedding, None
        logits = F.interpolate(self.saliency_head(features), size=size, mode="bilinear", align_corners=False)
        return embedding, upcast(logits)[:, 0]

    # ---------------------------------------------------------------- views
    def accept(self, boxes: torch.Tensor, sizes: torch.Tensor, maps: torch.Tensor | None) -> torch.Tensor:
        """Crops whose salient share lies in (min_salient, max_salient)."""
        if maps is None:
            raise ConfigError("maskcontrast needs saliency masks with the images (data.masks)")
        share = salient_share(boxes, sizes, maps)
        return (share > self.cfg.min_salient) & (share < self.cfg.max_salient)

    def crop_sampler(self, base: CropSampler | None) -> CropSampler | None:
        if self._crop is None or self._crop.base is not base:
            rejected = 0 if self._crop is None else self._crop.rejected
            self._crop = ResampledCrop(base, self.accept, self.cfg.crop_tries)
            self._crop.rejected = rejected
        return self._crop

    # ---------------------------------------------------------------- loss
    def forward(self, views: list[View]) -> StepOutput:
        cfg = self.cfg
        query, key = views[0], views[1]
        if query.maps is None or key.maps is None:
            raise ConfigError("maskcontrast needs saliency masks with the images (data.masks)")
        mask_q, mask_k = query.maps > 0, key.maps > 0
        embedding, saliency = self.segment(query.images)
        with torch.no_grad():
            keys, _ = self.segment(key.images, target=True)
            prototypes = saliency_prototypes(keys, mask_k)
        n, ranks = mask_q.shape[0], world_size()
        counts = mask_q.flatten(1).sum(1)
        all_counts = gather(counts).to(embedding.dtype)  # salient query pixels of every image
        total = all_counts.sum()
        weights = class_weights(all_counts / total.clamp(min=1))
        labels = torch.repeat_interleave(torch.arange(n, device=counts.device) + rank() * n, counts)
        q = embedding.permute(0, 2, 3, 1)[mask_q]  # (salient pixels, D), image by image
        contrastive = mask_contrast_loss(q, labels, gather(prototypes), self.queue.rows.clone(), cfg.temperature,
                                         weights, (all_counts * weights).sum() / ranks)
        negative_share = 1 - total / (mask_q.numel() * ranks)
        bce = balanced_bce(saliency, mask_q, negative_share, torch.tensor(float(mask_q.numel())))
        self.queue.push(prototypes)
        loss = contrastive + cfg.saliency_weight * bce
        logs = {
            "contrastive_loss": contrastive.detach(), "saliency_loss": bce.detach(),
            "salient_share": (total / (mask_q.numel() * ranks)).detach(),
            "crops_rejected": torch.tensor(float(0 if self._crop is None else self._crop.rejected)),
        }
        stride = max(1, q.shape[0] // MONITORED_PIXELS)
        return StepOutput(loss, logs, embedding=q.detach()[::stride][:MONITORED_PIXELS])

    def on_step(self, step: int, total_steps: int) -> None:
        self.key_encoder.update(step, total_steps)
