"""Every instance-level method on CIFAR-10 at one small CPU budget, side by side.

    python benchmarks/instance_methods.py --images 5000 --epochs 8 --batch-size 128

For each method: its CIFAR-10 preset (the preset cifar10/<method>: heads, loss, temperature,
momentum, view recipe) with a SHARED budget and backbone overriding the preset: ResNet-18 (the
standard ImageNet stem by default, cheap at 32 px on a CPU; ``--cifar-stem`` for the paper
backbone), the same ``--images`` real CIFAR-10 train images, ``--epochs``, ``--batch-size``,
seed; the preset's learning rate is scaled linearly from the preset batch size to ours; the
warm-up is ``--warmup-epochs``. Then, on the LAST epoch's backbone: weighted kNN (k = 200,
T = 0.1) and a linear probe (features standardised, 100 epochs SGD, last epoch reported) on
``--test-images`` held-out images; the collapse monitor's last logged values (std of the
L2-normalised embedding, effective rank); for a pretext task (rotation, jigsaw ...) its own top-1
on the evaluation images (``pretext_accuracy``, batches of 512); wall time and images/s. A random-initialisation
row uses the same backbone, same evaluation. Writes benchmarks/results/instance_methods.json
and prints a markdown table. A method that fails is recorded with its error, not dropped.

``--validation`` evaluates on ``--test-images`` TRAIN images that the run never trains on (the
same seeded permutation that picks the ``--images``, continued) instead of the test split: use it
to choose a method's options, then report the chosen options on the test split.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import traceback
from pathlib import Path

import torch

from selfsup.config import build_config, find_config, load_yaml, merge, parse_overrides
from selfsup.data import DatasetSplits, ImageDataset, cap, open_dataset
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.online import OnlineKNN
from selfsup.methods import METHODS
from selfsup.methods.pretext import PretextMethod, pretext_accuracy
from selfsup.models.backbones import build_backbone
from selfsup.train.trainer import Trainer, seed_everything
from selfsup.views.features import extract_features
from selfsup.views.recipes import eval_view
from selfsup.views.view import View

ROOT = Path(__file__).resolve().parents[1]
PIXEL_METHODS = {"pixpro", "pixcontrast", "pixpro_instance"}


def evaluate(backbone: torch.nn.Module, splits: DatasetSplits, cfg, device: torch.device) -> dict:
    """kNN and last-epoch linear-probe top-1 of ``backbone`` on the run's capped splits."""
    v = cfg.views
    args = (v.size, v.mean, v.std, 512, device)
    ftr, ytr = extract_features(backbone, splits.train, *args)
    fte, yte = extract_features(backbone, splits.test, *args)
    n_cls = len(splits.train.classes)
    knn = knn_accuracy(ftr, ytr, fte, yte, n_cls, 200, 0.1)
    lin = linear_probe(ftr, ytr, fte, yte, n_cls, epochs=100, lr=0.1)
    return {"knn_top1": knn, "linear_last_top1": lin.last_epoch_accuracy,
            "linear_best_top1": lin.best_epoch_accuracy, "linear_best_epoch": lin.best_epoch}


def held_out_pretext_accuracy(method: torch.nn.Module, test: ImageDataset, cfg, device: torch.device) -> float | None:
    """A pretext method's top-1 on its own task over the evaluation images (None for other methods)."""
    if not isinstance(method, PretextMethod):
        return None
    v, hits = cfg.views, 0.0
    for batch in test.batches(512, shuffle=False, drop_last=False):
        x = eval_view(batch.images.to(device), v.size, v.mean, v.std)
        none = torch.zeros(len(x), dtype=torch.bool)
        hits += pretext_accuracy(method, [View(x, torch.zeros(len(x), 4), none)]) * len(x)
    return hits / len(test)


def config_for(method: str, args: argparse.Namespace, out: Path):
    raw = load_yaml(find_config(f"cifar10/{method}"))
    preset_batch = raw.get("train", {}).get("batch_size", args.batch_size)
    lr = raw.get("optim", {}).get("lr", 0.3) * args.batch_size / preset_batch
    raw = merge(raw, {
        "backbone": {"name": "resnet18", "cifar_stem": args.cifar_stem},
        "data": {"path": args.data, "max_images": args.images, "max_test_images": args.test_images},
        "optim": {"lr": lr, "warmup_epochs": args.warmup_epochs},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
                  "device": args.device, "out_dir": str(out / method), "knn_every": args.knn_every,
                  "knn_max_train": 0, "knn_max_test": 0, "progress": False, "log_every": 5},
    })
    overrides = {k: v for k, v in parse_overrides(args.set).items() if k not in METHODS or k == method}
    return build_config(merge(raw, overrides), METHODS)


