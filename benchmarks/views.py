"""View-generation throughput: batched ``make_views`` against a per-image PIL pipeline.

    .venv/bin/python -m benchmarks.views [--data ../shared/data] [--repeats 3]

Measures view generation alone (decoding is done beforehand, for both sides): 2 views per
image with the ``simclr`` recipe (with blur) and ``byol``, in images per second PER CPU
CORE: ``torch.set_num_threads(1)``, one process. Sizes: 32 px from real 32x32 CIFAR-10
images, 224 px from real 360x480 CamVid scenes (stored at their own size, so the crop and the
resize happen in the timed part on both sides). The reference is the usual per-image
torchvision pipeline on PIL images (``transforms.v2``: RandomResizedCrop,
RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale, RandomApply(GaussianBlur)
with the same kernel and sigma, RandomSolarize, ToImage, ToDtype, Normalize), timed in the
same process, its passes interleaved with ours (best of ``--repeats`` each), so both see the
same machine load. Batches: 256 images at 32 px, 8 at 224 px (on one CPU core small batches
stay in cache; on a GPU use large ones). Prints a markdown table and writes
benchmarks/results/views.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2 as T
from PIL import Image

from selfsup.views import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    ViewSpec,
    make_views,
)
from selfsup.views.ops import blur_kernel_size

ROOT = Path(__file__).resolve().parents[1]


def read_images(archive: Path, prefix: str, count: int) -> list[Image.Image]:
    """The first ``count`` images under ``prefix`` of a .tar.gz, decoded to RGB."""
    images = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isfile() and member.name.startswith(prefix):
                data = tar.extractfile(member).read()
                images.append(Image.open(io.BytesIO(data)).convert("RGB"))
                if len(images) == count:
                    break
    return images


def to_batch(images: list[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (B, 3, H, W) and original sizes (B, 2); the images share one size here."""
    pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
    sizes = torch.tensor([[im.height, im.width] for im in images])
    return pixels.contiguous(), sizes


def pil_pipeline(spec: ViewSpec) -> T.Compose:
    """The per-image torchvision equivalent of one ``ViewSpec``."""
    steps: list[torch.nn.Module] = [
        T.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio),
        T.RandomHorizontalFlip(spec.flip_p),
        T.RandomApply([T.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        T.RandomGrayscale(spec.gray_p),
    ]
    if spec.blur_p > 0:
        sigma = tuple(s * spec.size / 224 for s in spec.blur_sigma)
        blur = T.GaussianBlur(blur_kernel_size(spec.size), sigma)
        steps.append(T.RandomApply([blur], p=spec.blur_p))
    if spec.solarize_p > 0:
        steps.append(T.RandomSolarize(128, p=spec.solarize_p))
    steps += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(spec.mean, spec.std)]
    return T.Compose(steps)


def ours_pass(
    pixels: torch.Tensor, sizes: torch.Tensor, specs: list[ViewSpec], batch: int, seed: int
) -> float:
    """Seconds for ``make_views`` over all images, in batches."""
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        make_views(pixels[i : i + batch], sizes[i : i + batch], specs, generator)
    return time.perf_counter() - start


def pil_pass(images: list[Image.Image], pipelines: list[T.Compose]) -> float:
    """Seconds for the per-image pipeline over all images, one call per view."""
    start = time.perf_counter()
    for image in images:
        for pipeline in pipelines:
            pipeline(image)
    return time.perf_counter() - start


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


@dataclass
class Setup:
    """One benchmark row's input: output size, decoded source images, batch and recipe args."""

    size: int
    source: str
    images: list[Image.Image]
    batch: int
    scale: tuple[float, float]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def compare(setup: Setup, recipe: str, repeats: int) -> dict:
    """Best-of-``repeats`` throughput of both pipelines, their passes interleaved (shared load)."""
    specs = RECIPES[recipe](setup.size, setup.scale, True, setup.mean, setup.std)
    pipelines = [pil_pipeline(spec) for spec in specs]
    pixels, sizes = to_batch(setup.images)
    ours_pass(pixels[: setup.batch], sizes[: setup.batch], specs, setup.batch, 0)  # warm-up
    torch.manual_seed(0)
    ours = pil = float("inf")
    for r in range(repeats):
        ours = min(ours, ours_pass(pixels, sizes, specs, setup.batch, r))
        pil = min(pil, pil_pass(setup.images, pipelines))
    n = len(setup.images)
    return {
        "size": setup.size,
        "recipe": recipe,
        "source": setup.source,
        "images": n,
        "batch": setup.batch,
        "ours_img_s_core": round(n / ours, 1),
        "pil_img_s_core": round(n / pil, 1),
        "ratio": round(pil / ours, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    cifar = read_images(args.data / "cifar10.tar.gz", "cifar10/train/", 1024)
    camvid = read_images(args.data / "camvid-trainval.tar.gz", "camvid/train/", 64)
    setups = [
        Setup(32, "CIFAR-10 32x32", cifar, 256, (0.2, 1.0), CIFAR10_MEAN, CIFAR10_STD),
        Setup(224, "CamVid 360x480", camvid, 8, (0.08, 1.0), IMAGENET_MEAN, IMAGENET_STD),
    ]
    load_before = os.getloadavg()[0]
    rows = [compare(s, recipe, args.repeats) for s in setups for recipe in ("simclr", "byol")]
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))

    print("2 views per image, 1 thread, 1 process; img/s = source images per second per core")
    print(f"machine load average (1 min) before/after: {load[0]} / {load[1]}\n")
    print("| size | recipe | source | ours img/s/core | per-image PIL img/s/core | ratio |")
    print("|---:|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['size']} | {r['recipe']} | {r['source']} | {r['ours_img_s_core']:.0f} "
            f"| {r['pil_img_s_core']:.0f} | {r['ratio']:.2f}x |"
        )
    out = ROOT / "benchmarks" / "results" / "views.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "threads": 1,
        "processes": 1,
        "views_per_image": 2,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "load_avg_1min_before_after": load,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "reference": "torchvision.transforms.v2 on PIL images, one call per view",
    }
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
