"""ContrastiveCrop vs random crops, for every two-view method, at one small budget.

    python benchmarks/contrastive_crop.py --images 5000 --epochs 20 --batch-size 128 --seeds 0 1 2

The claim checked (Peng et al., CVPR 2022): ContrastiveCrop improves linear accuracy over
random-resized crops by +0.4 to +2.0 points for SimCLR, MoCo, BYOL and SimSiam on CIFAR-10,
at almost no extra cost. For each method (simclr, byol, mocov2, simsiam: those registered),
each seed and each crop sampler (``views.crop`` = random | contrastive), one pre-training run
with the method's CIFAR-10 preset (the preset cifar10/<method>: ResNet-18 with the CIFAR
stem, RRC scale (0.2, 1), no blur, CIFAR mean/std) and a SHARED budget overriding it: the
same ``--images`` real CIFAR-10 train images, ``--epochs``, ``--batch-size`` (preset lr scaled
linearly from the preset batch), no lr warm-up and cosine down to lr / 10 (the small-scale
recipe). Only ``views.crop`` differs between the two runs of a pair. A "random init" row
evaluates the same backbone with random weights (per seed). ContrastiveCrop uses
alpha ``--alpha`` (paper default 0.6; 0.1 was slightly better on small data) and threshold
``--threshold``; its warm-up and box-update interval are the official 100 / 100 of 500 epochs
scaled to the budget (epochs / 5, at least 1) unless given; the schedule is printed.

Evaluation of the LAST epoch's backbone on ``--test-images`` held-out images: weighted kNN
(k = 200, T = 0.1) and the library's linear probe (``selfsup eval linear``: standardised
frozen features, SGD + cosine, ``--linear-epochs``; the last epoch's accuracy is reported,
the best epoch only labelled as such in the JSON). Not the paper's probe (SGD lr 10, steps at
60 / 80 epochs, 100 epochs, no standardisation). Writes benchmarks/results/contrastive_crop.json
after every run and prints a markdown table: mean and sample standard deviation over seeds,
and the contrastive - random difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import traceback
from pathlib import Path

import torch

from selfsup.config import build_config, find_config, load_yaml, merge
from selfsup.data import DatasetSplits, cap, open_dataset
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.online import OnlineKNN
from selfsup.methods import METHODS
from selfsup.models.backbones import build_backbone
from selfsup.train.trainer import Trainer, seed_everything
from selfsup.views.contrastive_crop import update_due
from selfsup.views.features import extract_features

ROOT = Path(__file__).resolve().parents[1]
TWO_VIEW = ("simclr", "byol", "mocov2", "simsiam")
CROPS = ("random", "contrastive")
ROWS = ("random init", *CROPS)


def evaluate(backbone: torch.nn.Module, splits: DatasetSplits, cfg, device: torch.device, args) -> dict:
    """kNN and last-epoch linear-probe top-1 of ``backbone`` on the run's capped splits."""
    v = cfg.views
    feats = [extract_features(backbone, d, v.size, v.mean, v.std, 512, device) for d in (splits.train, splits.test)]
    (ftr, ytr), (fte, yte) = feats
    n_cls = len(splits.train.classes)
    knn = knn_accuracy(ftr, ytr, fte, yte, n_cls, 200, 0.1)
    lin = linear_probe(ftr, ytr, fte, yte, n_cls, epochs=args.linear_epochs, lr=args.linear_lr)
    return {"knn_top1": knn, "linear_last_top1": lin.last_epoch_accuracy,
            "linear_best_top1": lin.best_epoch_accuracy, "linear_best_epoch": lin.best_epoch}


def schedule(args: argparse.Namespace) -> tuple[int, int]:
    """ContrastiveCrop warm-up and interval: given, or the official 100 / 100 of 500 epochs scaled."""
    scaled = max(1, round(args.epochs / 5))
    return (args.crop_warmup if args.crop_warmup is not None else scaled,
            args.crop_interval if args.crop_interval is not None else scaled)


def config_for(method: str, crop: str, seed: int, args: argparse.Namespace, out: Path):
    raw = load_yaml(find_config(f"cifar10/{method}"))
    preset_batch = raw.get("train", {}).get("batch_size", args.batch_size)
    lr = raw.get("optim", {}).get("lr", 0.5) * args.batch_size / preset_batch
    warmup, interval = schedule(args)
    raw = merge(raw, {
        "backbone": {"cifar_stem": not args.standard_stem},
        "data": {"path": args.data, "max_images": args.images, "max_test_images": args.test_images},
        "views": {"crop": crop, "crop_alpha": args.alpha, "crop_threshold": args.threshold,
                  "crop_warmup_epochs": warmup, "crop_interval": interval},
        "optim": {"lr": lr, "warmup_epochs": 0, "min_lr": lr / 10},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": seed, "device": args.device,
                  "out_dir": str(out / f"{method}-{crop}-s{seed}"), "knn_every": 0, "progress": False,
                  "log_every": 10},
    })
    return build_config(raw, METHODS)


