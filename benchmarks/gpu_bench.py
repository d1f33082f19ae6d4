"""The device script's measurements (issue 28): one JSON and one Markdown table.

    python -m benchmarks.gpu_bench --data .gpu/data --out "$OUT"        # on the device (benchmarks/gpu.sh)
    python -m benchmarks.gpu_bench --cpu --data DIR --out DIR            # dry run on the CPU (shrunk sizes)
    python -m benchmarks.gpu_bench --prepare .gpu/data                   # here: the data the device needs

``--data`` holds ``cifar10/train/<class>/*.jpg`` (real CIFAR-10 images) and ``camvid/*.jpg``
(real CamVid frames, 360x480), written by ``--prepare`` from ../shared/data (the device cannot
read that folder: it travels with ``carry``). Sections, in this order, each recorded even when
it fails (its error then stands in its row) and skipped once ``--budget-s`` is spent:

1. checks: AMP (bf16 autocast reaches the convolutions; the first step's loss is within 5% of
   full precision), channels_last (weights and activations in that layout; loss within 1% of
   the contiguous run), compile (``train.compile``: no fallback; loss within 1% of eager) and
   the sync-free step (``selfsup.train.syncs``: 3 steps of SimCLR, BYOL, MoCo v3 and MAE under
   ``torch.cuda.set_sync_debug_mode("error")``);
2. throughput: end-to-end images/s of the trainer's step and the ratio to the backbone's own
   forward + backward + optimiser step (``benchmarks.throughput.bench_method``) for SimCLR,
   BYOL, MoCo v3 at ResNet-50 / 224 px and ResNet-18 / CIFAR 32 px, and MAE on ViT-B/16 at
   224 px (its encoder sees a quarter of the patches, so the full-image ceiling is no bound);
3. views: batched ``make_views`` on the device against the per-image torchvision pipeline
   (``benchmarks.views.pil_pipeline``) in a DataLoader with ``--workers`` processes, SimCLR
   recipe with blur, 224 px from 360x480 frames, 2 views per image;
4. loader: ``benchmarks.decode.bench`` (5,000 re-encoded CamVid JPEGs, 224 px, the same workers);
5. levers: ``benchmarks.levers.measure`` for SimCLR at 224 px (each lever's effect).

Targets, printed as PASS / FAIL: end-to-end / ceiling >= 0.95 for SimCLR at 224 px; views on
the device >= 20x the per-image pipeline per core-equivalent (its images/s over its workers);
the loader >= 3,000 images/s at 224 px (``data.decode: device``). ``--cpu`` runs every section
on the CPU with small batches and models (ResNet-18 for ResNet-50, ViT-Tiny for ViT-B, 64 px
for 224, compile through TorchDynamo's eager backend) so the whole path is exercised by
tests/test_gpu_script.py; its PASS / FAIL lines are then no reading.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import random
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks import decode, levers, throughput, views
from selfsup.config import build_config, find_config, load_yaml, merge
from selfsup.methods import METHODS
from selfsup.train import compiled
from selfsup.train.syncs import check_sync_free
from selfsup.train.trainer import Trainer
from selfsup.views import IMAGENET_MEAN, IMAGENET_STD, RECIPES, make_views

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
TARGETS = {"simclr_224_ratio": 0.95, "views_per_core_ratio": 20.0, "loader_img_s": 3000.0}


@dataclass(frozen=True)
class Sizes:
    """What each section measures at; ``GPU`` on the device, ``CPU`` for the dry run."""

    big_backbone: str = "resnet50"
    vit: str = "vit_base_patch16_224"
    size: int = 224
    load_size: int = 256
    batch_big: int = 256
    batch_cifar: int = 512
    batch_vit: int = 256
    steps: int = 10
    check_batch: int = 64
    view_batch: int = 256
    view_images: int = 2048
    workers: int = 16
    files: int = 5000
    loader_batch: int = 256
    repeats: int = 2
    lever_batch: int = 128
    lever_steps: int = 6
    compile_backend: str = "inductor"
    head_width: int = 0  # > 0: the methods' projector / predictor hidden layers this wide (the dry run)


GPU = Sizes()
CPU = Sizes(big_backbone="resnet18", vit="vit_tiny_patch16_224", size=64, load_size=72, batch_big=4, batch_cifar=8,
            batch_vit=4, steps=2, check_batch=4, view_batch=8, view_images=16, workers=1, files=48, loader_batch=16,
            repeats=1, lever_batch=4, lever_steps=2, compile_backend="eager", head_width=32)


# ---------------------------------------------------------------- data
def prepare(dest: Path, shared: Path = SHARED, per_class: int = 800, frames: int = 200) -> None:
    """Write ``dest/cifar10/train/<class>/*.jpg`` (the first ``per_class`` CIFAR-10 training
    JPEGs of each class, as stored) and ``dest/camvid/*.jpg`` (the first ``frames`` CamVid train
    scenes, re-encoded as JPEG at quality 95): about 10 + 13 MB to carry."""
    counts: dict[str, int] = {}
    with tarfile.open(shared / "cifar10.tar.gz", "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and len(parts) == 4 and parts[1] == "train" and counts.get(parts[2], 0) < per_class:
                out = dest / "cifar10" / "train" / parts[2] / parts[3]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
                counts[parts[2]] = counts.get(parts[2], 0) + 1
                if len(counts) == 10 and min(counts.values()) == per_class:
                    break
    (dest / "camvid").mkdir(parents=True, exist_ok=True)
    n = 0
    with tarfile.open(shared / "camvid-trainval.tar.gz", "r|gz") as tar:
        for member in tar:
            if member.isfile() and member.name.startswith("camvid/train/"):
                image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
                image.save(dest / "camvid" / f"{Path(member.name).stem}.jpg", "JPEG", quality=95)
                n += 1
                if n == frames:
                    break
    print(f"prepared {sum(counts.values())} CIFAR-10 images and {n} CamVid frames in {dest}")


# ---------------------------------------------------------------- configs
def big_overrides(s: Sizes, method: str) -> dict:
    """The ImageNet-style setup at ``s.size``: ``s.big_backbone``, the method's recipe with blur."""
    out = {"backbone": {"name": s.big_backbone, "cifar_stem": False},
           "views": {"size": s.size, "scale": [0.08, 1.0], "blur": True, "mean": list(IMAGENET_MEAN),
                     "std": list(IMAGENET_STD)},
           "data": {"load_size": s.load_size}}
    if method == "mae":
        out["backbone"] = {"name": s.vit, "img_size": s.size, "patch_size": 16, "pos_embed": "sincos",
                           "kwargs": {"depth": 12}}
        out["views"]["scale"] = [0.2, 1.0]
        out["mae"] = {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16}
    return out


def head_overrides(s: Sizes, method: str) -> dict:
    """Narrow projector / predictor hidden layers for the dry run (none on the device)."""
    if not s.head_width:
        return {}
    widths = {"simclr": ("proj_hidden",), "byol": ("proj_hidden", "pred_hidden"),
              "mocov3": ("proj_hidden", "pred_hidden")}
    return {method: dict.fromkeys(widths.get(method, ()), s.head_width)}


def trainer_for(method: str, data: str, batch: int, device: str, run_dir: str, overrides: dict,
                images: int) -> Trainer:
    raw = merge(load_yaml(find_config(f"cifar10/{method}")), {
        "data": {"path": data, "max_images": images, "num_workers": 0},
        "train": {"batch_size": batch, "epochs": 1, "device": device, "progress": False, "knn_every": 0,
                  "out_dir": run_dir, "log_every": 10**6},
    })
    return Trainer(build_config(merge(raw, overrides), METHODS))


def _batches(trainer: Trainer) -> Iterator:
    return iter(trainer.splits.train.batches(trainer.micro_batch, shuffle=True, seed=0, drop_last=True))


def first_loss(trainer: Trainer) -> float:
    return float(trainer.train_step([next(_batches(trainer))])["loss"])


@contextlib.contextmanager
def compile_backend(backend: str) -> Iterator[None]:
    """``train.compile`` through ``torch.compile(backend=...)`` inside the block."""
    original = compiled.torch.compile
    compiled.torch.compile = functools.partial(original, backend=backend)
    try:
        yield
    finally:
        compiled.torch.compile = original


# ---------------------------------------------------------------- sections
def check_amp(ctx: Context) -> dict:
    amp = "auto" if ctx.device == "cuda" else "bf16"  # auto is off on a CPU
    on = trainer_for("simclr", ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run("amp"), {"train": {"amp": amp}},
                     ctx.s.check_batch * 2)
    seen: list[torch.dtype] = []
    hook = on.method.backbone.net.conv1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    loss_on = first_loss(on)
    hook.remove()
    off = trainer_for("simclr", ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run("amp_off"),
                      {"train": {"amp": "off"}}, ctx.s.check_batch * 2)
    loss_off = first_loss(off)
    rel = abs(loss_on - loss_off) / abs(loss_off)
    ok = on.precision.dtype == torch.bfloat16 and seen == [torch.bfloat16] and rel < 0.05
    return {"name": "amp", "pass": ok, "precision": str(on.precision.dtype), "conv_output": str(seen),
            "loss": loss_on, "loss_fp32": loss_off, "rel_diff": rel}


def check_channels_last(ctx: Context) -> dict:
    common = {"train": {"amp": "off"}}
    last = trainer_for("simclr", ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run("cl"),
                       merge(common, {"train": {"channels_last": True}}), ctx.s.check_batch * 2)
    conv = last.method.backbone.net.conv1
    layouts: list[bool] = []
    hook = conv.register_forward_hook(
        lambda m, i, o: layouts.append(o.is_contiguous(memory_format=torch.channels_last)))
    loss_last = first_loss(last)
    hook.remove()
    plain = trainer_for("simclr", ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run("contig"),
                        merge(common, {"train": {"channels_last": False}}), ctx.s.check_batch * 2)
    loss_plain = first_loss(plain)
    rel = abs(loss_last - loss_plain) / abs(loss_plain)
    weights = conv.weight.is_contiguous(memory_format=torch.channels_last)
    ok = weights and layouts == [True] and rel < 0.01
    return {"name": "channels_last", "pass": ok, "weights_channels_last": weights, "activations": layouts,
            "loss": loss_last, "loss_contiguous": loss_plain, "rel_diff": rel}


def check_compile(ctx: Context) -> dict:
    with compile_backend(ctx.s.compile_backend):
        torch._dynamo.reset()
        on = trainer_for("simclr", ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run("compile"),
                         {"train": {"compile": True}}, ctx.s.check_batch * 2)
        start = time.perf_counter()
        loss_on = first_loss(on)
        first_step = time.perf_counter() - start
    eager = trainer_for("simclr", ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run("eager"), {},
                        ctx.s.check_batch * 2)
    loss_eager = first_loss(eager)
    rel = abs(loss_on - loss_eager) / abs(loss_eager)
    failure = on.forward.failure
    return {"name": "compile", "pass": failure is None and rel < 0.01, "backend": ctx.s.compile_backend,
            "failure": failure, "first_step_s": round(first_step, 1), "loss": loss_on, "loss_eager": loss_eager,
            "rel_diff": rel}


def check_syncs(ctx: Context) -> list[dict]:
    rows = []
    for method in ("simclr", "byol", "mocov3", "mae"):
        trainer = trainer_for(method, ctx.cifar, ctx.s.check_batch, ctx.device, ctx.run(f"sync_{method}"),
                              head_overrides(ctx.s, method), ctx.s.check_batch * 6)
        result = check_sync_free(trainer, _batches(trainer), steps=3, warmup=2)
        rows.append({"name": f"sync-free step {method}", "pass": result.ok, **asdict(result)})
    return rows


def throughput_rows(ctx: Context) -> list[dict]:
    s = ctx.s
    rows = []
    plans = [(m, "big", s.batch_big) for m in ("simclr", "byol", "mocov3")] + \
            [(m, "cifar", s.batch_cifar) for m in ("simclr", "byol", "mocov3")] + [("mae", "big", s.batch_vit)]
    for method, setup, batch in plans:
        if ctx.out_of_time():
            rows.append({"method": method, "setup": setup, "skipped": "budget spent"})
            continue
        data = str(ctx.frames) if setup == "big" else ctx.cifar
        overrides = merge(big_overrides(s, method) if setup == "big" else {}, head_overrides(s, method))
        try:
            row = throughput.bench_method(method, data, batch, s.steps, ctx.device, ctx.run(f"tp_{method}_{setup}"),
                                          overrides)
            backbone = overrides.get("backbone", {}).get("name", "resnet18")
            rows.append({"setup": setup, "backbone": backbone, "size": s.size if setup == "big" else 32, **row})
        except Exception as error:
            rows.append({"method": method, "setup": setup, "error": ctx.failed(error)})
        ctx.save()
    return rows


class FrameViews(Dataset):
    """Item i: the per-image torchvision pipeline's views of frame i mod n (one call per view)."""

    def __init__(self, frames: list[Image.Image], pipelines: list, length: int) -> None:
        self.frames, self.pipelines, self.length = frames, pipelines, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> list[torch.Tensor]:
        return [p(self.frames[i % len(self.frames)]) for p in self.pipelines]


def views_row(ctx: Context) -> dict:
    s = ctx.s
    frames = [Image.open(p).convert("RGB") for p in sorted((ctx.data / "camvid").glob("*.jpg"))]
    specs = RECIPES["simclr"](s.size, (0.08, 1.0), True, IMAGENET_MEAN, IMAGENET_STD)
    dev = torch.device(ctx.device)
    pixels, sizes = views.to_batch(frames)
    reps = -(-s.view_batch // len(frames))
    batch = pixels.repeat(reps, 1, 1, 1)[: s.view_batch].to(dev)
    batch_sizes = sizes.repeat(reps, 1)[: s.view_batch]
    generator = torch.Generator().manual_seed(0)
    rounds = max(1, s.view_images // s.view_batch)

    def ours() -> None:
        for _ in range(rounds):
            make_views(batch, batch_sizes, specs, generator)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    ours()  # warm-up
    best_ours = min(throughput.timed_interleaved([ours], s.repeats, warmup=0)[0])
    loader = DataLoader(FrameViews(frames, [views.pil_pipeline(spec) for spec in specs], rounds * s.view_batch),
                        batch_size=64, num_workers=s.workers)
    start = time.perf_counter()
    for _ in loader:
        pass
    reference = time.perf_counter() - start
    n = rounds * s.view_batch
    ours_img_s, ref_img_s = n / best_ours, n / reference
    per_core = ref_img_s / s.workers
    return {"name": "views", "recipe": "simclr (blur on), 2 views per image", "size": s.size,
            "source": f"{len(frames)} CamVid frames 360x480", "batch": s.view_batch, "images": n,
            "device_img_s": ours_img_s, "per_image_img_s": ref_img_s, "workers": s.workers,
            "per_image_img_s_per_core": per_core, "ratio_per_core": ours_img_s / per_core,
            "ratio_vs_all_workers": ours_img_s / ref_img_s}


def loader_row(ctx: Context) -> dict:
    s = ctx.s
    return decode.bench(ctx.frames, s.workers, s.loader_batch, s.size, torch.device(ctx.device), s.repeats,
                        ctx.work / "decode")


def lever_rows(ctx: Context) -> list[dict]:
    s = ctx.s
    chosen = [lever for lever in levers.LEVERS if lever[1] != {"optim": {"fused": True}}]  # the auto default on CUDA
    with compile_backend(s.compile_backend):
        return levers.measure("simclr", str(ctx.frames), s.lever_batch, s.lever_steps, ctx.device, chosen,
                              big_overrides(s, "simclr"))


# ---------------------------------------------------------------- driver
class Context:
    """The run's settings, clock and record (written to ``out/gpu.json`` after every section)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.s = CPU if args.cpu else GPU
        self.device = "cpu" if args.cpu else "cuda"
        self.data = args.data
        self.cifar = str(args.data / "cifar10")
        self.out = args.out
        self.budget = args.budget_s
        self.start = time.perf_counter()
        self.work = Path(tempfile.mkdtemp(prefix="selfsup-gpu-"))
        # the 224 px folder of the throughput, loader and lever sections: re-encoded CamVid frames
        self.frames = decode.make_folder(decode.frame_bytes(args.data / "camvid"), self.work / "folder", self.s.files,
                                         max(1, os.cpu_count() or 1))
        self.record: dict = {"mode": "cpu dry run" if args.cpu else "device", "sizes": asdict(self.s),
                             "targets": TARGETS, "environment": environment(self.device), "sections": {}}

    def run(self, name: str) -> str:
        return str(self.work / "runs" / name)

    def out_of_time(self) -> bool:
        return time.perf_counter() - self.start > self.budget

    def failed(self, error: BaseException) -> str:
        traceback.print_exc()
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"

    def save(self) -> None:
        self.record["wall_s"] = round(time.perf_counter() - self.start, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "gpu.json").write_text(json.dumps(self.record, indent=2, default=str) + "\n")

    def section(self, name: str, fn: Callable[[Context], object]) -> None:
        if self.out_of_time():
            self.record["sections"][name] = {"skipped": "budget spent"}
        else:
            start = time.perf_counter()
            try:
                self.record["sections"][name] = fn(self)
            except Exception as error:
                self.record["sections"][name] = {"error": self.failed(error)}
            print(f"[{time.perf_counter() - self.start:6.1f} s] {name} done in {time.perf_counter() - start:.1f} s",
                  file=sys.stderr, flush=True)
        self.save()


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0],
           "cpu_count": os.cpu_count(), "commit": decode.commit(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    env["device"] = decode.device_name(torch.device(device))
    return env


def checks(ctx: Context) -> list[dict]:
    rows = []
    for fn in (check_amp, check_channels_last, check_syncs, check_compile):
        try:
            result = fn(ctx)
            rows += result if isinstance(result, list) else [result]
        except Exception as error:
            rows.append({"name": fn.__name__.removeprefix("check_"), "pass": False, "error": ctx.failed(error)})
        ctx.save()
    return rows


def verdicts(record: dict) -> list[tuple[str, str, str]]:
    """(target, measured, PASS / FAIL / NOT MEASURED) of each target."""
    sections = record["sections"]
    out = []
    simclr = next((r for r in sections.get("throughput", []) if isinstance(r, dict) and r.get("method") == "simclr"
                   and r.get("setup") == "big" and "ratio" in r), None)
    target = TARGETS["simclr_224_ratio"]
    out.append((f"SimCLR end-to-end / ceiling >= {target} at 224 px",
                f"{simclr['ratio']:.3f}" if simclr else "-",
                "NOT MEASURED" if simclr is None else "PASS" if simclr["ratio"] >= target else "FAIL"))
    v = sections.get("views", {})
    target = TARGETS["views_per_core_ratio"]
    out.append((f"views on the device >= {target:.0f}x the per-image pipeline per core",
                f"{v['ratio_per_core']:.1f}x" if "ratio_per_core" in v else "-",
                "NOT MEASURED" if "ratio_per_core" not in v else "PASS" if v["ratio_per_core"] >= target else "FAIL"))
    rows = sections.get("loader", {}).get("rows", [])
    ours = next((r for r in rows if r["loader"] == "selfsup decode=device"), None)
    target = TARGETS["loader_img_s"]
    out.append((f"loader (decode=device) >= {target:.0f} img/s at 224 px", f"{ours['img_s']:.0f}" if ours else "-",
                "NOT MEASURED" if ours is None else "PASS" if ours["img_s"] >= target else "FAIL"))
    for c in sections.get("checks", []) if isinstance(sections.get("checks"), list) else []:
        state = "NOT CHECKED (no CUDA)" if c.get("pass") is None else "PASS" if c["pass"] else "FAIL"
        out.append((f"check: {c['name']}", c.get("error") or c.get("failure") or "", state))
    return out


def markdown(record: dict) -> str:
    env = record["environment"]
    lines = [f"# selfsup device script ({record['mode']})", "",
             f"{env['device']}; torch {env['torch']}, torchvision {env['torchvision']}; commit {env['commit']}; "
             f"{env['date']}; wall {record.get('wall_s', 0):.0f} s", "", "| target | measured | verdict |",
             "|---|---:|---|"]
    lines += [f"| {t} | {m} | {v} |" for t, m, v in verdicts(record)]
    tp = [r for r in record["sections"].get("throughput", []) if isinstance(r, dict)]
    if tp:
        lines += ["", "| method | backbone / px | batch | end-to-end img/s | ceiling img/s | ratio "
                  "| vs ceiling + target |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in tp:
            if "ratio" not in r:
                lines.append(f"| {r['method']} | {r['setup']} | | {r.get('error') or r.get('skipped')} | | | |")
                continue
            inherent = f"{r['ratio_vs_inherent']:.3f}" if "ratio_vs_inherent" in r else ""
            lines.append(f"| {r['method']} | {r['backbone']} / {r['size']} | {r['batch']} | "
                         f"{r['end_to_end']['img_s']:.0f} | {r['ceiling']['img_s']:.0f} | {r['ratio']:.3f} "
                         f"| {inherent} |")
    v = record["sections"].get("views", {})
    if "device_img_s" in v:
        lines += ["", f"views: {v['device_img_s']:.0f} img/s batched on the device vs {v['per_image_img_s']:.0f} img/s "
                  f"per-image with {v['workers']} workers ({v['per_image_img_s_per_core']:.0f} per core): "
                  f"{v['ratio_per_core']:.1f}x per core, {v['ratio_vs_all_workers']:.2f}x all workers"]
    loader = record["sections"].get("loader", {})
    if "rows" in loader:
        lines += ["", decode.table(loader)]
    lv = record["sections"].get("levers")
    if isinstance(lv, list):
        lines += ["", "levers (SimCLR at the 224 px setup):", "", levers.table(lv)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT / ".gpu" / "data")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-out")))
    p.add_argument("--cpu", action="store_true", help="dry run on the CPU with shrunk sizes")
    p.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    p.add_argument("--prepare", type=Path, help="write the data the device needs into this folder and stop")
    args = p.parse_args(argv)
    if args.prepare:
        prepare(args.prepare)
        return 0
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA device: run with --cpu for the dry run")
    random.seed(0)
    torch.manual_seed(0)
    ctx = Context(args)
    for name, fn in (("checks", checks), ("throughput", throughput_rows), ("views", views_row),
                     ("loader", loader_row), ("levers", lever_rows)):
        ctx.section(name, fn)
    table = markdown(ctx.record)
    (ctx.out / "gpu.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
