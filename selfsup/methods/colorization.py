"""Colorization (Zhang, Isola, Efros: "Colorful Image Colorization", ECCV 2016), as a pretext
task: predict the ab colour channels of the CIE Lab image from its lightness L.

- Views: ONE view per image (the ``pretext`` recipe: random-resized crop and flip, no colour
  jitter: colour is the target). The view is converted to Lab (``selfsup.views.lab``, torch,
  tested against OpenCV): the network sees only L, scaled (L - 50) / 50.
- Output space: ab quantised on a grid of 10, keeping the Q = 313 grid points in the sRGB gamut
  (``ab_bins``). The network F (the backbone with a 1-channel stem, then a 1x1 convolution
  to Q logits at every location of its feature map, bilinearly upsampled to 1/``stride`` of
  the view) predicts a distribution Zhat_hw over the Q bins per target location.
- Targets: the view's ab, area-averaged to the same 1/``stride`` resolution, soft-encoded
  (``soft_encode``): Z_hw puts Gaussian weights (sigma 5) on the 5 nearest bin centres.
- Class rebalancing: pixels are weighted by the rarity of their colour,
      w ∝ ((1 - lam) p~ + lam / Q)^-1,   sum_q p~_q w_q = 1,   lam = 0.5,
  where p~ is the empirical distribution of the (nearest) bins of the training images (their
  whole images through the evaluation view, at the target resolution, computed once before
  the first step) smoothed by a Gaussian of sigma 5 in ab space (``rebalance_weights``).
- Loss (eq. 2 and 3): the rebalanced multinomial cross-entropy
      L = -1/(N H W) sum_{n,h,w} v(Z_nhw) sum_q Z_nhwq log Zhat_nhwq,   v(Z) = w_{argmax_q Z}.
  ``pretext_acc``: the colour-bin accuracy, argmax_q Zhat = nearest bin of the true ab.
- Decoding (eq. 5): the annealed mean of softmax(log Zhat / T), T = 0.38 (``annealed_mean``);
  ``selfsup colorize RUN`` writes pictures of colourised validation images (``colourise``).
- Evaluated / exported network: the backbone on the L channel of the (normalised RGB)
  images (``LightnessBackbone``); its export is the network with a 1-channel stem.
- Differences from the official code (richzhang/colorization, caffe): the network is the
  configured backbone (the paper: a VGG-style network with dilated convolutions, output at 1/4
  of 224 px with a deconvolution); here the 1x1 classifier reads the last feature map, whose
  resolution is bilinearly upsampled to the target's (at 32 px a standard-stem ResNet's map is
  1 x 1: each image then predicts one distribution of its colours for all locations); the
  targets are area-averaged rather than subsampled; the prior comes from the training set of
  the run (the paper: ImageNet's, shipped as a file); the paper's 313 bins are recomputed from
  the sRGB gamut (the same set: tests/test_pretext_colour.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, Positive, PositiveInt, UnitInterval
from selfsup.core.tensors import upcast
from selfsup.data import ImageDataset
from selfsup.methods.base import RunInfo, StepOutput
from selfsup.methods.pretext import LightnessBackbone, PretextMethod, accuracy, with_in_channels
from selfsup.views.config import ViewsConfig
from selfsup.views.lab import (
    ab_bins,
    annealed_mean,
    lab_to_rgb,
    nearest_bin,
    rebalance_weights,
    smoothed_prior,
    soft_encode,
)
from selfsup.views.recipes import eval_view
from selfsup.views.view import View

AB_SCALE = 110  # LabInput's ab / 110


@dataclass
class ColorizationConfig(Checked):
    section: ClassVar[str] = "colorization"

    grid: PositiveInt = 10  # ab quantisation step (10: the paper's 313 bins)
    neighbours: PositiveInt = 5  # soft encoding: nearest bins
    sigma: Positive = 5.0  # soft encoding: Gaussian std in ab units
    rebalance: UnitInterval = 0.5  # lambda of the class rebalancing (1: no rebalancing)
    prior_sigma: NonNegative = 5.0  # Gaussian smoothing of the empirical prior (0: none)
    temperature: Positive = 0.38  # annealed-mean decoding
    stride: PositiveInt = 4  # targets at 1 / stride of the view's resolution


class Colorization(PretextMethod):
    Config = ColorizationConfig
    description = "Colorization: L -> distribution over 313 ab bins, rebalanced soft cross-entropy"

    def __init__(self, backbone: nn.Module, cfg: ColorizationConfig, run: RunInfo) -> None:
        super().__init__(LightnessBackbone(with_in_channels(backbone, 1)), run)
        self.cfg = cfg
        self.register_buffer("bins", ab_bins(cfg.grid).clone())
        q = len(self.bins)
        self.head = nn.Conv2d(backbone.out_dim, q, 1)
        self.register_buffer("prior", torch.full((q,), 1 / q))  # p~, estimated in on_fit_start
        self.register_buffer("weights", torch.ones(q))

    @torch.no_grad()
    def on_fit_start(self, train: ImageDataset, views: ViewsConfig, device: torch.device) -> None:
        """The views' normalisation into the Lab input, then the smoothed empirical bin
        distribution p~ of the training images (``prior``) and its rebalancing weights."""
        self.backbone.lab.set_stats(views)
        counts = torch.zeros(len(self.bins), dtype=torch.float64, device=device)
        for batch in train.batches(256, shuffle=False, drop_last=False):
            x = eval_view(batch.images.to(device), views.size, views.mean, views.std)
            counts += torch.bincount(nearest_bin(self.target_ab(x), self.bins), minlength=len(self.bins))
        self.prior.copy_(smoothed_prior(counts, self.cfg.prior_sigma, self.bins))
        self.weights.copy_(rebalance_weights(counts, self.cfg.rebalance, self.cfg.prior_sigma, self.bins))

    def target_ab(self, images: torch.Tensor) -> torch.Tensor:
        """(N H' W', 2) the true ab (Lab units) of normalised RGB ``images`` at the target
        resolution (area average over ``stride`` x ``stride`` blocks)."""
        ab = F.adaptive_avg_pool2d(self.backbone.lab(images)[1] * AB_SCALE, self.target_size(images))
        return ab.permute(0, 2, 3, 1).reshape(-1, 2)

    def target_size(self, images: torch.Tensor) -> tuple[int, int]:
        h, w = images.shape[-2:]
        return max(1, h // self.cfg.stride), max(1, w // self.cfg.stride)

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, Q, H', W') at the target resolution, pooled features (N, D)) of the L
        channel of ``images``."""
        fmap, pooled = self.backbone(images)
        logits = F.interpolate(self.head(fmap), size=self.target_size(images), mode="bilinear", align_corners=False)
        return logits, pooled

    def _predict(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N H' W', Q), true ab (N H' W', 2), pooled features) of the first view."""
        x = views[0].images
        logits, pooled = self.logits(x)
        return logits.permute(0, 2, 3, 1).reshape(-1, len(self.bins)), self.target_ab(x), pooled

    def pretext(self, views: list[View]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, ab, _ = self._predict(views)
        return logits, nearest_bin(ab, self.bins)

    def forward(self, views: list[View]) -> StepOutput:
        logits, ab, pooled = self._predict(views)
        z = soft_encode(ab, self.bins, self.cfg.neighbours, self.cfg.sigma)
        nearest = z.argmax(dim=1)
        loss = -(self.weights[nearest] * (z * F.log_softmax(upcast(logits), dim=1)).sum(dim=1)).mean()
        return StepOutput(loss, {"pretext_acc": accuracy(logits, nearest)}, embedding=pooled.detach())

    @torch.no_grad()
    def colourise(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (N, 3, H, W) of normalised ``images``: their own L with the annealed-mean
        ab prediction (temperature ``cfg.temperature``), upsampled bilinearly to full size."""
        was = self.training
        self.eval()
        try:
            logits, _ = self.logits(images)
            ab = annealed_mean(logits, self.bins, self.cfg.temperature)
            ab = F.interpolate(ab, size=images.shape[-2:], mode="bilinear", align_corners=False)
            light = self.backbone.lab(images)[0] * 50 + 50
            return lab_to_rgb(torch.cat([light.float(), ab.float()], dim=1))
        finally:
            self.train(was)
