"""Is each pre-trained run above random initialisation? Paired differences on the full test split.

    python benchmarks/above_random.py RUN_DIR [RUN_DIR ...] --test-images 0 \
        --out benchmarks/results/above_random.json

The one-budget table evaluates on 2,000 test images, where one accuracy has a standard error of
about 0.010 and a difference of two about 0.014: too coarse to tell a small margin over random
initialisation from noise. This re-evaluates the saved checkpoints (``last.pt``) on more test
images (``--test-images``, 0 = the whole test split) and compares each run with random
initialisation image by image.

For each run and for random initialisation of the first run's architecture (seeded as in
``instance_methods.py``), with the training features of the images the runs pre-trained on (the
runs must share ``data.max_images`` and seed) and the run's evaluation view:

- kNN top-1 (k = 200, T = 0.1), linear probe top-1 (no weight decay, last epoch), and the probe
  with its weight decay chosen on a held-out 20 % of the TRAINING features
  (``linear_probe_chosen_decay``; the test split takes no part in the choice);
- for each, the difference from random initialisation, d = mean_i(c_i - r_i), where c_i and r_i
  are 1 when the run and random initialisation classify test image i correctly, and its paired
  standard error std(c - r) / sqrt(n). ``above`` is d > 2 standard errors.

``--precise-bn`` first re-estimates every batch-norm layer's statistics on the training images
at the evaluation view (``selfsup.eval.precise_bn``; random initialisation's too), for runs that
pre-trained on other inputs than whole images (tiles, patches).

Writes the rows as JSON and prints a markdown table. With ``--append`` the rows already in
``--out`` are kept and only new runs are evaluated (random initialisation is seeded, so its row
is the same in every invocation with the same first run).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from saved_runs import splits_and_random_init

from selfsup.data.dataset import ImageDataset
from selfsup.eval.knn import knn_predict
from selfsup.eval.linear import linear_probe, linear_probe_chosen_decay
from selfsup.eval.precise_bn import recalibrate_bn
from selfsup.train.runs import load_run
from selfsup.views.features import extract_features

PROBES = ("knn", "linear", "linear_chosen_wd")


def correct(
    backbone: torch.nn.Module, train: ImageDataset, test: ImageDataset, views, precise_bn: bool = False
) -> dict[str, torch.Tensor]:
    """Per-test-image correctness (bool, (N,)) of each probe on ``backbone``'s frozen features
    (with ``precise_bn``, after re-estimating its batch-norm statistics on ``train``)."""
    if precise_bn:
        recalibrate_bn(backbone, train, views.size, views.mean, views.std)
    ftr, ytr = extract_features(backbone, train, views.size, views.mean, views.std)
    fte, yte = extract_features(backbone, test, views.size, views.mean, views.std)
    n_cls = len(train.classes)
    return {
        "knn": knn_predict(ftr, ytr, fte, n_cls) == yte,
        "linear": linear_probe(ftr, ytr, fte, yte, n_cls).predictions == yte,
        "linear_chosen_wd": linear_probe_chosen_decay(ftr, ytr, fte, yte, n_cls).result.predictions == yte,
    }


def paired_difference(run: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Mean of (run - reference) per-image correctness, and its standard error."""
    d = run.float() - reference.float()
    return d.mean().item(), d.std().item() / math.sqrt(len(d))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pre-training run folders (with last.pt)")
    p.add_argument("--test-images", type=int, default=0, help="test images to evaluate on (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-initialisation row")
    p.add_argument("--precise-bn", action="store_true",
                   help="re-estimate batch-norm statistics on the training images before evaluating")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    p.add_argument("--append", action="store_true",
                   help="keep the rows already in --out and evaluate only the runs it does not have")
    args = p.parse_args()
    kept = []
    if args.append:
        if not args.out or not Path(args.out).is_file():
            raise SystemExit(f"--append: no rows to keep, {args.out} is not a file")
        kept = [r for r in json.loads(Path(args.out).read_text())["rows"] if r["run"] != "random init"]
    cfg, train, test, fresh = splits_and_random_init(args.runs[0], args.test_images, args.seed)
    reference = correct(fresh.backbone, train, test, cfg.views, args.precise_bn)
    rows = [{"run": "random init", **{f"{k}_top1": v.float().mean().item() for k, v in reference.items()}}]
    rows += kept
    done = {r["run"] for r in kept}
    for run in (r for r in args.runs if str(r) not in done):
        run_cfg, method = load_run(run)
        if (run_cfg.data.max_images, run_cfg.train.seed) != (cfg.data.max_images, cfg.train.seed):
            raise SystemExit(f"{run}: data.max_images / train.seed differ from {args.runs[0]}'s")
        row = {"run": str(run), "steps": method_steps(run)}
        for k, c in correct(method.backbone, train, test, run_cfg.views, args.precise_bn).items():
            diff, se = paired_difference(c, reference[k])
            row |= {f"{k}_top1": c.float().mean().item(), f"{k}_diff": diff, f"{k}_se": se, f"{k}_above": diff > 2 * se}
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        meta = {"args": vars(args), "train_images": len(train), "test_images": len(test)}
        Path(args.out).write_text(json.dumps({**meta, "rows": rows}, indent=2))
    print(f"{len(train)} training images, {len(test)} test images; difference from random init (paired SE)")
    print("| run | steps | " + " | ".join(PROBES) + " |")
    print("|---|---:|" + "---:|" * len(PROBES))
    for r in rows:
        if r["run"] == "random init":
            print("| random init | - | " + " | ".join(f"{r[f'{k}_top1']:.3f}" for k in PROBES) + " |")
            continue
        cells = [f"{r[f'{k}_top1']:.3f} ({r[f'{k}_diff']:+.3f} +- {r[f'{k}_se']:.3f})" for k in PROBES]
        print(f"| {r['run']} | {r['steps']} | " + " | ".join(cells) + " |")


def method_steps(run: str) -> int | None:
    """The optimiser steps a run took (its last logged step), from its metrics.jsonl."""
    lines = (Path(run) / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line).get("step") for line in lines]
    return max((s for s in steps if s is not None), default=None)


if __name__ == "__main__":
    main()
