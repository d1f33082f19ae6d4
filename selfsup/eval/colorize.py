"""Pictures of a colorization run: held-out images as the network sees them (L only), as it
colours them (its annealed-mean ab with their own L) and as they are.

``selfsup colorize RUN`` writes ``RUN/colorized.png``: one column per image, rows grey input,
colourised, original; images are drawn at random (``seed``) from the run's held-out split (its
training split where there is none) and resized to the run's view size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import save_image

from selfsup.core.errors import ConfigError
from selfsup.data import cap, open_dataset
from selfsup.methods.colorization import Colorization
from selfsup.train.runs import checkpoint_file, load_run
from selfsup.views.lab import lab_to_rgb
from selfsup.views.recipes import eval_view


@torch.no_grad()
def colorized_grid(method: Colorization, images: torch.Tensor, cell: int = 96) -> torch.Tensor:
    """(3, 3 cell, n cell) picture of normalised ``images`` (n, 3, H, W): rows grey (L with
    a = b = 0), colourised, original; each image upsampled to ``cell`` pixels (nearest)."""
    light = method.backbone.lab(images)[0] * 50 + 50
    grey = lab_to_rgb(torch.cat([light, torch.zeros_like(light).expand(-1, 2, -1, -1)], dim=1))
    rows = torch.stack([grey, method.colourise(images), method.backbone.lab.rgb(images)])  # (3, n, 3, H, W)
    n = images.shape[0]
    cells = F.interpolate(rows.flatten(0, 1).float(), size=(cell, cell), mode="nearest")
    return cells.view(3, n, 3, cell, cell).permute(2, 0, 3, 1, 4).reshape(3, 3 * cell, n * cell)


def write_colorized(checkpoint: str | Path, out: str | Path | None = None, data: str | None = None, n: int = 16,
                    seed: int = 0, device: str = "cpu") -> Path:
    """Draw ``n`` held-out images of the run ``checkpoint`` (or of ``data``) and write the PNG of
    :func:`colorized_grid` to ``out`` (default: ``colorized.png`` in the run folder)."""
    cfg, method = load_run(checkpoint)
    if not isinstance(method, Colorization):
        raise ConfigError(f"{checkpoint}: colorize needs a colorization run, this one is method {cfg.method!r}")
    splits = open_dataset(data or cfg.data.path, load_size=cfg.data.load_size)
    images = cap(splits.test if splits.test is not None else splits.train, n, seed)
    batch = next(images.batches(len(images), shuffle=False, drop_last=False))
    method = method.to(device)
    x = eval_view(batch.images.to(device), cfg.views.size, cfg.views.mean, cfg.views.std)
    out = Path(out) if out else checkpoint_file(checkpoint).parent / "colorized.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_image(colorized_grid(method, x).cpu(), out)
    return out