def held_out(cfg, train: ImageDataset, args: argparse.Namespace) -> ImageDataset:
    """``--test-images`` train images disjoint from the ``--images`` that ``cap`` trains on."""
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.train.seed))
    held = perm[args.images:args.images + args.test_images]
    if len(held) < args.test_images:
        raise ValueError(f"--validation: the train split has {len(train)} images, fewer than "
                         f"--images {args.images} + --test-images {args.test_images}")
    return train.subset(held.sort().values)


def eval_splits(cfg, args: argparse.Namespace) -> DatasetSplits:
    """The run's training images and its evaluation images (test split, or held-out train)."""
    s = open_dataset(cfg.data.path, load_size=cfg.data.load_size)
    train = cap(s.train, cfg.data.max_images, cfg.train.seed)
    test = held_out(cfg, s.train, args) if args.validation else cap(s.test, cfg.data.max_test_images, cfg.train.seed)
    return DatasetSplits(train, test)


def run_method(method: str, args: argparse.Namespace, out: Path) -> dict:
    cfg = config_for(method, args, out)
    start = time.perf_counter()
    trainer = Trainer(cfg, monitor=OnlineKNN())
    if args.validation:
        trainer.splits = eval_splits(cfg, args)
    resumed = args.resume and trainer.checkpoint_path.is_file()
    trainer.fit(resume=resumed)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / method / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "summary" not in r]
    epochs = list({r["epoch"]: r for r in records if "summary" in r}.values())  # a resumed epoch counts once
    row = {"method": method, "lr": cfg.optim.lr, "optimizer": cfg.optim.name, "wall_s": wall,
           "img_per_s": sum(r["summary"]["img_per_s"] for r in epochs) / len(epochs),
           "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"],
           "z_std": steps[-1].get("z_std"), "z_eff_rank": steps[-1].get("z_eff_rank"),
           "train_s": sum(r["summary"]["epoch_time_s"] for r in epochs),
           "steps": trainer.step, "resumed": resumed,
           "knn_by_epoch": {r["epoch"]: r["online_knn"] for r in epochs if "online_knn" in r}}
    row.update(evaluate(trainer.method.backbone, trainer.splits, cfg, trainer.dist.device))
    row["pretext_acc"] = held_out_pretext_accuracy(trainer.method, trainer.splits.test, cfg, trainer.dist.device)
    return row


def random_init_row(args: argparse.Namespace, out: Path) -> dict:
    cfg = config_for("simclr", args, out)
    seed_everything(args.seed)
    splits = eval_splits(cfg, args)
    return {"method": "random init", **evaluate(build_backbone(cfg.backbone), splits, cfg, torch.device("cpu"))}


def _cell(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if row.get(key) is not None else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10.tar.gz"))
    p.add_argument("--methods", nargs="*", default=None, help="default: every instance-level method")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--cifar-stem", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--knn-every", type=int, default=0,
                   help="also record the kNN top-1 every N epochs (same splits as the final one)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides; a key of a method's own section applies to that method only")
    p.add_argument("--validation", action="store_true",
                   help="evaluate on held-out TRAIN images (for choosing options), not the test split")
    p.add_argument("--resume", action="store_true",
                   help="continue each method from the last.pt in its run folder, where there is one "
                        "(wall_s then counts only the resumed part; train_s counts every epoch)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workdir", default="/tmp/selfsup-instance-bench")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/instance_methods.json"))
    args = p.parse_args()
    methods = args.methods or [m for m in METHODS if m not in PIXEL_METHODS]
    work = Path(args.workdir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = [random_init_row(args, work)]
    for m in methods:
        try:
            rows.append(run_method(m, args, work))
        except Exception as e:  # a failing method is a result to report, not a crash
            traceback.print_exc()
            rows.append({"method": m, "error": f"{type(e).__name__}: {e}"})
        print(json.dumps(rows[-1]), flush=True)
        out.write_text(json.dumps({"args": vars(args), "rows": rows, "torch": torch.__version__,
                                   "machine": platform.processor() or platform.machine(),
                                   "threads": torch.get_num_threads()}, indent=2))
    print(f"\n{args.images} CIFAR-10 train images x {args.epochs} epochs, batch {args.batch_size}, "
          f"ResNet-18 ({'CIFAR' if args.cifar_stem else 'standard'} stem), 32 px, seed {args.seed}; "
          f"evaluated on {args.test_images} {'held-out train' if args.validation else 'test'} images")
    print("| method | kNN top-1 | linear top-1 (last) | pretext acc | z std | eff. rank | wall s | img/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | error: {r['error']} | | | | | | |")
            continue
        cells = [_cell(r, k, f) for k, f in (("knn_top1", ".3f"), ("linear_last_top1", ".3f"), ("pretext_acc", ".3f"),
                                             ("z_std", ".3f"),
                                             ("z_eff_rank", ".1f"), ("wall_s", ".0f"), ("img_per_s", ".0f"))]
        print(f"| {r['method']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
