"""The ``selfsup`` command: pretrain, eval (knn, linear, attentive, ...), export, methods, views preview."""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import torch

from selfsup.config import ConfigError, build_config, find_config, load_yaml, merge, parse_overrides, preset_names
from selfsup.core.device import resolve_device
from selfsup.core.errors import CheckpointError
from selfsup.data import DataError, open_dataset
from selfsup.data.sources import NAMED_DATASETS
from selfsup.methods import METHODS


def _pretrain(args: argparse.Namespace) -> int:
    from selfsup.eval.online import OnlineKNN
    from selfsup.train.trainer import Trainer

    raw: dict[str, Any] = load_yaml(find_config(args.config)) if args.config else {}
    notice = ""
    if not args.config:
        raw, notice = _default_preset(args.data, args.method or "simclr")
    shortcuts = {
        "method": args.method,
        "data": {"path": args.data, "masks": args.masks, "skip_missing": True if args.skip_missing else None},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "out_dir": args.out,
                  "device": args.device, "seed": args.seed, "log": args.log},
    }
    for key, value in shortcuts.items():
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if v is not None}
            if value:
                raw = merge(raw, {key: value})
        elif value is not None:
            raw[key] = value
    cfg = build_config(merge(raw, parse_overrides(args.set)), METHODS)
    if not cfg.data.path:
        raise ConfigError("no data given: pass --data <folder | archive | cifar10>")
    if notice:
        print(notice, file=sys.stderr)
    trainer = Trainer(cfg, monitor=OnlineKNN())
    try:
        result = trainer.fit(resume=args.resume)
    except KeyboardInterrupt:
        if trainer.dist.is_main:
            saved = trainer.last_saved
            where = (
                f"the run is saved at step {saved[1]} (epoch {saved[0]} completed) in {trainer.checkpoint_path}; "
                "continue with the same command plus --resume" if saved is not None else
                "no checkpoint was written yet, nothing to resume"
            )
            print(f"\ninterrupted: {where}", file=sys.stderr)
        return 130
    if trainer.dist.is_main:
        print(json.dumps(result))
    return 0


def _default_preset(data: str | None, method: str) -> tuple[dict[str, Any], str]:
    """Without ``--config``: a named dataset's own preset for the method, else the method's
    library defaults (the ImageNet-style 224 px recipe); and the line that says which."""
    if data in NAMED_DATASETS and f"{data}/{method}" in preset_names():
        return (load_yaml(find_config(f"{data}/{method}")),
                f"selfsup: no --config: using the preset {data}/{method} (`selfsup presets` lists the others)")
    return {}, (f"selfsup: no --config: {method}'s library defaults (the 224 px ImageNet-style recipe); pick a "
                "preset with --config, e.g. cifar10/simclr (`selfsup presets` lists them)")


def _presets(_: argparse.Namespace) -> int:
    for name in preset_names():
        first = find_config(name).read_text().splitlines()[0].lstrip("# ").strip()
        print(f"{name:<28}  {first}")
    return 0


def _device(args: argparse.Namespace) -> torch.device:
    return resolve_device(args.device)


def _eval_data(args: argparse.Namespace):
    """The run's config and backbone (on the device), the capped train / test splits, the number
    of classes and the evaluation size, for the evaluations on labelled image folders."""
    from selfsup.data import cap
    from selfsup.train.runs import load_run

    cfg, method = load_run(args.checkpoint, random_init=args.random_init)
    splits = open_dataset(args.data, load_size=cfg.data.load_size)
    if splits.test is None:
        raise DataError(f"{args.data}: evaluation needs a held-out split (a test/ or val/ folder)")
    if not (splits.train.has_labels and splits.test.has_labels):
        raise DataError(f"{args.data}: evaluation needs labelled class sub-folders")
    train = cap(splits.train, args.max_train, 0)
    test = cap(splits.test, args.max_test, 0)
    return cfg, method.backbone.to(_device(args)), (train, test), len(splits.train.classes), args.size or cfg.views.size


