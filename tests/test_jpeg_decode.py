"""Device-side JPEG decoding (``data.decode: device``) against the PIL path, on real CamVid frames.

Here the "device" is the CPU (no GPU in the tests): the same code path, with the workers
reading bytes and ``decode_jpeg`` decoding the batch in the loading process.
"""

from __future__ import annotations

import io
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.config import ConfigError, build_config
from selfsup.data import open_dataset
from selfsup.data.jpeg import decode_batch, device_decodable, read_encoded, resize_uint8
from selfsup.methods import METHODS

FRAMES = 8
LOAD = (96, 128)


@pytest.fixture(scope="module")
def frames(shared_data: Path) -> list[Image.Image]:
    """The first real CamVid train frames (360x480 RGB), streamed from the archive."""
    found = []
    with tarfile.open(shared_data / "camvid-trainval.tar.gz", "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith("camvid/train/"):
                found.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                if len(found) == FRAMES:
                    break
    assert len(found) == FRAMES
    return found


def _jpeg(im: Image.Image, **kwargs) -> bytes:
    out = io.BytesIO()
    im.save(out, "JPEG", quality=90, **kwargs)
    return out.getvalue()


@pytest.fixture(scope="module")
def folder(frames: list[Image.Image], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Re-encoded frames of every kind the loader meets: plain RGB JPEGs, a grayscale JPEG, a
    JPEG with EXIF orientation 6 (rotated), a PNG, and one JPEG truncated after its header."""
    root = tmp_path_factory.mktemp("jpegs")
    for i, im in enumerate(frames[:5]):
        (root / f"{i}.jpg").write_bytes(_jpeg(im))
    (root / "gray.jpg").write_bytes(_jpeg(frames[5].convert("L")))
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "rotated.jpeg").write_bytes(_jpeg(frames[6].resize((360, 240)), exif=exif.tobytes()))
    frames[7].save(root / "frame.png")
    whole = _jpeg(frames[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    return root


def _stream(root: Path, decode_device: str | None) -> tuple[torch.Tensor, list[str], int]:
    """Every image of the folder streamed (memory limit 0) in order: (images, files, failed)."""
    train = open_dataset(root, load_size=LOAD, memory_limit_gb=0, decode_device=decode_device).train
    assert not train.in_memory
    images = torch.cat([b.images for b in train.batches(4, shuffle=False, drop_last=False)])
    return images, train.files, train._store.num_failed


def test_device_decode_matches_pil_and_counts_the_corrupt_file(folder: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        pil, files, pil_failed = _stream(folder, None)
        dev, dev_files, dev_failed = _stream(folder, "cpu")
    assert files == dev_files and len(files) == 9  # the truncated file's header reads: it is streamed
    assert pil_failed == dev_failed == 1
    assert sum("truncated.jpg" in r.getMessage() for r in caplog.records) == 2  # one warning per path
    broken = files.index("truncated.jpg")
    assert int(pil[broken].max()) == int(dev[broken].max()) == 0  # black, both paths
    assert pil.shape == dev.shape == (9, 3, *LOAD) and dev.dtype == torch.uint8
    diff = (pil.int() - dev.int()).abs()
    for i, name in enumerate(files):
        # the two libjpeg builds' IDCTs round differently: a fraction of a level on average
        assert diff[i].float().mean() < 1.0, name
        assert diff[i].max() <= 12, name
    rotated = files.index("rotated.jpeg")
    assert torch.equal(pil[rotated], dev[rotated])  # EXIF-rotated: PIL decodes it in the worker
    png = files.index("frame.png")
    assert torch.equal(pil[png], dev[png])
    gray = dev[files.index("gray.jpg")]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_worker_hands_over_bytes_only_for_plain_jpegs(folder: Path) -> None:
    names = ["0.jpg", "gray.jpg", "rotated.jpeg", "frame.png", "truncated.jpg", "missing.jpg"]
    payloads, raw, ok = read_encoded([str(folder / n) for n in names], LOAD)
    assert raw.tolist() == [True, True, False, False, True, False]
    assert ok.tolist() == [True, True, True, True, True, False]
    assert torch.equal(payloads[0], torch.frombuffer(bytearray((folder / "0.jpg").read_bytes()), dtype=torch.uint8))
    assert payloads[2].shape == payloads[3].shape == (3, *LOAD)
    images, decoded = decode_batch(payloads, raw, ok, LOAD, torch.device("cpu"))
    assert decoded.tolist() == [True, True, True, True, False, False]
    assert images.shape == (6, 3, *LOAD) and int(images[4:].max()) == 0
    assert not device_decodable((folder / "frame.png").read_bytes())


def test_resize_is_bilinear_antialiased_like_pil(frames: list[Image.Image]) -> None:
    rgb = np.asarray(frames[0])
    ours = resize_uint8(torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous(), LOAD)[0]
    theirs = torch.from_numpy(np.asarray(frames[0].resize(LOAD[::-1], Image.Resampling.BILINEAR))).permute(2, 0, 1)
    diff = (ours.int() - theirs.int()).abs()
    assert diff.float().mean() < 0.6 and diff.max() <= 3
    same = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    assert resize_uint8(same, (360, 480)) is same


def test_decode_option_is_checked() -> None:
    assert build_config({"data": {"decode": "device"}}, METHODS).data.decode == "device"
    with pytest.raises(ConfigError, match=r"data\.decode"):
        build_config({"data": {"decode": "gpu"}}, METHODS)
