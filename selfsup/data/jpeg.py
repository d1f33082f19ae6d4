"""Decoding JPEG files on the training device (``data.decode: device``).

For folders too large to hold decoded, CPU worker processes only READ each file (its raw
bytes, into pinned memory when the device is a GPU); the batch is then decoded where the
model trains, with torchvision's batched ``decode_jpeg`` (nvJPEG on CUDA, libjpeg on the CPU),
and resized there to the load size. A file the device decoder cannot take is decoded in the
worker by the PIL path of ``selfsup.data.decode`` instead: every non-JPEG file, and JPEGs
that are not plain RGB or grayscale (CMYK, YCCK) or carry an EXIF orientation to undo. A
file that fails both ways gives ``ok = False`` (the store then yields a black image and
counts it, like the PIL path).

Resizing is bilinear with antialiasing (``F.interpolate(antialias=True)``), PIL's filter of
the CPU path; the two decoders differ by the IDCT's rounding, so pixels agree within a few
levels, not exactly.
"""

from __future__ import annotations

import io
import warnings
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from selfsup.data.decode import decode

JPEG_MAGIC = b"\xff\xd8\xff"
_DEVICE_MODES = frozenset({"RGB", "L"})  # JPEG colour modes the device decoder takes as they are
_ORIENTATION = 0x0112  # the EXIF tag


def device_decodable(data: bytes) -> bool:
    """Whether a file's bytes are a JPEG the device decoder reads as PIL would: RGB or
    grayscale, upright (no EXIF orientation other than 1). Only the header is parsed."""
    if not data.startswith(JPEG_MAGIC):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.format == "JPEG" and im.mode in _DEVICE_MODES and im.getexif().get(_ORIENTATION, 1) == 1
    except Exception:  # an unreadable header: let the device decoder fail on it and count it
        return True


def read_encoded(paths: list[str], size: tuple[int, int]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """What a worker hands over for a batch of files: (payloads, raw (k,) bool, ok (k,) bool).

    ``payloads[i]`` is the file's bytes (uint8, 1-D) where ``raw[i]``, else the file decoded by
    PIL at ``size`` (uint8 (3, H, W)); an unreadable file has ok False and an empty payload.
    """
    payloads, raw, ok = [], [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            payloads.append(torch.empty(0, dtype=torch.uint8))
            raw.append(False)
            ok.append(False)
            continue
        if device_decodable(data):
            payloads.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            raw.append(True)
            ok.append(True)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rgb, _ = decode(path, size)
            payloads.append(torch.from_numpy(np.array(rgb)).permute(2, 0, 1).contiguous())
            ok.append(True)
        except Exception:  # a damaged file of any format means "skip it"
            payloads.append(torch.empty(0, dtype=torch.uint8))
            ok.append(False)
        raw.append(False)
    return payloads, torch.tensor(raw, dtype=torch.bool), torch.tensor(ok, dtype=torch.bool)


def _decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """RGB uint8 (3, h, w) of each JPEG on ``device``, None where it cannot be decoded.

    One batched call; if it fails (a damaged file spoils the batch), each file alone, on the
    device and then on the CPU.
    """
    if not data:
        return []
    try:
        return list(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    out: list[torch.Tensor | None] = []
    for one in data:
        image = None
        for where in dict.fromkeys((device, torch.device("cpu"))):
            try:
                image = decode_jpeg(one, mode=ImageReadMode.RGB, device=where).to(device)
                break
            except RuntimeError:
                continue
        out.append(image)
    return out


def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, 3, h, w) -> uint8 (B, 3, H, W): bilinear, antialiased when shrinking, rounded."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def decode_batch(
    payloads: list[torch.Tensor], raw: torch.Tensor, ok: torch.Tensor, size: tuple[int, int], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """A worker's batch (``read_encoded``) as (images uint8 (k, 3, H, W) on ``device``, ok (k,)).

    JPEGs are decoded on ``device`` in one call and resized there, grouped by their size; the
    payloads the worker decoded already are only copied over. Failed files stay black.
    """
    good, is_raw = ok.tolist(), raw.tolist()
    black = torch.zeros((3, *size), dtype=torch.uint8, device=device)
    parts = [black] * len(payloads)
    jpegs = [i for i in range(len(payloads)) if is_raw[i] and good[i]]
    by_shape: dict[tuple[int, ...], list[tuple[int, torch.Tensor]]] = defaultdict(list)
    for i, image in zip(jpegs, _decode_jpegs([payloads[i] for i in jpegs], device), strict=True):
        if image is None:
            good[i] = False
        else:
            by_shape[tuple(image.shape)].append((i, image))
    for group in by_shape.values():
        resized = resize_uint8(torch.stack([image for _, image in group]), size)
        for (i, _), image in zip(group, resized, strict=True):
            parts[i] = image
    for i, payload in enumerate(payloads):
        if good[i] and not is_raw[i]:
            parts[i] = payload.to(device, non_blocking=True)
    images = torch.stack(parts) if parts else torch.zeros((0, 3, *size), dtype=torch.uint8, device=device)
    return images, torch.tensor(good, dtype=torch.bool)
