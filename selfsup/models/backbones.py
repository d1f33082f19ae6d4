"""Backbones: torchvision ResNets (optional CIFAR stem, dilated stages) and timm ViTs.

Every backbone returns ``(feature_map, pooled)``: the last feature map (B, C, h, w) and its
pooled vector (B, C). Weights keep the naming of the library they come from, so an exported
ResNet loads into ``torchvision.models.resnet18()`` and a ViT into ``timm.create_model``.

A ViT also offers the token-level API that masked image modelling needs
(:meth:`ViTBackbone.tokens`): the encoder on all patches, on a subset of patch indices per
sample (MAE / CAE: the encoder sees the visible patches only), or with a mask token
substituted for some patches (SimMIM / BEiT); the prefix tokens (CLS, ...) are kept apart.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torchvision
from torch import nn

from selfsup.core.checks import Checked, NonNegative, NonNegativeInt, PositiveInt, UnitInterval
from selfsup.core.errors import ConfigError

RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
}
VIT_MODULES = ("vision_transformer", "deit", "beit")  # timm modules whose models ViTBackbone drives


@dataclass
class BackboneConfig(Checked):
    """Which encoder to build.

    name: ``resnet18`` / ``resnet34`` / ``resnet50`` or a timm ViT of the ``vit_``, ``deit_``,
        ``deit3_`` or ``beit_`` families (``vit_small_patch16_224``).
    cifar_stem: replace the 7x7 stride-2 conv + max-pool by a 3x3 stride-1 conv (32 px inputs).
    output_stride: 32 (plain), 16 (the last ResNet stage dilated) or 8 (the last two; DeepLab).
    zero_init_residual: zero the last BN gamma of every residual block.
    ViTs: ``img_size`` (the position-embedding grid; other input sizes work: learned embeddings
    are interpolated, sin-cos ones recomputed), ``patch_size`` (0: the model's own),
    ``drop_path`` (stochastic depth rate), ``layer_scale`` (LayerScale init, e.g. 0.1 for CAE;
    null: the model's default), ``pos_embed`` (``learned`` or fixed 2-D ``sincos``, MAE / CAE),
    ``kwargs``: further keyword arguments of ``timm.create_model``.
    init: a weights file to start from instead of random weights: what ``selfsup export`` writes
        (or any torchvision / timm state dict of the same architecture), e.g. MaskContrast
        initialised from an instance-level run as in the paper (which starts from MoCo v2).
        Only the classifier (``fc.*`` / ``head.*``) may be missing from it; any other missing or
        extra key is a one-line error. A run rebuilt from its checkpoint ignores it.
    """

    section: ClassVar[str] = "backbone"

    name: str = "resnet18"
    cifar_stem: bool = False
    output_stride: Literal[8, 16, 32] = 32
    zero_init_residual: bool = False
    img_size: PositiveInt = 224
    patch_size: NonNegativeInt = 0
    drop_path: UnitInterval = 0.0
    layer_scale: NonNegative | None = None
    pos_embed: Literal["learned", "sincos"] = "learned"
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.is_resnet or is_vit_name(self.name)):
            raise ConfigError(f"backbone.name: {self.name!r} is not a known backbone; available: {', '.join(RESNETS)} "
                              "or a timm model of the vit_ / deit_ / deit3_ / beit_ families")
        if not self.is_resnet and self.output_stride != 32:
            raise ConfigError(f"backbone.output_stride {self.output_stride} needs a ResNet, got {self.name!r}")

    @property
    def is_resnet(self) -> bool:
        return self.name in RESNETS


def is_vit_name(name: str) -> bool:
    """Whether ``name`` is a timm model that :class:`ViTBackbone` drives."""
    import timm
    from timm.models import is_model_in_modules

    return timm.is_model(name) and is_model_in_modules(name, VIT_MODULES)


def dilate_basic_stage(stage: nn.Sequential, dilation: int, first_dilation: int) -> None:
    """Turn a stride-2 stage of BasicBlocks into a stride-1 stage with dilated 3x3 convs.

    torchvision only dilates Bottleneck ResNets; this follows its ``replace_stride_with_dilation``
    rule for them: the first block's strided 3x3 conv loses its stride and keeps the dilation
    of the stage before (``first_dilation``: 1 for the first dilated stage, 2 for the second at
    output stride 8), every later 3x3 conv gets ``dilation`` (with the padding that keeps the
    size).
    """
    first = stage[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    first.conv1.dilation, first.conv1.padding = (first_dilation,) * 2, (first_dilation,) * 2
    convs = [first.conv2] + [c for block in stage[1:] for c in (block.conv1, block.conv2)]
    for conv in convs:
        conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier (``fc`` is an identity)."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        bottleneck = cfg.name == "resnet50"
        dilated = [False, cfg.output_stride <= 8, cfg.output_stride <= 16]
        net = RESNETS[cfg.name](
            weights=None,
            zero_init_residual=cfg.zero_init_residual,
            replace_stride_with_dilation=dilated if bottleneck else [False, False, False],
        )
        if not bottleneck:
            if dilated[1]:
                dilate_basic_stage(net.layer3, dilation=2, first_dilation=1)
            if dilated[2]:
                dilate_basic_stage(net.layer4, dilation=4 if dilated[1] else 2, first_dilation=2 if dilated[1] else 1)
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
        16, 32 with the standard stem, fewer with ``output_stride``), e.g. for an FPN neck."""
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

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Layer of every parameter for layer-wise lr decay: the stem 0, ``layerN`` N; 4 layers."""
        ids = {}
        for name, _ in self.named_parameters():
            part = name.split(".")[1]
            ids[name] = int(part[5:]) if part.startswith("layer") else 0
        return ids, 4

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights named as in ``torchvision.models.resnetXX()`` (without ``fc``)."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


@dataclass
class Tokens:
    """A ViT's output tokens after the final norm: ``prefix`` (B, P, D) the CLS (and other
    prefix) tokens, ``patches`` (B, n, D) the patch tokens, in the order they were given."""

    prefix: torch.Tensor
    patches: torch.Tensor


def sincos_pos_embed(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings (MAE, He et al., 2022; CAE): (h * w, dim), half the
    channels encode the row and half the column, each as [sin, cos] of geometric frequencies."""
    from timm.layers import build_sincos2d_pos_embed

    return build_sincos2d_pos_embed(list(grid), dim)


class ViTBackbone(nn.Module):
    """A timm Vision Transformer: patch tokens as the feature map, the model's pooled vector
    (CLS token, or the patch mean for ``global_pool: avg``) as the vector."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        import timm

        options: dict[str, Any] = {"img_size": cfg.img_size, "drop_path_rate": cfg.drop_path, **cfg.kwargs}
        if cfg.patch_size:
            options["patch_size"] = cfg.patch_size
        if cfg.layer_scale is not None:
            options["init_values"] = cfg.layer_scale
        self.net = timm.create_model(cfg.name, pretrained=False, num_classes=0, **options)
        self.out_dim = int(self.net.num_features)
        self.num_prefix = int(getattr(self.net, "num_prefix_tokens", 1))
        from timm.models.beit import Beit

        self.beit = isinstance(self.net, Beit)
        self.relative = getattr(self.net, "rel_pos_bias", None) is not None or any(
            getattr(getattr(b, "attn", None), "relative_position_bias_table", None) is not None
            for b in self.net.blocks
        )  # BEiT: attention biased by the full grid's relative positions
        self.net.patch_embed.strict_img_size = False  # other sizes (multi-crop) are allowed
        self.sincos = cfg.pos_embed == "sincos"
        if self.sincos:
            if getattr(self.net, "pos_embed", None) is None:
                raise ConfigError(f"backbone.pos_embed sincos: {cfg.name!r} has no absolute position embedding")
            with torch.no_grad():
                self.net.pos_embed.zero_()
                self.net.pos_embed[0, -self.grid[0] * self.grid[1]:] = sincos_pos_embed(self.grid, self.out_dim)
            self.net.pos_embed.requires_grad_(False)

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid of ``img_size`` inputs (that of the stored position embedding)."""
        return tuple(self.net.patch_embed.grid_size)

    @property
    def patch_size(self) -> int:
        return int(self.net.patch_embed.patch_size[0])

    def _pos_embed(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(prefix position embeddings (1, P, D) or None, patch ones (1, h * w, D) or None) for a grid."""
        pos = getattr(self.net, "pos_embed", None)
        if pos is None:
            return None, None
        with_prefix = not getattr(self.net, "no_embed_class", False)
        prefix, patches = (pos[:, : self.num_prefix], pos[:, self.num_prefix :]) if with_prefix else (None, pos)
        if grid != self.grid:
            if self.sincos:
                patches = sincos_pos_embed(grid, self.out_dim).to(pos)[None]
            else:
                from timm.layers import resample_abs_pos_embed

                patches = resample_abs_pos_embed(patches, list(grid), list(self.grid), num_prefix_tokens=0)
        return prefix, patches

    def tokens(
        self,
        x: torch.Tensor,
        keep: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        mask_token: torch.Tensor | None = None,
    ) -> Tokens:
        """Encode ``x`` (B, 3, H, W) into tokens.

        keep: int64 (B, n) patch indices (row-major on the h x w grid) that enter the encoder,
            in that order (MAE / CAE: the visible patches); None: all patches.
        mask: bool (B, h * w), patches whose embedding is replaced by ``mask_token`` (D,) before
            the position embedding is added (SimMIM / BEiT).
        """
        net = self.net
        x = x.to(net.patch_embed.proj.weight.dtype)  # float64 weights take float32 views
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        if self.relative and (keep is not None or grid != self.grid):
            raise ConfigError(f"{type(net).__name__} biases attention by the relative positions of its "
                              f"{self.grid} grid: it cannot encode a subset of patches or a {grid} grid")
        t = net.patch_embed(x)
        t = t.flatten(1, 2) if t.dim() == 4 else t  # NHWC output of timm's dynamic-size patch embed
        if mask is not None:
            if mask_token is None:
                raise ValueError("tokens(mask=...) needs the mask_token to substitute")
            t = torch.where(mask[..., None], mask_token.to(t.dtype).expand_as(t), t)
        prefix_pos, patch_pos = self._pos_embed(grid)
        if patch_pos is not None:
            t = t + patch_pos
        if keep is not None:
            t = t.gather(1, keep[..., None].expand(-1, -1, t.shape[-1]))
        prefix = [p.expand(t.shape[0], -1, -1) for p in (net.cls_token, getattr(net, "dist_token", None),
                                                           getattr(net, "reg_token", None)) if p is not None]
        if prefix:
            p = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                p = p + prefix_pos
            t = torch.cat([p, t], dim=1)
        t = net.pos_drop(t)
        if self.beit:
            bias = net.rel_pos_bias() if net.rel_pos_bias is not None else None
            for block in net.blocks:
                t = block(t, shared_rel_pos_bias=bias)
        else:
            t = net.norm_pre(net.patch_drop(t))
            t = net.blocks(t)
        t = net.norm(t)
        return Tokens(t[:, : self.num_prefix], t[:, self.num_prefix :])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.tokens(x)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        fmap = out.patches.transpose(1, 2).reshape(x.shape[0], self.out_dim, h, w)
        return fmap, self.net.forward_head(torch.cat([out.prefix, out.patches], dim=1), pre_logits=True)

    def layer_ids(self) -> tuple[dict[str, int], int]:
        """Layer of every parameter for layer-wise lr decay, from timm's ``group_matcher``: the
        patch / position embeddings and CLS token 0, block i i + 1 (the final norm with the last
        block); L = depth layers, as MAE's and BEiT's fine-tuning count them."""
        from timm.models import group_parameters

        groups = group_parameters(self.net, self.net.group_matcher(coarse=False))
        ids = {f"net.{name}": i for i, names in groups.items() for name in names}
        return ids, max(groups)

    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights named as in ``timm.create_model(name, num_classes=0)``."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


def build_backbone(cfg: BackboneConfig) -> ResNetBackbone | ViTBackbone:
    """Build the encoder named by ``cfg.name`` (checked by ``BackboneConfig``), starting from the
    weights file ``cfg.init`` when one is given."""
    backbone = ResNetBackbone(cfg) if cfg.name in RESNETS else ViTBackbone(cfg)  # no other name passes
    if cfg.init is not None:
        load_init(backbone, cfg.init)
    return backbone


def load_init(backbone: ResNetBackbone | ViTBackbone, path: str) -> None:
    """Load the state dict file ``path`` into ``backbone.net`` (``backbone.init``)."""
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ConfigError(f"backbone.init {path}: cannot read weights ({e.__class__.__name__}: {first})") from e
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ConfigError(f"backbone.init {path}: not a state dict of tensors (write one with 'selfsup export')")
    own = backbone.net.state_dict()
    missing = [k for k in own if k not in weights and not k.startswith(("fc.", "head."))]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        kind, wrong = ("missing", missing) if missing else ("unexpected", unexpected)
        raise ConfigError(f"backbone.init {path}: {kind} key(s) {', '.join(wrong[:3])} for this backbone "
                          f"({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in weights.items():
        if v.shape != own[k].shape:
            raise ConfigError(f"backbone.init {path}: {k} is {tuple(v.shape)}, this backbone has {tuple(own[k].shape)}")
    backbone.net.load_state_dict(weights, strict=False)
