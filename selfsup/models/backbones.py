"""Backbones: torchvision ResNets (optional CIFAR stem, dilated last stage) and timm ViTs.

Every backbone returns ``(feature_map, pooled)``: the last feature map (B, C, h, w) and its
pooled vector (B, C). Weights keep the naming of the library they come from, so an exported
ResNet loads into ``torchvision.models.resnet18()`` and a ViT into ``timm.create_model``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}


@dataclass
class BackboneConfig:
    """Which encoder to build.

    name: ``resnet18`` / ``resnet34`` / ``resnet50`` or any timm ViT name (``vit_small_patch16_224``).
    cifar_stem: replace the 7x7 stride-2 conv + max-pool by a 3x3 stride-1 conv (32 px inputs).
    dilate_last: dilate the last ResNet stage instead of striding (output stride 16).
    zero_init_residual: zero the last BN gamma of every residual block.
    img_size: input size for ViTs (position embeddings are built for it).
    """

    name: str = "resnet18"
    cifar_stem: bool = False
    dilate_last: bool = False
    zero_init_residual: bool = False
    img_size: int = 224


def dilate_basic_stage(stage: nn.Sequential, dilation: int = 2) -> None:
    """Turn a stride-2 stage of BasicBlocks into a stride-1 stage with dilated 3x3 convs.

    torchvision only dilates Bottleneck ResNets; this does what its
    ``replace_stride_with_dilation`` does for them: the first conv keeps dilation 1 with
    stride 1, every later 3x3 conv gets ``dilation`` (and the padding that keeps the size).
    """
    first = stage[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    convs = [first.conv2] + [c for block in stage[1:] for c in (block.conv1, block.conv2)]
    for conv in convs:
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier (``fc`` is an identity)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        bottleneck = cfg.name == "resnet50"
        net = RESNETS[cfg.name](
            weights=None,
            zero_init_residual=cfg.zero_init_residual,
            replace_stride_with_dilation=[False, False, cfg.dilate_last and bottleneck],
        )
        if cfg.dilate_last and not bottleneck:
            dilate_basic_stage(net.layer4)
        if cfg.cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.out_dim: int = net.fc.in_features
        self.stage_dims: list[int] = [c * net.layer1[0].expansion for c in (64, 128, 256, 512)]
        net.fc = nn.Identity()
        self.net = net

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs C2..C5 of the four residual stages (channels ``stage_dims``; strides 4, 8,
        16, 32 with the standard stem, C5 at 16 when ``dilate_last``), e.g. for an FPN neck."""
        n = self.net
        x = x.to(n.conv1.weight.dtype)  # float64 weights take float32 views
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        out = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            x = layer(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stages(x)[-1]
        return x, torch.flatten(self.net.avgpool(x), 1)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights named as in ``torchvision.models.resnetXX()`` (without ``fc``)."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


class ViTBackbone(nn.Module):
    """A timm Vision Transformer: patch tokens as the feature map, CLS token as the vector."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        import timm

        self.net = timm.create_model(
            cfg.name, pretrained=False, num_classes=0, img_size=cfg.img_size
        )
        self.out_dim = int(self.net.num_features)
        self.num_prefix = int(getattr(self.net, "num_prefix_tokens", 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.net.forward_features(x.to(self.net.patch_embed.proj.weight.dtype))
        patches = tokens[:, self.num_prefix :]
        h, w = self.net.patch_embed.grid_size
        fmap = patches.transpose(1, 2).reshape(x.shape[0], self.out_dim, h, w)
        return fmap, self.net.forward_head(tokens, pre_logits=True)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights named as in ``timm.create_model(name, num_classes=0)``."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


def build_backbone(cfg: BackboneConfig) -> ResNetBackbone | ViTBackbone:
    """Build the encoder named by ``cfg.name``; unknown names get a one-line ValueError."""
    if cfg.name in RESNETS:
        return ResNetBackbone(cfg)
    import timm

    if cfg.name.startswith("vit") and timm.is_model(cfg.name):
        return ViTBackbone(cfg)
    known = ", ".join([*RESNETS, "vit_* (timm)"])
    raise ValueError(f"unknown backbone {cfg.name!r}; available: {known}")