def run(method: str, crop: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    cfg = config_for(method, crop, seed, args, out)
    start = time.perf_counter()
    trainer = Trainer(cfg, monitor=OnlineKNN())
    trainer.fit()
    row = {"method": method, "crop": crop, "seed": seed, "lr": cfg.optim.lr, "steps": trainer.step,
           "wall_s": time.perf_counter() - start}
    if trainer.crop is not None:
        b = trainer.crop.boxes
        row["mean_box_area"] = float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).mean())
    row.update(evaluate(trainer.method.backbone, trainer.splits, cfg, trainer.dist.device, args))
    return row


def random_init_row(method: str, seed: int, args: argparse.Namespace, out: Path) -> dict:
    """The same evaluation of ``method``'s backbone with random weights (seeded like its runs)."""
    cfg = config_for(method, "random", seed, args, out)
    seed_everything(seed)
    backbone = build_backbone(cfg.backbone)
    s = open_dataset(cfg.data.path, load_size=cfg.data.load_size)
    splits = DatasetSplits(cap(s.train, cfg.data.max_images, seed), cap(s.test, cfg.data.max_test_images, seed))
    return {"method": method, "crop": "random init", "seed": seed,
            **evaluate(backbone, splits, cfg, torch.device("cpu"), args)}


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    """Mean and sample std over seeds per (method, crop), and the contrastive - random gap."""
    out = []
    for m in methods:
        means = {}
        for crop in ROWS:
            ok = [r for r in rows if r["method"] == m and r["crop"] == crop and "error" not in r]
            if not ok:
                continue
            cell = {"method": m, "crop": crop, "seeds": len(ok)}
            timed = ("wall_s",) if crop != "random init" else ()
            for key in ("knn_top1", "linear_last_top1", *timed):
                values = [r[key] for r in ok]
                cell[key] = statistics.mean(values)
                cell[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            means[crop] = cell
            out.append(cell)
        if "random" in means and "contrastive" in means:
            for key in ("knn_top1", "linear_last_top1"):
                means["contrastive"][key + "_gain"] = means["contrastive"][key] - means["random"][key]
    return out


def table(summary: list[dict]) -> str:
    lines = ["| method | crop | seeds | kNN top-1 | linear top-1 (last epoch) | linear gain | wall s |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for c in summary:
        gain = f"{100 * c['linear_last_top1_gain']:+.2f} pt" if "linear_last_top1_gain" in c else ""
        wall = f"{c['wall_s']:.0f}" if "wall_s" in c else "-"
        lines.append(f"| {c['method']} | {c['crop']} | {c['seeds']} | {100 * c['knn_top1']:.2f} ± "
                     f"{100 * c['knn_top1_std']:.2f} | {100 * c['linear_last_top1']:.2f} ± "
                     f"{100 * c['linear_last_top1_std']:.2f} | {gain} | {wall} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10.tar.gz"))
    p.add_argument("--methods", nargs="*", default=None, help=f"default: those of {', '.join(TWO_VIEW)} registered")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alpha", type=float, default=0.6)
    p.add_argument("--threshold", type=float, default=0.1)
    p.add_argument("--crop-warmup", type=int, default=None, help="default: epochs / 5 (official 100 of 500)")
    p.add_argument("--crop-interval", type=int, default=None, help="default: epochs / 5 (official 100 of 500)")
    p.add_argument("--linear-epochs", type=int, default=100)
    p.add_argument("--linear-lr", type=float, default=0.1)
    p.add_argument("--standard-stem", action="store_true", help="ImageNet stem (cheap; 1x1 maps at 32 px)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", default="/tmp/selfsup-contrastive-crop-bench")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/contrastive_crop.json"))
    args = p.parse_args()
    methods = args.methods or [m for m in TWO_VIEW if m in METHODS]
    warmup, interval = schedule(args)
    updates = [e for e in range(1, args.epochs + 1) if update_due(e, args.epochs, warmup, interval)]
    print(f"ContrastiveCrop: alpha {args.alpha}, threshold {args.threshold}, random crops for the first "
          f"{warmup} epoch(s), boxes recomputed every {interval} epoch(s): after epochs {updates} of {args.epochs}",
          flush=True)
    open_dataset(args.data)  # decode (and cache) once, outside every run's wall time
    work, out = Path(args.workdir), Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for seed in args.seeds:
        for m in methods:
            rows.append(random_init_row(m, seed, args, work))
            for crop in CROPS:
                try:
                    rows.append(run(m, crop, seed, args, work))
                except Exception as e:  # a failing run is a result to report, not a crash
                    traceback.print_exc()
                    rows.append({"method": m, "crop": crop, "seed": seed, "error": f"{type(e).__name__}: {e}"})
                print(json.dumps(rows[-1]), flush=True)
                summary = summarise(rows, methods)
                out.write_text(json.dumps({
                    "args": vars(args), "crop_warmup_epochs": warmup, "crop_interval": interval,
                    "box_updates_after_epochs": updates, "rows": rows, "summary": summary,
                    "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                    "device": "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu",
                    "threads": torch.get_num_threads()}, indent=2))
    stem = "standard" if args.standard_stem else "CIFAR"
    print(f"\n{args.images} CIFAR-10 train images x {args.epochs} epochs, batch {args.batch_size}, ResNet-18 "
          f"({stem} stem), seeds {args.seeds}; {args.test_images} test images; mean ± sample std over seeds")
    print(table(summarise(rows, methods)))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
