"""DeepLab-v3's decoder on a selfsup backbone, from torchvision's building blocks.

Chen, Papandreou, Schroff, Adam: "Rethinking Atrous Convolution for Semantic Image Segmentation"
(2017). ``torchvision.models.segmentation.deeplabv3.DeepLabHead`` is ASPP (a 1x1 conv, three 3x3
convs with dilations ``atrous_rates``, image pooling; 256 channels each, concatenated, projected
to 256, dropout 0.5), a 3x3 conv + BN + ReLU, then a 1x1 conv to the outputs. MaskContrast
(Van Gansbeke et al., 2021) uses everything before that last conv as its 256-d decoder and the
last conv as the pixel embedding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead

DECODER_DIM = 256  # the channels of torchvision's ASPP and DeepLabHead


def deeplab_decoder(in_channels: int, out_dim: int, atrous_rates: Sequence[int]) -> tuple[nn.Sequential, nn.Conv2d]:
    """torchvision's ``DeepLabHead(in_channels, out_dim, atrous_rates)`` split into the 256-d
    decoder (ASPP, 3x3 conv, BN, ReLU) and its final 1x1 conv 256 -> ``out_dim`` (with bias)."""
    head = DeepLabHead(in_channels, out_dim, tuple(atrous_rates))
    return nn.Sequential(*list(head)[:-1]), head[-1]


class DecoderFeatures(nn.Module):
    """backbone -> decoder: ``forward(x) -> (decoder map (B, 256, h, w), its mean (B, 256))``, the
    backbone interface, for evaluations that read a dense feature map. Wraps the given modules
    (shares their weights)."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.decoder(self.backbone(x)[0])
        return fmap, F.adaptive_avg_pool2d(fmap, 1).flatten(1)