def _load_features(args: argparse.Namespace, tokens: bool = False):
    """Frozen features (train, test) of the run's backbone: pooled vectors (``args.pool`` where
    the command has it), or all tokens of a ViT with ``tokens``."""
    from selfsup.views.features import extract_features

    cfg, backbone, sets, n_cls, size = _eval_data(args)
    common = (size, cfg.views.mean, cfg.views.std, args.batch_size, _device(args))
    if tokens:
        if not hasattr(backbone, "tokens"):
            raise ConfigError(f"{args.checkpoint}: the attentive probe reads ViT tokens; backbone {cfg.backbone.name} "
                              "has none")
        return [extract_features(backbone, d, *common, pool="tokens") for d in sets], n_cls, backbone
    pool = args.pool or ("cls" if hasattr(backbone, "tokens") else None)
    return [extract_features(backbone, d, *common, pool=pool) for d in sets], n_cls, pool or "global average pool"


def _write_result(args: argparse.Namespace, kind: str, result: dict[str, Any]) -> Path:
    from selfsup.train.runs import checkpoint_file

    suffix = "_random_init" if args.random_init else ""
    out = Path(args.out) if args.out else checkpoint_file(args.checkpoint).parent / f"{kind}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    print(f"written to {out}", file=sys.stderr)
    return out


def _eval_knn(args: argparse.Namespace) -> int:
    from selfsup.eval.knn import knn_accuracy

    ((ftr, ytr), (fte, yte)), n_cls, pool = _load_features(args)
    acc = knn_accuracy(ftr, ytr, fte, yte, n_cls, args.k, args.temperature)
    _write_result(args, "knn", {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init, "knn_top1": acc, "pool": pool,
        "k": args.k, "temperature": args.temperature, "train_images": len(ytr), "test_images": len(yte),
    })
    return 0


