"""Masked image modelling vs contrastive pre-training on ONE ViT at one small CPU budget.

    nice -n 10 python benchmarks/mim.py --data ../shared/data/cifar10.tar.gz   # the defaults below

Rows (``--methods``; default: mae simmim cae cae_noalign mocov3 dino, plus random init): every
row pre-trains the SAME encoder, a ViT-Tiny-wide ViT (192 wide, 3 heads, ``--depth`` 4 blocks,
4 px patches on 32 px CIFAR-10, fixed sin-cos positions; CAE's preset adds its LayerScale 0.1
and drop-path 0.1), on the same ``--images`` CIFAR-10 train images for ``--epochs`` epochs at
batch ``--batch-size``, ``--warmup-epochs`` of warm-up, seed ``--seed``. The method's options
come from its preset cifar10/<preset> (``ROWS`` maps a row to a preset and its own overrides:
``cae_noalign`` is cae with ``cae.alignment_weight=0``, ``cae_tokens`` cae with the tokenizer's
ids as targets (``--tokenizer``, also beit's; ``selfsup tokenizer train``), ``ibot`` its preset
with 2 local crops as the dino row; the ResNet presets of mocov3 and dino
get the ViT, AdamW lr 1e-3 wd 0.05 and smaller heads). The preset's lr is used as it is
(AdamW: no linear batch scaling for the MIM presets, which are all at batch 256).

Evaluation of the LAST epoch's encoder on ``--test-images`` test images, with frozen tokens
extracted once (after the final LN): kNN (k 200, T 0.1) and the linear probe (standardised
features, 100 epochs SGD, last epoch) on the CLS token and on the mean patch token (both
reported, ``pool`` named); CAE's attentive probe (``--attentive-epochs``, AdamW); for
``--finetune`` rows (default cae and random init) full fine-tuning with layer-wise lr decay
(``--finetune-epochs``, last epoch); for MIM rows the reconstruction error on the test images
(masked patches, the method's own target space) and, for CAE, the decoder on the encoder's
latents with ALL patches visible (the seed's claim: it works with the alignment loss, fails
without), with a picture beside the JSON; wall time and images/s of pre-training.

Results are MERGED into ``--out`` keyed by row name: rows of other names already there are
kept (with their own budget recorded in each row), so ``--methods beit ibot`` adds rows later.
A row that fails is recorded with its error.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from selfsup.config import build_config, find_config, load_yaml, merge, parse_overrides
from selfsup.data import DatasetSplits, cap, open_dataset
from selfsup.eval.attentive import attentive_probe
from selfsup.eval.finetune import FinetuneConfig, classifier, finetune
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe
from selfsup.eval.reconstruct import reconstruction_report
from selfsup.methods import METHODS
from selfsup.methods.ibot import IBOT
from selfsup.methods.masked import MaskedImageModel
from selfsup.models.backbones import build_backbone
from selfsup.models.tokenizer import read_tokenizer_config
from selfsup.train.trainer import Trainer, seed_everything
from selfsup.views.features import extract_features

ROOT = Path(__file__).resolve().parents[1]
CONTRASTIVE_VIT = {"optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.999]}}
# row name -> (preset under cifar10/, the row's own overrides); a name not listed is its own preset
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "cae_noalign": ("cae", {"cae": {"alignment_weight": 0.0}}),
    "cae_tokens": ("cae", {"cae": {"target": "tokens"}}),
    "ibot": ("ibot", {"views": {"local_crops": 2}}),
    "mocov3": ("mocov3", merge(CONTRASTIVE_VIT, {"mocov3": {"proj_hidden": 1024, "pred_hidden": 1024}})),
    "dino": ("dino", merge(CONTRASTIVE_VIT, {"dino": {"out_dim": 1024, "hidden_dim": 1024},
                                             "views": {"local_crops": 2}})),
}
DEFAULT_METHODS = ("mae", "simmim", "cae", "cae_noalign", "mocov3", "dino")
RANDOM = "random init"
TOKENIZER_KEY = {"beit": "beit", "cae_tokens": "cae"}  # rows whose targets are the --tokenizer's ids


def pixel_targets_of(method: Any) -> bool:
    """Whether a method predicts pixels (the reconstruction report): not BEiT / CAE on token ids,
    not iBOT (its targets are the teacher's patch distributions)."""
    return (isinstance(method, MaskedImageModel) and getattr(method, "tokenizer", None) is None
            and not isinstance(method, IBOT))


def vit(args: argparse.Namespace) -> dict[str, Any]:
    return {"name": "vit_tiny_patch16_224", "img_size": 32, "patch_size": 4, "pos_embed": "sincos",
            "cifar_stem": False, "kwargs": {"depth": args.depth, "embed_dim": args.width,
                                            "num_heads": max(1, args.width // 64)}}


def config_for(row: str, args: argparse.Namespace, work: Path):
    preset, own = ROWS.get(row, (row, {}))
    raw = merge(load_yaml(find_config(f"cifar10/{preset}")), own)
    if row in TOKENIZER_KEY:
        raw = merge(raw, {TOKENIZER_KEY[row]: {"tokenizer": args.tokenizer}})
    raw = merge(raw, {
        "backbone": vit(args),
        "data": {"path": args.data, "max_images": args.images, "max_test_images": args.test_images},
        "optim": {"warmup_epochs": args.warmup_epochs},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed, "device": args.device,
                  "out_dir": str(work / row), "knn_every": 0, "progress": False, "log_every": 5},
    })
    return build_config(merge(raw, parse_overrides(args.set)), METHODS)


def probes(backbone: torch.nn.Module, splits: DatasetSplits, cfg, args: argparse.Namespace) -> dict[str, Any]:
    """kNN and linear probe on CLS and mean patch token, and the attentive probe, from one token pass."""
    v = cfg.views
    common = (v.size, v.mean, v.std, 256, next(backbone.parameters()).device)
    (ttr, ytr), (tte, yte) = (extract_features(backbone, d, *common, pool="tokens") for d in (splits.train,
                                                                                               splits.test))
    n_cls = len(splits.train.classes)
    out: dict[str, Any] = {}
    for pool, pick in (("cls", lambda t: t[:, 0]), ("mean", lambda t: t[:, 1:].mean(1))):
        ftr, fte = pick(ttr), pick(tte)
        out[f"knn_{pool}"] = knn_accuracy(ftr, ytr, fte, yte, n_cls, 200, 0.1)
        out[f"linear_{pool}"] = linear_probe(ftr, ytr, fte, yte, n_cls, epochs=100, lr=0.1).last_epoch_accuracy
    heads = backbone.net.blocks[0].attn.num_heads
    att = attentive_probe(ttr, ytr, tte, yte, n_cls, heads, epochs=args.attentive_epochs, lr=1e-3,
                          weight_decay=0.05, batch_size=64)
    out["attentive"] = att.last_epoch_accuracy
    out["attentive_best"], out["attentive_best_epoch"] = att.best_epoch_accuracy, att.best_epoch
    return out


def finetuned(backbone: torch.nn.Module, splits: DatasetSplits, cfg, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    ft = FinetuneConfig(epochs=args.finetune_epochs, batch_size=args.batch_size, lr=args.finetune_lr,
                        layer_decay=args.layer_decay, warmup_epochs=min(1.0, args.finetune_epochs / 2))
    model = classifier(backbone, len(splits.train.classes), ft)
    res = finetune(model, splits.train, splits.test, ft, cfg.views.size, cfg.views.mean, cfg.views.std,
                   next(backbone.parameters()).device, 256)
    return {"finetune": res.last_epoch_accuracy, "finetune_per_epoch": res.test_accuracy, "finetune_pool": res.pool,
            "finetune_s": time.perf_counter() - start}


def splits_of(cfg) -> DatasetSplits:
    s = open_dataset(cfg.data.path, load_size=cfg.data.load_size)
    return DatasetSplits(cap(s.train, cfg.data.max_images, cfg.train.seed),
                         cap(s.test, cfg.data.max_test_images, cfg.train.seed))


def run_row(row: str, args: argparse.Namespace, work: Path, results: Path) -> dict[str, Any]:
    if row == RANDOM:
        cfg = config_for("mae", args, work)
        seed_everything(args.seed)
        backbone, out, method = build_backbone(cfg.backbone), {}, None
    else:
        cfg = config_for(row, args, work)
        start = time.perf_counter()
        trainer = Trainer(cfg)
        trainer.fit()
        records = [json.loads(x) for x in (work / row / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in records if "summary" not in r and "loss" in r]
        epochs = [r for r in records if "summary" in r]
        train_s = sum(r["summary"]["epoch_time_s"] for r in epochs)
        out = {"wall_s": time.perf_counter() - start, "train_s": train_s,
               "img_per_s": trainer.step * cfg.train.batch_size / train_s,
               "first_loss": steps[0]["loss"], "last_loss": steps[-1]["loss"], "steps": trainer.step,
               "optimizer": cfg.optim.name, "lr": cfg.optim.lr}
        method, backbone = trainer.method, trainer.method.backbone
    if row in TOKENIZER_KEY:  # the targets' tokenizer: its own held-out statistics
        stats = read_tokenizer_config(args.tokenizer)[1]
        out["tokenizer_stats"] = {k: stats.get(k) for k in ("recon_mse", "perplexity", "codes_used", "epoch",
                                                            "held_out", "held_out_images")}
    splits = splits_of(cfg)  # the same train and test images for every row
    out["preset"] = ROWS.get(row, (row, {}))[0] if row != RANDOM else "-"
    start = time.perf_counter()
    out.update(probes(backbone, splits, cfg, args))
    out["probes_s"] = time.perf_counter() - start
    if pixel_targets_of(method):
        v = cfg.views
        rec, figure = reconstruction_report(method, splits.test, v.size, v.mean, v.std, picture_images=6)
        out["reconstruction"] = rec
        picture = results / f"mim_{row}_reconstruct.png"
        figure.savefig(picture, dpi=100, facecolor="white")
        out["reconstruction"]["picture"] = picture.name  # beside the JSON
    if row in args.finetune:
        out.update(finetuned(backbone, splits, cfg, args))
    return out


def budget(args: argparse.Namespace) -> dict[str, Any]:
    return {"images": args.images, "test_images": args.test_images, "epochs": args.epochs,
            "batch_size": args.batch_size, "warmup_epochs": args.warmup_epochs, "seed": args.seed,
            "backbone": f"ViT patch 4, width {args.width}, depth {args.depth}, {max(1, args.width // 64)} heads, 32 px",
            "attentive_epochs": args.attentive_epochs, "finetune_epochs": args.finetune_epochs,
            "finetune_lr": args.finetune_lr, "layer_decay": args.layer_decay, "set": args.set,
            "tokenizer": args.tokenizer}


def _fmt(row: dict[str, Any], key: str, fmt: str = ".3f") -> str:
    value = row
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| row | kNN cls | kNN mean | linear cls | linear mean | attentive | fine-tune | recon. MSE (masked) "
             "| decoder-on-encoder MSE | train s | img/s |", "|---|" + "---:|" * 10]
    for name, r in rows.items():
        if "error" in r:
            lines.append(f"| {name} | error: {r['error']} |" + " |" * 9)
            continue
        cells = [_fmt(r, k) for k in ("knn_cls", "knn_mean", "linear_cls", "linear_mean", "attentive", "finetune",
                                      "reconstruction.masked_mse", "reconstruction.decoder_on_encoder_mse")]
        cells += [_fmt(r, "train_s", ".0f"), _fmt(r, "img_per_s", ".0f")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10.tar.gz"))
    p.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS),
                   help=f"rows to (re)run: presets under cifar10/ or {', '.join(ROWS)}")
    p.add_argument("--no-random-init", action="store_true", help="leave the random-init row as it is")
    p.add_argument("--images", type=int, default=1600)
    p.add_argument("--test-images", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--width", type=int, default=192)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--attentive-epochs", type=int, default=10)
    p.add_argument("--finetune", nargs="*", default=["cae", RANDOM], help="rows also fine-tuned")
    p.add_argument("--finetune-epochs", type=int, default=2)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=0.75)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides for every row")
    p.add_argument("--device", default="auto")
    p.add_argument("--tokenizer", default="", help="tokenizer folder of the beit and cae_tokens rows")
    p.add_argument("--workdir", default="/tmp/selfsup-mim-bench")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/mim.json"))
    args = p.parse_args()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(out.read_text()) if out.is_file() else {}
    rows: dict[str, dict[str, Any]] = saved.get("rows", {})
    todo = ([] if args.no_random_init else [RANDOM]) + list(args.methods)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    for row in todo:
        stamp = {"budget": budget(args), "commit": commit.strip(),
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        try:
            rows[row] = {**run_row(row, args, Path(args.workdir), out.parent), **stamp}
        except Exception as e:  # a failing row is a result to report, not a crash
            traceback.print_exc()
            rows[row] = {"error": f"{type(e).__name__}: {e}", **stamp}
        print(json.dumps({row: rows[row]}), flush=True)
        out.write_text(json.dumps({"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                   "machine": platform.processor() or platform.machine()}, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
