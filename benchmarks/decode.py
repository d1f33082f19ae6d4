"""Loader throughput: a folder of JPEG files -> uint8 batches on the device at the load size.

    nice -n 10 python -m benchmarks.decode --files 5000 --workers 2 --batch 64 --size 224 --repeats 2

The folder: real CamVid frames (the 468 train + val scenes of ``camvid-trainval.tar.gz``,
360x480, or any folder of images given with ``--frames``) re-encoded as JPEG copies until
there are ``--files`` files (copy k of a frame: quality 80 + k % 16, mirrored when k is odd, so
no two files are byte-identical), written to a temporary folder that is removed afterwards.
Candidates, each with ``--workers`` DataLoader worker processes, batches of ``--batch``
images, load size ``--size`` x ``--size`` (bilinear, antialiased), shuffled:

- ``selfsup decode=device``: the workers only read the files; the batch's JPEGs are decoded
  by torchvision's batched ``decode_jpeg`` on ``--device`` (nvJPEG on CUDA, libjpeg in the
  loading process on the CPU) and resized there (``data.decode: device``);
- ``selfsup decode=cpu``: PIL decodes and resizes in the workers (``data.decode: cpu``);
- ``torchvision ImageFolder``: ``ImageFolder`` + ``Resize((size, size))`` + ``PILToTensor`` in a
  ``DataLoader`` with the same workers (pinned memory on CUDA), the batch then moved to the
  device.

Every pass goes over the whole folder once (worker start-up included, as for a real epoch);
passes are interleaved (a, b, c, a, b, c, ...) so machine load hits all alike, best of
``--repeats``. Writes a JSON (``--out``, default benchmarks/results/decode_<device type>.json)
and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from benchmarks.views import cpu_name
from selfsup.data import open_dataset

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid-trainval.tar.gz"
CAMVID_SPLITS = ("camvid/train/", "camvid/val/")


def frame_bytes(source: Path) -> list[bytes]:
    """The encoded image files of ``source``: the CamVid archive's train + val scenes, or
    every image file of a folder (sorted)."""
    if source.is_dir():
        return [p.read_bytes() for p in sorted(source.iterdir())
                if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    frames = []
    with tarfile.open(source, "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(CAMVID_SPLITS):
                frames.append(tar.extractfile(member).read())
    return frames


def _write_copies(job: tuple[bytes, list[tuple[int, int]], str]) -> None:
    """Write the copies (file number, copy number) of one frame as JPEGs into a folder."""
    data, copies, folder = job
    frame = Image.open(io.BytesIO(data)).convert("RGB")
    mirrored = frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for number, k in copies:
        (mirrored if k % 2 else frame).save(os.path.join(folder, f"{number:06d}.jpg"), "JPEG", quality=80 + k % 16)


def make_folder(frames: list[bytes], root: Path, files: int, processes: int) -> Path:
    """``root/train/frames/NNNNNN.jpg``: ``files`` re-encoded copies of the frames, round robin."""
    folder = root / "train" / "frames"
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(data, [(n, n // len(frames)) for n in range(i, files, len(frames))], str(folder))
            for i, data in enumerate(frames)]
    with Pool(processes) as pool:
        pool.map(_write_copies, jobs, chunksize=8)
    return root


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def selfsup_pass(root: Path, cache: Path, decode: str, workers: int, batch: int, size: int,
                 device: torch.device) -> Callable[[int], int]:
    """One pass of selfsup's streamed loader (``data.decode``); returns the images delivered."""
    train = open_dataset(root, load_size=size, cache_dir=cache, memory_limit_gb=0, num_workers=workers,
                         decode_device=device if decode == "device" else None).train
    assert not train.in_memory

    def run(seed: int) -> int:
        n = 0
        for b in train.batches(batch, shuffle=True, seed=seed, drop_last=True):
            images = b.images.to(device, non_blocking=True)
            n += images.shape[0]
        _sync(device)
        return n

    return run


def torchvision_pass(root: Path, workers: int, batch: int, size: int, device: torch.device) -> Callable[[int], int]:
    """One pass of ``ImageFolder`` + ``DataLoader`` (PIL decode, resize, to tensor in the workers)."""
    dataset = ImageFolder(str(root / "train"), transform=T.Compose([T.Resize((size, size)), T.PILToTensor()]))

    def run(seed: int) -> int:
        loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(seed))
        n = 0
        for images, _ in loader:
            images = images.to(device, non_blocking=True)
            n += images.shape[0]
        _sync(device)
        return n

    return run


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {cpu_name()}, {os.cpu_count()} cores"


def bench(root: Path, workers: int, batch: int, size: int, device: torch.device, repeats: int,
          work: Path) -> dict:
    """Time the three loaders over the folder ``root`` (``make_folder``); the result record
    (``work``: the selfsup cache of the pass)."""
    candidates = {
        "selfsup decode=device": selfsup_pass(root, work / "cache", "device", workers, batch, size, device),
        "selfsup decode=cpu": selfsup_pass(root, work / "cache", "cpu", workers, batch, size, device),
        "torchvision ImageFolder": torchvision_pass(root, workers, batch, size, device),
    }
    best = dict.fromkeys(candidates, float("inf"))
    images = {}
    for r in range(repeats):
        for name, run in candidates.items():
            t = time.perf_counter()
            images[name] = run(r)
            best[name] = min(best[name], time.perf_counter() - t)
    reference = images["torchvision ImageFolder"] / best["torchvision ImageFolder"]
    rows = [{"loader": name, "images": images[name], "seconds": round(best[name], 3),
             "img_s": round(images[name] / best[name], 1),
             "vs_torchvision": round(images[name] / best[name] / reference, 3)} for name in candidates]
    return {"device": device_name(device), "files": len(list((root / "train" / "frames").iterdir())),
            "workers": workers, "batch": batch, "size": size, "repeats": repeats,
            "load_avg_1min": round(os.getloadavg()[0], 2), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "commit": commit(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}


def table(result: dict) -> str:
    lines = [f"{result['files']} JPEGs (CamVid frames re-encoded), {result['workers']} "
             f"workers, batch {result['batch']}, {result['size']}x{result['size']} uint8 on {result['device']}; "
             f"best of {result['repeats']} interleaved passes", "",
             "| loader | img/s | vs torchvision ImageFolder |", "|---|---:|---:|"]
    lines += [f"| {r['loader']} | {r['img_s']:.0f} | {r['vs_torchvision']:.2f}x |" for r in result["rows"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=Path, default=CAMVID, help="CamVid archive or a folder of images")
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/decode_<device>.json)")
    args = p.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="selfsup-decode-"))
    try:
        start = time.perf_counter()
        frames = frame_bytes(args.frames)
        root = make_folder(frames, work / "folder", args.files, max(1, os.cpu_count() or 1))
        built = time.perf_counter() - start
        result = bench(root, args.workers, args.batch, args.size, device, args.repeats, work)
        result.update(source_frames=len(frames), folder_build_s=round(built, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = args.out or ROOT / "benchmarks" / "results" / f"decode_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
