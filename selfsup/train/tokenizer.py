"""Training the discrete tokenizer (``selfsup tokenizer train``): a VQ-VAE
(:mod:`selfsup.models.tokenizer`) on the unlabelled training images, seen as a MIM method sees
them (random-resized crop and flip, normalised).

Per step: the autoencoder pass, the loss :func:`vq_loss`, an Adam step of the encoder and
decoder, then the codebook's EMA update and the restart of dead codes from this batch's encoder
outputs. After every epoch, on held-out images (the test split, else a fixed subset of the
training images, whole images at the training size): the reconstruction error (MSE in the
normalised pixel space), the codebook's perplexity and the fraction of codes used; one line in
``metrics.jsonl``, a picture ``recon_epochNNN.png`` (originals above, reconstructions below) and
the tokenizer saved (``tokenizer.json`` + ``tokenizer.safetensors``) in the output folder.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.core.checks import Checked, Fraction, NonNegativeInt, Positive, PositiveInt
from selfsup.core.device import resolve_device
from selfsup.core.errors import ConfigError
from selfsup.core.tensors import upcast
from selfsup.data import cap, open_dataset
from selfsup.models.tokenizer import TokenizerConfig, VQOutput, VQTokenizer, codebook_usage, save_tokenizer
from selfsup.views.recipes import eval_view, make_views, single_view


@dataclass
class TokenizerTrainConfig(Checked):
    """A tokenizer training run: data, output folder, schedule, and the tokenizer's own options."""

    data: str
    out: str
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    epochs: PositiveInt = 10
    batch_size: PositiveInt = 128
    lr: Positive = 2e-3
    size: PositiveInt = 32
    scale: tuple[Fraction, Fraction] = (0.2, 1.0)
    max_images: NonNegativeInt = 0
    eval_images: PositiveInt = 1000
    picture_images: PositiveInt = 8
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.size % self.model.patch_size:
            raise ConfigError(f"tokenizer: --size {self.size} is not a multiple of --patch-size "
                              f"{self.model.patch_size}")


def vq_loss(out: VQOutput, images: torch.Tensor, commitment: float) -> tuple[torch.Tensor, torch.Tensor]:
    """VQ-VAE's objective with an EMA codebook (van den Oord et al., 2017, Eq. 3 without its
    codebook term): L = mean (x - D(z_q))^2 + beta mean (z - sg(e))^2; returns (L, the
    reconstruction MSE)."""
    recon = F.mse_loss(upcast(out.recon), upcast(images))
    return recon + commitment * F.mse_loss(upcast(out.z), upcast(out.codes)), recon.detach()


@torch.no_grad()
def evaluate(tokenizer: VQTokenizer, images: torch.Tensor, batch_size: int) -> dict[str, float]:
    """Reconstruction MSE and codebook usage of normalised images (N, 3, H, W)."""
    errors, ids = [], []
    for x in images.split(batch_size):
        out = tokenizer.autoencode(x)
        errors.append(F.mse_loss(upcast(out.recon), upcast(x), reduction="sum"))
        ids.append(out.ids)
    return {"recon_mse": float(sum(errors) / images.numel()), **codebook_usage(torch.cat(ids), tokenizer.vocab_size)}


def write_picture(tokenizer: VQTokenizer, images: torch.Tensor, path: Path) -> None:
    """Originals (top row) and their reconstructions through the codes (bottom row), de-normalised."""
    from torchvision.utils import save_image

    cfg = tokenizer.cfg
    mean, std = torch.tensor(cfg.mean).view(1, 3, 1, 1), torch.tensor(cfg.std).view(1, 3, 1, 1)
    with torch.no_grad():
        recon = tokenizer.autoencode(images).recon
    rows = torch.cat([images, recon]).float().cpu() * std + mean
    save_image(rows.clamp(0, 1), path, nrow=images.shape[0], padding=1)


def train_tokenizer(cfg: TokenizerTrainConfig) -> dict[str, Any]:
    """Train, evaluate every epoch, save; returns the last epoch's record."""
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    m = cfg.model
    splits = open_dataset(cfg.data)
    train = cap(splits.train, cfg.max_images, cfg.seed)
    if len(train) < cfg.batch_size:
        raise ConfigError(f"tokenizer: --batch-size {cfg.batch_size} is larger than the dataset ({len(train)} images)")
    held = cap(splits.test if splits.test is not None else train, cfg.eval_images, cfg.seed + 1)
    batch = next(held.batches(len(held), shuffle=False, drop_last=False))
    eval_images = eval_view(batch.images, cfg.size, m.mean, m.std).to(device)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    tokenizer = VQTokenizer(m).to(device)
    params = [p for n, p in tokenizer.named_parameters() if not n.startswith("quantizer.")]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    specs = single_view(cfg.size, cfg.scale, False, m.mean, m.std)
    view_gen = torch.Generator().manual_seed(cfg.seed)
    restart_gen = torch.Generator().manual_seed(cfg.seed + 1)
    metrics = (out_dir / "metrics.jsonl").open("w")
    record: dict[str, Any] = {}
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        start, sums, n = time.monotonic(), {"loss": 0.0, "train_recon_mse": 0.0, "restarts": 0.0}, 0
        tokenizer.train()
        for b in train.batches(cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch - 1):
            b = b.to(device)
            x = make_views(b.images, b.sizes, specs, view_gen)[0].images
            out = tokenizer.autoencode(x)
            loss, recon = vq_loss(out, x, m.commitment)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            tokenizer.quantizer.update(out.z, out.ids.flatten())
            restarts = tokenizer.quantizer.restart_dead(out.z, restart_gen)
            step += 1
            n += 1
            for k, v in (("loss", loss.item()), ("train_recon_mse", recon.item()), ("restarts", restarts)):
                sums[k] += v
        tokenizer.eval()
        record = {"epoch": epoch, "step": step, **{k: v / max(n, 1) for k, v in sums.items()},
                  **evaluate(tokenizer, eval_images, cfg.batch_size), "seconds": round(time.monotonic() - start, 2)}
        metrics.write(json.dumps(record) + "\n")
        metrics.flush()
        write_picture(tokenizer, eval_images[: cfg.picture_images], out_dir / f"recon_epoch{epoch:03d}.png")
        save_tokenizer(tokenizer, out_dir, stats={**record, "held_out": "test split" if splits.test is not None
                                                  else "training images", "held_out_images": len(held)})
        print(f"tokenizer epoch {epoch}/{cfg.epochs}: recon_mse {record['recon_mse']:.4f} perplexity "
              f"{record['perplexity']:.1f} codes_used {record['codes_used']:.3f} restarts/step "
              f"{record['restarts']:.2f}", file=sys.stderr)
    metrics.close()
    return record
