"""Dense (segmentation) quality of pre-training methods on CamVid, same budget and backbone.

    python benchmarks/camvid_dense.py --data ../shared/data/camvid-trainval.tar.gz --device cuda

For each method preset (``camvid/<name>``, ``selfsup/presets/camvid/<name>.yaml``: pixpro, pixcontrast, pixpro_instance,
byol, simclr by default; a path to any preset YAML also works) the script
1. pre-trains on the UNLABELLED CamVid train frames (the trainer reads ``camvid/train/`` only,
   never the ``*annot/`` label folders), with the preset's backbone, crops and budget, the
   budget flags (``--epochs``, ``--batch-size``, ``--crop-size``) and ``--set`` overrides
   applied to every method alike (a ``--set`` key of a method's own section, e.g.
   ``byol.base_momentum=0.996``, applies to that method only);
2. checks that every method ended up with the same backbone, crop size, batch and epochs
   (it refuses to compare otherwise);
3. dense-probes each backbone on CamVid train -> val (``selfsup.eval.dense``: frozen features,
   per-pixel linear probe, mIoU at the last probe step; optional fine-tuning), plus a row for
   the same architecture with random weights.
Writes ``benchmarks/results/camvid_dense.json`` (all settings and full per-run results), each
run's ``dense.json`` / ``dense.png`` in its run folder, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from selfsup.config import PretrainConfig, build_config, find_config, load_yaml, merge, parse_overrides
from selfsup.eval.dense import DenseConfig, dense_eval, save_figure
from selfsup.eval.online import OnlineKNN
from selfsup.methods import METHODS
from selfsup.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_METHODS = ("pixpro", "pixcontrast", "pixpro_instance", "byol", "simclr")


def preset_path(name: str) -> Path:
    """``pixpro`` -> the preset camvid/pixpro; a path to a YAML file stays as it is."""
    path = Path(name)
    return path if path.suffix in (".yaml", ".yml") else find_config(f"camvid/{name}")


def pretrain_config(preset: Path, args: argparse.Namespace) -> PretrainConfig:
    """The preset with the common data / budget settings and the ``--set`` overrides."""
    raw = load_yaml(preset)
    method = raw.get("method", "simclr")
    common: dict[str, Any] = {
        "data": {"path": args.data, "max_images": args.max_images},
        "train": {"out_dir": str(Path(args.runs) / preset.stem), "device": args.device, "seed": args.seed},
    }
    budget = {("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size,
              ("views", "size"): args.crop_size}
    for (section, key), value in budget.items():
        if value is not None:
            common.setdefault(section, {})[key] = value
    overrides = {k: v for k, v in parse_overrides(args.set).items() if k not in METHODS or k == method}
    return build_config(merge(merge(raw, common), overrides), METHODS)


def check_same_setup(configs: dict[str, PretrainConfig]) -> None:
    """SystemExit naming the first setting in which two methods differ."""
    def setup(cfg: PretrainConfig) -> dict[str, Any]:
        d = cfg.to_dict()
        return {"backbone": d["backbone"], "views.size": d["views"]["size"], "views.scale": d["views"]["scale"],
                "train.epochs": d["train"]["epochs"], "train.batch_size": d["train"]["batch_size"],
                "data.max_images": d["data"]["max_images"]}

    (first, ref), *rest = ((name, setup(cfg)) for name, cfg in configs.items())
    for name, other in rest:
        for key, value in ref.items():
            if other[key] != value:
                sys.exit(f"error: {name} and {first} differ in {key} ({other[key]} vs {value}); "
                         "align them with --set or the budget flags")


def pretrain(cfg: PretrainConfig, reuse: bool) -> dict[str, Any]:
    """Run (or, with ``reuse`` and a finished run folder, skip) pre-training; its budget and time."""
    out = Path(cfg.train.out_dir)
    last = out / "last.pt"
    done = False
    if reuse and last.is_file():
        done = torch.load(last, weights_only=True, map_location="cpu")["epoch"] == cfg.train.epochs
    start = time.perf_counter()
    if not done:
        if (out / "metrics.jsonl").is_file():
            (out / "metrics.jsonl").unlink()  # a fresh run, not appended to an old log
        Trainer(cfg, monitor=OnlineKNN()).fit()
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if "summary" in r]
    return {
        "run": str(out), "method": cfg.method, "epochs": epochs[-1]["epoch"], "steps": epochs[-1]["step"],
        "batch_size": cfg.train.batch_size, "crop_size": cfg.views.size,
        "final_loss": epochs[-1]["summary"].get("loss"),
        "wall_time_s": wall if not done else sum(r["summary"]["epoch_time_s"] for r in epochs),
        "reused": bool(done),
    }


def probe(checkpoint: Path, args: argparse.Namespace, random_init: bool) -> dict[str, Any]:
    """Dense evaluation of a run (or of its architecture with random weights)."""
    cfg = DenseConfig(
        size=args.probe_size, scale=args.probe_scale, epochs=args.probe_epochs, steps=args.probe_steps,
        lr=args.probe_lr, batch_size=args.probe_batch_size, finetune_steps=args.finetune_steps,
        finetune_lr=args.finetune_lr, max_train=args.max_train, max_val=args.max_val, seed=args.seed,
        device=args.device,
    )
    out = dense_eval(checkpoint, args.data, cfg, random_init=random_init)
    stem = "dense_random_init" if random_init else "dense"
    (checkpoint / f"{stem}.json").write_text(json.dumps(out.result, indent=2))
    save_figure(out.figure, checkpoint / f"{stem}.png")
    return out.result


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: mIoU, pixel accuracy, per-class IoU (in %), pre-training and probe time."""
    classes = list(rows[0]["dense"]["per_class_iou"])
    finetuned = rows[0]["dense"]["finetune"] is not None
    head = ["method", "mIoU", "pixel acc", *classes] + (["fine-tuned mIoU"] if finetuned else []) + \
        ["pretrain s", "probe s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        d = r["dense"]
        cells = [r["name"], _fmt(d["miou"]), _fmt(d["pixel_accuracy"]), *(_fmt(d["per_class_iou"][c]) for c in classes)]
        if finetuned:
            cells.append(_fmt(d["finetune"]["miou"]))
        pre = r["pretrain"]["wall_time_s"] if r["pretrain"] else None
        cells += ["-" if pre is None else f"{pre:.0f}", f"{d['wall_time_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/camvid-trainval.tar.gz"))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   help="preset names of camvid/ (selfsup presets) or paths to preset YAML files")
    p.add_argument("--epochs", type=int, help="pre-training epochs for every method (default: the presets')")
    p.add_argument("--batch-size", type=int, help="pre-training batch for every method (default: the presets')")
    p.add_argument("--crop-size", type=int, help="views.size for every method (default: the presets')")
    p.add_argument("--max-images", type=int, default=0, help="pre-train on a random subset (0: all 367)")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for every method")
    p.add_argument("--probe-size", type=int, nargs=2, metavar=("H", "W"), help="probe load size (default: 360 480)")
    p.add_argument("--probe-scale", type=float, default=1.0)
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--probe-steps", type=int, default=0)
    p.add_argument("--probe-lr", type=float, default=0.1)
    p.add_argument("--probe-batch-size", type=int, default=8)
    p.add_argument("--finetune-steps", type=int, default=0)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--max-train", type=int, default=0, help="probe on a subset of the train split (0: all)")
    p.add_argument("--max-val", type=int, default=0, help="score on a subset of the val split (0: all)")
    p.add_argument("--no-random-init", action="store_true", help="skip the random-initialisation row")
    p.add_argument("--reuse", action="store_true", help="skip pre-training where the run folder is finished")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default=str(ROOT / "runs" / "camvid_dense"), help="run folders go here")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "camvid_dense.json"))
    args = p.parse_args()

    presets = {preset_path(m).stem: preset_path(m) for m in args.methods}
    configs = {name: pretrain_config(path, args) for name, path in presets.items()}
    check_same_setup(configs)
    rows = []
    for name, cfg in configs.items():
        print(f"== {name}: pre-training", file=sys.stderr)
        pre = pretrain(cfg, args.reuse)
        print(f"== {name}: dense probe", file=sys.stderr)
        rows.append({"name": name, "preset": str(presets[name]), "pretrain": pre,
                     "dense": probe(Path(cfg.train.out_dir), args, random_init=False)})
    if not args.no_random_init:
        first = next(iter(configs.values()))
        print("== random initialisation: dense probe", file=sys.stderr)
        rows.append({"name": "random init", "preset": None, "pretrain": None,
                     "dense": probe(Path(first.train.out_dir), args, random_init=True)})

    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = f"cuda: {torch.cuda.get_device_name()}" if cuda else \
        f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    first = next(iter(configs.values()))
    settings = {
        "data": args.data, "device": device, "backbone": first.to_dict()["backbone"],
        "pretrain": {"epochs": first.train.epochs, "batch_size": first.train.batch_size,
                     "crop_size": first.views.size, "max_images": args.max_images, "overrides": args.set},
        "probe": {k: v for k, v in vars(args).items() if k.startswith(("probe_", "finetune_", "max_"))},
    }
    out = Path(args.results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"device: {device}; backbone {first.backbone.name} (output_stride={first.backbone.output_stride}); "
          f"pre-training {first.train.epochs} epochs x batch {first.train.batch_size}, {first.views.size} px crops; "
          f"IoU in %, CamVid val, last probe step")
    print(table(rows))
    print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
