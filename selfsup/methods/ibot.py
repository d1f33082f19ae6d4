"""iBOT (Zhou, Wei, Wang, Shen, Xie, Yuille, Kong: "iBOT: Image BERT Pre-Training with Online
Tokenizer", ICLR 2022).

- Views: DINO's multi-crop (the ``byol`` recipe: two global crops, view 1 always blurred, view 2
  sometimes solarized, plus ``views.local_crops`` small crops).
- Masking: every global crop u gets a block-wise mask (``masking``, blocks of >= ``mask_min_block``
  patches) of a ratio drawn per image uniformly in [mask_ratio - mask_ratio_var,
  mask_ratio + mask_ratio_var] (the paper's [0.1, 0.5]); the masked crop u^ has a shared
  learnable mask token in place of the masked patches' embeddings. Local crops are not masked.
- Networks: student = ViT + a DINO head (:class:`selfsup.methods.dino.DINOHead`) applied to the
  CLS token AND to every patch token; with ``shared_head`` (the paper's choice) both use the
  same head, else the patch tokens get their own. Teacher = EMA copy of ViT + head(s),
  momentum 0.996 -> 1 (cosine), seeing the UNMASKED global crops only. The teacher's patch
  head is the "online tokenizer": its distribution over K outputs is each patch's target.
- Loss L = L_cls + lambda_patch L_mim:
  L_cls: DINO's cross-view loss on the CLS token (:func:`selfsup.losses.distillation.dino_loss`):
  teacher on u_i (unmasked global), student on every OTHER crop (masked globals, locals);
  L_mim: on the same crop, the teacher's patch distribution on u_i is the target of the
  student's on u^_i at the masked patches, averaged per image then over images and over the two
  global crops (:func:`selfsup.losses.distillation.masked_patch_distillation`).
- Centring and sharpening for both heads: P_t = softmax((g_t - c) / tau_t) with the CLS centre c
  and P_t' = softmax((g_t' - c') / tau_t') with the patch centre c' (over every patch token),
  both c <- m c + (1 - m) mean (m = ``center_momentum``, means over the global batch, all-reduced
  over ranks); tau_t and tau_t' warm up linearly from 0.04 over ``warmup_teacher_temp_epochs``
  epochs, the student's tau_s = 0.1. The last layer(s) get no update for the first
  ``freeze_last_layer_epochs`` epochs.
- Differences from the official code: masks come from the run's checkpointed generator, drawn for
  the global batch (identical under DDP to one process) with exact counts per image (the
  official generator may stop short); no ``pred_start_epoch`` (masking from the first step); the
  ratio is drawn per image, never 0 (the official ViT-L option of unmasked images is not
  offered); no weight-decay schedule (``optim.weight_decay_end`` provides one); under gradient
  accumulation the centres are updated after every micro-batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from selfsup.core.checks import Fraction, Positive, PositiveInt, UnitInterval
from selfsup.core.comm import rank, world_size
from selfsup.core.errors import ConfigError
from selfsup.losses.distillation import dino_loss, masked_patch_distillation
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.dino import DINOConfig, DINOHead, teacher_temperature, update_center
from selfsup.methods.masked import MaskedImageModel, MaskingConfig
from selfsup.methods.momentum import MomentumEncoder
from selfsup.views.masking import MaskKind, mask_count
from selfsup.views.masking import draw_masks as draw_patch_masks
from selfsup.views.view import View


@dataclass
class IBOTConfig(MaskingConfig, DINOConfig):
    """iBOT's options: DINO's head, temperatures and momentum (``selfsup.methods.dino``), the masks'
    ratio range, the patch head's teacher temperatures and the MIM loss weight."""

    section: ClassVar[str] = "ibot"

    masking: MaskKind = "block"
    mask_ratio: Fraction = 0.3
    mask_ratio_var: UnitInterval = 0.2
    out_dim: PositiveInt = 8192
    shared_head: bool = True
    teacher_patch_temp: Positive = 0.07
    warmup_teacher_patch_temp: Positive = 0.04
    lambda_patch: Positive = 1.0


