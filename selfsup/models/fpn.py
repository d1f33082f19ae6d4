"""Feature Pyramid Network neck (Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017) over the ResNet stages C2..C5.

Each stage gets a lateral 1x1 conv to ``out_dim`` channels; from the top, every coarser map is
upsampled (nearest, to the finer map's size, so a dilated C5 of C4's size works too) and added
to the next lateral; a 3x3 conv then smooths each sum into P2..P5. This is torchvision's
``FeaturePyramidNetwork`` without the extra pooled level (P6).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


class FPN(nn.Module):
    """``FPN(stage_dims, out_dim)([C2, C3, C4, C5]) -> [P2, P3, P4, P5]``, each ``out_dim`` wide."""

    def __init__(self, stage_dims: list[int], out_dim: int = 256) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(list(stage_dims), out_dim)

    def forward(self, stages: list[torch.Tensor]) -> list[torch.Tensor]:
        named = OrderedDict((f"c{i + 2}", s) for i, s in enumerate(stages))
        return list(self.fpn(named).values())