def _weight_decay(text: str) -> float | str:
    """``--weight-decay``: a number >= 0, or ``auto`` (chosen on a split of the training set)."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _eval_linear(args: argparse.Namespace) -> int:
    from selfsup.eval.linear import linear_probe, linear_probe_chosen_decay

    ((ftr, ytr), (fte, yte)), n_cls, pool = _load_features(args)
    probe = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.probe_batch_size}
    chosen = {}
    if args.weight_decay == "auto":
        choice = linear_probe_chosen_decay(ftr, ytr, fte, yte, n_cls, **probe)
        res, wd = choice.result, choice.weight_decay
        chosen = {"weight_decay_chosen_on": "20% of the train split",
                  "validation_top1": {str(k): v for k, v in choice.validation_accuracy.items()}}
    else:
        wd = args.weight_decay
        res = linear_probe(ftr, ytr, fte, yte, n_cls, weight_decay=wd, **probe)
    _write_result(args, "linear", {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init,
        "last_epoch_top1": res.last_epoch_accuracy,
        "best_epoch_top1": res.best_epoch_accuracy, "best_epoch": res.best_epoch,
        "epochs": res.epochs, "lr": args.lr, "weight_decay": wd, **chosen, "pool": pool,
        "train_images": len(ytr), "test_images": len(yte),
    })
    return 0


def _eval_attentive(args: argparse.Namespace) -> int:
    from selfsup.eval.attentive import attentive_probe

    ((ttr, ytr), (tte, yte)), n_cls, backbone = _load_features(args, tokens=True)
    heads = args.heads or backbone.net.blocks[0].attn.num_heads
    res = attentive_probe(ttr, ytr, tte, yte, n_cls, heads, epochs=args.epochs, lr=args.lr,
                          weight_decay=args.weight_decay, batch_size=args.probe_batch_size, device=_device(args))
    _write_result(args, "attentive", {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init,
        "last_epoch_top1": res.last_epoch_accuracy,
        "best_epoch_top1": res.best_epoch_accuracy, "best_epoch": res.best_epoch,
        "epochs": res.epochs, "lr": args.lr, "weight_decay": args.weight_decay, "heads": heads,
        "tokens": f"CLS + {ttr.shape[1] - 1} patch tokens after the final norm, frozen",
        "train_images": len(ytr), "test_images": len(yte),
    })
    return 0


def _eval_finetune(args: argparse.Namespace) -> int:
    import dataclasses

    from selfsup.eval.finetune import FinetuneConfig, classifier, finetune

    cfg, backbone, (train, test), n_cls, size = _eval_data(args)
    ft = FinetuneConfig(epochs=args.epochs, batch_size=args.finetune_batch_size, optimizer=args.optimizer, lr=args.lr,
                        weight_decay=args.weight_decay, layer_decay=args.layer_decay,
                        warmup_epochs=args.warmup_epochs, scale=tuple(args.scale), pool=args.pool, seed=args.seed)
    model = classifier(backbone, n_cls, ft)
    res = finetune(model, train, test, ft, size, cfg.views.mean, cfg.views.std, _device(args), args.batch_size)
    _write_result(args, "finetune", {
        "checkpoint": str(args.checkpoint), "random_init": args.random_init,
        "last_epoch_top1": res.last_epoch_accuracy, "best_epoch_top1": res.best_epoch_accuracy,
        "best_epoch": res.best_epoch, "test_top1_per_epoch": res.test_accuracy, "pool": res.pool,
        **{k: v for k, v in dataclasses.asdict(ft).items() if k != "pool"},
        "train_images": len(train), "test_images": len(test),
    })
    return 0


def _eval_reconstruct(args: argparse.Namespace) -> int:
    from selfsup.eval.reconstruct import reconstruct_eval

    result, figure = reconstruct_eval(args.checkpoint, args.data, args.split, args.max_images, args.images, args.size,
                                      args.batch_size, _device(args), args.seed, args.random_init)
    picture = _write_result(args, "reconstruct", result).with_suffix(".png")
    figure.savefig(picture, dpi=100, facecolor="white")
    print(f"figure written to {picture}", file=sys.stderr)
    return 0


def _eval_dense(args: argparse.Namespace) -> int:
    import dataclasses

    from selfsup.eval.dense import DenseConfig, dense_eval, save_figure

    cfg = DenseConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DenseConfig)})
    out = dense_eval(args.checkpoint, args.data, cfg, random_init=args.random_init)
    figure = save_figure(out.figure, _write_result(args, "dense", out.result).with_suffix(".png"))
    print(f"figure written to {figure}", file=sys.stderr)
    return 0


def _eval_cluster(args: argparse.Namespace) -> int:
    from selfsup.eval.cluster import ClusterConfig, cluster_eval
    from selfsup.eval.dense import save_figure

    cfg = ClusterConfig(
        protocol=args.protocol, seeds=args.seeds, size=tuple(args.size) if args.size else None, scale=args.scale,
        split=args.val_split, object_classes=tuple(args.object_classes.split(",")) if args.object_classes else None,
        max_images=args.max_val, batch_size=args.batch_size, figure_images=args.figure_images, device=args.device,
    )
    result, figures = cluster_eval(args.checkpoint, args.data, cfg, random_init=args.random_init)
    path = _write_result(args, "cluster", result)
    for name, figure in figures.items():
        print(f"figure written to {save_figure(figure, path.with_name(f'{path.stem}_{name}.png'))}", file=sys.stderr)
    return 0


def _eval_align(args: argparse.Namespace) -> int:
    from selfsup.eval.alignment import evaluate_run

    max_images = args.max_test if args.split == "test" else args.max_train
    _write_result(args, "align", evaluate_run(
        args.checkpoint, args.data, args.split, max_images, args.size, args.batch_size, _device(args), args.seed,
        args.random_init,
    ))
    return 0


def _export(args: argparse.Namespace) -> int:
    from selfsup.export import export_backbone

    out = export_backbone(args.checkpoint, args.out)
    print(f"backbone weights written to {out}")
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    from selfsup.models.tokenizer import TokenizerConfig
    from selfsup.train.tokenizer import TokenizerTrainConfig, train_tokenizer
    from selfsup.views.config import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD

    cifar = args.data == "cifar10"  # the named dataset's presets use its statistics, the library default ImageNet's
    mean = tuple(args.mean) if args.mean else CIFAR10_MEAN if cifar else IMAGENET_MEAN
    std = tuple(args.std) if args.std else CIFAR10_STD if cifar else IMAGENET_STD
    model = TokenizerConfig(patch_size=args.patch_size, codebook_size=args.codebook_size, code_dim=args.code_dim,
                            hidden=args.hidden, mean=mean, std=std)
    cfg = TokenizerTrainConfig(data=args.data, out=args.out, model=model, epochs=args.epochs,
                               batch_size=args.batch_size, lr=args.lr, size=args.size, scale=tuple(args.scale),
                               max_images=args.max_images, seed=args.seed, device=args.device)
    print(json.dumps(train_tokenizer(cfg)))
    print(f"tokenizer written to {args.out} (use it as beit.tokenizer={args.out} or cae.tokenizer={args.out})",
          file=sys.stderr)
    return 0


def _methods(_: argparse.Namespace) -> int:
    width = max(map(len, METHODS))
    for name, cls in METHODS.items():
        print(f"{name:<{width}}  {cls.description}")
    return 0


def _saliency(args: argparse.Namespace) -> int:
    from selfsup.eval.saliency import SaliencyConfig, write_saliency

    cfg = SaliencyConfig(
        method=args.method, checkpoint=args.checkpoint, masks=args.masks, split=args.split,
        load_size=tuple(args.load_size) if args.load_size else None, threshold=args.threshold,
        min_component=args.min_component, min_salient=args.min_salient, batch_size=args.batch_size,
        preview_images=args.preview_images, device=args.device,
    )
    report = write_saliency(args.data, args.out, cfg)
    print(f"{report['written']} mask(s) written to {args.out}; {report['skipped_under_min_salient']} image(s) "
          f"skipped (under {100 * cfg.min_salient:g}% salient), {report['without_external_map']} without a map; "
          f"preview {report['preview']}", file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if not k.endswith("_files")}))
    return 0


def _report(args: argparse.Namespace) -> int:
    from selfsup.report import PictureOptions, write_report

    out = Path(args.out) if args.out else (Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("report"))
    opts = PictureOptions(data=args.data, tsne_images=args.tsne_images, database_images=args.database_images,
                          batch_size=args.batch_size, device=args.device, seed=args.seed)
    page = write_report(args.runs, out, opts, pictures=not args.no_pictures)
    print(f"report written to {page} (open it in a browser: file://{page.resolve()})")
    return 0


def _colorize(args: argparse.Namespace) -> int:
    from selfsup.eval.colorize import write_colorized

    out = write_colorized(args.checkpoint, args.out, args.data, args.n, args.seed, args.device)
    print(f"colourised images written to {out}")
    return 0


def _views_preview(args: argparse.Namespace) -> int:
    from selfsup.eval.preview import write_preview

    out = write_preview(args.crop, args.out, args.checkpoint, args.data, args.n, args.crops, args.seed, args.device)
    print(f"preview written to {out}")
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


def _pool_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pool", choices=("cls", "mean"),
                   help="ViTs: the CLS token (default) or the mean of the patch tokens, after the final norm")


class SuggestingParser(argparse.ArgumentParser):
    """argparse, with the nearest valid choice suggested for a mistyped command or option value."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        match = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if match:
            choices = re.findall(r"'?([\w-]+)'?", match.group(2))
            close = difflib.get_close_matches(match.group(1), choices, n=1, cutoff=0.4)
            if close:
                message = f"{message}; did you mean {close[0]!r}?"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = SuggestingParser(prog="selfsup", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", aliases=["train"], help="pre-train an encoder with a self-supervised method")
    p.add_argument("--method", help="method name (see `selfsup methods`)")
    p.add_argument("--data", help="image folder, .tar/.tar.gz/.zip archive, or cifar10")
    p.add_argument("--config", help="a preset name (cifar10/simclr; `selfsup presets` lists them) or a YAML file")
    p.add_argument("--masks", help="folder / archive of saliency masks named like the images (data.masks)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out images without a usable mask instead of stopping (data.skip_missing)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. optim.lr=0.5 train.epochs=10")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--out", help="run folder (checkpoints, metrics, results)")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue the run in the run folder")
    p.add_argument("--log", choices=["jsonl", "tensorboard"],
                   help="tensorboard: also TensorBoard event files in the run folder (train.log)")
    p.set_defaults(func=_pretrain)

    ev = sub.add_parser("eval", help="evaluate a checkpoint").add_subparsers(dest="eval_kind", required=True)
    p = _eval_parser(ev, "knn", "weighted kNN accuracy (InstDisc protocol)")
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.1)
    _pool_option(p)
    p.set_defaults(func=_eval_knn)
    p = _eval_parser(ev, "linear", "linear probe on frozen features (last-epoch accuracy)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=_weight_decay, default=0.0,
                   help="L2 weight decay, or 'auto': chosen from 0 to 0.3 on a held-out 20%% of the train split")
    p.add_argument("--probe-batch-size", type=int, default=256)
    _pool_option(p)
    p.set_defaults(func=_eval_linear)
    p = _eval_parser(ev, "attentive", "CAE's attentive probe (one cross-attention block) on frozen ViT tokens")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (cosine schedule)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--heads", type=int, default=0, help="attention heads (0: the encoder's)")
    p.add_argument("--probe-batch-size", type=int, default=256)
    p.set_defaults(func=_eval_attentive)
    p = _eval_parser(ev, "finetune", "full fine-tuning with layer-wise lr decay (last-epoch accuracy)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the classifier (warm-up, cosine)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=0.75, help="layer i of L learns at lr * decay^(L + 1 - i)")
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--scale", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"),
                   help="random-resized crop area of the training views")
    p.add_argument("--finetune-batch-size", type=int, default=128, help="images per training step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pool", choices=("cls", "mean"), help="ViTs: mean of the patch tokens (default) or CLS")
    p.set_defaults(func=_eval_finetune)
    p = ev.add_parser("reconstruct", help="MIM runs: reconstruction pictures and errors (CAE: decoder on encoder)")
    p.add_argument("--checkpoint", required=True, help="a run folder or its last.pt (mae, simmim, cae)")
    p.add_argument("--data", help="images (default: the run's data.path)")
    p.add_argument("--out", help="result JSON (default: reconstruct.json next to the checkpoint); the PNG beside it")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--max-images", type=int, default=512, help="images the errors average over (0: the split)")
    p.add_argument("--images", type=int, default=8, help="rows of the picture")
    p.add_argument("--size", type=int, default=0, help="image size (default: the training size)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="seed of the masks and of the image subset")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_eval_reconstruct)
    p = _eval_parser(ev, "align", "alignment (augmented view pairs) and uniformity of the features (Wang & Isola)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="images to measure on")
    p.add_argument("--seed", type=int, default=0, help="seed of the random views")
    p.set_defaults(func=_eval_align)
    p = ev.add_parser("dense", help="per-pixel linear probe (mIoU) on a segmentation dataset, optional fine-tuning")
    p.add_argument("--checkpoint", required=True, help="a run folder or its last.pt")
    p.add_argument("--data", required=True, help="folder / archive with <split>/ images and <split>annot/ labels")
    p.add_argument("--out", help="result JSON (default: dense.json next to the checkpoint); the PNG goes beside it")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="load size of images and labels")
    size.add_argument("--scale", type=float, default=1.0, help="load size as a fraction of the images' size")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val", help="evaluation split (never train a probe on it)")
    p.add_argument("--val-data", help="folder / archive holding the evaluation split (default: --data)")
    p.add_argument("--label-dir", default="{split}annot", help="label folder name pattern")
    p.add_argument("--classes", help="label set name (camvid) or a file of class names (default: auto)")
    p.add_argument("--ignore-index", type=int, help="label value left out (default: CamVid 11, else 255)")
    p.add_argument("--max-train", type=int, default=0, help="use a random subset of the train split")
    p.add_argument("--max-val", type=int, default=0, help="use a random subset of the val split")
    p.add_argument("--epochs", type=int, default=20, help="probe epochs (unless --steps)")
    p.add_argument("--steps", type=int, default=0, help="probe optimiser steps (overrides --epochs)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8, help="images per probe / fine-tuning step")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--finetune-steps", type=int, default=0, help="then fine-tune the whole network N steps")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--finetune-weight-decay", type=float, default=1e-4)
    p.add_argument("--finetune-scale", type=float, nargs=2, default=(0.5, 1.0), metavar=("MIN", "MAX"))
    p.add_argument("--feature-memory-gb", type=float, default=4.0, help="keep frozen features if they fit")
    p.add_argument("--figure-images", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_eval_dense)

    p = ev.add_parser("cluster", help="unsupervised segmentation: k-means + Hungarian matching (mIoU over seeds)")
    p.add_argument("--checkpoint", required=True, help="a run folder or its last.pt")
    p.add_argument("--data", required=True, help="folder / archive with <split>/ images and <split>annot/ labels")
    p.add_argument("--out", help="result JSON (default: cluster.json next to the checkpoint); PNGs beside it")
    p.add_argument("--random-init", action="store_true", help="same architecture, random weights (baseline)")
    p.add_argument("--protocol", choices=["pixel", "maskcontrast", "both"], default="both",
                   help="pixel: k-means of every pixel's features (any run); maskcontrast: per-image saliency "
                        "prototypes (maskcontrast runs); both: what the run supports")
    p.add_argument("--seeds", type=int, default=5, help="k-means seeds (mean and std reported)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="load size of images and labels")
    size.add_argument("--scale", type=float, default=1.0, help="load size as a fraction of the images' size")
    p.add_argument("--val-split", default="val", help="the split clustered and scored")
    p.add_argument("--object-classes", help="comma-separated object class names (maskcontrast protocol; "
                                            "CamVid default: pole,sign/symbol,fence,car,pedestrian,bicyclist)")
    p.add_argument("--max-val", type=int, default=0, help="use the first N images of the split")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--figure-images", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_eval_cluster)

    p = sub.add_parser("export", help="write the backbone's weights for torchvision / timm")
    p.add_argument("--checkpoint", required=True, help="a run folder or its last.pt")
    p.add_argument("--out", required=True, help="output .pth file")
    p.set_defaults(func=_export)

    tk = sub.add_parser("tokenizer", help="discrete visual tokenizer (BEiT / CAE token targets)")
    p = tk.add_subparsers(dest="tokenizer_kind", required=True).add_parser(
        "train", help="train a VQ-VAE tokenizer on unlabelled images (selfsup.models.tokenizer)")
    p.add_argument("--data", required=True, help="image folder, archive, or cifar10")
    p.add_argument("--out", required=True, help="folder for tokenizer.json / .safetensors, metrics and pictures")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--patch-size", type=int, default=4, help="pixels per token side: the ViT's patch size")
    p.add_argument("--codebook-size", type=int, default=512)
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--hidden", type=int, default=64, help="channels of the conv encoder and decoder")
    p.add_argument("--size", type=int, default=32, help="training crop size (the MIM run's views.size)")
    p.add_argument("--scale", type=float, nargs=2, default=(0.2, 1.0), metavar=("MIN", "MAX"), help="crop area")
    p.add_argument("--mean", type=float, nargs=3,
                   help="normalisation (default: CIFAR-10's for cifar10, else ImageNet's)")
    p.add_argument("--std", type=float, nargs=3)
    p.add_argument("--max-images", type=int, default=0, help="use a random subset of the train split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("methods", help="list the available methods")
    p.set_defaults(func=_methods)
    p = sub.add_parser("presets", help="list the shipped presets (names for --config)")
    p.set_defaults(func=_presets)

    p = sub.add_parser("saliency", help="mask proposals for maskcontrast: saliency masks with no labels")
    p.add_argument("--data", required=True, help="image folder / archive (its train split, see --split)")
    p.add_argument("--method", choices=["spectral", "fine-grained", "checkpoint", "external"], default="spectral",
                   help="spectral residual or fine-grained (OpenCV), a selfsup run's own saliency / heat map, "
                        "or external probability maps (--masks)")
    p.add_argument("--checkpoint", help="run folder or last.pt (--method checkpoint)")
    p.add_argument("--masks", help="folder / archive of probability maps named like the images (--method external)")
    p.add_argument("--out", required=True, help="mask folder to write (then pretrain with --masks it)")
    p.add_argument("--split", choices=["train", "test"], default="train", help="which split gets masks")
    p.add_argument("--load-size", type=int, nargs=2, metavar=("H", "W"),
                   help="size the estimator sees (default: the images' own); masks are written at the original size")
    p.add_argument("--threshold", type=float, default=0.5, help="salient where the probability is >= this")
    p.add_argument("--min-component", type=float, default=0.01, help="drop components under this share of the image")
    p.add_argument("--min-salient", type=float, default=0.01, help="skip images under this salient share")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--preview-images", type=int, default=8, help="rows of preview.png")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_saliency)

    p = sub.add_parser("report", help="an HTML page of one or more runs: curves, t-SNE, retrieval, views, results")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (several: compared side by side)")
    p.add_argument("--out", help="folder for report.html and its PNGs (default: RUN/report, or ./report for several)")
    p.add_argument("--data", help="the images for t-SNE, retrieval and views (default: each run's data.path)")
    p.add_argument("--tsne-images", type=int, default=1000, help="held-out images in the t-SNE")
    p.add_argument("--database-images", type=int, default=5000, help="training images searched for neighbours")
    p.add_argument("--no-pictures", action="store_true", help="only curves and results (no network needed)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_report)

    p = sub.add_parser("colorize", help="PNG of held-out images colourised by a colorization run (grey / ours / true)")
    p.add_argument("checkpoint", metavar="RUN", help="a colorization run folder or its last.pt")
    p.add_argument("--data", help="images to colourise (default: the run's data.path; its test/val split)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--out", help="output PNG (default: RUN/colorized.png)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_colorize)

    vw = sub.add_parser("views", help="look at the views").add_subparsers(dest="views_kind", required=True)
    p = vw.add_parser("preview", help="PNG of training images with sampled crops (and ContrastiveCrop boxes)")
    p.add_argument("--crop", choices=["random", "contrastive", "fixed-center"], default="contrastive")
    p.add_argument("--checkpoint", help="a run folder or its last.pt (needed for --crop contrastive)")
    p.add_argument("--data", help="images to draw (default: the run's training data)")
    p.add_argument("--n", type=int, default=8, help="number of images")
    p.add_argument("--crops", type=int, default=4, help="sampled crops drawn per image")
    p.add_argument("--out", default="views_preview.png", help="output PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where boxes are localised when the run has none stored")
    p.set_defaults(func=_views_preview)
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