class IBOT(MaskedImageModel):
    Config = IBOTConfig
    recipe = "byol"
    description = "iBOT: DINO on the CLS token plus self-distillation of masked patch tokens from an EMA teacher"

    def __init__(self, backbone: nn.Module, cfg: IBOTConfig, run: RunInfo) -> None:
        super().__init__(backbone, cfg, run)
        dim = self.backbone.out_dim
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

        def head() -> DINOHead:
            return DINOHead(dim, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim, cfg.head_bn, cfg.norm_last_layer)

        self.head = head()
        self.patch_head = None if cfg.shared_head else head()
        self.teacher = MomentumEncoder(cfg.base_momentum, backbone=self.backbone, head=self.head,
                                       patch_head=self.patch_head)
        self.register_buffer("center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(1, cfg.out_dim))
        self.register_buffer("teacher_temp", torch.tensor(0.0))
        self.register_buffer("teacher_patch_temp", torch.tensor(0.0))
        self._set_temperatures(0)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        super().check_config(cfg)
        m = cfg.params
        if m.mask_ratio_var > m.mask_ratio or m.mask_ratio + m.mask_ratio_var >= 1:
            raise ConfigError(f"ibot: the mask ratio range [{m.mask_ratio - m.mask_ratio_var:g}, "
                              f"{m.mask_ratio + m.mask_ratio_var:g}] (mask_ratio +- mask_ratio_var) must lie in [0, 1)")

    def _set_temperatures(self, step: int) -> None:
        c, epoch = self.cfg, step // self.run.steps_per_epoch
        epochs = c.warmup_teacher_temp_epochs
        self.teacher_temp.fill_(teacher_temperature(epoch, c.warmup_teacher_temp, c.teacher_temp, epochs))
        self.teacher_patch_temp.fill_(teacher_temperature(epoch, c.warmup_teacher_patch_temp, c.teacher_patch_temp,
                                                          epochs))

    def draw_masks(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """bool (B, h * w) masks of this rank's images, each image's ratio drawn in the range: the
        rank's slice of the global batch's masks, from the run's generator (or ``generator``)."""
        cfg, grid, n = self.cfg, self.grid(images), images.shape[0]
        gen = self.mask_rng.next(torch.device("cpu")) if generator is None else generator
        total = n * world_size()
        ratios = cfg.mask_ratio + cfg.mask_ratio_var * (2 * torch.rand(total, generator=gen, dtype=torch.float64) - 1)
        counts = [mask_count(grid[0] * grid[1], float(r), cfg.mask_count) for r in ratios]
        masks = torch.cat([draw_patch_masks(cfg.masking, 1, grid, k, gen, cfg.mask_min_block, cfg.mask_aspect)
                           for k in counts])
        return masks[rank() * n : (rank() + 1) * n].to(images.device)

    def predict_patches(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise ConfigError("ibot predicts the teacher's patch distributions, not pixels: it has no reconstructions")

    def patch_logits(self, patches: torch.Tensor, teacher: bool = False) -> torch.Tensor:
        """The patch head's logits (B, N, K) of patch tokens (B, N, D)."""
        source = self.teacher if teacher else self
        head = source.head if self.cfg.shared_head else source.patch_head
        return head(patches.flatten(0, 1)).view(*patches.shape[:2], -1)

    def forward(self, views: list[View]) -> StepOutput:
        c, n = self.cfg, views[0].images.shape[0]
        globals_ = torch.cat([v.images for v in views[:2]])
        masks = torch.cat([self.draw_masks(v.images) for v in views[:2]])
        s = self.backbone.tokens(globals_, mask=masks, mask_token=self.mask_token)
        student_cls = list(self.head(s.prefix[:, 0]).chunk(2))
        if len(views) > 2:
            local = self.backbone.tokens(torch.cat([v.images for v in views[2:]])).prefix[:, 0]
            student_cls += list(self.head(local).chunk(len(views) - 2))
        student_patch = self.patch_logits(s.patches)
        with torch.no_grad():
            t = self.teacher.backbone.tokens(globals_)
            teacher_cls = self.teacher.head(t.prefix[:, 0])
            teacher_patch = self.patch_logits(t.patches, teacher=True)
        loss_cls = dino_loss(student_cls, list(teacher_cls.chunk(2)), self.center, c.student_temp, self.teacher_temp)
        loss_patch = sum(masked_patch_distillation(sp, tp, m, self.patch_center, c.student_temp,
                                                   self.teacher_patch_temp)
                         for sp, tp, m in zip(student_patch.chunk(2), teacher_patch.chunk(2), masks.chunk(2),
                                              strict=True)) / 2
        update_center(self.center, teacher_cls, c.center_momentum)
        update_center(self.patch_center, teacher_patch.flatten(0, 1), c.center_momentum)
        logs = {"loss_cls": loss_cls.detach(), "loss_patch": loss_patch.detach(),
                "teacher_temp": self.teacher_temp.detach().clone(), "momentum": torch.tensor(self.teacher.momentum),
                "mask_ratio": masks.float().mean()}
        return StepOutput(loss_cls + c.lambda_patch * loss_patch, logs, embedding=s.prefix[:n, 0].detach())

    def after_backward(self, step: int) -> None:
        if step < self.cfg.freeze_last_layer_epochs * self.run.steps_per_epoch:
            for head in (self.head, self.patch_head):
                for p in head.last_layer.parameters() if head is not None else ():
                    p.grad = None

    def on_step(self, step: int, total_steps: int) -> None:
        self.teacher.update(step, total_steps)
        self._set_temperatures(step)
