"""ContrastiveCrop: crops placed around each image's object box, for any two-view method.

Peng et al., "Crafting Better Contrastive Views for Siamese Representation Learning",
CVPR 2022. Selected with ``views.crop``: ``random`` (the recipe's random-resized crop),
``contrastive`` (this module's :class:`ContrastiveCrop`) or ``fixed-center``
(:class:`FixedCenterCrop`, a deterministic ablation). The sampler only changes WHERE each
view's crop box lies; the box then goes through the usual crop-resize, and flip, colour and
blur follow unchanged, so ``View.boxes`` stay exact.

Crop sampling. Every training image has a box (y_min, x_min, y_max, x_max) in [0, 1],
initially the whole image. The crop's size is the Inception crop's (area fraction
s ~ U(scale) of the WHOLE image, log-uniform aspect in ``ratio`` = [3/4, 4/3], up to 10
tries, then torchvision's centre-crop fallback); its top row is

    r0 = clamp(int(H y_min) - h // 2, 0, H - h),   r1 = clamp(int(H y_max) - h // 2, 0, H - h),
    top = r0 + int((r1 - r0) beta),   beta ~ Beta(a, a),

and its left column the same way with W, w and an independent beta: the crop's centre
falls inside the box as far as the crop stays inside the image, which it always does.
a < 1 is U-shaped ("centre-suppressed"): two views taken near opposite edges of the object
overlap less. Default a = 0.6; a = 0.1 was slightly better on small datasets.

Semantic-aware localisation. The online encoder, in eval mode, sees the un-augmented
training images (resized to the training size and normalised as for evaluation); the heat
map is its last feature map (post-ReLU, pre-pool for a ResNet) summed over channels,
min-max normalised per image and bilinearly upsampled to the image size. The box is the
extent of the rows and of the columns whose maximum exceeds the threshold k (not a
connected component), as fractions first / H and last / H (the official code's, so a whole
image gives (H - 1) / H as y_max). k = 0.1 suits ResNets; on other backbones it can let
every pixel pass (0.3 - 0.5 suggested).

Schedule. Plain random-resized crops for the first ``warmup_epochs`` epochs; the boxes are
recomputed after epoch e (1-based) when e >= warmup_epochs, e % interval == 0 and e is not
the last epoch (official small-dataset setting: 500 epochs, warm-up 100, interval 100).
The boxes are training state (checkpointed); under DDP every rank localises its shard and
the boxes are gathered back in dataset order.

Differences from the official code:
- the allowed range is clamped to [0, H - h] at both ends (the official code clamps r0 only
  from below and r1 only from above, so a box near the border could push a crop outside);
- int(H y) is taken as int(H y + 1e-7 H), so a stored fraction k / H gives row k despite
  round-off (float32 boxes are off by up to 3e-8; 0.7 * 200 = 139.99999762 in float32);
- a heat map with no row above the threshold (a constant feature map, where min-max
  normalisation divides by zero) keeps the whole-image box;
- Beta draws are inverse-CDF transforms of uniforms from the views' ``torch.Generator``,
  so crops are reproducible and a resumed run continues the same stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from scipy.special import betaincinv
from torch import nn

from selfsup.core.comm import gather, rank, world_size
from selfsup.core.errors import CheckpointError
from selfsup.views.boxes import centre_boxes, crop_sizes
from selfsup.views.config import IMAGENET_MEAN, IMAGENET_STD, Stats
from selfsup.views.recipes import eval_view
from selfsup.views.samplers import CropSampler, FixedCenterCrop

if TYPE_CHECKING:
    from selfsup.data.dataset import ImageDataset
    from selfsup.views.config import ViewsConfig

TRIES = 10
_ROUND_OFF = 1e-7  # relative: above float32 round-off (3e-8), far below 1 / (H * size)


def whole_image_boxes(num_images: int) -> torch.Tensor:
    """The initial boxes: float32 (N, 4) rows (y_min, x_min, y_max, x_max) = (0, 0, 1, 1)."""
    return torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(num_images, 1)


def _offsets(
    length: torch.Tensor, extent: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, beta: torch.Tensor
) -> torch.Tensor:
    """top = r0 + int((r1 - r0) beta), r = clamp(int(length * frac) - extent // 2, 0, length - extent)."""
    room = length - extent
    half = torch.floor(extent / 2)
    r0 = torch.minimum((torch.floor(length * (lo + _ROUND_OFF)) - half).clamp(min=0), room)
    r1 = torch.minimum((torch.floor(length * (hi + _ROUND_OFF)) - half).clamp(min=0), room)
    return r0 + torch.floor((r1 - r0) * beta)


def sample_crops(
    sizes: torch.Tensor,
    boxes: torch.Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    alpha: float,
    generator: torch.Generator,
    tries: int = TRIES,
) -> torch.Tensor:
    """ContrastiveCrop boxes, one per image, vectorised over the batch.

    sizes: int (B, 2) original (height, width). boxes: (B, 4) (y_min, x_min, y_max, x_max)
    fractions. Returns int64 (B, 4) (left, top, width, height) in original pixels, on the CPU.
    Draws from ``generator``: (2, B, tries) uniforms for the sizes, then (2, B) for the
    row and column betas.
    """
    sizes = sizes.to("cpu", torch.float64)
    boxes = boxes.to("cpu", torch.float64)
    n = sizes.shape[0]
    uniform = torch.rand(2, n, tries, generator=generator, dtype=torch.float64)
    h, w, _, ok = crop_sizes(sizes, scale, ratio, uniform)
    u = torch.rand(2, n, generator=generator, dtype=torch.float64)
    beta = torch.from_numpy(betaincinv(alpha, alpha, u.numpy()))
    top = _offsets(sizes[:, 0], h, boxes[:, 0], boxes[:, 2], beta[0])
    left = _offsets(sizes[:, 1], w, boxes[:, 1], boxes[:, 3], beta[1])
    crops = torch.stack((left, top, w, h), dim=1)
    return torch.where(ok[:, None], crops, centre_boxes(sizes, ratio)).to(torch.int64)


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First and last True position along dim 1 of a bool (N, L) mask, and whether any."""
    hits = mask.to(torch.uint8)
    first = hits.argmax(dim=1)
    last = mask.shape[1] - 1 - hits.flip(1).argmax(dim=1)
    return first, last, mask.any(dim=1)


@torch.no_grad()
def heatmap_boxes(fmap: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """Object boxes from feature maps: float32 (N, 4) (y_min, x_min, y_max, x_max).

    fmap: (N, C, h, w) last-stage features. Heat map = channel sum, min-max normalised per
    image, bilinearly upsampled to ``size`` = (H, W); rows and columns whose maximum exceeds
    ``threshold`` span the box: (first_row / H, first_col / W, last_row / H, last_col / W).
    An image where nothing exceeds it keeps the whole-image box (0, 0, 1, 1).
    """
    heat = fmap.float().sum(dim=1, keepdim=True)
    flat = heat.flatten(1)
    low = flat.min(dim=1).values.view(-1, 1, 1, 1)
    span = (flat.max(dim=1).values.view(-1, 1, 1, 1) - low).clamp(min=torch.finfo(torch.float32).tiny)
    heat = F.interpolate((heat - low) / span, size=size, mode="bilinear", align_corners=False)[:, 0]
    y0, y1, rows = _extent(heat.amax(dim=2) > threshold)
    x0, x1, cols = _extent(heat.amax(dim=1) > threshold)
    height, width = size
    boxes = torch.stack((y0 / height, x0 / width, y1 / height, x1 / width), dim=1).float()
    whole = whole_image_boxes(len(boxes)).to(boxes.device)
    return torch.where((rows & cols)[:, None], boxes, whole)


@torch.no_grad()
def localise(
    backbone: nn.Module,
    dataset: ImageDataset,
    size: int,
    mean: Stats,
    std: Stats,
    threshold: float,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Every image's box from ``backbone``'s heat map: float32 (N, 4) on the CPU, dataset order.

    Images are resized to ``size`` x ``size`` and normalised like an evaluation view; the
    backbone runs in eval mode (its mode is restored after). Under DDP rank r localises the
    r-th contiguous shard of ceil(N / world) images and the shards are gathered in rank
    order, so every rank ends with the same full table.
    """
    n, ranks = len(dataset), world_size()
    per = -(-n // ranks)
    start = min(rank() * per, n)
    shard = dataset.subset(torch.arange(start, min(start + per, n)))
    local = torch.zeros(per, 4, device=device)
    was_training = backbone.training
    backbone.eval()
    done = 0
    for batch in shard.batches(batch_size, shuffle=False, drop_last=False) if len(shard) else []:
        fmap = backbone(eval_view(batch.images.to(device), size, mean, std))[0]
        local[done : done + len(fmap)] = heatmap_boxes(fmap, (size, size), threshold)
        done += len(fmap)
    backbone.train(was_training)
    return gather(local)[:n].cpu()


def update_due(epoch: int, epochs: int, warmup_epochs: int, interval: int) -> bool:
    """Whether boxes are recomputed after completed epoch ``epoch`` (1-based) of ``epochs``."""
    return epoch >= warmup_epochs and epoch % interval == 0 and epoch != epochs


class ContrastiveCrop(CropSampler):
    """The per-image box table, its crop sampler and its update schedule (see module doc).

    size / mean / std / batch_size: how localisation feeds images to the encoder (the
    training size and normalisation, the evaluation batch size).
    """

    def __init__(
        self,
        num_images: int,
        alpha: float = 0.6,
        threshold: float = 0.1,
        warmup_epochs: int = 100,
        interval: int = 100,
        size: int = 224,
        mean: Stats = IMAGENET_MEAN,
        std: Stats = IMAGENET_STD,
        batch_size: int = 512,
    ) -> None:
        self.boxes = whole_image_boxes(num_images)
        self.alpha = alpha
        self.threshold = threshold
        self.warmup_epochs = warmup_epochs
        self.interval = interval
        self.size, self.mean, self.std = size, mean, std
        self.batch_size = batch_size

    def sample(
        self,
        sizes: torch.Tensor,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        generator: torch.Generator,
        index: torch.Tensor | None,
        maps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if index is None:
            raise ValueError("ContrastiveCrop needs the dataset index of every image (make_views(index=...))")
        return sample_crops(sizes, self.boxes[index.cpu()], scale, ratio, self.alpha, generator)

    def for_epoch(self, epoch: int) -> CropSampler | None:
        return self if epoch > self.warmup_epochs else None

    def due(self, epoch: int, epochs: int) -> bool:
        return update_due(epoch, epochs, self.warmup_epochs, self.interval)

    def update(self, backbone: nn.Module, dataset: ImageDataset, device: torch.device) -> None:
        """Recompute every image's box with ``backbone`` (all ranks must call this together)."""
        self.boxes = localise(backbone, dataset, self.size, self.mean, self.std, self.threshold,
                              self.batch_size, device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"boxes": self.boxes.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        boxes = state["boxes"]
        if boxes.shape != self.boxes.shape:
            raise CheckpointError(f"ContrastiveCrop boxes of shape {tuple(boxes.shape)} do not fit a dataset "
                             f"of {len(self.boxes)} images")
        self.boxes = boxes.to("cpu", torch.float32).clone()


def build_crop(views: ViewsConfig, num_images: int, batch_size: int) -> CropSampler | None:
    """The sampler ``views.crop`` names (None for ``random``), for a dataset of ``num_images``."""
    if views.crop == "fixed-center":
        return FixedCenterCrop()
    if views.crop == "contrastive":
        return ContrastiveCrop(num_images, views.crop_alpha, views.crop_threshold, views.crop_warmup_epochs,
                               views.crop_interval, views.size, views.mean, views.std, batch_size)
    return None
