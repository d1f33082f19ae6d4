"""The ``selfsup`` command: pretrain, eval (knn, linear), export, methods."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from selfsup.config import ConfigError, build_config, load_yaml, merge, parse_overrides
from selfsup.data import DataError, open_dataset
from selfsup.train.checkpoint import CheckpointError


def _pretrain(args: argparse.Namespace) -> int:
    from selfsup.train.trainer import Trainer

    raw: dict[str, Any] = load_yaml(args.config) if args.config else {}
    shortcuts = {
        "method": args.method,
        "data": {"path": args.data},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "out_dir": args.out,
                  "device": args.device, "seed": args.seed},
    }
    for key, value in shortcuts.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if value:
                raw = merge(raw, {key: value})
        elif value is not None:
            raw[key] = value
    cfg = build_config(merge(raw, parse_overrides(args.set)))
    if not cfg.data.path:
        raise ConfigError("no data given: pass --data <folder | archive | cifar10>")
    trainer = Trainer(cfg)
    try:
        result = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        if trainer.dist.is_main:
            where = (
                f"epoch {trainer.epoch} is saved in {trainer.checkpoint_path}; continue with the "
                "same command plus --resume" if trainer.checkpoint_path.is_file() else
                "no epoch was completed, nothing to resume"
            )
            print(f"\ninterrupted: {where}", file=sys.stderr)
        return 130
    if trainer.dist.is_main:
        print(json.dumps(result))
    return 0


def _load_features(args: argparse.Namespace):
    from selfsup.eval.features import extract_features
    from selfsup.runs import load_run
    from selfsup.train.trainer import cap

    cfg, method = load_run(args.checkpoint, random_init=args.random_init)
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    splits = open_dataset(args.data, load_size=cfg.data.load_size)
    if splits.test is None:
        raise DataError(f"{args.data}: evaluation needs a held-out split (a test/ or val/ folder)")
    if not (splits.train.has_labels and splits.test.has_labels):
        raise DataError(f"{args.data}: evaluation needs labelled class sub-folders")
    train = cap(splits.train, args.max_train, 0)
    test = cap(splits.test, args.max_test, 0)
    backbone = method.backbone.to(device)
    size = args.size or cfg.views.size
    feats = [extract_features(backbone, d, size, cfg.views.mean, cfg.views.std, args.batch_size, device)
             for d in (train, test)]
    return feats, len(splits.train.classes)


def _write_result(args: argparse.Namespace, kind: str, result: dict[str, Any]) -> None:
    from selfsup.runs import checkpoint_file

    suffix = "_random_init" if args.random_init else ""
    out = Path(args.out) if args.out else checkpoint_file(args.checkpoint).parent / f"{kind}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(f"written to {out}", file=sys.stderr)


def _eval_knn(args: argparse.Namespace) -> int:
    from selfsup.eval.knn import knn_accuracy

    ((ftr, ytr), (fte, yte)), n_cls = _load_features(args)
    acc = knn_accuracy(ftr, ytr, fte, yte, n_cls, args.k, args.temperature)
    _write_result(args, "knn", {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init, "knn_top1": acc,
        "k": args.k, "temperature": args.temperature, "train_images": len(ytr), "test_images": len(yte),
    })
    return 0


def _eval_linear(args: argparse.Namespace) -> int:
    from selfsup.eval.linear import linear_probe

    ((ftr, ytr), (fte, yte)), n_cls = _load_features(args)
    res = linear_probe(ftr, ytr, fte, yte, n_cls, epochs=args.epochs, lr=args.lr,
                       batch_size=args.probe_batch_size, weight_decay=args.weight_decay)
    _write_result(args, "linear", {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init,
        "last_epoch_top1": res.last_epoch_accuracy,
        "best_epoch_top1": res.best_epoch_accuracy, "best_epoch": res.best_epoch,
        "epochs": res.epochs, "lr": args.lr, "train_images": len(ytr), "test_images": len(yte),
    })
    return 0


def _export(args: argparse.Namespace) -> int:
    from selfsup.export import export_backbone

    out = export_backbone(args.checkpoint, args.out)
    print(f"backbone weights written to {out}")
    return 0


def _methods(_: argparse.Namespace) -> int:
    from selfsup.methods import METHODS

    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {cls.description}")
    return 0


def _eval_parser(sub: argparse._SubParsersAction, name: str, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_)
    p.add_argument("--checkpoint", required=True, help="a run folder or its last.pt")
    p.add_argument("--data", required=True, help="labelled folder / archive / cifar10 with a test split")
    p.add_argument("--out", help="result JSON (default: next to the checkpoint)")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    p.add_argument("--size", type=int, default=0, help="evaluation image size (default: the training size)")
    p.add_argument("--max-train", type=int, default=0, help="use a random subset of the train split")
    p.add_argument("--max-test", type=int, default=0, help="use a random subset of the test split")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pre-train an encoder with a self-supervised method")
    p.add_argument("--method", help="method name (see `selfsup methods`)")
    p.add_argument("--data", help="image folder, .tar/.tar.gz/.zip archive, or cifar10")
    p.add_argument("--config", help="YAML preset, e.g. configs/cifar10/simclr.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. optim.lr=0.5 train.epochs=10")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="run folder (checkpoints, metrics, results)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.set_defaults(func=_pretrain)

    ev = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="eval_kind", required=True)
    p = _eval_parser(ev, "knn", "weighted kNN accuracy (InstDisc protocol)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.1)
    p.set_defaults(func=_eval_knn)
    p = _eval_parser(ev, "linear", "linear probe on frozen features (last-epoch accuracy)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--probe-batch-size", type=int, default=256)
    p.set_defaults(func=_eval_linear)

    p = sub.add_parser("export", help="write the backbone's weights for torchvision / timm")
    p.add_argument("--checkpoint", required=True, help="a run folder or its last.pt")
    p.add_argument("--out", required=True, help="output .pth file")
    p.set_defaults(func=_export)

    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=_methods)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, DataError, CheckpointError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
