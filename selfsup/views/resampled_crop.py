"""Crops drawn again until they satisfy a condition: a method's own crop sampler over any other.

MaskContrast (Van Gansbeke et al., ICCV 2021) resamples its two views until the salient area
of both lies in (1%, 99%). Views are drawn independently, so conditioning on "both views
accepted" is the same as drawing each view until it alone is accepted: a per-view rejection
sampler gives that distribution exactly. :class:`ResampledCrop` wraps whatever sampler
``views.crop`` selects (random-resized crops, ContrastiveCrop, the fixed centre crop), so a
method's condition composes with the run's crop choice (``Method.crop_sampler``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from selfsup.views.boxes import sample_pixel_boxes
from selfsup.views.samplers import CropSampler

Accept = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


class ResampledCrop(CropSampler):
    """Boxes of ``base`` (None: random-resized crops), redrawn where ``accept`` rejects them.

    accept(boxes, sizes, maps) -> bool (B,): boxes int64 (B, 4) (left, top, width, height) in
    original pixels, sizes (B, 2), maps the batch's per-pixel maps (or None). Up to ``tries``
    draws; a sample never accepted keeps its last draw and is counted in ``rejected`` (the
    number of such samples since the sampler was made). Each retry draws a whole batch from the
    generator, so the stream stays a pure function of the seed.
    """

    def __init__(self, base: CropSampler | None, accept: Accept, tries: int = 10) -> None:
        self.base = base
        self.accept = accept
        self.tries = tries
        self.rejected = 0

    def _draw(self, sizes, scale, ratio, generator, index, maps) -> torch.Tensor:
        if self.base is None:
            return sample_pixel_boxes(sizes, scale, ratio, generator)
        return self.base.sample(sizes, scale, ratio, generator, index, maps)

    def sample(
        self,
        sizes: torch.Tensor,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        generator: torch.Generator,
        index: torch.Tensor | None,
        maps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        boxes = self._draw(sizes, scale, ratio, generator, index, maps)
        ok = self.accept(boxes, sizes, maps).cpu()
        for _ in range(self.tries - 1):
            if bool(ok.all()):
                break
            again = self._draw(sizes, scale, ratio, generator, index, maps)
            redo = ~ok
            boxes = torch.where(redo[:, None], again, boxes)
            ok = ok | (redo & self.accept(again, sizes, maps).cpu())
        self.rejected += int((~ok).sum())
        return boxes
