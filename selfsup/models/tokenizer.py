"""A discrete visual tokenizer trained here: a small VQ-VAE (van den Oord, Vinyals, Kavukcuoglu:
"Neural Discrete Representation Learning", NeurIPS 2017) for BEiT's and CAE's token targets.

BEiT (Bao et al., ICLR 2022) and CAE use the DALL-E dVAE (Ramesh et al., 2021), which cannot be
downloaded here, so the library trains its own on the same unlabelled images
(``selfsup tokenizer train``, :mod:`selfsup.train.tokenizer`).

- Encoder E: a 3x3 conv, log2(p) stride-2 4x4 convs (ReLU before each), ``res_blocks`` residual
  blocks (ReLU, 3x3, ReLU, 1x1), ReLU, a 1x1 conv to ``code_dim``: one vector z per p x p patch,
  i.e. exactly the ViT's patch grid (patch 4 at 32 px: 8 x 8 ids per image).
- Quantiser: each z is replaced by its nearest codebook vector e_k (squared Euclidean distance),
  k the token id. The decoder sees z + sg(e_k - z) (the straight-through estimator: the forward
  pass uses e_k, the gradient of the reconstruction reaches the encoder unchanged).
- Decoder D: the encoder mirrored (4x4 transposed convs), no output activation: it reconstructs
  the NORMALISED image (the pixels a method's view holds).
- Training loss (:func:`selfsup.train.tokenizer.vq_loss`): ||x - D(z_q)||^2 + beta ||z - sg(e)||^2;
  the codebook itself is not trained by gradient but by exponential moving averages of the
  encoder outputs assigned to each code (the paper's appendix A.1, VQ-VAE-2's default):
      N_k <- g N_k + (1 - g) n_k,   m_k <- g m_k + (1 - g) sum_{z -> k} z,   e_k = m_k / N~_k,
  N~ Laplace-smoothed. Codes whose count N_k falls below ``dead_threshold`` (used less than about
  once per batch) are restarted at random encoder outputs of the batch (Dhariwal et al.,
  Jukebox, 2020). N starts at 0, so the first restart initialises the whole codebook from data.

Why a VQ-VAE with EMA codebook and restarts rather than a Gumbel-softmax dVAE (DALL-E) or a
VQ-KD tokenizer distilled from a teacher (BEiT v2): the VQ-VAE needs no temperature or KL
schedule and no pre-trained teacher, it learns a usable codebook in a few CPU epochs, and EMA
updates with restarts keep most codes in use (a codebook trained by gradient at this scale
leaves most codes dead). The codebook has 512 codes at CPU scale (8192 for DALL-E): a 32 px image
has 64 patches, and the MIM classifier's cost grows with the vocabulary; 512 codes are what a
few epochs of CIFAR-10 fill (the training reports perplexity and the fraction of codes used).

A trained tokenizer is a folder with ``tokenizer.json`` (the config, the normalisation it was
trained with and its statistics) and ``tokenizer.safetensors`` (the weights; no pickled
objects). :func:`load_tokenizer` returns a frozen :class:`VQTokenizer`, which implements the
MIM methods' ``Tokenizer`` protocol: ``tokenizer(images) -> int64 ids (B, h * w)`` and
``vocab_size``. Calling it never changes the codebook (the EMA update is an explicit call).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.core.checks import Checked, NonNegative, NonNegativeInt, Positive, PositiveInt, UnitInterval
from selfsup.core.errors import ConfigError
from selfsup.core.tensors import upcast

CONFIG_FILE, WEIGHTS_FILE = "tokenizer.json", "tokenizer.safetensors"
FORMAT = "selfsup-vq-tokenizer"


@dataclass
class TokenizerConfig(Checked):
    """The tokenizer's architecture and codebook options (module docstring).

    patch_size: pixels per token side (a power of two; the ViT's patch size). mean / std: the
    normalisation of the images it is trained on and expects (a method's ``views.mean / std``).
    """

    section: ClassVar[str] = "tokenizer"

    patch_size: PositiveInt = 4
    codebook_size: PositiveInt = 512
    code_dim: PositiveInt = 32
    hidden: PositiveInt = 64
    res_blocks: NonNegativeInt = 2
    commitment: NonNegative = 0.25
    decay: UnitInterval = 0.99
    dead_threshold: NonNegative = 1.0
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[Positive, Positive, Positive] = (0.229, 0.224, 0.225)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patch_size & (self.patch_size - 1):
            raise ConfigError(f"tokenizer.patch_size must be a power of two, got {self.patch_size}")


class ResBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EMAQuantizer(nn.Module):
    """Nearest-code quantisation with an EMA-updated codebook and dead-code restarts."""

    def __init__(self, size: int, dim: int, decay: float, dead_threshold: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.dead_threshold, self.eps = decay, dead_threshold, eps
        self.register_buffer("codebook", torch.randn(size, dim))
        self.register_buffer("ema_count", torch.zeros(size))
        self.register_buffer("ema_sum", self.codebook.clone())

    def assign(self, z: torch.Tensor) -> torch.Tensor:
        """Ids (N,) of the nearest codes of z (N, D), distances in float32 or better."""
        z, e = upcast(z), upcast(self.codebook)
        dist = z.pow(2).sum(1, keepdim=True) - 2 * z @ e.T + e.pow(2).sum(1)[None]
        return dist.argmin(dim=1)

    @torch.no_grad()
    def update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """The EMA step of the codebook from this batch's encoder outputs z (N, D) and ids (N,)."""
        z = z.detach().to(self.ema_sum.dtype)
        onehot = F.one_hot(ids, self.codebook.shape[0]).to(z.dtype)
        self.ema_count.lerp_(onehot.sum(0), 1 - self.decay)
        self.ema_sum.lerp_(onehot.T @ z, 1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.codebook.shape[0] * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Move every code with ``ema_count < dead_threshold`` to a random row of z (N, D) (count 1);
        the number of codes restarted."""
        dead = (self.ema_count < self.dead_threshold).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        pick = torch.randint(z.shape[0], (dead.numel(),), generator=generator).to(z.device)
        rows = z.detach()[pick].to(self.codebook.dtype)
        self.codebook[dead] = rows
        self.ema_sum[dead] = rows
        self.ema_count[dead] = 1.0
        return int(dead.numel())


@dataclass
class VQOutput:
    """One autoencoder pass: ``recon`` (B, 3, H, W), ``ids`` (B, h * w), the encoder outputs ``z``
    and their codes ``codes`` (both (B * h * w, D), ``codes`` without gradient)."""

    recon: torch.Tensor
    ids: torch.Tensor
    z: torch.Tensor
    codes: torch.Tensor


class VQTokenizer(nn.Module):
    """The VQ-VAE of the module docstring; ``forward`` is the ``Tokenizer`` protocol (ids)."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, steps = cfg.hidden, int(math.log2(cfg.patch_size))
        down: list[nn.Module] = [nn.Conv2d(3, h, 3, padding=1)]
        for _ in range(steps):
            down += [nn.ReLU(), nn.Conv2d(h, h, 4, stride=2, padding=1)]
        down += [ResBlock(h) for _ in range(cfg.res_blocks)] + [nn.ReLU(), nn.Conv2d(h, cfg.code_dim, 1)]
        self.encoder = nn.Sequential(*down)
        up: list[nn.Module] = [nn.Conv2d(cfg.code_dim, h, 3, padding=1), *[ResBlock(h) for _ in range(cfg.res_blocks)]]
        for _ in range(steps):
            up += [nn.ReLU(), nn.ConvTranspose2d(h, h, 4, stride=2, padding=1)]
        up += [nn.ReLU(), nn.Conv2d(h, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*up)
        self.quantizer = EMAQuantizer(cfg.codebook_size, cfg.code_dim, cfg.decay, cfg.dead_threshold)

    @property
    def vocab_size(self) -> int:
        return self.cfg.codebook_size

    def _check(self, images: torch.Tensor) -> None:
        p = self.cfg.patch_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2] % p or images.shape[-1] % p:
            raise ValueError(f"tokenizer: expected (B, 3, H, W) images with H and W multiples of its patch size {p}, "
                             f"got {tuple(images.shape)}")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder outputs (B, h * w, D), row-major over the patch grid."""
        self._check(images)
        z = self.encoder(images.to(self.encoder[0].weight.dtype))
        return z.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids (B, h * w) int64 of normalised images (B, 3, H, W); never changes the codebook."""
        with torch.no_grad():
            z = self.encode(images)
            return self.quantizer.assign(z.flatten(0, 1)).view(z.shape[:2])

    def decode(self, ids: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Images (B, 3, h * p, w * p) of token ids (B, h * w) on a patch grid (h, w)."""
        codes = self.quantizer.codebook[ids]  # (B, h * w, D)
        return self.decoder(codes.transpose(1, 2).reshape(ids.shape[0], -1, *grid))

    def autoencode(self, images: torch.Tensor) -> VQOutput:
        """Encode, quantise (straight-through) and decode: what training needs."""
        z = self.encode(images)
        b, n, d = z.shape
        flat = z.flatten(0, 1)
        ids = self.quantizer.assign(flat)
        codes = self.quantizer.codebook[ids].to(flat.dtype)
        quantised = flat + (codes - flat).detach()  # straight-through estimator
        grid = (images.shape[-2] // self.cfg.patch_size, images.shape[-1] // self.cfg.patch_size)
        recon = self.decoder(quantised.view(b, n, d).transpose(1, 2).reshape(b, d, *grid))
        return VQOutput(recon, ids.view(b, n), flat, codes.detach())


def codebook_usage(ids: torch.Tensor, vocab_size: int) -> dict[str, float]:
    """Codebook statistics of a set of ids: ``perplexity`` exp(H(p)) of the code frequencies p
    (1 when one code is used, ``vocab_size`` when all are used equally) and ``codes_used``, the
    fraction of the codes that occur at least once."""
    counts = torch.bincount(ids.flatten().cpu(), minlength=vocab_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return {"perplexity": float(entropy.exp()), "codes_used": float((counts > 0).double().mean())}


def _folder(path: str | Path) -> Path:
    p = Path(path)
    return p.parent if p.suffix in (".json", ".safetensors") else p


def read_tokenizer_config(path: str | Path, key: str = "tokenizer") -> tuple[TokenizerConfig, dict[str, Any]]:
    """The (config, statistics) of the tokenizer saved at ``path`` (its folder or one of its files);
    ``key`` names the config key in errors (``beit.tokenizer``)."""
    file = _folder(path) / CONFIG_FILE
    if not file.is_file():
        raise ConfigError(f"{key}: {path} is not a tokenizer folder (no {CONFIG_FILE}; write one with "
                          "`selfsup tokenizer train --data DATA --out DIR`)")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{key}: {file} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("config"), dict):
        raise ConfigError(f"{key}: {file} is not a selfsup tokenizer description (format {FORMAT!r})")
    known = {f.name for f in fields(TokenizerConfig)}
    unknown = sorted(set(meta["config"]) - known)
    if unknown:
        raise ConfigError(f"{key}: {file} has unknown tokenizer option(s) {', '.join(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    return TokenizerConfig(**values), meta.get("stats", {})


def save_tokenizer(tokenizer: VQTokenizer, out: str | Path, stats: dict[str, Any] | None = None) -> Path:
    """Write ``tokenizer.json`` and ``tokenizer.safetensors`` into the folder ``out``; returns it."""
    from safetensors.torch import save_file

    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in tokenizer.state_dict().items()}
    save_file(weights, str(folder / WEIGHTS_FILE))
    meta = {"format": FORMAT, "config": asdict(tokenizer.cfg), "stats": stats or {}}
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    return folder


def load_tokenizer(path: str | Path, key: str = "tokenizer") -> VQTokenizer:
    """The frozen tokenizer saved at ``path`` (no gradient, eval mode); one-line errors name ``key``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg, _ = read_tokenizer_config(path, key)
    file = _folder(path) / WEIGHTS_FILE
    if not file.is_file():
        raise ConfigError(f"{key}: {file} not found (the weights belong beside {CONFIG_FILE})")
    try:
        weights = load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise ConfigError(f"{key}: cannot read {file} ({e})") from None
    tokenizer = VQTokenizer(cfg)
    own = tokenizer.state_dict()
    if set(weights) != set(own):
        wrong = sorted(set(weights) ^ set(own))
        raise ConfigError(f"{key}: {file} does not match its {CONFIG_FILE}: key(s) {', '.join(wrong[:3])} differ")
    for k, v in weights.items():
        if v.shape != own[k].shape:
            raise ConfigError(f"{key}: {file}: {k} is {tuple(v.shape)}, its config gives {tuple(own[k].shape)}")
    tokenizer.load_state_dict(weights)
    return tokenizer.requires_grad_(False).eval()
